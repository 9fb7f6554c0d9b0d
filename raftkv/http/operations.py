"""HTTP routes for cluster operations: membership, leadership, snapshots, backups.

The Raft process carries them out; only the leader can, so when this node is not the
leader its answer names the leader and the request is passed on to it over HTTP, which
makes every node accept every operation.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse

from raftkv.http.peer_http import node_url, peer_http_client
from raftkv.wire.decimals import bounded_decimal
from raftkv.wire.protocol import Flag, Op, ReplyStatus
from raftkv_ext.codec import ClientReply, ClientRequest

if TYPE_CHECKING:
    from raftkv.http.app import _Api

log = logging.getLogger("raftkv.http")

_JSON = "application/json"
# Operations wait for their outcome (a learner catching up, a snapshot written), which
# can take longer than a key request; `?timeout=` overrides it per request.
DEFAULT_OPERATION_TIMEOUT_S = 30.0
_FORWARDED_HEADER = "X-Raftkv-Forwarded"


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type=_JSON)


def _error(status: int, message: str, retry: bool = False) -> Response:
    headers = {"Retry-After": "1"} if retry else None
    return _json({"error": message}, status, headers)


class OperationRoutes:
    def __init__(self, api: _Api) -> None:
        self.api = api
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
        if not 0 < value <= 3600:
            raise _BadRequest(f"timeout must be a number of seconds in (0, 3600], got {text!r}")
        return value

    async def _run(self, request: Request, op: Op, **fields: Any) -> ClientReply | Response:
        """Send the operation; a Response when it has to be answered another way."""
        try:
            timeout = self._timeout(request)
        except _BadRequest as exc:
            return _error(400, str(exc))
        api = self.api
        ipc_request = ClientRequest(
            api.ipc.next_request_id(), int(op), timeout_ms=int(timeout * 1000), **fields
        )
        try:
            reply = await api.ipc.request(ipc_request, timeout + 2.0)
        except Exception as exc:  # IpcUnavailable and its timeout
            return _error(503, f"the Raft process did not answer: {exc}", retry=True)
        if reply.status == ReplyStatus.NOT_LEADER:
            return await self._forward(request, reply.body.decode())
        return reply

    async def _forward(self, request: Request, leader: str) -> Response:
        if not leader:
            return _error(503, "no leader is known; retry", retry=True)
        if request.headers.get(_FORWARDED_HEADER):
            return _error(503, "leadership is changing; retry", retry=True)
        if self._http is None:
            self._http = peer_http_client(self.api.settings, timeout=None)
        url = node_url(self.api.settings, leader, request.url.path)
        body = await request.body()
        headers = {
            "Content-Type": request.headers.get("content-type", _JSON),
            _FORWARDED_HEADER: "1",
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
            return _error(503, f"could not reach the leader at {leader}: {exc}", retry=True)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in answer.aiter_raw():
                    yield chunk
            finally:
                await answer.aclose()

        passed = {
            k: v
            for k, v in answer.headers.items()
            if k.lower().startswith("x-raftkv-") or k.lower() in ("content-type", "retry-after")
        }
        return StreamingResponse(relay(), answer.status_code, passed)

    @staticmethod
    def _fail(reply: ClientReply) -> Response:
        message = reply.body.decode(errors="replace") or f"status {reply.status}"
        status = reply.status
        if status == ReplyStatus.CONFLICT:
            return _error(409, message)
        if status == ReplyStatus.NOT_FOUND:
            return _error(404, message)
        if status == ReplyStatus.BAD_REQUEST:
            return _error(400, message)
        if status in (ReplyStatus.UNAVAILABLE, ReplyStatus.TIMEOUT):
            return _error(503, message, retry=True)
        return _error(500, message)

    async def _json_body(self, request: Request) -> dict[str, Any]:
        body = await request.body()
        if not body:
            return {}
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _BadRequest(f"request body is not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise _BadRequest("request body must be a JSON object")
        return document

    # ------------------------------------------------------------------ routes

    async def add_member(self, request: Request) -> Response:
        try:
            spec = await self._json_body(request)
            node_id = spec.get("id")
            if not isinstance(node_id, int) or isinstance(node_id, bool) or node_id <= 0:
                raise _BadRequest('"id" must be a positive integer')
            for field in ("rpc_addr", "http_addr"):
                if not isinstance(spec.get(field), str):
                    raise _BadRequest(f'"{field}" must be a "host:port" string')
            wait = request.query_params.get("wait", "true") not in ("false", "0")
            payload = orjson.dumps(
                {"id": node_id, "rpc_addr": spec["rpc_addr"], "http_addr": spec["http_addr"]}
            )
            result = await self._run(
                request, Op.MEMBER_ADD, value=payload, flags=Flag.WAIT if wait else 0
            )
        except _BadRequest as exc:
            return _error(400, str(exc))
        if isinstance(result, Response):
            return result
        if result.status != ReplyStatus.OK:
            return self._fail(result)
        document = orjson.loads(result.body)
        promoted = document.get("membership") == "voter"
        return Response(result.body, 200 if promoted or not wait else 202, media_type=_JSON)

    async def remove_member(self, request: Request) -> Response:
        text = request.path_params["node_id"]
        node_id = bounded_decimal(text, (1 << 64) - 1)
        if node_id is None or not 0 < node_id < 1 << 64:
            return _error(400, f"node id must be a positive integer, got {text!r}")
        return self._ok_or_fail(await self._run(request, Op.MEMBER_REMOVE, limit=node_id))

    async def transfer_leader(self, request: Request) -> Response:
        try:
            spec = await self._json_body(request)
            target = spec.get("id", 0) or 0
            if not isinstance(target, int) or isinstance(target, bool) or target < 0:
                raise _BadRequest('"id" must be a node id')
            result = await self._run(request, Op.TRANSFER_LEADER, limit=target)
        except _BadRequest as exc:
            return _error(400, str(exc))
        return self._ok_or_fail(result)

    async def snapshot(self, request: Request) -> Response:
        return self._ok_or_fail(await self._run(request, Op.SNAPSHOT))

    async def backup(self, request: Request) -> Response:
        result = await self._run(request, Op.BACKUP)
        if isinstance(result, Response):
            return result
        if result.status != ReplyStatus.OK:
            return self._fail(result)
        path = result.body.decode()
        try:
            digest = await _sha256_of(path)
        except OSError as exc:
            return _error(503, f"the snapshot file went away ({exc}); retry", retry=True)
        headers = {
            "X-Raftkv-Backup-Index": str(result.index),
            "X-Raftkv-Backup-Term": str(result.term),
            "X-Raftkv-Backup-Sha256": digest,
            "Content-Disposition": f'attachment; filename="{os.path.basename(path)}"',
        }
        return FileResponse(path, headers=headers, media_type="application/octet-stream")

    def _ok_or_fail(self, result: ClientReply | Response) -> Response:
        if isinstance(result, Response):
            return result
        if result.status != ReplyStatus.OK:
            return self._fail(result)
        return Response(result.body, 200, media_type=_JSON)


class _BadRequest(ValueError):
    pass


async def _sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
