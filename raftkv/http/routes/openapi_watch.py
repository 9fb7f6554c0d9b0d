"""The OpenAPI description of ``GET /watch/{key}`` and ``GET /watch?prefix=`` (see
raftkv.http.routes.watch and docs/api.md, "Watch"), merged into the document by
:func:`raftkv.http.routes.openapi.build_openapi`."""

from __future__ import annotations

from typing import Any

from raftkv.http.routes.watch import MAX_PROGRESS_S, MAX_WAIT_S, MIN_PROGRESS_S
from raftkv.wire.protocol import MAX_REVISION

__all__ = ["watch_paths"]

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _ERROR}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _parameters() -> list[dict[str, Any]]:
    return [
        _query(
            "since",
            "Deliver every change above this revision (default: the node's current "
            "revision, read linearizably).",
            {"type": "integer", "minimum": 0, "maximum": MAX_REVISION},
        ),
        _query(
            "consistency",
            "Without since: stale starts at the node's applied revision at once.",
            {"type": "string", "enum": ["linearizable", "stale"], "default": "linearizable"},
        ),
        _query("prev", "Events carry the key's previous state.", {"type": "boolean"}),
        _query(
            "progress",
            "Seconds between progress messages on an idle stream.",
            {"type": "number", "minimum": MIN_PROGRESS_S, "maximum": MAX_PROGRESS_S},
        ),
        _query(
            "wait",
            "Long poll: answer one JSON document within this many seconds.",
            {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S},
        ),
        {
            "name": "Last-Event-ID",
            "in": "header",
            "required": False,
            "description": "Server-Sent Events reconnection: the revision to resume after "
            "when since is absent.",
            "schema": {"type": "integer", "minimum": 0},
        },
    ]


def _operation(operation_id: str, summary: str, extra: list[dict[str, Any]]) -> dict[str, Any]:
    stream = {"type": "string", "description": "One JSON message per line (see docs/api.md)."}
    return {
        "operationId": operation_id,
        "summary": summary,
        "parameters": extra + _parameters(),
        "responses": {
            "200": {
                "description": "A stream of messages (start, events, resync, progress), or "
                "with wait= one document {revision, events[, resync]}.",
                "content": {
                    "application/x-ndjson": {"schema": stream},
                    "text/event-stream": {"schema": stream},
                    "application/json": {"schema": {"type": "object"}},
                },
            },
            "400": _error("A malformed since, progress, wait or prefix; an empty key."),
            "413": _error("The key or prefix is above --max-key-bytes."),
            "429": _error("This client already has --watch-max-per-client streams open."),
            "503": _error("No leader for the linearizable start, or the node is stopping."),
        },
    }


def watch_paths() -> dict[str, Any]:
    key = {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}
    prefix = {
        "name": "prefix",
        "in": "query",
        "required": True,
        "description": "Watch every key starting with it (empty: every key).",
        "schema": {"type": "string"},
    }
    return {
        "/watch/{key}": {"get": _operation("watchKey", "Follow the changes to one key.", [key])},
        "/watch": {
            "get": _operation("watchPrefix", "Follow the changes under a prefix.", [prefix])
        },
    }
