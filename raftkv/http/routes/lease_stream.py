"""``POST /lease/keepalive``: the streaming keep-alive (docs/api.md, "Leases").

One request keeps any number of leases alive for as long as the client likes, as etcd's
``LeaseKeepAlive`` stream does: the client sends one NDJSON line per keep-alive
(``{"id": 7}``) in a request body that does not end, and reads one line back per line
sent, in order, once that keep-alive is committed: ``{"id", "ttl", "index"}``, or
``{"id", "error", "status": 404}`` for a lease that is gone. The response ends when the
request body does.

The lines that arrive together go to the Raft process as one batch, one log entry
(``Op.LEASE_KEEP_ALIVES``): a client renewing thousands of leases costs the log a few
entries a second, not one per lease. A line that is not a keep-alive ends the stream,
after the lines before it are answered, with a last line ``{"error", "status": 400}``;
so does a silence longer than ``SILENCE_LIMIT_S`` (the body's usual ``--read-timeout`` does
not apply: the worker's protocol is told that this body is a stream). A plain ASGI
endpoint, because Starlette's responses would read the request body themselves to watch
for a disconnect.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

from raftkv.http.errors import ApiError
from raftkv.http.lease_json import parse_lease_id, seconds
from raftkv.http.routes.raft_calls import RaftCalls
from raftkv.http.serving.stream_handover import LONG_BODY_SCOPE_KEY
from raftkv.wire.protocol import Op, ReplyStatus

__all__ = ["MAX_BATCH", "MAX_LINE_BYTES", "SILENCE_LIMIT_S", "LeaseKeepAliveStream"]

MAX_BATCH = 1000
"""The most keep-alives one entry carries (more lines at once go as several)."""

MAX_LINE_BYTES = 1024
"""The longest keep-alive line: a lease id fits in a few dozen bytes."""
SILENCE_LIMIT_S = 600.0
"""A stream with no line for this long is ended (the longest sensible renewal interval
of a lease, a third of a 30-minute TTL, is far shorter)."""

_NDJSON = b"application/x-ndjson"
_U64 = struct.Struct("<Q")


def _line(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document) + b"\n"


class LeaseKeepAliveStream:
    """The ASGI endpoint of ``POST /lease/keepalive``."""

    def __init__(self, raft: RaftCalls) -> None:
        self._raft = raft

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        allow_long_body: Callable[[], bool] | None = scope.get(LONG_BODY_SCOPE_KEY)
        if allow_long_body is not None:
            allow_long_body()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", _NDJSON), (b"cache-control", b"no-store")],
            }
        )
        pending = b""
        while True:
            try:
                message: Message = await asyncio.wait_for(receive(), SILENCE_LIMIT_S)
            except TimeoutError:
                await self._end(send, 400, f"no keep-alive for {SILENCE_LIMIT_S:g} s")
                return
            if message["type"] == "http.disconnect":
                return
            pending += message.get("body", b"")
            more = bool(message.get("more_body", False))
            lines = pending.split(b"\n")
            pending = lines.pop()
            if not more and pending.strip():
                lines.append(pending)
                pending = b""
            ids: list[int] = []
            refusal: ApiError | None = None
            for raw in lines:
                if not raw.strip():
                    continue
                try:
                    ids.append(self._parse(raw))
                except ApiError as exc:
                    refusal = exc
                    break
            for start in range(0, len(ids), MAX_BATCH):
                answer = await self._keep_alive(ids[start : start + MAX_BATCH])
                await send({"type": "http.response.body", "body": answer, "more_body": True})
            if refusal is not None:
                await self._end(send, refusal.status, refusal.message)
                return
            if len(pending) > MAX_LINE_BYTES:
                await self._end(send, 400, f"a line longer than {MAX_LINE_BYTES} bytes")
                return
            if not more:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return

    @staticmethod
    def _parse(raw: bytes) -> int:
        if len(raw) > MAX_LINE_BYTES:
            raise ApiError(400, f"a line longer than {MAX_LINE_BYTES} bytes")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"a line is not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or set(doc) != {"id"}:
            raise ApiError(400, 'each line must be a JSON object like {"id": 7}')
        return parse_lease_id(doc["id"], '"id"')

    async def _keep_alive(self, lease_ids: list[int]) -> bytes:
        """Renew ``lease_ids`` in one entry; one answer line per id, in their order."""
        raft = self._raft
        distinct = sorted(set(lease_ids))
        request = raft.request(Op.LEASE_KEEP_ALIVES, value=b"".join(_U64.pack(i) for i in distinct))
        try:
            reply = await raft.call(request, write=True)
        except ApiError as exc:
            return self._failed(lease_ids, exc.message, exc.status)
        if reply.status != ReplyStatus.OK:
            error = raft.error_for(reply, write=True)
            return self._failed(lease_ids, error.message, error.status)
        if len(reply.body) != _U64.size * len(distinct):
            return self._failed(lease_ids, "malformed keep-alive reply", 500)
        ttls = dict(zip(distinct, (t for (t,) in _U64.iter_unpack(reply.body)), strict=True))
        lines = []
        for lease_id in lease_ids:
            ttl_ms = ttls[lease_id]
            if ttl_ms:
                lines.append(_line({"id": lease_id, "ttl": seconds(ttl_ms), "index": reply.index}))
            else:
                message = f"lease {lease_id} not found"
                lines.append(_line({"id": lease_id, "error": message, "status": 404}))
        return b"".join(lines)

    @staticmethod
    def _failed(lease_ids: list[int], message: str, status: int) -> bytes:
        return b"".join(
            _line({"id": lease_id, "error": message, "status": status}) for lease_id in lease_ids
        )

    @staticmethod
    async def _end(send: Send, status: int, message: str) -> None:
        last = _line({"error": message, "status": status})
        await send({"type": "http.response.body", "body": last, "more_body": False})
