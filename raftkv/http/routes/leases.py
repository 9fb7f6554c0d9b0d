"""The lease routes (docs/api.md, "Leases"): grant, keep alive, revoke, look up, list.

A lease's TTL and time left appear in seconds (with millisecond precision); the log and
the Raft process count milliseconds. Granting and keeping alive need no permission but
authentication (as etcd); revoking deletes the lease's keys, so it needs write
permission on each of them; a lookup shows only the keys the user may read.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from raftkv.http.auth.access import Need
from raftkv.http.auth.tables_cache import AuthTablesCache
from raftkv.http.errors import ApiError
from raftkv.http.kv_json import text_or_base64
from raftkv.http.lease_json import parse_lease_id, parse_ttl, seconds
from raftkv.http.middleware.auth_gate import Requirement, check_access
from raftkv.http.responses import json_response
from raftkv.http.routes.raft_calls import RaftCalls, reply_message
from raftkv.http.routes.request_input import consistency_flags, read_body, session_tag
from raftkv.kv.leases import MAX_LEASE_ID
from raftkv.wire.decimals import bounded_decimal
from raftkv.wire.protocol import (
    LEASE_GRANT_FIELDS,
    Op,
    ReplyStatus,
    decode_lease_info,
    decode_lease_list,
)

__all__ = ["LeaseRoutes"]

_MAX_KEYS_SHOWN = 10_000
_GRANT_BODY_LIMIT = 4096


def _path_lease_id(request: Request) -> int:
    text = str(request.path_params["lease_id"])
    parsed = bounded_decimal(text, MAX_LEASE_ID)
    if parsed is None or not 1 <= parsed <= MAX_LEASE_ID:
        raise ApiError(
            400, f"lease id must be an integer between 1 and {MAX_LEASE_ID}, got {text!r}"
        )
    return parsed


def _lease_answer(body: bytes) -> tuple[int, int, int]:
    """(lease id, ttl ms, keys deleted) from the Raft process's JSON answer."""
    try:
        doc = orjson.loads(body)
        return int(doc["lease"]), int(doc["ttl_ms"]), int(doc.get("deleted", 0))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise ApiError(500, "malformed lease reply from the Raft process") from None


class LeaseRoutes:
    def __init__(self, raft: RaftCalls, auth_cache: AuthTablesCache) -> None:
        self._raft = raft
        self._auth_cache = auth_cache

    async def grant(self, request: Request) -> Response:
        """``POST /lease`` with ``{"ttl": seconds, "id": optional}``."""
        tag = session_tag(request)
        raw = await read_body(request, _GRANT_BODY_LIMIT, "request body")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ApiError(400, 'request body must be a JSON object like {"ttl": 10}')
        unknown = sorted(set(doc) - {"ttl", "id"})
        if unknown:
            raise ApiError(400, f"unknown field(s) in request body: {', '.join(unknown)}")
        if "ttl" not in doc:
            raise ApiError(400, 'request body is missing the "ttl" field')
        ttl_ms = parse_ttl(doc["ttl"], '"ttl"')
        lease_id = 0 if doc.get("id") is None else parse_lease_id(doc["id"], '"id"')
        raft = self._raft
        reply = await raft.write_op(
            tag, Op.LEASE_GRANT, value=LEASE_GRANT_FIELDS.pack(lease_id, ttl_ms)
        )
        if reply.status == ReplyStatus.CONFLICT:
            raise ApiError(409, reply_message(reply, f"lease {lease_id} already exists"))
        if reply.status != ReplyStatus.OK:
            raise raft.error_for(reply, write=True)
        granted, granted_ttl, _ = _lease_answer(reply.body)
        return json_response(
            {"id": granted, "ttl": seconds(granted_ttl), "index": reply.index, "term": reply.term}
        )

    async def keep_alive(self, request: Request) -> Response:
        """``POST /lease/{id}/keepalive``: the TTL starts again once this is committed."""
        lease_id = _path_lease_id(request)
        raft = self._raft
        reply = await raft.write_op(session_tag(request), Op.LEASE_KEEP_ALIVE, limit=lease_id)
        if reply.status == ReplyStatus.NOT_FOUND:
            raise ApiError(
                404, reply_message(reply, f"lease {lease_id} not found"), extra={"id": lease_id}
            )
        if reply.status != ReplyStatus.OK:
            raise raft.error_for(reply, write=True)
        _, ttl_ms, _ = _lease_answer(reply.body)
        return json_response(
            {"id": lease_id, "ttl": seconds(ttl_ms), "index": reply.index, "term": reply.term}
        )

    async def revoke(self, request: Request) -> Response:
        """``DELETE /lease/{id}``: the lease ends and its keys are deleted at one revision."""
        lease_id = _path_lease_id(request)
        tag = session_tag(request)
        raft = self._raft
        # Deleting its keys needs write permission on each (as etcd checks them). With
        # auth off (check_access says so by returning None) nothing needs reading.
        auth_on = await check_access(request.scope, self._auth_cache, []) is not None
        info = await self._info(lease_id, _MAX_KEYS_SHOWN + 1) if auth_on else None
        if info is not None:
            keys, more = info[3], info[4]
            needs = [Requirement(Need.WRITE, k, "key") for k in keys]
            if more:
                # Keys past the ones read cannot be checked one by one: then only write
                # permission on every key will do.
                subject = f"every key (lease {lease_id} has over {_MAX_KEYS_SHOWN} keys)"
                needs.append(Requirement(Need.WRITE, b"", subject))
            await check_access(request.scope, self._auth_cache, needs)
        reply = await raft.write_op(tag, Op.LEASE_REVOKE, limit=lease_id)
        if reply.status == ReplyStatus.NOT_FOUND:
            raise ApiError(
                404, reply_message(reply, f"lease {lease_id} not found"), extra={"id": lease_id}
            )
        if reply.status != ReplyStatus.OK:
            raise raft.error_for(reply, write=True)
        _, _, deleted = _lease_answer(reply.body)
        return json_response(
            {
                "id": lease_id,
                "revoked": True,
                "deleted": deleted,
                "index": reply.index,
                "term": reply.term,
                "revision": reply.revision,
            }
        )

    async def _info(
        self, lease_id: int, max_keys: int, flags: int = 0
    ) -> tuple[int, int, int, list[bytes], bool, int] | None:
        raft = self._raft
        request = raft.request(Op.LEASE_INFO, limit=lease_id, prev_revision=max_keys, flags=flags)
        reply = await raft.call(request, write=False)
        if reply.status == ReplyStatus.NOT_FOUND:
            return None
        if reply.status != ReplyStatus.OK:
            raise raft.error_for(reply, write=False)
        try:
            return (*decode_lease_info(reply.body), reply.index)
        except ValueError as exc:
            raise ApiError(500, f"malformed lease reply from the Raft process: {exc}") from None

    async def lookup(self, request: Request) -> Response:
        """``GET /lease/{id}[?keys=false&limit=N&consistency=stale]``: TTL, time left
        and attached keys."""
        lease_id = _path_lease_id(request)
        flags = consistency_flags(request)
        show_keys = request.query_params.get("keys", "true")
        if show_keys not in ("true", "false"):
            raise ApiError(400, f"query parameter keys must be true or false, got {show_keys!r}")
        limit_text = request.query_params.get("limit", str(1000))
        limit = bounded_decimal(limit_text, _MAX_KEYS_SHOWN)
        if limit is None or not 1 <= limit <= _MAX_KEYS_SHOWN:
            raise ApiError(
                400,
                f"query parameter limit must be between 1 and {_MAX_KEYS_SHOWN}, "
                f"got {limit_text!r}",
            )
        info = await self._info(lease_id, limit if show_keys == "true" else 0, flags)
        if info is None:
            raise ApiError(404, f"lease {lease_id} not found", extra={"id": lease_id})
        _, ttl_ms, remaining_ms, keys, more, index = info
        doc: dict[str, Any] = {
            "id": lease_id,
            "ttl": seconds(ttl_ms),
            "remaining": None if remaining_ms < 0 else seconds(remaining_ms),
            "index": index,
        }
        if show_keys == "true":
            may_read = await check_access(request.scope, self._auth_cache, [])
            shown = [k for k in keys if may_read is None or may_read(k)]
            doc["keys"] = [text_or_base64("key", k) for k in shown]
            doc["more"] = more
        return json_response(doc)

    async def list_leases(self, request: Request) -> Response:
        """``GET /lease``: every lease with its TTL and time left."""
        flags = consistency_flags(request)
        raft = self._raft
        reply = await raft.call(raft.request(Op.LEASE_LIST, flags=flags), write=False)
        if reply.status != ReplyStatus.OK:
            raise raft.error_for(reply, write=False)
        try:
            items = decode_lease_list(reply.body)
        except ValueError as exc:
            raise ApiError(500, f"malformed lease list from the Raft process: {exc}") from None
        leases = [
            {
                "id": lease_id,
                "ttl": seconds(ttl_ms),
                "remaining": None if remaining_ms < 0 else seconds(remaining_ms),
            }
            for lease_id, ttl_ms, remaining_ms in items
        ]
        return json_response({"leases": leases, "count": len(leases), "index": reply.index})
