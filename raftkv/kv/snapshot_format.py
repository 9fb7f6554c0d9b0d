"""The state machine's snapshot format: framing, checksum and record layouts.

A snapshot is ``body | sha256(body)`` (32 bytes). All integers are little-endian and
unsigned. The body is::

    header          8s magic b"RAFTKVSM" | u8 format version (2 or 3) | u64 applied index
                    | u64 key count
    key records     key count times, in strictly increasing key order:
                    u32 key length | u32 value length | key | u64 create_revision
                    | u64 mod_revision | u64 version | value
    client count    u64
    client records  in least-recently-used order (increasing last index):
                    u64 client_id | u64 floor | u64 last index | u32 result count
                    | results, in increasing seq order
    result          u64 seq | u8 status | u8 parts | u64 index | u64 revision
                    | u64 current_revision | u64 deleted | u32 error length
                    | error (UTF-8) | key record of the previous key-value if parts
                    has bit 0 | a transaction's result (raftkv.kv.txn) if it has bit 1
                    | u64 lease id | u64 ttl_ms if it has bit 2 (a lease's answer)
    auth tables     u32 length | the access-control tables as canonical JSON
                    (see raftkv.kv.auth_tables); absent in version 1
    leases          only in version 3: the lease table (raftkv.kv.leases)

Version 1 snapshots (written before access control existed) still load: their auth
tables are the empty ones, with auth off. Version 3 adds the leases and allows bits 1
and 2 of a result's ``parts``; a snapshot is written as version 3 only when its state
has leases (or ever had) or holds such a result, so a node that knows only version 2
still reads every other snapshot, and refuses these by their version rather than
misreading them.

Nothing in the body depends on hash-table order, insertion history or the platform, so
equal states serialize to equal bytes and the sha256 of the body is the state hash.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from typing import Final

from raftkv.kv.results import ApplyResult, KeyValue, LeaseGrant, Status
from raftkv.kv.txn import TxnBodyError, TxnResult, decode_txn_result, encode_txn_result

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "Reader",
    "SnapshotFormatError",
    "body_digest",
    "seal",
    "unseal",
]

MAGIC: Final = b"RAFTKVSM"
FORMAT_VERSION: Final = 2
TXN_FORMAT_VERSION: Final = 3
"""The version of a snapshot whose client table holds a transaction's result."""
READABLE_VERSIONS: Final = (1, 2, 3)
_PREV_PART: Final = 1
_TXN_PART: Final = 2
_LEASE_PART: Final = 4
DIGEST_SIZE: Final = 32

HEADER: Final = struct.Struct("<8sBQQ")
KEY_LENGTHS: Final = struct.Struct("<II")
META: Final = struct.Struct("<QQQ")
"""create_revision, mod_revision, version: also the prefix of each stored record."""
META_SIZE: Final = META.size
U64: Final = struct.Struct("<Q")
U32: Final = struct.Struct("<I")
CLIENT: Final = struct.Struct("<QQQI")
RESULT: Final = struct.Struct("<QBBQQQQI")
LEASE_ANSWER: Final = struct.Struct("<QQ")


class SnapshotFormatError(ValueError):
    """Snapshot bytes are corrupt, truncated, of an unknown version or not canonical."""


def seal(chunks: list[bytes]) -> bytes:
    """Join the body ``chunks`` and append the body's checksum."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    chunks.append(h.digest())
    return b"".join(chunks)


def unseal(data: bytes) -> memoryview:
    """Check the checksum and return the body; raise SnapshotFormatError if it is bad."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SnapshotFormatError(f"snapshot must be bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    if len(view) < HEADER.size + DIGEST_SIZE:
        raise SnapshotFormatError(f"snapshot too short ({len(view)} bytes)")
    body = view[:-DIGEST_SIZE]
    if hashlib.sha256(body).digest() != view[-DIGEST_SIZE:]:
        raise SnapshotFormatError("snapshot checksum mismatch")
    return body


def body_digest(chunks: Iterable[bytes]) -> str:
    """Hex sha256 of the concatenation of ``chunks`` (the body, streamed)."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def kv_record(key: bytes, stored: bytes) -> tuple[bytes, bytes, bytes]:
    """The key record of ``key`` whose stored form is ``META | value``."""
    return KEY_LENGTHS.pack(len(key), len(stored) - META_SIZE), key, stored


def result_record(seq: int, result: ApplyResult) -> bytes:
    error = result.error.encode()
    prev = result.prev
    parts = [
        RESULT.pack(
            seq,
            result.status,
            (_PREV_PART if prev is not None else 0)
            | (_TXN_PART if result.txn else 0)
            | (_LEASE_PART if result.lease else 0),
            result.entry_index,
            result.revision,
            result.current_revision,
            result.deleted,
            len(error),
        ),
        error,
    ]
    if prev is not None:
        key, value, create, mod, version = prev
        parts += (
            KEY_LENGTHS.pack(len(key), len(value)),
            key,
            META.pack(create, mod, version),
            value,
        )
    if result.txn is not None:
        parts.append(encode_txn_result(result.txn))
    if result.lease is not None:
        parts.append(LEASE_ANSWER.pack(*result.lease))
    return b"".join(parts)


class Reader:
    """A bounds-checked cursor over a snapshot body."""

    __slots__ = ("_data", "_pos", "version")

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._pos = 0
        self.version = 0
        """The format version, once :meth:`header` has read it."""

    def struct(self, layout: struct.Struct) -> tuple[int, ...]:
        pos = self._pos
        end = pos + layout.size
        if end > len(self._data):
            raise SnapshotFormatError(f"snapshot truncated at offset {pos}")
        self._pos = end
        fields: tuple[int, ...] = layout.unpack_from(self._data, pos)
        return fields

    def take(self, size: int) -> bytes:
        pos = self._pos
        end = pos + size
        if end > len(self._data):
            raise SnapshotFormatError(f"snapshot truncated at offset {pos}")
        self._pos = end
        return bytes(self._data[pos:end])

    def header(self) -> tuple[int, int]:
        """Check magic and version; return (applied index, key count)."""
        if len(self._data) < HEADER.size:
            raise SnapshotFormatError("snapshot truncated in its header")
        magic, version, applied, count = HEADER.unpack_from(self._data, 0)
        if magic != MAGIC:
            raise SnapshotFormatError("not a raftkv state machine snapshot (bad magic)")
        if version not in READABLE_VERSIONS:
            raise SnapshotFormatError(f"unsupported snapshot format version {version}")
        self.version = version
        self._pos = HEADER.size
        return applied, count

    def key_record(self) -> tuple[bytes, bytes]:
        """Read one key record; return (key, stored form ``META | value``)."""
        key_len, value_len = self.struct(KEY_LENGTHS)
        key = self.take(key_len)
        stored = self.take(META_SIZE + value_len)
        return key, stored

    def result(self) -> tuple[int, ApplyResult]:
        seq, status, present, index, revision, current, deleted, error_len = self.struct(RESULT)
        try:
            error = self.take(error_len).decode()
            status_value = Status(status)
        except ValueError as exc:  # UnicodeDecodeError is a ValueError
            raise SnapshotFormatError(f"bad result record: {exc}") from None
        known = _PREV_PART
        if self.version >= TXN_FORMAT_VERSION:
            known |= _TXN_PART | _LEASE_PART
        if present & ~known:
            raise SnapshotFormatError(f"bad result parts flag {present}")
        prev: KeyValue | None = None
        if present & _PREV_PART:
            key, stored = self.key_record()
            create, mod, version = META.unpack_from(stored)
            prev = KeyValue(key, stored[META_SIZE:], create, mod, version)
        txn: TxnResult | None = None
        if present & _TXN_PART:
            try:
                txn, self._pos = decode_txn_result(self._data, self._pos)
            except TxnBodyError as exc:
                raise SnapshotFormatError(f"bad transaction result: {exc}") from None
        lease: LeaseGrant | None = None
        if present & _LEASE_PART:
            lease = LeaseGrant(*self.struct(LEASE_ANSWER))
        return seq, ApplyResult(
            status_value, index, revision, prev, current, deleted, error, txn, lease
        )

    def at_end(self) -> bool:
        return self._pos == len(self._data)
