"""Transactions for the HTTP clients (``Client.txn``, ``AsyncClient.txn``): a typed
builder for the compares and operations of ``POST /txn``, the JSON document they make,
and the typed results of the answer (docs/api.md, "Transactions"; docs/client.md).

A transaction is one write: every compare is evaluated against the store as it is
before the transaction, then the operations of ``success`` run if all of them hold, or
those of ``failure`` if one does not, in order, all at one revision. So a
read-check-write that ``cas`` can only do on one key works on several, and nobody can
write in between.

The builder makes only well-formed documents, and so checks only what it can see: the
types, the operators, the numbers. What depends on the server (key, value and size
limits, the number of operations, a key written twice by one branch, a ``list`` limit
out of range) is the server's to check: it refuses the transaction with a 400 or 413,
raised as ``BadRequestError``, as for the other requests.

Keys, prefixes and values are ``str`` or ``bytes``. A ``str`` value is stored as UTF-8;
a ``str`` key as the clients' keys are (UTF-8, with the bytes of a key listed from the
store that is not UTF-8 kept as surrogates, so that it names the same key again). In the
document, bytes that are not UTF-8 go under the same name with ``_base64`` appended,
exactly as the answers write them.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from raftkv.client.answers import KeyValue, bool_field, int_field, key_value
from raftkv.client.leases import check_lease_id, check_ttl
from raftkv.wire.errors import RaftkvError
from raftkv.wire.protocol import DEFAULT_LIST_LIMIT

__all__ = [
    "Compare",
    "CompareOperator",
    "CompareTarget",
    "TxnDeletePrefixResult",
    "TxnDeleteResult",
    "TxnGetResult",
    "TxnListResult",
    "TxnOp",
    "TxnOpKind",
    "TxnOpResult",
    "TxnPutResult",
    "TxnResponse",
    "parse_txn_response",
    "txn_document",
]

CompareOperator = Literal["==", "!=", "<", ">"]
CompareTarget = Literal["value", "version", "create_revision", "mod_revision", "exists", "lease"]
TxnOpKind = Literal["put", "delete", "delete_prefix", "get", "list"]

_OPERATORS: Final[tuple[str, ...]] = get_args(CompareOperator)
_PREFIX_KINDS: Final = frozenset(("delete_prefix", "list"))


# -- the builder ----------------------------------------------------------------------------


def _key_bytes(key: str | bytes, name: str) -> bytes:
    if isinstance(key, str):
        # As the clients send a key: a key read from the store that is not UTF-8 comes
        # back as a str with its bytes kept as surrogates, and names the same key here.
        return key.encode("utf-8", "surrogateescape")
    if isinstance(key, bytes | bytearray | memoryview):
        return bytes(key)
    raise TypeError(f"{name} must be str or bytes, got {type(key).__name__}")


def _value_bytes(value: str | bytes) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"value must be str or bytes, got {type(value).__name__}")


def _check_operator(operator: str, allowed: tuple[str, ...] = _OPERATORS) -> None:
    if operator not in allowed:
        raise ValueError(f"operator must be one of {', '.join(allowed)}, got {operator!r}")


def _check_number(name: str, number: int) -> None:
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise ValueError(f"{name} must be a non-negative int, got {number!r}")


def _text_or_base64(name: str, data: bytes) -> dict[str, str]:
    """``{name: text}``, or ``{name_base64: ...}`` for bytes that are not UTF-8: how the
    API reads (and writes) a key, a prefix or a value."""
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(data).decode("ascii")}


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction, made with the class methods: ``Compare.value(
    key, "==", "blue")``, ``Compare.mod_revision(key, "<", 42)``, ``Compare.exists(key,
    False)``. A key that does not exist has version and revisions 0 and no value, so a
    ``value`` compare on it never holds (not even ``!=``)."""

    key: bytes
    target: CompareTarget
    operator: CompareOperator
    operand: bytes | int | bool
    """The value (bytes) for ``value``, a number for the revisions and the version, a
    bool for ``exists``."""

    @classmethod
    def value(cls, key: str | bytes, operator: CompareOperator, value: str | bytes) -> Compare:
        """The key's value against ``value``, byte by byte (``<`` and ``>``: in
        lexicographic order of the bytes)."""
        _check_operator(operator)
        return cls(_key_bytes(key, "key"), "value", operator, _value_bytes(value))

    @classmethod
    def version(cls, key: str | bytes, operator: CompareOperator, version: int) -> Compare:
        """The number of writes since the key was created (0: it does not exist)."""
        _check_operator(operator)
        _check_number("version", version)
        return cls(_key_bytes(key, "key"), "version", operator, version)

    @classmethod
    def create_revision(cls, key: str | bytes, operator: CompareOperator, revision: int) -> Compare:
        """The revision that created the key (0: it does not exist)."""
        _check_operator(operator)
        _check_number("revision", revision)
        return cls(_key_bytes(key, "key"), "create_revision", operator, revision)

    @classmethod
    def mod_revision(cls, key: str | bytes, operator: CompareOperator, revision: int) -> Compare:
        """The revision that last wrote the key (0: it does not exist): ``==`` the
        revision read earlier is the compare-and-set condition."""
        _check_operator(operator)
        _check_number("revision", revision)
        return cls(_key_bytes(key, "key"), "mod_revision", operator, revision)

    @classmethod
    def exists(cls, key: str | bytes, exists: bool = True) -> Compare:
        """Whether the key exists (``exists=False``: that it does not)."""
        if not isinstance(exists, bool):
            raise TypeError(f"exists must be a bool, got {type(exists).__name__}")
        return cls(_key_bytes(key, "key"), "exists", "==", exists)

    @classmethod
    def lease(cls, key: str | bytes, operator: CompareOperator, lease_id: int) -> Compare:
        """The id of the lease the key is attached to (0: none, or no such key)."""
        _check_operator(operator)
        _check_number("lease_id", lease_id)
        return cls(_key_bytes(key, "key"), "lease", operator, lease_id)

    def to_json(self) -> dict[str, Any]:
        """The compare as the request document writes it."""
        document: dict[str, Any] = {
            **_text_or_base64("key", self.key),
            "target": self.target,
            "op": self.operator,
        }
        if isinstance(self.operand, bytes):
            document.update(_text_or_base64("value", self.operand))
        else:
            document["value"] = self.operand
        return document


@dataclass(frozen=True)
class TxnOp:
    """One operation of a branch, made with the class methods: ``TxnOp.put(key,
    value)``, ``.delete(key)``, ``.delete_prefix(prefix)``, ``.get(key)``,
    ``.list(prefix, limit=...)``. Each sees what the operations before it did."""

    kind: TxnOpKind
    key: bytes
    """The key; for ``delete_prefix`` and ``list``, the prefix ("": every key)."""
    value: bytes | None = None
    """``put`` only."""
    limit: int | None = None
    """``list`` only: the most keys it returns (1..10000)."""
    ttl: float | None = None
    """``put`` only: the key expires that many seconds after the transaction."""
    lease: int | None = None
    """``put`` only: the lease the key is attached to."""

    @classmethod
    def put(
        cls,
        key: str | bytes,
        value: str | bytes,
        *,
        ttl: float | None = None,
        lease: int | None = None,
    ) -> TxnOp:
        """Write ``value`` to ``key``; its result carries the key-value it overwrote.
        ``ttl`` or ``lease`` as for ``Client.put``."""
        if ttl is not None and lease is not None:
            raise ValueError("a put has a ttl or a lease, not both")
        return cls(
            "put",
            _key_bytes(key, "key"),
            _value_bytes(value),
            ttl=None if ttl is None else check_ttl(ttl),
            lease=None if lease is None else check_lease_id(lease),
        )

    @classmethod
    def delete(cls, key: str | bytes) -> TxnOp:
        """Delete ``key``; deleting a key that does not exist is no error (0 deleted)."""
        return cls("delete", _key_bytes(key, "key"))

    @classmethod
    def delete_prefix(cls, prefix: str | bytes) -> TxnOp:
        """Delete every key that starts with ``prefix`` ("": every key in the store)."""
        return cls("delete_prefix", _key_bytes(prefix, "prefix"))

    @classmethod
    def get(cls, key: str | bytes) -> TxnOp:
        """Read ``key``, as of this point of the transaction."""
        return cls("get", _key_bytes(key, "key"))

    @classmethod
    def list(cls, prefix: str | bytes = "", *, limit: int = DEFAULT_LIST_LIMIT) -> TxnOp:
        """Read up to ``limit`` keys starting with ``prefix``, sorted by key; the result
        says whether there were ``more``."""
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit must be an int, got {type(limit).__name__}")
        return cls("list", _key_bytes(prefix, "prefix"), limit=limit)

    def to_json(self) -> dict[str, Any]:
        """The operation as the request document writes it: ``{kind: {fields}}``."""
        name = "prefix" if self.kind in _PREFIX_KINDS else "key"
        fields: dict[str, Any] = _text_or_base64(name, self.key)
        if self.kind == "put":
            assert self.value is not None
            fields.update(_text_or_base64("value", self.value))
            if self.ttl is not None:
                fields["ttl"] = self.ttl
            if self.lease is not None:
                fields["lease"] = self.lease
        elif self.kind == "list":
            fields["limit"] = DEFAULT_LIST_LIMIT if self.limit is None else self.limit
        return {self.kind: fields}


def _checked(items: Sequence[Any], kind: type[Any], name: str) -> list[Any]:
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise TypeError(f"{name} must be a sequence of {kind.__name__}")
    for item in items:
        if not isinstance(item, kind):
            raise TypeError(
                f"{name} must hold {kind.__name__} objects (made with "
                f"{kind.__name__}.<kind>(...)), got {type(item).__name__}"
            )
    return list(items)


def txn_document(
    compares: Sequence[Compare] = (),
    success: Sequence[TxnOp] = (),
    failure: Sequence[TxnOp] = (),
) -> dict[str, Any]:
    """The request document of ``POST /txn`` for these compares and branches (what
    ``Client.txn`` sends; ``json.dumps`` it to send it another way)."""
    return {
        "compare": [c.to_json() for c in _checked(compares, Compare, "compares")],
        "success": [op.to_json() for op in _checked(success, TxnOp, "success")],
        "failure": [op.to_json() for op in _checked(failure, TxnOp, "failure")],
    }


# -- the results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TxnPutResult:
    """A ``put``'s result: the key-value it overwrote, None if it created the key."""

    prev: KeyValue | None


@dataclass(frozen=True)
class TxnDeleteResult:
    """A ``delete``'s result: ``deleted`` is 1, with the key-value it deleted in
    ``prev``, or 0 when the key did not exist."""

    deleted: int
    prev: KeyValue | None


@dataclass(frozen=True)
class TxnDeletePrefixResult:
    """A ``delete_prefix``'s result: how many keys it deleted."""

    deleted: int


@dataclass(frozen=True)
class TxnGetResult:
    """A ``get``'s result: the key-value, None when the key does not exist."""

    kv: KeyValue | None

    @property
    def found(self) -> bool:
        return self.kv is not None


@dataclass(frozen=True)
class TxnListResult:
    """A ``list``'s result: the keys, sorted, and whether the limit left some out."""

    items: tuple[KeyValue, ...]
    more: bool


TxnOpResult = TxnPutResult | TxnDeleteResult | TxnDeletePrefixResult | TxnGetResult | TxnListResult


@dataclass(frozen=True)
class TxnResponse:
    """A transaction's answer. ``succeeded``: every compare held and ``success`` ran;
    False: ``failure`` ran (a transaction whose compares fail is no error). ``revision``
    (== ``index``) is the transaction's revision, the ``mod_revision`` of everything it
    wrote; ``term`` the Raft term of its entry. ``results`` has one entry per operation
    of the branch that ran, in order, of the type named after the operation."""

    succeeded: bool
    revision: int
    index: int
    term: int
    results: tuple[TxnOpResult, ...]


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RaftkvError(f"unexpected answer to a transaction: {where} is not an object")
    return value


def _prev(fields: dict[str, Any]) -> KeyValue | None:
    prev = fields.get("prev")
    return None if prev is None else key_value(_object(prev, "prev"))


def _op_result(entry: object, where: str) -> tuple[str, TxnOpResult]:
    entry = _object(entry, where)
    if len(entry) != 1:
        raise RaftkvError(f"unexpected answer to a transaction: {where} names no one operation")
    ((name, inner),) = entry.items()
    fields = _object(inner, f"{where}.{name}")
    result: TxnOpResult
    if name == "put":
        result = TxnPutResult(_prev(fields))
    elif name == "delete":
        result = TxnDeleteResult(int_field(fields, "deleted"), _prev(fields))
    elif name == "delete_prefix":
        result = TxnDeletePrefixResult(int_field(fields, "deleted"))
    elif name == "get":
        found = bool_field(fields, "found")
        result = TxnGetResult(key_value(_object(fields.get("kv"), "kv")) if found else None)
    elif name == "list":
        items = fields.get("items")
        if not isinstance(items, list):
            raise RaftkvError("unexpected answer to a transaction: a list without items")
        kvs = tuple(key_value(_object(item, "an item")) for item in items)
        result = TxnListResult(kvs, bool_field(fields, "more"))
    else:
        raise RaftkvError(f"unexpected answer to a transaction: unknown result {name!r}")
    return name, result


def parse_txn_response(
    document: dict[str, Any],
    success: Sequence[TxnOp] | None = None,
    failure: Sequence[TxnOp] | None = None,
) -> TxnResponse:
    """The typed form of ``POST /txn``'s JSON answer. Given the branches that were
    sent, also checks that the results are those of the branch that ran, one per
    operation, in order (RaftkvError if not)."""
    succeeded = bool_field(document, "succeeded")
    entries = document.get("results")
    if not isinstance(entries, list):
        raise RaftkvError("unexpected answer to a transaction: no list of results")
    named = [_op_result(entry, f"results[{i}]") for i, entry in enumerate(entries)]
    branch = success if succeeded else failure
    if branch is not None:
        expected = [op.kind for op in branch]
        if [name for name, _ in named] != expected:
            raise RaftkvError(
                "unexpected answer to a transaction: the results do not match the "
                f"operations of the {'success' if succeeded else 'failure'} branch"
            )
    return TxnResponse(
        succeeded=succeeded,
        revision=int_field(document, "revision"),
        index=int_field(document, "index"),
        term=int_field(document, "term"),
        results=tuple(result for _, result in named),
    )
