"""HTTP routes for cluster operations: membership, leadership, snapshots, backups.

The Raft process carries them out; only the leader can, so when this node is not the
leader its answer names the leader and the request is passed on to it over HTTP, which
makes every node accept every operation.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse

from raftkv.http.errors import ApiError
from raftkv.http.responses import JSON_MEDIA_TYPE
from raftkv.http.routes.raft_calls import RaftCalls
from raftkv.http.serving.peer_http import node_url, peer_http_client
from raftkv.wire.decimals import bounded_decimal
from raftkv.wire.errors import row_for_reply_status
from raftkv.wire.http_headers import (
    HEADER_BACKUP_INDEX,
    HEADER_BACKUP_SHA256,
    HEADER_BACKUP_TERM,
    HEADER_FORWARDED,
    HEADER_PREFIX,
)
from raftkv.wire.protocol import U64_MAX, Flag, Op, ReplyStatus
from raftkv_ext.codec import ClientReply, ClientRequest

__all__ = ["DEFAULT_OPERATION_TIMEOUT_S", "MAX_OPERATION_TIMEOUT_S", "OperationRoutes"]

# Operations wait for their outcome (a learner catching up, a snapshot written), which
# can take longer than a key request; `?timeout=` overrides it per request.
DEFAULT_OPERATION_TIMEOUT_S: Final = 30.0
MAX_OPERATION_TIMEOUT_S: Final = 3600
# How much longer than the operation's own deadline the worker waits for its answer.
_REPLY_GRACE_S: Final = 2.0


class OperationRoutes:
    """The handlers; ``close`` releases the HTTP client used to reach the leader."""

    def __init__(self, raft: RaftCalls) -> None:
        self._raft = raft
        self._http: httpx.AsyncClient | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    # ------------------------------------------------------------------ plumbing

    def _timeout(self, request: Request) -> float:
        text = request.query_params.get("timeout")
        if text is None:
            return DEFAULT_OPERATION_TIMEOUT_S
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0 < value <= MAX_OPERATION_TIMEOUT_S:
            raise ApiError(
                400,
                f"timeout must be a number of seconds in (0, {MAX_OPERATION_TIMEOUT_S}], "
                f"got {text!r}",
            )
        return value

    async def _run(self, request: Request, op: Op, **fields: Any) -> ClientReply | Response:
        """Send the operation: its reply, or the leader's answer when this node had to
        pass it on."""
        timeout = self._timeout(request)
        ipc = self._raft.ipc
        ipc_request = ClientRequest(
            ipc.next_request_id(), int(op), timeout_ms=int(timeout * 1000), **fields
        )
        try:
            reply = await ipc.request(ipc_request, timeout + _REPLY_GRACE_S)
        except Exception as exc:  # IpcUnavailable and its timeout
            raise ApiError.retry_later(f"the Raft process did not answer: {exc}") from None
        if reply.status == ReplyStatus.NOT_LEADER:
            return await self._forward(request, reply.body.decode())
        return reply

    async def _forward(self, request: Request, leader: str) -> Response:
        if not leader:
            raise ApiError.retry_later("no leader is known; retry")
        if request.headers.get(HEADER_FORWARDED):
            raise ApiError.retry_later("leadership is changing; retry")
        settings = self._raft.settings
        if self._http is None:
            self._http = peer_http_client(settings, timeout=None)
        url = node_url(settings, leader, request.url.path)
        body = await request.body()
        headers = {
            "Content-Type": request.headers.get("content-type", JSON_MEDIA_TYPE),
            HEADER_FORWARDED: "1",
        }
        # The leader checks the caller's credentials again, with its own tables.
        authorization = request.headers.get("authorization")
        if authorization is not None:
            headers["Authorization"] = authorization
        upstream = self._http.build_request(
            request.method, url, params=request.query_params, content=body, headers=headers
        )
        try:
            answer = await self._http.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            raise ApiError.retry_later(f"could not reach the leader at {leader}: {exc}") from None

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in answer.aiter_raw():
                    yield chunk
            finally:
                await answer.aclose()

        passed = {
            k: v
            for k, v in answer.headers.items()
            if k.lower().startswith(HEADER_PREFIX) or k.lower() in ("content-type", "retry-after")
        }
        return StreamingResponse(relay(), answer.status_code, passed)

    @staticmethod
    def _error_for(reply: ClientReply) -> ApiError:
        """The error for a reply that is not OK: the Raft process's own explanation,
        with the HTTP status of raftkv.wire.errors' table."""
        message = reply.body.decode(errors="replace") or f"status {reply.status}"
        row = row_for_reply_status(reply.status)
        if row.retry_later:
            return ApiError.retry_later(message)
        return ApiError(row.http_status, message)

    async def _json_body(self, request: Request) -> dict[str, Any]:
        body = await request.body()
        if not body:
            return {}
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise ApiError(400, "request body must be a JSON object")
        return document

    # ------------------------------------------------------------------ routes

    async def add_member(self, request: Request) -> Response:
        spec = await self._json_body(request)
        node_id = spec.get("id")
        if not isinstance(node_id, int) or isinstance(node_id, bool) or node_id <= 0:
            raise ApiError(400, '"id" must be a positive integer')
        for field in ("rpc_addr", "http_addr"):
            if not isinstance(spec.get(field), str):
                raise ApiError(400, f'"{field}" must be a "host:port" string')
        wait = request.query_params.get("wait", "true") not in ("false", "0")
        payload = orjson.dumps(
            {"id": node_id, "rpc_addr": spec["rpc_addr"], "http_addr": spec["http_addr"]}
        )
        result = await self._run(
            request, Op.MEMBER_ADD, value=payload, flags=Flag.WAIT if wait else 0
        )
        if isinstance(result, Response):
            return result
        if result.status != ReplyStatus.OK:
            raise self._error_for(result)
        document = orjson.loads(result.body)
        promoted = document.get("membership") == "voter"
        return Response(
            result.body, 200 if promoted or not wait else 202, media_type=JSON_MEDIA_TYPE
        )

    async def remove_member(self, request: Request) -> Response:
        text = request.path_params["node_id"]
        node_id = bounded_decimal(text, U64_MAX)
        if node_id is None or not 0 < node_id <= U64_MAX:
            raise ApiError(400, f"node id must be a positive integer, got {text!r}")
        return self._ok_or_fail(await self._run(request, Op.MEMBER_REMOVE, limit=node_id))

    async def transfer_leader(self, request: Request) -> Response:
        spec = await self._json_body(request)
        target = spec.get("id", 0) or 0
        if not isinstance(target, int) or isinstance(target, bool) or target < 0:
            raise ApiError(400, '"id" must be a node id')
        return self._ok_or_fail(await self._run(request, Op.TRANSFER_LEADER, limit=target))

    async def snapshot(self, request: Request) -> Response:
        return self._ok_or_fail(await self._run(request, Op.SNAPSHOT))

    async def backup(self, request: Request) -> Response:
        result = await self._run(request, Op.BACKUP)
        if isinstance(result, Response):
            return result
        if result.status != ReplyStatus.OK:
            raise self._error_for(result)
        path = result.body.decode()
        try:
            digest = await _sha256_of(path)
        except OSError as exc:
            raise ApiError.retry_later(f"the snapshot file went away ({exc}); retry") from None
        headers = {
            HEADER_BACKUP_INDEX: str(result.index),
            HEADER_BACKUP_TERM: str(result.term),
            HEADER_BACKUP_SHA256: digest,
            "Content-Disposition": f'attachment; filename="{os.path.basename(path)}"',
        }
        return FileResponse(path, headers=headers, media_type="application/octet-stream")

    def _ok_or_fail(self, result: ClientReply | Response) -> Response:
        if isinstance(result, Response):
            return result
        if result.status != ReplyStatus.OK:
            raise self._error_for(result)
        return Response(result.body, 200, media_type=JSON_MEDIA_TYPE)


async def _sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
