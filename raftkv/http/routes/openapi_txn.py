"""The OpenAPI description of ``POST /txn`` (see raftkv.http.routes.txn and docs/api.md,
"Transactions"), merged into the document by
:func:`raftkv.http.routes.openapi.build_openapi`."""

from __future__ import annotations

from typing import Any

from raftkv.http.routes.openapi_leases import LEASE_PUT_FIELDS
from raftkv.kv.txn import MAX_TXN_LIST_LIMIT
from raftkv.wire.protocol import DEFAULT_LIST_LIMIT, MAX_REVISION
from raftkv.wire.txn_limits import TxnLimits

__all__ = ["txn_paths", "txn_schemas"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _one_of_text_or_base64(name: str) -> dict[str, Any]:
    return {
        name: {"type": "string", "description": f"The {name} as UTF-8 text."},
        f"{name}_base64": {
            "type": "string",
            "contentEncoding": "base64",
            "description": f"The {name} in base64, instead of `{name}`.",
        },
    }


def _op(name: str, fields: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "required": [name],
        "additionalProperties": False,
        "properties": {
            name: {"type": "object", "additionalProperties": False, "properties": fields}
        },
    }


def txn_schemas() -> dict[str, Any]:
    key = _one_of_text_or_base64("key")
    prefix = _one_of_text_or_base64("prefix")
    value = _one_of_text_or_base64("value")
    limit = {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_TXN_LIST_LIMIT,
        "default": DEFAULT_LIST_LIMIT,
    }
    operation = {
        "oneOf": [
            _op(
                "put",
                {**key, **value, **LEASE_PUT_FIELDS},
                "Write the key (no branch writes a key twice); with ttl or lease as "
                "POST /kv/{key} takes them.",
            ),
            _op("delete", key, "Delete the key."),
            _op("delete_prefix", prefix, "Delete every key under the prefix."),
            _op("get", key, "Read the key, as the transaction has left it so far."),
            _op("list", {**prefix, "limit": limit}, "Read the keys under the prefix."),
        ]
    }
    compare = {
        "type": "object",
        "additionalProperties": False,
        "required": ["target"],
        "properties": {
            **key,
            "target": {
                "type": "string",
                "enum": [
                    "value",
                    "version",
                    "create_revision",
                    "mod_revision",
                    "exists",
                    "lease",
                ],
            },
            "op": {"type": "string", "enum": ["==", "!=", "<", ">"], "default": "=="},
            "value": {
                "description": "A string for target value, true or false for exists, an "
                "integer for the others (lease: the key's lease id, 0 for none).",
                "oneOf": [
                    {"type": "string"},
                    {"type": "boolean"},
                    {"type": "integer", "minimum": 0, "maximum": MAX_REVISION},
                ],
            },
            "value_base64": {"type": "string", "contentEncoding": "base64"},
        },
    }
    kv = _ref("KeyValue")
    result = {
        "type": "object",
        "description": "Named like its operation: {put: {prev?}}, {delete: {deleted, prev?}}, "
        "{delete_prefix: {deleted}}, {get: {found, kv?}}, {list: {items, more}}.",
        "properties": {
            "put": {"type": "object", "properties": {"prev": kv}},
            "delete": {
                "type": "object",
                "properties": {"deleted": {"type": "integer"}, "prev": kv},
            },
            "delete_prefix": {"type": "object", "properties": {"deleted": {"type": "integer"}}},
            "get": {
                "type": "object",
                "properties": {"found": {"type": "boolean"}, "kv": kv},
            },
            "list": {
                "type": "object",
                "properties": {
                    "items": {"type": "array", "items": kv},
                    "more": {"type": "boolean"},
                },
            },
        },
    }
    return {
        "TxnRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "compare": {"type": "array", "items": _ref("TxnCompare")},
                "success": {"type": "array", "items": _ref("TxnOperation")},
                "failure": {"type": "array", "items": _ref("TxnOperation")},
            },
        },
        "TxnCompare": compare,
        "TxnOperation": operation,
        "TxnOperationResult": result,
        "TxnResult": {
            "type": "object",
            "required": ["succeeded", "revision", "index", "term", "results"],
            "properties": {
                "succeeded": {
                    "type": "boolean",
                    "description": "Every compare held: the success branch ran.",
                },
                "revision": {
                    "type": "integer",
                    "description": "The revision the transaction was applied at: the mod "
                    "revision of every key it wrote.",
                },
                "index": {"type": "integer"},
                "term": {"type": "integer"},
                "results": {"type": "array", "items": _ref("TxnOperationResult")},
            },
        },
    }


def txn_paths(
    limits: TxnLimits, write_errors: dict[str, Any], session: list[Any]
) -> dict[str, Any]:
    """``write_errors``: the key writes' error answers. A transaction's 409 means something
    else than a key write's: a compare that fails runs the failure branch and answers 200,
    so 409 is only a session seq already used by a different request."""
    errors = dict(write_errors)
    errors["404"] = {
        "description": "A put names a lease that does not exist: nothing was applied.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    errors["409"] = {
        "description": "With client-supplied session headers: this seq was already used by "
        "a request that is not this transaction. Nothing was applied; send it with a new seq.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    return {
        "/txn": {
            "post": {
                "operationId": "transaction",
                "summary": "Compare any keys, then run one of two lists of operations, "
                "atomically at one revision.",
                "parameters": session,
                "requestBody": {
                    "required": True,
                    "description": f"At most {limits.max_ops} compares and operations and "
                    f"{limits.max_bytes} bytes of keys and values (--max-txn-ops, "
                    "--max-txn-bytes).",
                    "content": {"application/json": {"schema": _ref("TxnRequest")}},
                },
                "responses": {
                    "200": {
                        "description": "Applied: which branch ran and what each operation "
                        "did (200 also when the compares failed).",
                        "content": {"application/json": {"schema": _ref("TxnResult")}},
                    },
                    **errors,
                },
            }
        }
    }
