"""The OpenAPI description of the lease routes (raftkv.http.routes.leases, docs/api.md
"Leases") and of what leases add to the key routes, merged into the document by
:func:`raftkv.http.routes.openapi.build_openapi`."""

from __future__ import annotations

from typing import Any

from raftkv.http.lease_json import MAX_TTL_S, MIN_TTL_S
from raftkv.kv.leases import MAX_LEASE_ID

__all__ = [
    "KEY_LEASE_FIELDS",
    "LEASE_PUT_FIELDS",
    "lease_parameters",
    "lease_paths",
    "lease_schemas",
]

_TTL = {"type": "number", "minimum": MIN_TTL_S, "maximum": MAX_TTL_S}
_ID = {"type": "integer", "minimum": 1, "maximum": MAX_LEASE_ID}
_INDEX = {"type": "integer", "minimum": 0}

LEASE_PUT_FIELDS: dict[str, Any] = {
    "ttl": {
        **_TTL,
        "description": "Seconds until the key expires (a lease of its own). A later write "
        "without ttl or lease keeps the key for good. Not with lease.",
    },
    "lease": {**_ID, "description": "Attach the key to this lease. Not with ttl."},
}
"""What ``POST /kv/{key}`` takes besides the value."""

KEY_LEASE_FIELDS: dict[str, Any] = {
    "lease": {**_ID, "description": "The lease the key is attached to, if any."},
    "ttl": {
        "type": ["number", "null"],
        "description": "Seconds that lease has left on the node that answered.",
    },
}
"""What a key read or a leased write answers besides the usual fields."""


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref("schemas", schema)}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json("Error")}


def lease_parameters() -> dict[str, Any]:
    return {
        "LeaseId": {
            "name": "lease_id",
            "in": "path",
            "required": True,
            "schema": _ID,
        },
        "LeaseQuery": {
            "name": "lease",
            "in": "query",
            "required": False,
            "description": "Attach the key to this lease (not with ttl).",
            "schema": _ID,
        },
        "TtlQuery": {
            "name": "ttl",
            "in": "query",
            "required": False,
            "description": "Seconds until the key expires (not with lease).",
            "schema": _TTL,
        },
    }


def lease_schemas() -> dict[str, Any]:
    times = {
        "id": _ID,
        "ttl": {**_TTL, "description": "The TTL in seconds."},
        "remaining": {
            "type": ["number", "null"],
            "description": "Seconds left on the node that answered (a follower's figure "
            "is never below the leader's); null until that node has timed the lease.",
        },
    }
    return {
        "LeaseGrantRequest": {
            "type": "object",
            "required": ["ttl"],
            "additionalProperties": False,
            "properties": {
                "ttl": _TTL,
                "id": {**_ID, "description": "The id to give it; the node picks one if absent."},
            },
        },
        "LeaseGranted": {
            "type": "object",
            "required": ["id", "ttl", "index", "term"],
            "properties": {"id": _ID, "ttl": _TTL, "index": _INDEX, "term": _INDEX},
        },
        "LeaseRevoked": {
            "type": "object",
            "required": ["id", "revoked", "deleted", "index", "term", "revision"],
            "properties": {
                "id": _ID,
                "revoked": {"const": True},
                "deleted": {"type": "integer", "minimum": 0},
                "index": _INDEX,
                "term": _INDEX,
                "revision": {**_INDEX, "description": "The revision its keys were deleted at."},
            },
        },
        "LeaseInfo": {
            "type": "object",
            "required": ["id", "ttl", "remaining", "index"],
            "properties": {
                **times,
                "index": _INDEX,
                "keys": {
                    "type": "array",
                    "description": "Attached keys the user may read, in key order.",
                    "items": {
                        "type": "object",
                        "properties": {
                            "key": {"type": "string"},
                            "key_base64": {"type": "string", "contentEncoding": "base64"},
                        },
                    },
                },
                "more": {"type": "boolean"},
            },
        },
        "LeaseList": {
            "type": "object",
            "required": ["leases", "count", "index"],
            "properties": {
                "leases": {
                    "type": "array",
                    "items": {"type": "object", "required": list(times), "properties": times},
                },
                "count": {"type": "integer", "minimum": 0},
                "index": _INDEX,
            },
        },
    }


def lease_paths(session: list[Any], write_errors: dict[str, Any]) -> dict[str, Any]:
    """``write_errors``: the key writes' error answers, less what a lease write cannot
    answer (its 409 is a lease id in use, its 404 a lease that does not exist)."""
    errors = {status: answer for status, answer in write_errors.items() if status != "409"}
    not_found = {"404": _error("No such lease (it expired, was revoked or never existed).")}
    read_errors = {
        "400": _ref("responses", "BadRequest"),
        "500": _ref("responses", "Internal"),
        "503": _ref("responses", "ReadUnavailable"),
    }
    lease_id = [_ref("parameters", "LeaseId")]
    return {
        "/lease": {
            "get": {
                "operationId": "listLeases",
                "summary": "Every lease, with its TTL and the time it has left.",
                "parameters": [_ref("parameters", "Consistency")],
                "responses": {
                    "200": {"description": "The leases, by id.", "content": _json("LeaseList")},
                    **read_errors,
                },
            },
            "post": {
                "operationId": "grantLease",
                "summary": "Create a lease: keys attached to it are deleted when it expires "
                "or is revoked.",
                "parameters": session,
                "requestBody": {"required": True, "content": _json("LeaseGrantRequest")},
                "responses": {
                    "200": {"description": "Granted.", "content": _json("LeaseGranted")},
                    "409": _error("A lease with this id exists."),
                    **errors,
                },
            },
        },
        "/lease/{lease_id}": {
            "get": {
                "operationId": "getLease",
                "summary": "A lease's TTL, time left and attached keys.",
                "parameters": [
                    *lease_id,
                    _ref("parameters", "Consistency"),
                    {
                        "name": "keys",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["true", "false"]},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "The most keys to show.",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 10_000},
                    },
                ],
                "responses": {
                    "200": {"description": "The lease.", "content": _json("LeaseInfo")},
                    **not_found,
                    **read_errors,
                },
            },
            "delete": {
                "operationId": "revokeLease",
                "summary": "End a lease now; its keys are deleted at one revision (needs "
                "write permission on each).",
                "parameters": [*lease_id, *session],
                "responses": {
                    "200": {"description": "Revoked.", "content": _json("LeaseRevoked")},
                    **not_found,
                    **errors,
                },
            },
        },
        "/lease/keepalive": {
            "post": {
                "operationId": "keepLeasesAliveStream",
                "summary": "Keep leases alive over one long request: an NDJSON body of "
                '{"id": N} lines that does not end, answered line by line, in order, once '
                'each keep-alive is committed ({"id", "ttl", "index"} or {"id", "error", '
                '"status"}). A bad line ends the stream with {"error", "status": 400}.',
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-ndjson": {
                            "schema": {
                                "type": "array",
                                "description": "One JSON object per line.",
                                "items": {
                                    "type": "object",
                                    "required": ["id"],
                                    "additionalProperties": False,
                                    "properties": {"id": _ID},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "One line per keep-alive line, until the body ends.",
                        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                    },
                },
            },
        },
        "/lease/{lease_id}/keepalive": {
            "post": {
                "operationId": "keepLeaseAlive",
                "summary": "Start the lease's TTL again, from when this is committed.",
                "parameters": [*lease_id, *session],
                "responses": {
                    "200": {"description": "Kept alive.", "content": _json("LeaseGranted")},
                    **not_found,
                    **errors,
                },
            },
        },
    }
