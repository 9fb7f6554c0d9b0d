"""The OpenAPI 3.1 description of the worker's HTTP API, written by hand, and the
``/openapi.json`` route that serves it.

Kept next to the routes (their table is in ``app.py``): a test checks that every route
and method there is described here, and that no path is described that the app does not
serve. The limits and header names are the ones the routes use, imported, not copied.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from raftkv.http.responses import JSON_MEDIA_TYPE
from raftkv.http.routes.openapi_auth import AUTH_SECURITY_SCHEMES, auth_paths, with_auth_responses
from raftkv.http.routes.openapi_leases import (
    KEY_LEASE_FIELDS,
    LEASE_PUT_FIELDS,
    lease_parameters,
    lease_paths,
    lease_schemas,
)
from raftkv.http.routes.openapi_txn import txn_paths, txn_schemas
from raftkv.http.routes.openapi_watch import watch_paths
from raftkv.http.routes.operations import DEFAULT_OPERATION_TIMEOUT_S, MAX_OPERATION_TIMEOUT_S
from raftkv.http.serving.settings import WorkerSettings
from raftkv.wire.http_headers import (
    HEADER_CREATE_REVISION,
    HEADER_INDEX,
    HEADER_REVISION,
    HEADER_VERSION,
)
from raftkv.wire.protocol import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT
from raftkv.wire.sessions import HEADER_CLIENT_ID, HEADER_FIRST_INCOMPLETE, HEADER_SEQ

__all__ = ["build_openapi", "openapi_endpoint"]


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json_content(schema_name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref("schemas", schema_name)}}


def _ok(description: str, schema_name: str) -> dict[str, Any]:
    return {"description": description, "content": _json_content(schema_name)}


_SESSION_PARAMS = [
    _ref("parameters", "ClientId"),
    _ref("parameters", "Seq"),
    _ref("parameters", "FirstIncomplete"),
]


_LEASE_NOT_FOUND = {
    "description": "The lease named by lease does not exist (expired or revoked).",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _write_errors(*, not_found: bool) -> dict[str, Any]:
    errors: dict[str, Any] = {
        "400": _ref("responses", "BadRequest"),
        "409": _ref("responses", "Conflict"),
        "410": _ref("responses", "StaleSession"),
        "413": _ref("responses", "TooLarge"),
        "500": _ref("responses", "Internal"),
        "503": _ref("responses", "WriteUnavailable"),
    }
    if not_found:
        errors["404"] = _ref("responses", "NotFound")
    return dict(sorted(errors.items()))


_STATE_HASH = {
    "name": "hash",
    "in": "query",
    "required": False,
    "description": "true: include this node's stateHash and the stateHashIndex it was "
    "computed at (a pass over the whole state; replicas at the same index agree).",
    "schema": {"type": "boolean", "default": False},
}

_LOCAL_VIEW = {
    "name": "local",
    "in": "query",
    "required": False,
    "description": "true: answer from this node's own view. By default a follower asks the "
    "leader, which alone knows every follower's replication progress, and falls back to "
    "its own view.",
    "schema": {"type": "boolean", "default": False},
}


_JSON_MEDIA = JSON_MEDIA_TYPE
_WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "description": "true (default): answer once the node is a voter, or 202 when the "
    "timeout passes first; false: answer once it is a learner.",
    "schema": {"type": "boolean", "default": True},
}
_OPERATION_TIMEOUT = {
    "name": "timeout",
    "in": "query",
    "required": False,
    "description": f"Seconds to wait for the outcome (default {DEFAULT_OPERATION_TIMEOUT_S:g}).",
    "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_OPERATION_TIMEOUT_S},
}


def _ok_object(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {_JSON_MEDIA: {"schema": {"type": "object"}}},
    }


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {_JSON_MEDIA: {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def build_openapi(settings: WorkerSettings) -> dict[str, Any]:
    """The document, with this worker's size limits in it."""
    max_key = settings.max_key_bytes
    max_value = settings.max_value_bytes
    max_body = settings.max_body_bytes
    error_schema = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "What went wrong."}},
    }
    revision = {"type": "integer", "minimum": 0}
    key_fields = {
        "key": {"type": "string", "description": "The key, when it is valid UTF-8."},
        "key_base64": {
            "type": "string",
            "contentEncoding": "base64",
            "description": "The key in base64, instead of `key`, when it is not UTF-8.",
        },
    }
    write_result: dict[str, Any] = {
        "type": "object",
        "required": ["index", "term", "revision"],
        "properties": {
            **key_fields,
            "index": {**revision, "description": "Raft log index of the write."},
            "term": {**revision, "description": "Raft term of the write."},
            "revision": {
                **revision,
                "description": "The key's new mod revision (the index that wrote it).",
            },
        },
    }
    schemas: dict[str, Any] = {
        "Error": error_schema,
        "ConflictError": {
            "type": "object",
            "required": ["error", "current_revision"],
            "properties": {
                "error": {"type": "string"},
                "current_revision": {
                    **revision,
                    "description": "The key's current mod revision; 0 when it does not exist.",
                },
            },
        },
        "StaleSessionError": {
            "type": "object",
            "required": ["error", "stale_session"],
            "properties": {"error": {"type": "string"}, "stale_session": {"const": True}},
        },
        "PutRequest": {
            "type": "object",
            "required": ["value"],
            "additionalProperties": False,
            "properties": {
                "value": {
                    "type": "string",
                    "description": f"The value; at most {max_value} bytes as UTF-8.",
                },
                "prev_revision": {
                    "type": ["integer", "null"],
                    "minimum": 0,
                    "description": "Compare-and-set: store only if the key's mod revision "
                    "is this; 0 means only if the key does not exist.",
                },
                **LEASE_PUT_FIELDS,
            },
        },
        "WriteResult": {
            **write_result,
            "properties": {**write_result["properties"], **KEY_LEASE_FIELDS},
        },
        "DeleteResult": {
            "type": "object",
            "required": ["deleted", "index", "term", "revision"],
            "properties": {
                **write_result["properties"],
                "deleted": {"const": True},
            },
        },
        "KeyValue": {
            "type": "object",
            "required": ["create_revision", "mod_revision", "version"],
            "properties": {
                **key_fields,
                "value": {"type": "string", "description": "The value, when it is UTF-8."},
                "value_base64": {
                    "type": "string",
                    "contentEncoding": "base64",
                    "description": "The value in base64, instead of `value`, when it is not UTF-8.",
                },
                "create_revision": {
                    **revision,
                    "description": "Index of the write that created the key.",
                },
                "mod_revision": {**revision, "description": "Index of the last write."},
                "version": {
                    **revision,
                    "description": "Writes since the key was created (1 after creation).",
                },
                **KEY_LEASE_FIELDS,
            },
        },
        "ListResult": {
            "type": "object",
            "required": ["items", "count", "more"],
            "properties": {
                "items": {"type": "array", "items": _ref("schemas", "KeyValue")},
                "count": {"type": "integer", "minimum": 0},
                "more": {
                    "type": "boolean",
                    "description": "True when more keys match than `limit` allowed.",
                },
            },
        },
        "DeletePrefixResult": {
            "type": "object",
            "required": ["deleted", "index", "term"],
            "properties": {
                "deleted": {"type": "integer", "minimum": 0, "description": "Keys deleted."},
                "index": revision,
                "term": revision,
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "node_id", "leader"],
            "properties": {
                "status": {
                    "type": "string",
                    "enum": ["ok", "no leader", "unavailable", "raft process unreachable"],
                },
                "node_id": {"type": ["integer", "null"]},
                "leader": {"type": ["integer", "null"]},
                "error": {"type": "string"},
            },
        },
        "ClusterInfo": {
            "type": "object",
            "description": "The Raft process's own JSON report, passed through unchanged.",
        },
    }
    retry_after = {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "integer"},
        }
    }
    responses: dict[str, Any] = {
        "BadRequest": {
            "description": "Malformed input: an empty key, bad JSON, a missing or non-string "
            '"value", a non-integer revision or limit, an unknown consistency level, '
            "partial or malformed session headers.",
            "content": _json_content("Error"),
        },
        "NotFound": {"description": "The key does not exist.", "content": _json_content("Error")},
        "Conflict": {
            "description": "Compare-and-set failed: prev_revision is not the key's current "
            "mod revision. Nothing was written.",
            "content": _json_content("ConflictError"),
        },
        "StaleSession": {
            "description": "Only with client-supplied session headers: the state machine no "
            "longer knows this session or seq. This request was not applied now; start a new "
            "session.",
            "content": _json_content("StaleSessionError"),
        },
        "TooLarge": {
            "description": f"A key or prefix above {max_key} bytes, a value above {max_value} "
            f"bytes, or a body above {max_body} bytes.",
            "content": _json_content("Error"),
        },
        "Internal": {"description": "Internal error.", "content": _json_content("Error")},
        "ReadUnavailable": {
            "description": "No leader or quorum in time, or the Raft process is unreachable. "
            "Retry later.",
            "headers": retry_after,
            "content": _json_content("Error"),
        },
        "WriteUnavailable": {
            "description": "No leader or quorum in time, or the Raft process is unreachable. "
            "The message says whether the write may have been applied.",
            "headers": retry_after,
            "content": _json_content("Error"),
        },
    }
    parameters: dict[str, Any] = {
        "Key": {
            "name": "key",
            "in": "path",
            "required": True,
            "description": f"The key: everything after /kv/, percent-decoded, as bytes; may "
            f"contain '/'. 1 to {max_key} bytes.",
            "schema": {"type": "string", "minLength": 1},
        },
        "Consistency": {
            "name": "consistency",
            "in": "query",
            "required": False,
            "description": "linearizable (default: confirmed with the leader) or stale (served "
            "from this node's state, may lag).",
            "schema": {
                "type": "string",
                "enum": ["linearizable", "stale"],
                "default": "linearizable",
            },
        },
        "PrevRevisionQuery": {
            "name": "prev_revision",
            "in": "query",
            "required": False,
            "description": "Compare-and-set: apply only if the key's mod revision is this; 0 "
            "means only if the key does not exist.",
            "schema": {"type": "integer", "minimum": 0},
        },
        "ClientId": {
            "name": HEADER_CLIENT_ID,
            "in": "header",
            "required": False,
            "description": "Exactly-once session of the caller (non-zero decimal u64). The "
            "three session headers go together or not at all.",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        },
        "Seq": {
            "name": HEADER_SEQ,
            "in": "header",
            "required": False,
            "description": "The request's sequence number in the caller's session (>= 1); a "
            "retry reuses it.",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        },
        "FirstIncomplete": {
            "name": HEADER_FIRST_INCOMPLETE,
            "in": "header",
            "required": False,
            "description": "Lowest seq the caller still awaits a reply for (<= seq).",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        },
    }
    revision_headers = {
        HEADER_REVISION: {"description": "Mod revision.", "schema": {"type": "integer"}},
        HEADER_CREATE_REVISION: {
            "description": "Create revision.",
            "schema": {"type": "integer"},
        },
        HEADER_VERSION: {"description": "Version.", "schema": {"type": "integer"}},
        HEADER_INDEX: {
            "description": "Applied index the read was served at.",
            "schema": {"type": "integer"},
        },
    }
    read_errors = {
        "400": _ref("responses", "BadRequest"),
        "413": _ref("responses", "TooLarge"),
        "500": _ref("responses", "Internal"),
        "503": _ref("responses", "ReadUnavailable"),
    }
    paths: dict[str, Any] = {
        "/kv/{key}": {
            "parameters": [_ref("parameters", "Key")],
            "get": {
                "operationId": "getKey",
                "summary": "Read a key",
                "description": "The raw value with revisions in headers; with "
                "`Accept: application/json`, a JSON object instead.",
                "parameters": [_ref("parameters", "Consistency")],
                "responses": {
                    "200": {
                        "description": "The value.",
                        "headers": revision_headers,
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "contentMediaType": "*/*"}
                            },
                            "application/json": {"schema": _ref("schemas", "KeyValue")},
                        },
                    },
                    "404": _ref("responses", "NotFound"),
                    **read_errors,
                },
            },
            "post": {
                "operationId": "putKeyJson",
                "summary": "Store a string value given as JSON",
                "parameters": _SESSION_PARAMS,
                "requestBody": {
                    "required": True,
                    "description": f"At most {max_body} bytes.",
                    "content": _json_content("PutRequest"),
                },
                "responses": {
                    "200": _ok("Stored (committed and applied).", "WriteResult"),
                    **_write_errors(not_found=False),
                    "404": _LEASE_NOT_FOUND,
                },
            },
            "put": {
                "operationId": "putKeyRaw",
                "summary": "Store the raw request body as the value",
                "parameters": [
                    _ref("parameters", "PrevRevisionQuery"),
                    _ref("parameters", "TtlQuery"),
                    _ref("parameters", "LeaseQuery"),
                    *_SESSION_PARAMS,
                ],
                "requestBody": {
                    "required": False,
                    "description": f"Any bytes, at most {max_value}.",
                    "content": {"*/*": {"schema": {"type": "string", "contentMediaType": "*/*"}}},
                },
                "responses": {
                    "200": _ok("Stored (committed and applied).", "WriteResult"),
                    **_write_errors(not_found=False),
                    "404": _LEASE_NOT_FOUND,
                },
            },
            "delete": {
                "operationId": "deleteKey",
                "summary": "Delete a key",
                "parameters": [_ref("parameters", "PrevRevisionQuery"), *_SESSION_PARAMS],
                "responses": {
                    "200": _ok("Deleted.", "DeleteResult"),
                    **_write_errors(not_found=True),
                },
            },
        },
        "/kv": {
            "get": {
                "operationId": "listPrefix",
                "summary": "List the keys under a prefix, in key order",
                "parameters": [
                    {
                        "name": "prefix",
                        "in": "query",
                        "required": False,
                        "description": "Key prefix (default: every key).",
                        "schema": {"type": "string", "default": ""},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIST_LIMIT,
                            "default": DEFAULT_LIST_LIMIT,
                        },
                    },
                    _ref("parameters", "Consistency"),
                ],
                "responses": {"200": _ok("The keys.", "ListResult"), **read_errors},
            },
            "delete": {
                "operationId": "deletePrefix",
                "summary": "Delete every key under a prefix",
                "parameters": [
                    {
                        "name": "prefix",
                        "in": "query",
                        "required": True,
                        "description": "Key prefix; an explicit empty value deletes every key.",
                        "schema": {"type": "string"},
                    },
                    *_SESSION_PARAMS,
                ],
                "responses": {
                    "200": _ok("Deleted.", "DeletePrefixResult"),
                    **_write_errors(not_found=False),
                },
            },
        },
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Whether this node knows a leader",
                "responses": {
                    "200": _ok("A leader is known.", "Health"),
                    "503": {
                        "description": "No leader known, or the Raft process is unreachable.",
                        "headers": retry_after,
                        "content": _json_content("Health"),
                    },
                },
            }
        },
        "/cluster/status": {
            "get": {
                "operationId": "clusterStatus",
                "summary": "The cluster's Raft status (leader, term, indexes, replication)",
                "parameters": [_LOCAL_VIEW, _STATE_HASH],
                "responses": {
                    "200": _ok("The status.", "ClusterInfo"),
                    "500": _ref("responses", "Internal"),
                    "503": _ref("responses", "ReadUnavailable"),
                },
            }
        },
        "/cluster/nodes": {
            "get": {
                "operationId": "clusterNodes",
                "summary": "The cluster's members and their addresses",
                "parameters": [_LOCAL_VIEW],
                "responses": {
                    "200": _ok("The members.", "ClusterInfo"),
                    "500": _ref("responses", "Internal"),
                    "503": _ref("responses", "ReadUnavailable"),
                },
            }
        },
        "/cluster/members": {
            "post": {
                "operationId": "addMember",
                "summary": "Add a node: it joins as a learner, receives the snapshot and the "
                "log, and is promoted to voter through joint consensus once it has caught "
                "up. A voter that asks again (its data was wiped) is demoted and promoted back.",
                "parameters": [_WAIT, _OPERATION_TIMEOUT],
                "requestBody": {
                    "required": True,
                    "content": {
                        _JSON_MEDIA: {
                            "schema": {
                                "type": "object",
                                "required": ["id", "rpc_addr", "http_addr"],
                                "properties": {
                                    "id": {"type": "integer", "minimum": 1},
                                    "rpc_addr": {"type": "string", "description": "host:port"},
                                    "http_addr": {"type": "string", "description": "host:port"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _ok_object("Added; with wait, already a voter."),
                    "202": _ok_object("Added as a learner; promotion still under way."),
                    "400": _ref("responses", "BadRequest"),
                    "409": _error_response("Another membership change is in progress."),
                    "503": _error_response("No leader, or the change did not commit in time."),
                },
            }
        },
        "/cluster/members/{node_id}": {
            "delete": {
                "operationId": "removeMember",
                "summary": "Remove a node (the leader too: it hands over and steps down).",
                "parameters": [
                    {
                        "name": "node_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 1},
                    },
                    _OPERATION_TIMEOUT,
                ],
                "responses": {
                    "200": _ok_object("Removed: the configuration without it is committed."),
                    "400": _ref("responses", "BadRequest"),
                    "404": _error_response("Not a member."),
                    "409": _error_response("Another membership change is in progress."),
                    "503": _error_response("No leader, or the change did not commit in time."),
                },
            }
        },
        "/cluster/leader": {
            "post": {
                "operationId": "transferLeader",
                "summary": 'Hand leadership to a node (body {"id": n}) or to the most '
                "up-to-date voter (no body).",
                "parameters": [_OPERATION_TIMEOUT],
                "responses": {
                    "200": _ok_object('The new leader: {"leader": id}.'),
                    "400": _ref("responses", "BadRequest"),
                    "503": _error_response("The target did not take over in time."),
                },
            }
        },
        "/cluster/snapshot": {
            "post": {
                "operationId": "snapshot",
                "summary": "Take a snapshot of this node's state now and compact its log.",
                "parameters": [_OPERATION_TIMEOUT],
                "responses": {
                    "200": _ok_object('The snapshot: {"index", "term", "size"}.'),
                    "400": _error_response("A timeout that is not a number in range."),
                    "503": _error_response("The snapshot was not written in time."),
                },
            }
        },
        "/cluster/backup": {
            "get": {
                "operationId": "backup",
                "summary": "A consistent snapshot file of the leader's state, for "
                "`kvnode restore`. Headers X-Raftkv-Backup-Index, -Term and -Sha256 (hex "
                "SHA-256 of the body) describe it.",
                "parameters": [_OPERATION_TIMEOUT],
                "responses": {
                    "200": {
                        "description": "The snapshot file.",
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        },
                    },
                    "400": _error_response("A timeout that is not a number in range."),
                    "503": _error_response("No leader, or no snapshot in time."),
                },
            }
        },
        "/dashboard": {
            "get": {
                "operationId": "dashboard",
                "summary": "A live page of the whole cluster: every node's role, term, "
                "indexes, lag and health, the leader history, throughput and latency. The "
                "page polls every node itself, so it keeps working while this node is down.",
                "responses": {
                    "200": {
                        "description": "The HTML page (style and script inline).",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "This node's metrics in the Prometheus text format: the Raft "
                "process's and the sum over all of its HTTP workers (see docs/metrics.md).",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "503": {
                        "description": "The Raft process did not answer.",
                        "headers": retry_after,
                        "content": _json_content("Error"),
                    },
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1 document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "raftkv",
            "version": "1",
            "description": "A replicated, strongly consistent key-value store. Every error "
            'is a JSON object {"error": "..."}; a wrong route answers 404 and a wrong '
            "method 405, in the same shape.",
        },
        "paths": with_auth_responses(
            {
                **paths,
                **txn_paths(settings.txn, _write_errors(not_found=False), _SESSION_PARAMS),
                **lease_paths(_SESSION_PARAMS, _write_errors(not_found=False)),
                **watch_paths(),
                **auth_paths(),
            }
        ),
        "components": {
            "schemas": {**schemas, **txn_schemas(), **lease_schemas()},
            "responses": responses,
            "parameters": {**parameters, **lease_parameters()},
            "securitySchemes": AUTH_SECURITY_SCHEMES,
        },
        # Needed only once auth is enabled (off by default); /health never needs it.
        "security": [{}, {"basic": []}, {"bearer": []}],
    }


def openapi_endpoint(settings: WorkerSettings) -> Callable[[Request], Awaitable[Response]]:
    """``GET /openapi.json``: the document, serialised once."""
    body = orjson.dumps(build_openapi(settings))

    async def serve_openapi(request: Request) -> Response:
        return Response(body, 200, media_type=JSON_MEDIA_TYPE)

    return serve_openapi
