"""Key-value commands and their binary encoding (the payload of a Raft log entry).

Every command carries a request tag so that a retried command is applied at most once
(Raft thesis §6.3): ``client_id`` (0 = untagged), ``seq`` (the client's sequence number
for this request) and ``first_incomplete`` (the lowest seq for which the client has not
yet received a reply; everything below it may be forgotten by the servers).

Layout, all integers little-endian and unsigned::

    header (26 bytes)   u8 format version (1) | u8 opcode | u64 client_id | u64 seq
                        | u64 first_incomplete
    Put (opcode 1)      header | u8 flags | u64 prev_revision | u32 key length | key | value
    Delete (opcode 2)   header | u8 flags | u64 prev_revision | key
    DeletePrefix (3)    header | prefix
    AuthChange (4)      header | a JSON document (see raftkv.kv.auth_tables)
    Txn (5)             header | a transaction body (see raftkv.kv.txn)
    LeasedPut (6)       header | u8 flags | u64 prev_revision | u64 lease | u64 ttl_ms
                        | u32 key length | key | value   (exactly one of lease and
                        ttl_ms is non-zero; a Put with neither is opcode 1)
    Lease (7)           header | u8 kind | fields by kind:
                        GRANT 1: u64 lease id (0: the next free one) | u64 ttl_ms
                        REVOKE 2, KEEP_ALIVE 3: u64 lease id
                        CHECKPOINT 4: u32 count | count x (u64 lease id | u64 ms left),
                            ids strictly increasing
                        EXPIRE 5: u64 lease id | u64 the index of its last renewal
                        KEEP_ALIVE_MANY 6: u32 count | count x u64 lease id, strictly
                            increasing (untagged: a batch of keep-alives)

``flags`` bit 0 says whether ``prev_revision`` is present; when it is clear the
``prev_revision`` field must be 0. No other flag bit is defined. The value of a Put, the
key of a Delete, the prefix of a DeletePrefix and the document of an AuthChange run to the
end of the payload.

The encoding is canonical: every command has exactly one encoding, and a payload that
decodes is byte-identical to the re-encoding of what it decodes to. Decoding rejects,
with :class:`CommandDecodeError`, an unknown version or opcode, a truncated payload, a
length that overruns the payload, undefined flag bits, an empty key, an untagged command
with a non-zero seq or first_incomplete, and a tagged one whose first_incomplete exceeds
its seq (the request being sent has not been answered yet).
"""

from __future__ import annotations

import struct
from dataclasses import KW_ONLY, dataclass
from typing import Final, TypeAlias

from raftkv.kv.txn import TxnBody, TxnBodyError, decode_txn_body, encode_txn_body

__all__ = [
    "FORMAT_VERSION",
    "AuthChange",
    "Command",
    "CommandDecodeError",
    "Delete",
    "DeletePrefix",
    "LeaseCheckpoint",
    "LeaseExpire",
    "LeaseGrant",
    "LeaseKeepAlive",
    "LeaseKeepAliveMany",
    "LeaseRevoke",
    "Put",
    "Txn",
    "decode_command",
    "encode_command",
    "encode_plain_put",
    "encode_txn_command",
]

FORMAT_VERSION: Final = 1

OP_PUT: Final = 1
OP_DELETE: Final = 2
OP_DELETE_PREFIX: Final = 3
OP_AUTH: Final = 4
OP_TXN: Final = 5
OP_PUT_LEASED: Final = 6
OP_LEASE: Final = 7

LEASE_GRANT: Final = 1
LEASE_REVOKE: Final = 2
LEASE_KEEP_ALIVE: Final = 3
LEASE_CHECKPOINT: Final = 4
LEASE_EXPIRE: Final = 5
LEASE_KEEP_ALIVE_MANY: Final = 6
MAX_KEEP_ALIVE_BATCH: Final = 10_000
"""The most leases one KEEP_ALIVE_MANY renews."""

_FLAG_HAS_PREV: Final = 0x01
_U64_MAX: Final = (1 << 64) - 1

_HEADER: Final = struct.Struct("<BBQQQ")
_HEADER_SIZE: Final = _HEADER.size
_KEYED: Final = struct.Struct("<BQ")
_KEYED_SIZE: Final = _KEYED.size
_PUT: Final = struct.Struct("<BQI")
_PUT_SIZE: Final = _PUT.size
_LEASED_PUT: Final = struct.Struct("<BQQQI")
_LEASED_PUT_SIZE: Final = _LEASED_PUT.size
LEASE_FIELDS: Final = struct.Struct("<QQ")
"""A LeasedPut's (lease, ttl_ms), which :func:`decode_raw` leaves at the start of its
value."""
_LEASE_KIND: Final = struct.Struct("<B")
_U64: Final = struct.Struct("<Q")
_PAIR: Final = struct.Struct("<QQ")
_U32: Final = struct.Struct("<I")


class CommandDecodeError(ValueError):
    """A payload is not a valid encoded command."""


@dataclass(frozen=True, slots=True)
class Put:
    """Write ``value`` under ``key``.

    ``prev_revision``: None writes unconditionally; 0 writes only if the key does not
    exist; N > 0 writes only if the key exists with ``mod_revision == N``. ``lease``
    attaches the key to that lease; ``ttl_ms`` gives it a private lease of that TTL;
    with neither, the key leaves any lease it had.
    """

    key: bytes
    value: bytes
    prev_revision: int | None = None
    _: KW_ONLY
    client_id: int = 0
    seq: int = 0
    first_incomplete: int = 0
    lease: int = 0
    ttl_ms: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete ``key``; ``prev_revision`` is a condition as for :class:`Put`."""

    key: bytes
    prev_revision: int | None = None
    _: KW_ONLY
    client_id: int = 0
    seq: int = 0
    first_incomplete: int = 0


@dataclass(frozen=True, slots=True)
class DeletePrefix:
    """Delete every key that starts with ``prefix`` (the empty prefix matches all keys)."""

    prefix: bytes
    _: KW_ONLY
    client_id: int = 0
    seq: int = 0
    first_incomplete: int = 0


@dataclass(frozen=True, slots=True)
class AuthChange:
    """A change to the users, roles, tokens or the auth switch: ``document`` is the JSON
    object that :class:`raftkv.kv.auth_tables.AuthTables` applies. The bytes are stored
    as given; whether they make sense is decided when the entry is applied."""

    document: bytes
    _: KW_ONLY
    client_id: int = 0
    seq: int = 0
    first_incomplete: int = 0


@dataclass(frozen=True, slots=True)
class Txn:
    """A multi-key transaction (raftkv.kv.txn): compares, then one of two branches."""

    body: TxnBody
    _: KW_ONLY
    client_id: int = 0
    seq: int = 0
    first_incomplete: int = 0


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """A new lease of ``ttl_ms``; ``lease_id`` 0 lets the state machine choose it."""

    lease_id: int
    ttl_ms: int
    _: KW_ONLY
    client_id: int = 0
    seq: int = 0
    first_incomplete: int = 0


@dataclass(frozen=True, slots=True)
class LeaseRevoke:
    """End a lease now and delete its keys."""

    lease_id: int
    _: KW_ONLY
    client_id: int = 0
    seq: int = 0
    first_incomplete: int = 0


@dataclass(frozen=True, slots=True)
class LeaseKeepAlive:
    """Start a lease's TTL again."""

    lease_id: int
    _: KW_ONLY
    client_id: int = 0
    seq: int = 0
    first_incomplete: int = 0


@dataclass(frozen=True, slots=True)
class LeaseCheckpoint:
    """The leader's record of the milliseconds left on some leases, as ``(id, ms)``
    pairs in increasing id order (untagged: only a leader proposes it)."""

    remaining: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class LeaseExpire:
    """The leader found a lease run out: end it, unless it was renewed after the
    renewal at ``renewed_index`` (untagged: only a leader proposes it)."""

    lease_id: int
    renewed_index: int


@dataclass(frozen=True, slots=True)
class LeaseKeepAliveMany:
    """Start the TTL of each of these leases again (ids strictly increasing, at most
    MAX_KEEP_ALIVE_BATCH): the streaming keep-alive's batch, untagged (renewing twice
    is harmless). Gone leases are skipped and reported as such."""

    lease_ids: tuple[int, ...]


LeaseCommand: TypeAlias = (
    LeaseGrant | LeaseRevoke | LeaseKeepAlive | LeaseCheckpoint | LeaseExpire | LeaseKeepAliveMany
)
Command: TypeAlias = Put | Delete | DeletePrefix | AuthChange | Txn | LeaseCommand

# A decoded payload as plain fields, for the apply path (no command object is built):
# (opcode, client_id, seq, first_incomplete, key or prefix, value, prev_revision).
RawCommand: TypeAlias = tuple[int, int, int, int, bytes, bytes, int | None]


def _check_u64(name: str, value: object) -> int:
    if type(value) is not int or not 0 <= value <= _U64_MAX:
        raise ValueError(f"{name} must be an int in [0, 2**64), got {value!r}")
    return value


def _check_bytes(name: str, value: object) -> bytes:
    if type(value) is not bytes:
        raise ValueError(f"{name} must be bytes, got {type(value).__name__}")
    return value


def _check_tag(client_id: int, seq: int, first_incomplete: int) -> None:
    _check_u64("client_id", client_id)
    _check_u64("seq", seq)
    _check_u64("first_incomplete", first_incomplete)
    if client_id == 0:
        if seq or first_incomplete:
            raise ValueError(
                "an untagged command (client_id 0) must have seq 0 and first_incomplete 0"
            )
    elif first_incomplete > seq:
        raise ValueError(f"first_incomplete {first_incomplete} exceeds seq {seq}")


def _prev_fields(prev_revision: int | None) -> tuple[int, int]:
    if prev_revision is None:
        return 0, 0
    return _FLAG_HAS_PREV, _check_u64("prev_revision", prev_revision)


def encode_plain_put(
    key: bytes,
    value: bytes,
    prev_revision: int | None,
    client_id: int,
    seq: int,
    first_incomplete: int,
) -> bytes | None:
    """``encode_command(Put(...))`` of a put without lease or TTL, without building the
    Put and checking it field by field (every client write of the common form passes
    here); None when a field is one ``encode_command`` would refuse, so that the caller
    gets its error from there."""
    if not key or len(key) > 0xFFFFFFFF:
        return None
    if client_id:
        if not 0 <= first_incomplete <= seq < 2**64 or client_id >= 2**64:
            return None
    elif seq or first_incomplete or client_id < 0:
        return None
    if prev_revision is None:
        flags, prev = 0, 0
    elif 0 <= prev_revision < 2**64:
        flags, prev = _FLAG_HAS_PREV, prev_revision
    else:
        return None
    return b"".join(
        (
            _HEADER.pack(FORMAT_VERSION, OP_PUT, client_id, seq, first_incomplete),
            _PUT.pack(flags, prev, len(key)),
            key,
            value,
        )
    )


def encode_command(cmd: Command) -> bytes:
    """Encode ``cmd`` as a log-entry payload.

    Raises ValueError if a field is out of range (negative or above 2**64 - 1, an empty
    key, seq/first_incomplete set on an untagged command, first_incomplete > seq) and
    TypeError if ``cmd`` is not a command.
    """
    if isinstance(cmd, Put):
        _check_tag(cmd.client_id, cmd.seq, cmd.first_incomplete)
        key = _check_bytes("key", cmd.key)
        value = _check_bytes("value", cmd.value)
        if not key:
            raise ValueError("key must not be empty")
        flags, prev = _prev_fields(cmd.prev_revision)
        if len(key) > 0xFFFFFFFF:
            raise ValueError("key longer than 2**32 - 1 bytes")
        lease = _check_u64("lease", cmd.lease)
        if lease >= 2**63:
            raise ValueError(f"lease must be below 2**63, got {lease}")
        ttl_ms = _check_u64("ttl_ms", cmd.ttl_ms)
        if lease and ttl_ms:
            raise ValueError("a put has a lease or a TTL, not both")
        if lease or ttl_ms:
            head = _HEADER.pack(
                FORMAT_VERSION, OP_PUT_LEASED, cmd.client_id, cmd.seq, cmd.first_incomplete
            )
            return b"".join(
                (head, _LEASED_PUT.pack(flags, prev, lease, ttl_ms, len(key)), key, value)
            )
        encoded = encode_plain_put(
            key, value, cmd.prev_revision, cmd.client_id, cmd.seq, cmd.first_incomplete
        )
        assert encoded is not None  # every field was checked above
        return encoded
    if isinstance(cmd, Delete):
        _check_tag(cmd.client_id, cmd.seq, cmd.first_incomplete)
        key = _check_bytes("key", cmd.key)
        if not key:
            raise ValueError("key must not be empty")
        flags, prev = _prev_fields(cmd.prev_revision)
        return b"".join(
            (
                _HEADER.pack(
                    FORMAT_VERSION, OP_DELETE, cmd.client_id, cmd.seq, cmd.first_incomplete
                ),
                _KEYED.pack(flags, prev),
                key,
            )
        )
    if isinstance(cmd, DeletePrefix):
        _check_tag(cmd.client_id, cmd.seq, cmd.first_incomplete)
        prefix = _check_bytes("prefix", cmd.prefix)
        return (
            _HEADER.pack(
                FORMAT_VERSION, OP_DELETE_PREFIX, cmd.client_id, cmd.seq, cmd.first_incomplete
            )
            + prefix
        )
    if isinstance(cmd, AuthChange):
        _check_tag(cmd.client_id, cmd.seq, cmd.first_incomplete)
        document = _check_bytes("document", cmd.document)
        return (
            _HEADER.pack(FORMAT_VERSION, OP_AUTH, cmd.client_id, cmd.seq, cmd.first_incomplete)
            + document
        )
    if isinstance(cmd, Txn):
        _check_tag(cmd.client_id, cmd.seq, cmd.first_incomplete)
        if not isinstance(cmd.body, TxnBody):
            raise TypeError(f"body must be a TxnBody, got {type(cmd.body).__name__}")
        try:
            body = encode_txn_body(cmd.body)
        except TxnBodyError as exc:
            raise ValueError(str(exc)) from None
        return (
            _HEADER.pack(FORMAT_VERSION, OP_TXN, cmd.client_id, cmd.seq, cmd.first_incomplete)
            + body
        )
    lease_body = _lease_body(cmd)
    if lease_body is not None:
        tag = (0, 0, 0)
        if isinstance(cmd, (LeaseGrant, LeaseRevoke, LeaseKeepAlive)):
            tag = (cmd.client_id, cmd.seq, cmd.first_incomplete)
            _check_tag(*tag)
        return _HEADER.pack(FORMAT_VERSION, OP_LEASE, *tag) + lease_body
    raise TypeError(f"not a command: {type(cmd).__name__}")


def _lease_id(value: object) -> int:
    lease_id = _check_u64("lease_id", value)
    if not 0 < lease_id < 2**63:
        raise ValueError(f"lease_id must be in [1, 2**63), got {lease_id}")
    return lease_id


def _lease_body(cmd: object) -> bytes | None:
    """The part of a Lease command after its header; None if ``cmd`` is none."""
    if isinstance(cmd, LeaseGrant):
        lease_id = _check_u64("lease_id", cmd.lease_id)
        if lease_id:
            _lease_id(lease_id)
        ttl_ms = _check_u64("ttl_ms", cmd.ttl_ms)
        if not ttl_ms:
            raise ValueError("ttl_ms must be positive")
        return _LEASE_KIND.pack(LEASE_GRANT) + _PAIR.pack(lease_id, ttl_ms)
    if isinstance(cmd, LeaseRevoke):
        return _LEASE_KIND.pack(LEASE_REVOKE) + _U64.pack(_lease_id(cmd.lease_id))
    if isinstance(cmd, LeaseKeepAlive):
        return _LEASE_KIND.pack(LEASE_KEEP_ALIVE) + _U64.pack(_lease_id(cmd.lease_id))
    if isinstance(cmd, LeaseCheckpoint):
        parts = [_LEASE_KIND.pack(LEASE_CHECKPOINT), _U32.pack(len(cmd.remaining))]
        previous = 0
        for lease_id, remaining_ms in cmd.remaining:
            if _lease_id(lease_id) <= previous:
                raise ValueError("checkpoint lease ids must strictly increase")
            parts.append(_PAIR.pack(lease_id, _check_u64("remaining_ms", remaining_ms)))
            previous = lease_id
        return b"".join(parts)
    if isinstance(cmd, LeaseExpire):
        renewed = _check_u64("renewed_index", cmd.renewed_index)
        return _LEASE_KIND.pack(LEASE_EXPIRE) + _PAIR.pack(_lease_id(cmd.lease_id), renewed)
    if isinstance(cmd, LeaseKeepAliveMany):
        ids = cmd.lease_ids
        if not 1 <= len(ids) <= MAX_KEEP_ALIVE_BATCH:
            raise ValueError(f"a keep-alive batch has 1 to {MAX_KEEP_ALIVE_BATCH} leases")
        previous = 0
        for lease_id in ids:
            if _lease_id(lease_id) <= previous:
                raise ValueError("a keep-alive batch's lease ids must strictly increase")
            previous = lease_id
        return b"".join(
            (_LEASE_KIND.pack(LEASE_KEEP_ALIVE_MANY), _U32.pack(len(ids)), *map(_U64.pack, ids))
        )
    return None


def encode_txn_command(
    body: bytes, *, client_id: int = 0, seq: int = 0, first_incomplete: int = 0
) -> bytes:
    """The Txn command for an already encoded ``body``, which must decode (ValueError
    says why not). A body that decodes is canonical (every field has one encoding), so
    it goes into the command as it came, without being encoded again."""
    _check_tag(client_id, seq, first_incomplete)
    try:
        decode_txn_body(body)
    except TxnBodyError as exc:
        raise ValueError(str(exc)) from None
    return _HEADER.pack(FORMAT_VERSION, OP_TXN, client_id, seq, first_incomplete) + body


def decode_raw(data: bytes | bytearray | memoryview) -> RawCommand:
    """Decode a payload into plain fields without building a command object.

    Returns ``(opcode, client_id, seq, first_incomplete, key, value, prev_revision)``;
    for Delete ``value`` is empty, for DeletePrefix ``key`` is the prefix (for AuthChange
    the document, for Txn its body, checked only when decoded), ``value`` is empty and
    ``prev_revision`` is None. Raises
    :class:`CommandDecodeError` on garbage.
    """
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise CommandDecodeError(f"payload must be bytes, got {type(data).__name__}")
        try:
            data = bytes(data)
        except (TypeError, ValueError, BufferError) as exc:
            raise CommandDecodeError(f"unreadable payload buffer: {exc}") from None
    size = len(data)
    if size < _HEADER_SIZE:
        raise CommandDecodeError(f"payload too short for a command header ({size} bytes)")
    version, op, client_id, seq, first_incomplete = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise CommandDecodeError(f"unknown command format version {version}")
    if client_id == 0:
        if seq or first_incomplete:
            raise CommandDecodeError("untagged command with a non-zero seq or first_incomplete")
    elif first_incomplete > seq:
        raise CommandDecodeError(f"first_incomplete {first_incomplete} exceeds seq {seq}")

    if op == OP_PUT:
        if size < _HEADER_SIZE + _PUT_SIZE:
            raise CommandDecodeError("truncated Put")
        flags, prev, key_len = _PUT.unpack_from(data, _HEADER_SIZE)
        start = _HEADER_SIZE + _PUT_SIZE
        end = start + key_len
        if key_len == 0:
            raise CommandDecodeError("Put with an empty key")
        if end > size:
            raise CommandDecodeError(f"Put key length {key_len} overruns the payload")
        return (
            op,
            client_id,
            seq,
            first_incomplete,
            data[start:end],
            data[end:],
            _decode_prev(flags, prev),
        )
    if op == OP_PUT_LEASED:
        if size < _HEADER_SIZE + _LEASED_PUT_SIZE:
            raise CommandDecodeError("truncated LeasedPut")
        flags, prev, lease, ttl_ms, key_len = _LEASED_PUT.unpack_from(data, _HEADER_SIZE)
        start = _HEADER_SIZE + _LEASED_PUT_SIZE
        end = start + key_len
        if key_len == 0:
            raise CommandDecodeError("LeasedPut with an empty key")
        if end > size:
            raise CommandDecodeError(f"LeasedPut key length {key_len} overruns the payload")
        if bool(lease) == bool(ttl_ms) or lease >= 2**63:
            raise CommandDecodeError("LeasedPut needs exactly one of a lease id and a TTL")
        return (
            op,
            client_id,
            seq,
            first_incomplete,
            data[start:end],
            LEASE_FIELDS.pack(lease, ttl_ms) + data[end:],
            _decode_prev(flags, prev),
        )
    if op == OP_DELETE:
        if size < _HEADER_SIZE + _KEYED_SIZE:
            raise CommandDecodeError("truncated Delete")
        flags, prev = _KEYED.unpack_from(data, _HEADER_SIZE)
        start = _HEADER_SIZE + _KEYED_SIZE
        if start == size:
            raise CommandDecodeError("Delete with an empty key")
        return (op, client_id, seq, first_incomplete, data[start:], b"", _decode_prev(flags, prev))
    if op == OP_LEASE:
        body = data[_HEADER_SIZE:]
        decode_lease_body(body, tagged=client_id != 0)
        return (op, client_id, seq, first_incomplete, body, b"", None)
    if op in (OP_DELETE_PREFIX, OP_AUTH, OP_TXN):
        return (op, client_id, seq, first_incomplete, data[_HEADER_SIZE:], b"", None)
    raise CommandDecodeError(f"unknown command opcode {op}")


def decode_lease_body(body: bytes, *, tagged: bool = False) -> LeaseCommand:
    """The Lease command whose body (after the header) is ``body``, untagged.
    CHECKPOINT and EXPIRE come only from a leader and must not be ``tagged``."""
    if not body:
        raise CommandDecodeError("Lease command without a kind")
    kind = body[0]
    size = len(body) - 1
    try:
        if kind == LEASE_GRANT and size == _PAIR.size:
            lease_id, ttl_ms = _PAIR.unpack_from(body, 1)
            if lease_id >= 2**63 or not ttl_ms:
                raise CommandDecodeError("LeaseGrant with a bad id or a zero TTL")
            return LeaseGrant(lease_id, ttl_ms)
        if kind in (LEASE_REVOKE, LEASE_KEEP_ALIVE) and size == _U64.size:
            (lease_id,) = _U64.unpack_from(body, 1)
            _lease_id(lease_id)
            return LeaseRevoke(lease_id) if kind == LEASE_REVOKE else LeaseKeepAlive(lease_id)
        if tagged:
            raise CommandDecodeError(f"Lease command kind {kind} is tagged or malformed")
        if kind == LEASE_EXPIRE and size == _PAIR.size:
            lease_id, renewed = _PAIR.unpack_from(body, 1)
            _lease_id(lease_id)
            return LeaseExpire(lease_id, renewed)
        if kind == LEASE_CHECKPOINT and size >= _U32.size:
            (count,) = _U32.unpack_from(body, 1)
            if size != _U32.size + count * _PAIR.size:
                raise CommandDecodeError("LeaseCheckpoint length does not match its count")
            pairs = tuple(_PAIR.iter_unpack(body[1 + _U32.size :]))
            previous = 0
            for lease_id, _ in pairs:
                if not previous < lease_id < 2**63:
                    raise CommandDecodeError("LeaseCheckpoint ids out of order")
                previous = lease_id
            return LeaseCheckpoint(pairs)
        if kind == LEASE_KEEP_ALIVE_MANY and size >= _U32.size:
            (count,) = _U32.unpack_from(body, 1)
            if not 1 <= count <= MAX_KEEP_ALIVE_BATCH or size != _U32.size + count * _U64.size:
                raise CommandDecodeError("LeaseKeepAliveMany length does not match its count")
            ids = tuple(lease_id for (lease_id,) in _U64.iter_unpack(body[1 + _U32.size :]))
            previous = 0
            for lease_id in ids:
                if not previous < lease_id < 2**63:
                    raise CommandDecodeError("LeaseKeepAliveMany ids out of order")
                previous = lease_id
            return LeaseKeepAliveMany(ids)
    except ValueError as exc:
        if isinstance(exc, CommandDecodeError):
            raise
        raise CommandDecodeError(str(exc)) from None
    raise CommandDecodeError(f"unknown or malformed Lease command kind {kind}")


def _decode_prev(flags: int, prev: int) -> int | None:
    if flags == _FLAG_HAS_PREV:
        return prev
    if flags == 0:
        if prev:
            raise CommandDecodeError("prev_revision set without its presence flag")
        return None
    raise CommandDecodeError(f"undefined flag bits 0x{flags:02x}")


def decode_command(data: bytes | bytearray | memoryview) -> Command:
    """Decode a payload made by :func:`encode_command`.

    Raises :class:`CommandDecodeError` (and nothing else) if ``data`` is not one.
    """
    op, client_id, seq, first_incomplete, key, value, prev = decode_raw(data)
    if op == OP_PUT:
        return Put(
            key, value, prev, client_id=client_id, seq=seq, first_incomplete=first_incomplete
        )
    if op == OP_PUT_LEASED:
        lease, ttl_ms = LEASE_FIELDS.unpack_from(value)
        return Put(
            key,
            value[LEASE_FIELDS.size :],
            prev,
            client_id=client_id,
            seq=seq,
            first_incomplete=first_incomplete,
            lease=lease,
            ttl_ms=ttl_ms,
        )
    if op == OP_LEASE:
        lease_cmd = decode_lease_body(key)
        if isinstance(lease_cmd, LeaseGrant):
            return LeaseGrant(
                lease_cmd.lease_id,
                lease_cmd.ttl_ms,
                client_id=client_id,
                seq=seq,
                first_incomplete=first_incomplete,
            )
        if isinstance(lease_cmd, (LeaseRevoke, LeaseKeepAlive)):
            return type(lease_cmd)(
                lease_cmd.lease_id, client_id=client_id, seq=seq, first_incomplete=first_incomplete
            )
        return lease_cmd
    if op == OP_DELETE:
        return Delete(key, prev, client_id=client_id, seq=seq, first_incomplete=first_incomplete)
    if op == OP_AUTH:
        return AuthChange(key, client_id=client_id, seq=seq, first_incomplete=first_incomplete)
    if op == OP_TXN:
        try:
            body = decode_txn_body(key)
        except TxnBodyError as exc:
            raise CommandDecodeError(f"bad transaction: {exc}") from None
        return Txn(body, client_id=client_id, seq=seq, first_incomplete=first_incomplete)
    return DeletePrefix(key, client_id=client_id, seq=seq, first_incomplete=first_incomplete)
