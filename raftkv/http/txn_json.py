"""A transaction in JSON: the request document of ``POST /txn`` turned into a TxnBody
(every mistake a 400 or 413 naming where it is), and a TxnResult turned into the answer
(docs/api.md, "Transactions").

Keys, prefixes and values are text (UTF-8), or base64 under the same name with
``_base64`` appended, as the answers write them (``kv_json.py``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, Final

import orjson

from raftkv.http.errors import ApiError
from raftkv.http.kv_json import json_type, kv_json
from raftkv.http.lease_json import parse_lease_id, parse_ttl
from raftkv.kv.txn import (
    MAX_TXN_LIST_LIMIT,
    Compare,
    CompareOperator,
    CompareTarget,
    TxnBody,
    TxnOp,
    TxnOpKind,
    TxnResult,
    write_conflict,
)
from raftkv.wire.protocol import DEFAULT_LIST_LIMIT, MAX_REVISION
from raftkv.wire.txn_limits import TxnLimits

__all__ = ["TxnDocumentLimits", "parse_txn_document", "txn_result_json"]

_TARGETS: Final = {
    "value": CompareTarget.VALUE,
    "version": CompareTarget.VERSION,
    "create_revision": CompareTarget.CREATE_REVISION,
    "mod_revision": CompareTarget.MOD_REVISION,
    "exists": CompareTarget.EXISTS,
    "lease": CompareTarget.LEASE,
}
_OPERATORS: Final = {
    "==": CompareOperator.EQUAL,
    "!=": CompareOperator.NOT_EQUAL,
    "<": CompareOperator.LESS,
    ">": CompareOperator.GREATER,
}
_OP_NAMES: Final = {
    "put": TxnOpKind.PUT,
    "delete": TxnOpKind.DELETE,
    "delete_prefix": TxnOpKind.DELETE_PREFIX,
    "get": TxnOpKind.GET,
    "list": TxnOpKind.LIST_PREFIX,
}
_NAME_OF: Final = {kind: name for name, kind in _OP_NAMES.items()}
_PREFIX_KINDS: Final = frozenset((TxnOpKind.DELETE_PREFIX, TxnOpKind.LIST_PREFIX))


class TxnDocumentLimits:
    """What one transaction may hold: the node's transaction flags and key and value
    sizes."""

    __slots__ = ("max_bytes", "max_key_bytes", "max_ops", "max_value_bytes")

    def __init__(self, txn: TxnLimits, max_key_bytes: int, max_value_bytes: int) -> None:
        self.max_ops = txn.max_ops
        self.max_bytes = txn.max_bytes
        self.max_key_bytes = max_key_bytes
        self.max_value_bytes = max_value_bytes


def _shown(value: object) -> str:
    """A value from the request as JSON, cut short: how an error message quotes it."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = "?"
    return text if len(text) <= 60 else text[:57] + "..."


class _Parser:
    def __init__(self, limits: TxnDocumentLimits) -> None:
        self.limits = limits
        self.total_bytes = 0

    def _count(self, data: bytes) -> bytes:
        self.total_bytes += len(data)
        if self.total_bytes > self.limits.max_bytes:
            raise ApiError(
                413,
                f"the transaction's keys and values exceed {self.limits.max_bytes} bytes "
                "(--max-txn-bytes)",
            )
        return data

    def _bytes(self, doc: dict[str, Any], name: str, where: str, *, required: bool) -> bytes | None:
        text = doc.get(name)
        encoded = doc.get(f"{name}_base64")
        if text is not None and encoded is not None:
            raise ApiError(400, f"{where}: give {name} or {name}_base64, not both")
        if encoded is not None:
            if not isinstance(encoded, str):
                raise ApiError(400, f"{where}: {name}_base64 must be a string")
            try:
                return self._count(base64.b64decode(encoded, validate=True))
            except (binascii.Error, ValueError):
                raise ApiError(400, f"{where}: {name}_base64 is not valid base64") from None
        if text is None:
            if required:
                raise ApiError(400, f"{where}: {name} is missing")
            return None
        if not isinstance(text, str):
            raise ApiError(400, f"{where}: {name} must be a string, got {json_type(text)}")
        try:
            return self._count(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise ApiError(400, f"{where}: {name} is not valid Unicode") from None

    def _key(self, doc: dict[str, Any], name: str, where: str, *, empty_ok: bool) -> bytes:
        key = self._bytes(doc, name, where, required=not empty_ok) or b""
        if not key and not empty_ok:
            raise ApiError(400, f"{where}: {name} must not be empty")
        if len(key) > self.limits.max_key_bytes:
            raise ApiError(
                413,
                f"{where}: {name} is {len(key)} bytes; the limit is "
                f"{self.limits.max_key_bytes} bytes",
            )
        return key

    @staticmethod
    def _fields(doc: object, where: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(doc, dict):
            raise ApiError(400, f"{where} must be an object, got {json_type(doc)}")
        unknown = sorted(set(doc) - allowed)
        if unknown:
            raise ApiError(400, f"{where}: unknown field(s) {', '.join(unknown)}")
        return doc

    def compare(self, doc: object, where: str) -> Compare:
        fields = self._fields(
            doc, where, {"key", "key_base64", "target", "op", "value", "value_base64"}
        )
        key = self._key(fields, "key", where, empty_ok=False)
        target_name = fields.get("target")
        target = _TARGETS.get(target_name) if isinstance(target_name, str) else None
        if target is None:
            raise ApiError(
                400,
                f"{where}: target must be one of {', '.join(_TARGETS)}, got {_shown(target_name)}",
            )
        operator_name = fields.get("op", "==")
        operator = _OPERATORS.get(operator_name) if isinstance(operator_name, str) else None
        if operator is None:
            raise ApiError(
                400,
                f"{where}: op must be one of {', '.join(_OPERATORS)}, got {_shown(operator_name)}",
            )
        operand: bytes | int
        if target is CompareTarget.VALUE:
            value = self._bytes(fields, "value", where, required=True)
            assert value is not None
            operand = value
        elif target is CompareTarget.EXISTS:
            if "value_base64" in fields or not isinstance(fields.get("value"), bool):
                raise ApiError(400, f"{where}: an exists compare needs value true or false")
            if operator not in (CompareOperator.EQUAL, CompareOperator.NOT_EQUAL):
                raise ApiError(400, f"{where}: an exists compare can only be == or !=")
            operand = int(fields["value"])
        else:
            number = fields.get("value")
            if "value_base64" in fields or not isinstance(number, int) or isinstance(number, bool):
                raise ApiError(400, f"{where}: a {target_name} compare needs an integer value")
            if not 0 <= number <= MAX_REVISION:
                raise ApiError(400, f"{where}: value must be between 0 and {MAX_REVISION}")
            operand = number
        return Compare(key, target, operator, operand)

    def op(self, doc: object, where: str) -> TxnOp:
        if not isinstance(doc, dict) or len(doc) != 1:
            raise ApiError(
                400,
                f"{where} must be an object with one of {', '.join(_OP_NAMES)}, "
                f'like {{"put": {{"key": "k", "value": "v"}}}}',
            )
        ((name, inner),) = doc.items()
        kind = _OP_NAMES.get(name)
        if kind is None:
            raise ApiError(400, f"{where}: unknown operation {_shown(name)}")
        where = f"{where}.{name}"
        if kind is TxnOpKind.PUT:
            fields = self._fields(
                inner, where, {"key", "key_base64", "value", "value_base64", "ttl", "lease"}
            )
            key = self._key(fields, "key", where, empty_ok=False)
            value = self._bytes(fields, "value", where, required=True)
            assert value is not None
            if len(value) > self.limits.max_value_bytes:
                raise ApiError(
                    413,
                    f"{where}: value is {len(value)} bytes; the limit is "
                    f"{self.limits.max_value_bytes} bytes",
                )
            lease, ttl = fields.get("lease"), fields.get("ttl")
            if lease is not None and ttl is not None:
                raise ApiError(400, f"{where}: a put has a ttl or a lease, not both")
            return TxnOp(
                kind,
                key,
                value,
                lease=0 if lease is None else parse_lease_id(lease, f"{where}.lease"),
                ttl_ms=0 if ttl is None else parse_ttl(ttl, f"{where}.ttl"),
            )
        if kind in _PREFIX_KINDS:
            allowed = {"prefix", "prefix_base64"}
            if kind is TxnOpKind.LIST_PREFIX:
                allowed.add("limit")
            fields = self._fields(inner, where, allowed)
            prefix = self._key(fields, "prefix", where, empty_ok=True)
            if kind is TxnOpKind.DELETE_PREFIX:
                return TxnOp(kind, prefix)
            limit = fields.get("limit", DEFAULT_LIST_LIMIT)
            if not isinstance(limit, int) or isinstance(limit, bool):
                raise ApiError(400, f"{where}: limit must be an integer")
            if not 1 <= limit <= MAX_TXN_LIST_LIMIT:
                raise ApiError(400, f"{where}: limit must be between 1 and {MAX_TXN_LIST_LIMIT}")
            return TxnOp(kind, prefix, limit=limit)
        fields = self._fields(inner, where, {"key", "key_base64"})
        return TxnOp(kind, self._key(fields, "key", where, empty_ok=False))

    def items(self, doc: dict[str, Any], name: str) -> list[object]:
        items = doc.get(name, [])
        if not isinstance(items, list):
            raise ApiError(400, f"{name} must be an array, got {json_type(items)}")
        return items


def parse_txn_document(doc: object, limits: TxnDocumentLimits) -> TxnBody:
    """The transaction ``doc`` describes; ApiError 400 or 413 for anything wrong."""
    if not isinstance(doc, dict):
        raise ApiError(
            400, 'request body must be a JSON object like {"compare": [], "success": []}'
        )
    unknown = sorted(set(doc) - {"compare", "success", "failure"})
    if unknown:
        raise ApiError(400, f"unknown field(s) in request body: {', '.join(unknown)}")
    parser = _Parser(limits)
    compare_docs = parser.items(doc, "compare")
    success_docs = parser.items(doc, "success")
    failure_docs = parser.items(doc, "failure")
    count = len(compare_docs) + len(success_docs) + len(failure_docs)
    if count > limits.max_ops:
        raise ApiError(
            400,
            f"the transaction has {count} compares and operations; the limit is "
            f"{limits.max_ops} (--max-txn-ops)",
        )
    compares = tuple(parser.compare(c, f"compare[{i}]") for i, c in enumerate(compare_docs))
    success = tuple(parser.op(o, f"success[{i}]") for i, o in enumerate(success_docs))
    failure = tuple(parser.op(o, f"failure[{i}]") for i, o in enumerate(failure_docs))
    for name, branch in (("success", success), ("failure", failure)):
        why = write_conflict(branch)
        if why is not None:
            raise ApiError(400, f"{name}: {why}; a transaction writes each key once")
    return TxnBody(compares, success, failure)


def txn_result_json(
    result: TxnResult,
    index: int,
    term: int,
    may_read: Callable[[bytes], bool] | None = None,
) -> dict[str, Any]:
    """The answer: which branch ran, the revision it ran at, and each operation's
    result in order, named like the operation. ``may_read`` (auth on): a put's or
    delete's ``prev`` is shown only for a key the user may read, as a write
    permission alone must not reveal values."""
    answers: list[dict[str, Any]] = []
    for op in result.results:
        name = _NAME_OF[op.kind]
        prev = op.prev
        if prev is not None and may_read is not None and not may_read(prev.key):
            prev = None
        if op.kind is TxnOpKind.PUT:
            answer: dict[str, Any] = {}
            if prev is not None:
                answer["prev"] = kv_json(prev)
        elif op.kind is TxnOpKind.DELETE:
            answer = {"deleted": op.deleted}
            if prev is not None:
                answer["prev"] = kv_json(prev)
        elif op.kind is TxnOpKind.DELETE_PREFIX:
            answer = {"deleted": op.deleted}
        elif op.kind is TxnOpKind.GET:
            answer = {"found": bool(op.items)}
            if op.items:
                answer["kv"] = kv_json(op.items[0])
        else:
            answer = {"items": [kv_json(kv) for kv in op.items], "more": op.more}
        answers.append({name: answer})
    return {
        "succeeded": result.succeeded,
        "revision": index,
        "index": index,
        "term": term,
        "results": answers,
    }
