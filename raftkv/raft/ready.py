"""What the core hands to its driver, and what the driver hands back at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from raftkv.raft.membership import Membership
from raftkv_ext.entry import Entry

if TYPE_CHECKING:
    from raftkv_ext.codec import RaftMessage


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before the node answers anyone (Figure 2: persistent state)."""

    term: int = 0
    vote: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """The position a snapshot covers and the membership in force there (§7)."""

    index: int
    term: int
    membership: Membership


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot received from the leader, whole, for the driver to persist and load."""

    meta: SnapshotMeta
    data: bytes


class SnapshotReader(Protocol):
    """Read access to the node's latest snapshot, for sending it to followers in chunks.

    The driver supplies it; the core never opens files itself.
    """

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...


class RandomSource(Protocol):
    """The only randomness the core uses: a seeded generator owned by the caller."""

    def randrange(self, start: int, stop: int) -> int: ...


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read tagged ``context`` may be served once applied >= ``index``."""

    context: bytes
    index: int


@dataclass(frozen=True, slots=True)
class ForwardResult:
    """The leader's answer to a batch this node forwarded with ``RaftCore.forward``."""

    batch_id: int
    index: int
    term: int
    success: bool


@dataclass(slots=True)
class Ready:
    """Everything the driver must do, in this order:

    1. send ``messages`` (they need nothing durable; the leader's AppendEntries go out
       while its own disk write is under way, thesis §10.2.1);
    2. persist ``snapshot`` (if any), then ``hard_state`` and ``entries`` (when the first
       entry's index is at or below the stored last index, truncate the stored log after
       ``entries[0].index - 1`` first), then sync;
    3. send ``persisted_messages`` (acks and votes: only what is durable may be promised)
       and report ``RaftCore.on_persisted`` for the last entry written. A Ready that
       wrote nothing that needs a sync (no entries, and a hard state that is durable
       once saved, or none) promises only what earlier Readys wrote: its messages wait
       for those writes' sync, not for one of their own (an empty AppendEntries
       acknowledges its prev_index);
    4. load ``snapshot`` into the state machine and, once its file is saved, hand it back
       with ``RaftCore.snapshot_saved`` (a leader sends it to lagging followers); apply
       ``committed`` in order, serve ``reads`` once applied reaches their index, and
       retry or fail ``dropped_reads``.
    """

    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)
    messages: list[RaftMessage] = field(default_factory=list)
    persisted_messages: list[RaftMessage] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    reads: list[ReadState] = field(default_factory=list)
    dropped_reads: list[bytes] = field(default_factory=list)
    forwarded: list[ForwardResult] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (
            self.hard_state
            or self.snapshot
            or self.entries
            or self.messages
            or self.persisted_messages
            or self.committed
            or self.reads
            or self.dropped_reads
            or self.forwarded
        )


@dataclass(slots=True)
class InitialState:
    """What the driver loaded from disk at start-up.

    ``entries`` follow the log boundary (``boundary_index``, whose term is
    ``boundary_term``); they may begin before the snapshot's index, since the store keeps
    some entries behind a snapshot for slow followers.
    """

    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta | None = None
    boundary_index: int = 0
    boundary_term: int = 0
    entries: list[Entry] = field(default_factory=list)
