"""The worker's watch service: opens streams and long polls over the feed.

It owns the worker's one feed (started with the first watch), counts each client's
open streams against ``--watch-max-per-client``, and runs each stream in a task of its
own on the connection it was handed (serving/stream_handover.py), cutting off a client
that reads nothing for ``--watch-slow-timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from raftkv.http.errors import ApiError
from raftkv.http.kv_json import kv_json
from raftkv.http.middleware.metrics import HttpMetrics
from raftkv.http.serving.ipc_client import IpcClient, IpcUnavailable
from raftkv.http.serving.stream_handover import STREAM_SCOPE_KEY, ConnectionStream
from raftkv.http.watch.feed import WatchFeed, WatchRange
from raftkv.http.watch.messages import MessageFormat, event_json
from raftkv.http.watch.watcher import (
    CatchUpSource,
    CaughtUpEvents,
    ResyncImage,
    Watcher,
    WatcherClosed,
)
from raftkv.wire.watch_limits import WatchLimits

__all__ = ["LONG_POLL_EVENTS", "WatchRequest", "WatchService"]

log = logging.getLogger(__name__)

LONG_POLL_EVENTS = 1000
_FEED_WAIT_S = 5.0
"""How long a request waits for the feed to start, and the least a long poll gives the
Raft process to answer its own watch (a round trip, however short the wait)."""


class WatchRequest:
    """A parsed watch request (routes/watch.py)."""

    __slots__ = ("form", "progress_s", "range", "since", "stale", "wait_s", "with_prev")

    def __init__(
        self,
        watch_range: WatchRange,
        *,
        since: int | None,
        stale: bool,
        with_prev: bool,
        form: MessageFormat,
        progress_s: float,
        wait_s: float | None,
    ) -> None:
        self.range = watch_range
        self.since = since
        self.stale = stale
        self.with_prev = with_prev
        self.form = form
        self.progress_s = progress_s
        self.wait_s = wait_s


class WatchService:
    def __init__(
        self,
        ipc: IpcClient,
        limits: WatchLimits,
        metrics: HttpMetrics,
        linearizable_now: Callable[[], Awaitable[int]],
    ) -> None:
        self._ipc = ipc
        self._limits = limits
        self._metrics = metrics
        self._linearizable_now = linearizable_now
        self.feed = WatchFeed(ipc)
        self._per_client: dict[str, int] = {}
        self._streams: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        streams = list(self._streams)
        for task in streams:
            task.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
        await self.feed.close()

    async def _start_position(self, request: WatchRequest) -> int:
        if request.since is not None:
            return request.since
        if request.stale:
            return self.feed.revision
        return await self._linearizable_now()

    async def _ready(self) -> None:
        try:
            async with asyncio.timeout(_FEED_WAIT_S):
                await self.feed.ready()
        except TimeoutError:
            raise ApiError.retry_later(
                "the watch feed of this node is not available; retry"
            ) from None

    # -- streams -------------------------------------------------------------------

    async def stream(self, request: WatchRequest, client: str) -> _WatchResponse:
        """Admit a stream (429 past the per-client limit) and position it."""
        if self._per_client.get(client, 0) >= self._limits.max_per_client:
            raise ApiError(
                429,
                f"this client already has {self._limits.max_per_client} watch streams open "
                "on this worker (--watch-max-per-client)",
            )
        # Counted from admission, not from when the response starts: the awaits below
        # (the feed, a read index round) would otherwise let every concurrent request
        # of a client past the check above. _closed, or the except below, gives it back.
        self._per_client[client] = self._per_client.get(client, 0) + 1
        try:
            await self._ready()
            position = await self._start_position(request)
        except BaseException:
            self._release(client)
            raise
        watcher = Watcher(
            self.feed,
            self._ipc,
            request.range,
            position,
            with_prev=request.with_prev,
            form=request.form,
            progress_s=request.progress_s,
            buffer_bytes=self._limits.buffer_bytes,
            metrics=self._metrics,
        )
        return _WatchResponse(self, watcher, client)

    def _opened(self, watcher: Watcher, client: str) -> None:
        self.feed.register(watcher)
        self._metrics.watcher_opened()

    def _release(self, client: str) -> None:
        remaining = self._per_client.get(client, 1) - 1
        if remaining:
            self._per_client[client] = remaining
        else:
            self._per_client.pop(client, None)

    def _closed(self, watcher: Watcher, client: str) -> None:
        self._release(client)
        self.feed.unregister(watcher)
        self._metrics.watcher_closed()

    def _serve_on_connection(self, watcher: Watcher, stream: ConnectionStream, client: str) -> None:
        """The stream's task, on the connection it was handed; a lost connection
        cancels it."""
        self._opened(watcher, client)
        task = asyncio.ensure_future(self._run_on_connection(watcher, stream, client))
        self._streams.add(task)

        def ended(task: asyncio.Task[None]) -> None:
            # A callback, not a finally: a task cancelled before its first step never
            # runs its coroutine at all.
            self._streams.discard(task)
            self._closed(watcher, client)
            failure = None if task.cancelled() else task.exception()
            if failure is None:
                stream.end()
            else:
                # No last chunk: the client must not take a failure for a clean end.
                log.error("watch stream failed", exc_info=failure)
                stream.abort()

        task.add_done_callback(ended)
        stream.when_lost(task.cancel)

    async def _run_on_connection(
        self, watcher: Watcher, stream: ConnectionStream, client: str
    ) -> None:
        slow_timeout_s = self._limits.slow_timeout_s

        async def send_chunk(data: bytes) -> None:
            if stream.lost:
                raise WatcherClosed
            if not stream.writable:
                await self._wait_for_room(stream, slow_timeout_s, client)
            stream.write(data)

        def write_now(data: bytes) -> bool:
            if stream.lost or not stream.writable:
                return False
            stream.write(data)
            return True

        with contextlib.suppress(WatcherClosed):  # the client went, or was cut off
            await watcher.run(send_chunk, write_now)

    async def _wait_for_room(
        self, stream: ConnectionStream, slow_timeout_s: float, client: str
    ) -> None:
        """Until the connection takes more. A client that read nothing for the slow
        timeout is cut off; a slow one that still reads may go on."""
        waiting = stream.backlog
        while True:
            try:
                async with asyncio.timeout(slow_timeout_s):
                    await stream.wait_writable()
                return
            except TimeoutError:
                now_waiting = stream.backlog
                if now_waiting < waiting:
                    waiting = now_waiting
                    continue
            self._metrics.cut_off()
            log.warning(
                "cutting off a watcher at %s: it read nothing for %g s", client, slow_timeout_s
            )
            stream.abort()
            raise WatcherClosed

    async def _serve_as_asgi(
        self, watcher: Watcher, receive: Receive, send: Send, client: str
    ) -> None:
        """The stream as an ordinary ASGI response, for servers other than the
        worker's own (its flow control is the server's; there is no slow-client cut-off)."""

        async def send_chunk(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        self._opened(watcher, client)
        runner = asyncio.ensure_future(watcher.run(send_chunk))
        disconnect = asyncio.ensure_future(_until_disconnected(receive))
        try:
            await asyncio.wait({runner, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (runner, disconnect):
                task.cancel()
            # Before the await: when this response is cancelled through a cancel scope
            # (anyio's cancels every later await inside it too), the await raises at once
            # and the client's place and the watcher's registration were never given back.
            self._closed(watcher, client)
            outcomes = await asyncio.gather(runner, disconnect, return_exceptions=True)
        failure = outcomes[0]
        if isinstance(failure, Exception) and not isinstance(failure, WatcherClosed):
            log.error("watch stream failed", exc_info=failure)

    # -- long polls ----------------------------------------------------------------

    async def long_poll(self, request: WatchRequest) -> dict[str, Any]:
        """The changes after ``since`` as soon as there are any, or none after
        ``wait_s``; a resync image when ``since`` is older than the history."""
        await self._ready()
        position = await self._start_position(request)
        feed = self.feed
        loop = asyncio.get_running_loop()
        assert request.wait_s is not None
        deadline = loop.time() + request.wait_s
        while True:
            if feed.covers(position):
                events, through = feed.events_after(position, request.range, LONG_POLL_EVENTS)
                if events:
                    self._metrics.events_sent(len(events))
                    return _poll_answer(events, through, request.with_prev)
                position = through
            elif position < feed.revision:
                answer = await self._poll_raft_process(request, position, deadline)
                if isinstance(answer, dict):
                    return answer
                # The ring covers the position the Raft process's watch brought the poll
                # to: go on from there, reading the ring before any answer. (Going back
                # to the old position reopened that watch, and an answer at the deadline
                # skipped the ring's changes after it.)
                position = answer
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return {"revision": max(position, feed.revision), "events": []}
            await feed.wait_advance(remaining)

    async def _poll_raft_process(
        self, request: WatchRequest, position: int, deadline: float
    ) -> dict[str, Any] | int:
        """The answer from a watch in the Raft process, or the position it reached once
        the feed's ring covers it."""
        source = CatchUpSource(self._ipc, request.range, position, with_prev=request.with_prev)
        try:
            await source.open()
        except IpcUnavailable as exc:
            raise ApiError.retry_later(f"{exc}; retry") from None
        try:
            loop = asyncio.get_running_loop()
            while True:
                remaining = deadline - loop.time()
                try:
                    # The Raft process gets a round trip's time to answer however short
                    # the wait: with 1 ms, `wait=0` answered "nothing yet" while the
                    # changes were on their way (it depended on the round trip's speed).
                    async with asyncio.timeout(max(remaining, _FEED_WAIT_S)):
                        item = await source.next()
                except TimeoutError:
                    return {"revision": position, "events": []}
                if item is None:
                    raise ApiError.retry_later("the watch was interrupted; retry")
                if isinstance(item, ResyncImage):
                    self._metrics.resynced()
                    return {
                        "revision": item.revision,
                        "resync": [kv_json(kv) for kv in item.items],
                        "events": [],
                    }
                if isinstance(item, CaughtUpEvents):
                    if item.events:
                        self._metrics.events_sent(len(item.events))
                        return _poll_answer(item.events, item.revision, request.with_prev)
                    position = item.revision
                else:
                    position = max(position, item)
                if self.feed.covers(position):
                    return position
        finally:
            source.close()


def _poll_answer(events: list[Any], revision: int, with_prev: bool) -> dict[str, Any]:
    return {
        "revision": revision,
        "events": [event_json(event, with_prev=with_prev) for event in events],
    }


async def _until_disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class _WatchResponse(Response):
    """The ASGI response of one watch stream. Its head goes out through the middleware;
    under the worker's own protocol the body is then handed to the connection
    (serving/stream_handover.py) and the ASGI call returns, so an idle stream holds no
    request frames. Under another server it stays an ordinary streaming response."""

    def __init__(self, service: WatchService, watcher: Watcher, client: str) -> None:
        super().__init__(media_type=watcher.form.media_type)
        self._service = service
        self._watcher = watcher
        self._client = client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = self._service
        take_over = scope.get(STREAM_SCOPE_KEY)
        headers = [
            (b"content-type", self._watcher.form.media_type.encode()),
            (b"cache-control", b"no-cache"),
            # Proxies that buffer responses would hold events back.
            (b"x-accel-buffering", b"no"),
        ]
        if take_over is not None:
            # Nothing can follow an endless response on its connection.
            headers.append((b"connection", b"close"))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
        except BaseException:
            service._release(self._client)  # admitted in stream(), never opened
            raise
        if scope.get("method") == "HEAD":
            service._release(self._client)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if take_over is None:
            await service._serve_as_asgi(self._watcher, receive, send, self._client)
            return
        try:
            stream = take_over()
        except RuntimeError:
            # Nothing to stream to: a client already gone, a request pipelined behind
            # this one, or a server stopping. The head is all it gets.
            service._release(self._client)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        service._serve_on_connection(self._watcher, stream, self._client)
