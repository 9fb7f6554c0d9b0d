"""Binary codec for every frame raftkv sends: peer messages, handshakes, client frames.

Frame layout (little-endian): u32 length of what follows | u8 message type | body.
The body layout and type id of every message are in the compiled module's docstring.

Integer fields are unsigned 64-bit unless noted: ``Handshake.version``,
``ClientRequest.flags`` and ``ClientRequest.timeout_ms`` are u32, ``ClientRequest.op`` is
u8, ``ClientReply.status`` is u16, and ``ClientRequest.prev_revision`` and
``ClientReply.revision`` are signed 64-bit. A value out of range raises OverflowError
when the message is built; every bytes field and list is limited to 2**32 - 1 items.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar, Final, TypeAlias

from raftkv_ext.entry import Entry

MAGIC: Final[int]
PROTOCOL_VERSION: Final[int]
DEFAULT_MAX_FRAME_SIZE: Final[int]
FRAME_HEADER_SIZE: Final[int]

class MessageBase:
    """Base of every message. Messages compare equal when they are of the same class and
    every field is equal; they pickle, and are not hashable (they may hold lists).

    A list given to a constructor (``entries``, ``commands``) is kept as it is, not
    copied; any other iterable is copied into a list. Items are type-checked when the
    message is built and again when it is encoded."""

    TYPE_ID: ClassVar[int]
    def __eq__(self, other: object) -> bool: ...
    def __ne__(self, other: object) -> bool: ...

class PeerMessage(MessageBase):
    """Base of the Raft peer messages."""

    @property
    def sender(self) -> int: ...
    @property
    def recipient(self) -> int: ...
    @property
    def term(self) -> int: ...

class AppendEntries(PeerMessage):
    """Leader → follower: entries after (prev_index, prev_term), and the leader's commit.

    ``round`` numbers the leader's heartbeat rounds; the follower echoes it so the leader
    can confirm leadership for a batch of ReadIndex requests.
    """

    @property
    def sender(self) -> int: ...
    @property
    def recipient(self) -> int: ...
    @property
    def term(self) -> int: ...
    @property
    def prev_index(self) -> int: ...
    @property
    def prev_term(self) -> int: ...
    @property
    def commit(self) -> int: ...
    @property
    def entries(self) -> list[Entry]: ...
    @property
    def round(self) -> int: ...
    def __init__(
        self,
        sender: int,
        recipient: int,
        term: int,
        prev_index: int,
        prev_term: int,
        commit: int,
        entries: list[Entry] | None = None,
        round: int = 0,
    ) -> None: ...

class AppendEntriesResponse(PeerMessage):
    """Follower → leader. On success ``index`` is the last index the follower now matches;
    on rejection it is the rejected ``prev_index`` and (hint_index, hint_term) let the
    leader skip back a whole term at a time."""

    @property
    def sender(self) -> int: ...
    @property
    def recipient(self) -> int: ...
    @property
    def term(self) -> int: ...
    @property
    def success(self) -> bool: ...
    @property
    def index(self) -> int: ...
    @property
    def hint_index(self) -> int: ...
    @property
    def hint_term(self) -> int: ...
    @property
    def round(self) -> int: ...
    def __init__(
        self,
        sender: int,
        recipient: int,
        term: int,
        success: bool,
        index: int,
        hint_index: int = 0,
        hint_term: int = 0,
        round: int = 0,
    ) -> None: ...

class RequestVote(PeerMessage):
    """Candidate → voter. ``pre_vote`` asks without bumping terms (thesis §9.6);
    ``transfer`` marks an election started by TimeoutNow (thesis §3.10)."""

    @property
    def sender(self) -> int: ...
    @property
    def recipient(self) -> int: ...
    @property
    def term(self) -> int: ...
    @property
    def last_index(self) -> int: ...
    @property
    def last_term(self) -> int: ...
    @property
    def pre_vote(self) -> bool: ...
    @property
    def transfer(self) -> bool: ...
    def __init__(
        self,
        sender: int,
        recipient: int,
        term: int,
        last_index: int,
        last_term: int,
        pre_vote: bool = False,
        transfer: bool = False,
    ) -> None: ...

class RequestVoteResponse(PeerMessage):
    @property
    def sender(self) -> int: ...
    @property
    def recipient(self) -> int: ...
    @property
    def term(self) -> int: ...
    @property
    def granted(self) -> bool: ...
    @property
    def pre_vote(self) -> bool: ...
    def __init__(
        self, sender: int, recipient: int, term: int, granted: bool, pre_vote: bool = False
    ) -> None: ...

class InstallSnapshot(PeerMessage):
    """One chunk of a snapshot. ``config`` is the membership at ``snap_index``, encoded
    by the consensus core; ``offset`` is where ``data`` starts in the snapshot of
    ``total_size`` bytes; ``done`` marks the last chunk."""

    @property
    def sender(self) -> int: ...
    @property
    def recipient(self) -> int: ...
    @property
    def term(self) -> int: ...
    @property
    def snap_index(self) -> int: ...
    @property
    def snap_term(self) -> int: ...
    @property
    def config(self) -> bytes: ...
    @property
    def offset(self) -> int: ...
    @property
    def total_size(self) -> int: ...
    @property
    def data(self) -> bytes: ...
    @property
    def done(self) -> bool: ...
    def __init__(
        self,
        sender: int,
        recipient: int,
        term: int,
        snap_index: int,
        snap_term: int,
        config: bytes,
        offset: int,
        total_size: int,
        data: bytes,
        done: bool,
    ) -> None: ...

class InstallSnapshotResponse(PeerMessage):
    """``offset`` is the next byte the follower expects; with ``done`` the whole snapshot
    at ``snap_index`` has been received and installed."""

    @property
    def sender(self) -> int: ...
    @property
    def recipient(self) -> int: ...
    @property
    def term(self) -> int: ...
    @property
    def snap_index(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def success(self) -> bool: ...
    @property
    def done(self) -> bool: ...
    def __init__(
        self,
        sender: int,
        recipient: int,
        term: int,
        snap_index: int,
        offset: int,
        success: bool,
        done: bool = False,
    ) -> None: ...

class TimeoutNow(PeerMessage):
    """Leader → transfer target: start an election now (thesis §3.10)."""

    @property
    def sender(self) -> int: ...
    @property
    def recipient(self) -> int: ...
    @property
    def term(self) -> int: ...
    def __init__(self, sender: int, recipient: int, term: int) -> None: ...

class ReadIndex(PeerMessage):
    """Follower → leader: ask for a read index for the reads tagged ``context``."""

    @property
    def sender(self) -> int: ...
    @property
    def recipient(self) -> int: ...
    @property
    def term(self) -> int: ...
    @property
    def context(self) -> bytes: ...
    def __init__(self, sender: int, recipient: int, term: int, context: bytes) -> None: ...

class ReadIndexResponse(PeerMessage):
    @property
    def sender(self) -> int: ...
    @property
    def recipient(self) -> int: ...
    @property
    def term(self) -> int: ...
    @property
    def context(self) -> bytes: ...
    @property
    def index(self) -> int: ...
    @property
    def success(self) -> bool: ...
    def __init__(
        self, sender: int, recipient: int, term: int, context: bytes, index: int, success: bool
    ) -> None: ...

class Propose(PeerMessage):
    """Follower → leader: client commands forwarded as one batch."""

    @property
    def sender(self) -> int: ...
    @property
    def recipient(self) -> int: ...
    @property
    def term(self) -> int: ...
    @property
    def batch_id(self) -> int: ...
    @property
    def commands(self) -> list[bytes]: ...
    def __init__(
        self, sender: int, recipient: int, term: int, batch_id: int, commands: list[bytes]
    ) -> None: ...

class ProposeResponse(PeerMessage):
    """Leader → follower: the batch was appended from ``index`` on (success), or refused."""

    @property
    def sender(self) -> int: ...
    @property
    def recipient(self) -> int: ...
    @property
    def term(self) -> int: ...
    @property
    def batch_id(self) -> int: ...
    @property
    def index(self) -> int: ...
    @property
    def success(self) -> bool: ...
    def __init__(
        self, sender: int, recipient: int, term: int, batch_id: int, index: int, success: bool
    ) -> None: ...

class Handshake(MessageBase):
    """First frame on every connection. The magic number is written and checked by the
    codec itself; a frame without it does not decode."""

    @property
    def version(self) -> int: ...
    @property
    def cluster_id(self) -> int: ...
    @property
    def node_id(self) -> int: ...
    def __init__(self, version: int, cluster_id: int, node_id: int) -> None: ...

class HandshakeReply(MessageBase):
    @property
    def accepted(self) -> bool: ...
    @property
    def node_id(self) -> int: ...
    @property
    def reason(self) -> str: ...
    def __init__(self, accepted: bool, node_id: int, reason: str = "") -> None: ...

class ClientRequest(MessageBase):
    """Worker → Raft process. ``prev_revision`` is -1 when the request is not a
    compare-and-set; ``flags`` carries per-request options (consistency level)."""

    @property
    def request_id(self) -> int: ...
    @property
    def op(self) -> int: ...
    @property
    def key(self) -> bytes: ...
    @property
    def value(self) -> bytes: ...
    @property
    def client_id(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def prev_revision(self) -> int: ...
    @property
    def limit(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def timeout_ms(self) -> int: ...
    @property
    def first_incomplete(self) -> int:
        """Lowest seq of this client still awaiting a reply (Raft thesis §6.3)."""
    def __init__(
        self,
        request_id: int,
        op: int,
        key: bytes = b"",
        value: bytes = b"",
        client_id: int = 0,
        seq: int = 0,
        prev_revision: int = -1,
        limit: int = 0,
        flags: int = 0,
        timeout_ms: int = 0,
        first_incomplete: int = 0,
    ) -> None: ...

class ClientReply(MessageBase):
    """Raft process → worker: the outcome of request ``request_id``. ``body`` holds the
    result (a value, or a structured result encoded by the caller)."""

    @property
    def request_id(self) -> int: ...
    @property
    def status(self) -> int: ...
    @property
    def index(self) -> int: ...
    @property
    def term(self) -> int: ...
    @property
    def revision(self) -> int: ...
    @property
    def body(self) -> bytes: ...
    def __init__(
        self,
        request_id: int,
        status: int,
        index: int = 0,
        term: int = 0,
        revision: int = 0,
        body: bytes = b"",
    ) -> None: ...

RaftMessage: TypeAlias = (
    AppendEntries
    | AppendEntriesResponse
    | RequestVote
    | RequestVoteResponse
    | InstallSnapshot
    | InstallSnapshotResponse
    | TimeoutNow
    | ReadIndex
    | ReadIndexResponse
    | Propose
    | ProposeResponse
)
Message: TypeAlias = RaftMessage | Handshake | HandshakeReply | ClientRequest | ClientReply

MESSAGE_TYPES: Final[Mapping[int, type[Message]]]
"""Every message class by its type id."""

def encode(message: Message) -> bytes:
    """One whole frame (length, type, body)."""

def encode_batch(messages: Iterable[Message]) -> bytes:
    """Several frames back to back, built in one buffer."""

def decode(frame: bytes | bytearray | memoryview, max_frame_size: int = ...) -> Message:
    """Decode exactly one whole frame; trailing bytes are an error."""

class FrameDecoder:
    """Streaming decoder: accepts bytes in arbitrary chunks and yields whole frames.

    A frame whose length header exceeds ``max_frame_size`` raises CodecError before any
    of its body is buffered, so a hostile peer cannot make it allocate without bound.
    """

    def __init__(self, max_frame_size: int = ...) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Every message completed by ``data``. After a CodecError the stream position
        is lost: this and every later feed raise, and frames completed earlier in the
        failing chunk are dropped."""

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet make a whole frame."""

    @property
    def max_frame_size(self) -> int: ...
    @property
    def poisoned(self) -> bool:
        """True once a feed has raised; every later feed raises CodecError."""

def encode_entries(entries: Sequence[Entry]) -> bytes:
    """The wire encodings of ``entries`` back to back."""

def decode_entries(buf: bytes | bytearray | memoryview) -> list[Entry]:
    """Inverse of encode_entries."""
