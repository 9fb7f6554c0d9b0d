"""Multi-key transactions: compares on any keys, then one of two lists of operations,
applied at one revision (docs/api.md, "Transactions").

A transaction's compares are all evaluated against the state before it; if every one
holds, its ``success`` operations run, else its ``failure`` ones, in order, each seeing
the effect of those before it. All of its writes share the revision of its log entry.
No key may be written twice by one branch (two puts or deletes of one key, or one under
a prefix the branch deletes): a watcher would otherwise see two changes of one key at
one revision, and etcd refuses the same.

The body of a Txn command (``raftkv.kv.commands``), integers little-endian, unsigned::

    u16 compares | compare...  | u16 success ops | op... | u16 failure ops | op...
    compare      u8 target | u8 operator | u32 key length | key
                 | VALUE: u32 length | bytes;  otherwise u64 number (EXISTS: 0 or 1;
                 LEASE: the key's lease id, 0 for none)
    op           u8 kind | u32 key length | key (the prefix for the prefix kinds)
                 | PUT: u32 value length | value;  LIST_PREFIX: u32 limit
                 | LEASED_PUT (kind 6, a PUT with a lease or a TTL): u32 value length
                   | value | u64 lease | u64 ttl_ms (exactly one of them non-zero)

The encoding is canonical, as the other commands' are: decoding rejects unknown codes,
truncation, trailing bytes, an empty key where a key is needed, an EXISTS compare other
than ==/!= against 0 or 1, a LIST_PREFIX limit outside 1..MAX_TXN_LIST_LIMIT, and a
branch that writes a key twice.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from raftkv.kv.results import KeyValue, TxnOpKind, TxnOpResult, TxnResult

__all__ = [
    "MAX_TXN_LIST_BYTES",
    "MAX_TXN_LIST_LIMIT",
    "Compare",
    "CompareOperator",
    "CompareTarget",
    "TxnBody",
    "TxnBodyError",
    "TxnOp",
    "TxnOpKind",
    "TxnOpResult",
    "TxnResult",
    "compare_holds",
    "decode_txn_body",
    "decode_txn_result",
    "encode_txn_body",
    "encode_txn_result",
    "write_conflict",
]

MAX_TXN_LIST_LIMIT: Final = 10_000
"""The most keys one LIST_PREFIX operation of a transaction returns."""
MAX_TXN_LIST_BYTES: Final = 8 * 1024 * 1024
"""The most bytes of keys and values the lists of one transaction return together: a
list that would pass it stops early with ``more``. Part of the replicated semantics
(every replica stops at the same key), so it is a constant, not a flag."""
_U16_MAX: Final = 0xFFFF
_U32_MAX: Final = 0xFFFFFFFF
_U64_MAX: Final = (1 << 64) - 1

_COUNT: Final = struct.Struct("<H")
_COMPARE_HEAD: Final = struct.Struct("<BBI")
_OP_HEAD: Final = struct.Struct("<BI")
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
_LEASE_FIELDS: Final = struct.Struct("<QQ")
_LEASED_PUT: Final = 6
"""The wire code of a PUT with a lease or a TTL (its result is a PUT's)."""


class TxnBodyError(ValueError):
    """A transaction body that is not valid (the message says why)."""


class CompareTarget(IntEnum):
    """What a compare looks at. A key that does not exist has version, create and mod
    revision 0 and no value (a VALUE compare on it does not hold)."""

    VALUE = 0
    VERSION = 1
    CREATE_REVISION = 2
    MOD_REVISION = 3
    EXISTS = 4
    LEASE = 5


class CompareOperator(IntEnum):
    EQUAL = 0
    NOT_EQUAL = 1
    LESS = 2
    GREATER = 3


_WRITES: Final = frozenset((TxnOpKind.PUT, TxnOpKind.DELETE, TxnOpKind.DELETE_PREFIX))


@dataclass(frozen=True, slots=True)
class Compare:
    """``target`` of ``key`` ``operator`` ``operand``: bytes for VALUE, else an int
    (EXISTS: 1 for "exists", 0 for "does not")."""

    key: bytes
    target: CompareTarget
    operator: CompareOperator
    operand: bytes | int


@dataclass(frozen=True, slots=True)
class TxnOp:
    """One operation: ``key`` is the prefix for DELETE_PREFIX and LIST_PREFIX (the empty
    prefix is every key); ``value``, ``lease`` and ``ttl_ms`` are a PUT's (as for a
    plain put: at most one of the last two); ``limit`` a LIST_PREFIX's."""

    kind: TxnOpKind
    key: bytes
    value: bytes = b""
    limit: int = 0
    lease: int = 0
    ttl_ms: int = 0


@dataclass(frozen=True, slots=True)
class TxnBody:
    compares: tuple[Compare, ...] = ()
    success: tuple[TxnOp, ...] = ()
    failure: tuple[TxnOp, ...] = ()


# -- checks -------------------------------------------------------------------------------


def _check_compare(compare: Compare) -> None:
    if not compare.key:
        raise TxnBodyError("a compare needs a key")
    if compare.target is CompareTarget.VALUE:
        if type(compare.operand) is not bytes:
            raise TxnBodyError("a value compare needs a value")
        return
    operand = compare.operand
    if type(operand) is not int or not 0 <= operand <= _U64_MAX:
        raise TxnBodyError(f"a {compare.target.name.lower()} compare needs a number")
    if compare.target is CompareTarget.EXISTS:
        if compare.operator not in (CompareOperator.EQUAL, CompareOperator.NOT_EQUAL):
            raise TxnBodyError("an exists compare can only be == or !=")
        if operand not in (0, 1):
            raise TxnBodyError("an exists compare is against true or false")


def _check_op(op: TxnOp) -> None:
    if op.kind in (TxnOpKind.PUT, TxnOpKind.DELETE, TxnOpKind.GET) and not op.key:
        raise TxnBodyError(f"a {op.kind.name.lower()} needs a key")
    if op.kind is not TxnOpKind.PUT and (op.value or op.lease or op.ttl_ms):
        raise TxnBodyError(f"a {op.kind.name.lower()} takes no value, lease or TTL")
    if op.lease and op.ttl_ms:
        raise TxnBodyError("a put has a lease or a TTL, not both")
    if not (0 <= op.lease < 2**63 and 0 <= op.ttl_ms <= _U64_MAX):
        raise TxnBodyError("a put's lease or TTL is out of range")
    if op.kind is TxnOpKind.LIST_PREFIX:
        if not 1 <= op.limit <= MAX_TXN_LIST_LIMIT:
            raise TxnBodyError(f"a list's limit must be between 1 and {MAX_TXN_LIST_LIMIT}")
    elif op.limit:
        raise TxnBodyError(f"a {op.kind.name.lower()} takes no limit")


def _shown(key: bytes) -> str:
    return repr(key.decode("utf-8", "backslashreplace"))


def write_conflict(ops: Sequence[TxnOp]) -> str | None:
    """Why one branch writes some key twice, or None when it does not."""
    # A dict, not a set: which key the message names must not depend on hash order.
    keys: dict[bytes, None] = {}
    prefixes: list[bytes] = []
    for op in ops:
        if op.kind is TxnOpKind.DELETE_PREFIX:
            for key in keys:
                if key.startswith(op.key):
                    return (
                        f"key {_shown(key)} is written twice: "
                        f"also under deleted prefix {_shown(op.key)}"
                    )
            prefixes.append(op.key)
        elif op.kind in _WRITES:
            if op.key in keys:
                return f"key {_shown(op.key)} is written twice"
            for prefix in prefixes:
                if op.key.startswith(prefix):
                    return (
                        f"key {_shown(op.key)} is written twice: "
                        f"also under deleted prefix {_shown(prefix)}"
                    )
            keys[op.key] = None
    return None


def _check_body(body: TxnBody) -> None:
    for compare in body.compares:
        _check_compare(compare)
    for branch in (body.success, body.failure):
        for op in branch:
            _check_op(op)
        why = write_conflict(branch)
        if why is not None:
            raise TxnBodyError(why)
    for name, items in (
        ("compares", body.compares),
        ("success operations", body.success),
        ("failure operations", body.failure),
    ):
        if len(items) > _U16_MAX:
            raise TxnBodyError(f"more than {_U16_MAX} {name}")


# -- evaluating -----------------------------------------------------------------------------


def compare_holds(compare: Compare, current: KeyValue | None, lease: int = 0) -> bool:
    """Whether ``compare`` holds for the key's ``current`` state (None: absent) and the
    ``lease`` it is attached to (0: none)."""
    target = compare.target
    if target is CompareTarget.LEASE:
        have: bytes | int = lease if current is not None else 0
    elif target is CompareTarget.VALUE:
        if current is None:
            return False
        have = current.value
    elif target is CompareTarget.EXISTS:
        have = 0 if current is None else 1
    elif current is None:
        have = 0
    elif target is CompareTarget.VERSION:
        have = current.version
    elif target is CompareTarget.CREATE_REVISION:
        have = current.create_revision
    else:
        have = current.mod_revision
    want = compare.operand
    operator = compare.operator
    if operator is CompareOperator.EQUAL:
        return have == want
    if operator is CompareOperator.NOT_EQUAL:
        return have != want
    if operator is CompareOperator.LESS:
        return have < want  # type: ignore[operator]  # both bytes or both int (checked)
    return have > want  # type: ignore[operator]


# -- encoding -------------------------------------------------------------------------------


def _encode_ops(ops: Iterable[TxnOp], parts: list[bytes]) -> None:
    for op in ops:
        leased = op.kind is TxnOpKind.PUT and bool(op.lease or op.ttl_ms)
        parts.append(_OP_HEAD.pack(_LEASED_PUT if leased else op.kind, len(op.key)))
        parts.append(op.key)
        if op.kind is TxnOpKind.PUT:
            parts.append(_U32.pack(len(op.value)))
            parts.append(op.value)
            if leased:
                parts.append(_LEASE_FIELDS.pack(op.lease, op.ttl_ms))
        elif op.kind is TxnOpKind.LIST_PREFIX:
            parts.append(_U32.pack(op.limit))


def encode_txn_body(body: TxnBody) -> bytes:
    """The canonical bytes of ``body``; raises TxnBodyError if it is not valid."""
    _check_body(body)
    parts = [_COUNT.pack(len(body.compares))]
    for compare in body.compares:
        if len(compare.key) > _U32_MAX:
            raise TxnBodyError("key longer than 2**32 - 1 bytes")
        parts.append(_COMPARE_HEAD.pack(compare.target, compare.operator, len(compare.key)))
        parts.append(compare.key)
        operand = compare.operand
        if isinstance(operand, bytes):
            parts.append(_U32.pack(len(operand)))
            parts.append(operand)
        else:
            parts.append(_U64.pack(operand))
    parts.append(_COUNT.pack(len(body.success)))
    _encode_ops(body.success, parts)
    parts.append(_COUNT.pack(len(body.failure)))
    _encode_ops(body.failure, parts)
    return b"".join(parts)


class _Reader:
    __slots__ = ("data", "offset")

    def __init__(self, data: bytes | memoryview, offset: int) -> None:
        self.data = data
        self.offset = offset

    def take(self, layout: struct.Struct, what: str) -> tuple[int, ...]:
        end = self.offset + layout.size
        if end > len(self.data):
            raise TxnBodyError(f"truncated transaction ({what})")
        values = layout.unpack_from(self.data, self.offset)
        self.offset = end
        return values

    def bytes(self, length: int, what: str) -> bytes:
        end = self.offset + length
        if end > len(self.data):
            raise TxnBodyError(f"{what} length {length} overruns the transaction")
        chunk = bytes(self.data[self.offset : end])
        self.offset = end
        return chunk


def _enum(kind: type[IntEnum], code: int, what: str) -> IntEnum:
    try:
        return kind(code)
    except ValueError:
        raise TxnBodyError(f"unknown {what} code {code}") from None


def _decode_ops(reader: _Reader) -> tuple[TxnOp, ...]:
    (count,) = reader.take(_COUNT, "operation count")
    ops = []
    for _ in range(count):
        code, key_length = reader.take(_OP_HEAD, "operation")
        leased = code == _LEASED_PUT
        kind = TxnOpKind.PUT if leased else TxnOpKind(_enum(TxnOpKind, code, "operation"))
        key = reader.bytes(key_length, "key")
        value = b""
        limit = lease = ttl_ms = 0
        if kind is TxnOpKind.PUT:
            (value_length,) = reader.take(_U32, "value length")
            value = reader.bytes(value_length, "value")
            if leased:
                lease, ttl_ms = reader.take(_LEASE_FIELDS, "lease")
                if not (lease or ttl_ms):
                    raise TxnBodyError("a leased put with neither a lease nor a TTL")
        elif kind is TxnOpKind.LIST_PREFIX:
            (limit,) = reader.take(_U32, "limit")
        ops.append(TxnOp(kind, key, value, limit, lease, ttl_ms))
    return tuple(ops)


def decode_txn_body(data: bytes, offset: int = 0) -> TxnBody:
    """The body encoded in ``data`` from ``offset`` to its end; raises TxnBodyError."""
    reader = _Reader(data, offset)
    (count,) = reader.take(_COUNT, "compare count")
    compares = []
    for _ in range(count):
        target_code, operator_code, key_length = reader.take(_COMPARE_HEAD, "compare")
        target = CompareTarget(_enum(CompareTarget, target_code, "compare target"))
        operator = CompareOperator(_enum(CompareOperator, operator_code, "compare operator"))
        key = reader.bytes(key_length, "key")
        operand: bytes | int
        if target is CompareTarget.VALUE:
            (length,) = reader.take(_U32, "value length")
            operand = reader.bytes(length, "value")
        else:
            (operand,) = reader.take(_U64, "number")
        compares.append(Compare(key, target, operator, operand))
    success = _decode_ops(reader)
    failure = _decode_ops(reader)
    if reader.offset != len(data):
        raise TxnBodyError(f"{len(data) - reader.offset} bytes after the transaction")
    body = TxnBody(tuple(compares), success, failure)
    _check_body(body)
    return body


# -- results --------------------------------------------------------------------------------
#
# A TxnResult, in a snapshot's client table and in the reply to the worker:
#
#     u8 succeeded | u32 results | result...
#     result   u8 kind | u8 has_prev | u8 more | u64 deleted | u32 items
#              | prev (if has_prev) | item...
#     prev, item   u32 key length | u32 value length | key | u64 create_revision
#                  | u64 mod_revision | u64 version | value

_RESULT_HEAD: Final = struct.Struct("<BI")
_OP_RESULT: Final = struct.Struct("<BBBQI")
_KV_LENGTHS: Final = struct.Struct("<II")
_KV_META: Final = struct.Struct("<QQQ")


def _encode_kv(kv: KeyValue, parts: list[bytes]) -> None:
    parts.append(_KV_LENGTHS.pack(len(kv.key), len(kv.value)))
    parts.append(kv.key)
    parts.append(_KV_META.pack(kv.create_revision, kv.mod_revision, kv.version))
    parts.append(kv.value)


def encode_txn_result(result: TxnResult) -> bytes:
    parts = [_RESULT_HEAD.pack(result.succeeded, len(result.results))]
    for op in result.results:
        prev = op.prev
        parts.append(_OP_RESULT.pack(op.kind, prev is not None, op.more, op.deleted, len(op.items)))
        if prev is not None:
            _encode_kv(prev, parts)
        for item in op.items:
            _encode_kv(item, parts)
    return b"".join(parts)


def _decode_kv(reader: _Reader) -> KeyValue:
    key_length, value_length = reader.take(_KV_LENGTHS, "key-value")
    key = reader.bytes(key_length, "key")
    create, mod, version = reader.take(_KV_META, "revisions")
    return KeyValue(key, reader.bytes(value_length, "value"), create, mod, version)


def decode_txn_result(data: bytes | memoryview, offset: int = 0) -> tuple[TxnResult, int]:
    """The result encoded in ``data`` at ``offset``, and the offset after it; raises
    TxnBodyError when it is not one."""
    reader = _Reader(data, offset)
    succeeded, count = reader.take(_RESULT_HEAD, "result")
    if succeeded not in (0, 1):
        raise TxnBodyError(f"bad succeeded flag {succeeded}")
    results = []
    for _ in range(count):
        code, has_prev, more, deleted, items = reader.take(_OP_RESULT, "operation result")
        kind = TxnOpKind(_enum(TxnOpKind, code, "operation"))
        if has_prev not in (0, 1) or more not in (0, 1):
            raise TxnBodyError("bad flag in an operation result")
        prev = _decode_kv(reader) if has_prev else None
        results.append(
            TxnOpResult(
                kind, prev, deleted, tuple(_decode_kv(reader) for _ in range(items)), bool(more)
            )
        )
    return TxnResult(bool(succeeded), tuple(results)), reader.offset
