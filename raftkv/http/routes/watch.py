"""``GET /watch/{key}`` and ``GET /watch?prefix=``: the parameters of a watch, checked
and answered with a stream or a long poll (docs/api.md, "Watch")."""

from __future__ import annotations

import math
from urllib.parse import unquote_to_bytes

from starlette.requests import Request
from starlette.responses import Response

from raftkv.http.errors import ApiError
from raftkv.http.key_route import WATCH_PREFIX, query_bytes
from raftkv.http.responses import json_response
from raftkv.http.routes.raft_calls import RaftCalls
from raftkv.http.routes.request_input import parse_revision
from raftkv.http.watch.feed import WatchRange
from raftkv.http.watch.messages import NDJSON, SSE
from raftkv.http.watch.service import WatchRequest, WatchService

__all__ = ["WatchRoutes"]

MAX_WAIT_S = 300.0
MIN_PROGRESS_S = 0.1
MAX_PROGRESS_S = 3600.0


def _seconds(text: str, name: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ApiError(
            400, f"query parameter {name} must be a number of seconds, got {text!r}"
        ) from None
    if not math.isfinite(value) or not low <= value <= high:
        raise ApiError(400, f"query parameter {name} must be between {low:g} and {high:g}")
    return value


def _flag(request: Request, name: str) -> bool:
    text = request.query_params.get(name)
    if text is None:
        return False
    if text.lower() in ("", "true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ApiError(400, f"query parameter {name} must be true or false, got {text!r}")


def _wants_sse(request: Request) -> bool:
    # EventSource sends exactly this type; nobody lists it to refuse it.
    return "text/event-stream" in request.headers.get("accept", "").lower()


class WatchRoutes:
    def __init__(self, raft: RaftCalls, service: WatchService) -> None:
        self._raft = raft
        self._service = service

    def _parse(self, request: Request, watch_range: WatchRange) -> WatchRequest:
        limit = self._raft.settings.max_key_bytes
        if len(watch_range.key) > limit:
            what = "prefix" if watch_range.is_prefix else "key"
            raise ApiError(
                413, f"{what} is {len(watch_range.key)} bytes; the limit is {limit} bytes"
            )
        params = request.query_params
        since_text = params.get("since")
        if since_text is not None:
            since: int | None = parse_revision(since_text.strip(), "query parameter since")
        else:
            last_event = request.headers.get("last-event-id")
            since = (
                None
                if not last_event
                else parse_revision(last_event.strip(), "header Last-Event-ID")
            )
        consistency = params.get("consistency", "linearizable")
        if consistency not in ("linearizable", "stale"):
            raise ApiError(
                400,
                "query parameter consistency must be 'linearizable' or 'stale', "
                f"got {consistency!r}",
            )
        progress_text = params.get("progress")
        progress_s = (
            self._raft.settings.watch.progress_s
            if progress_text is None
            else _seconds(progress_text, "progress", MIN_PROGRESS_S, MAX_PROGRESS_S)
        )
        wait_text = params.get("wait")
        wait_s = None if wait_text is None else _seconds(wait_text, "wait", 0.0, MAX_WAIT_S)
        return WatchRequest(
            watch_range,
            since=since,
            stale=consistency == "stale",
            with_prev=_flag(request, "prev"),
            form=SSE if _wants_sse(request) else NDJSON,
            progress_s=progress_s,
            wait_s=wait_s,
        )

    async def _serve(self, request: Request, watch_range: WatchRange) -> Response:
        parsed = self._parse(request, watch_range)
        if parsed.wait_s is not None:
            return json_response(await self._service.long_poll(parsed))
        client = request.client.host if request.client is not None else "unknown"
        return await self._service.stream(parsed, client)

    async def watch_key(self, request: Request) -> Response:
        raw = request.scope.get("raw_path")
        if isinstance(raw, bytes) and raw.startswith(WATCH_PREFIX):
            key = unquote_to_bytes(raw[len(WATCH_PREFIX) :])
        else:
            key = request.url.path[len("/watch/") :].encode("utf-8")
        if not key:
            raise ApiError(400, "key must not be empty (watch a prefix with /watch?prefix=)")
        return await self._serve(request, WatchRange(key, is_prefix=False))

    async def watch_prefix(self, request: Request) -> Response:
        prefix = query_bytes(request.scope.get("query_string", b""), b"prefix")
        if prefix is None:
            raise ApiError(
                400,
                "query parameter prefix is required (an explicit empty ?prefix= watches every key)",
            )
        return await self._serve(request, WatchRange(prefix, is_prefix=True))
