"""The worker's connection to the Raft process: one Unix socket, many requests in flight.

Requests are written without waiting for earlier replies and matched to their replies by
request id, so replies may come back in any order. Requests issued in the same event-loop
turn leave in one write (one ``encode_batch`` and one ``transport.write``), which lets the
Raft process read and propose them as one batch.

The connection is an ``asyncio.Protocol``: bytes go straight from the transport into a
``FrameDecoder`` and resolve the waiting futures, with no reader task in between.

When the connection drops, every request in flight fails with ``IpcUnavailable``, and the
next request reconnects. Failed connection attempts back off (50 ms doubling up to 1 s):
a request made while waiting out the backoff fails at once rather than piling up.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable

from raftkv.wire.pipelined_connection import PipelinedConnection
from raftkv.wire.protocol import REQUEST_OVERHEAD_BYTES, Op
from raftkv_ext.codec import (
    DEFAULT_MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    ClientReply,
    ClientRequest,
    Handshake,
)

__all__ = ["IpcClient", "IpcTimeout", "IpcUnavailable"]

log = logging.getLogger(__name__)

MIN_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0


class IpcUnavailable(Exception):
    """The Raft process could not answer this request.

    ``sent`` tells whether the request may have reached the Raft process: when it is
    False the request certainly had no effect; when True a write may have been applied.
    """

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class IpcTimeout(IpcUnavailable):
    """No reply arrived in time (the request was sent)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, sent=True)


def _ignore_outcome(future: asyncio.Future[ClientReply]) -> None:
    if not future.cancelled():
        future.exception()


class _Deadlines:
    """Fails the futures of requests whose time is up, with one timer for all of them.

    ``asyncio.timeout_at`` around each request cost a timer and a context manager per
    request, 7% of a worker's CPU under load. Requests of a worker nearly all have the
    same timeout, so their deadlines come in order: they wait in a queue, and one timer,
    set for the earliest, fails those whose time is up (skipping those already answered)
    and is set again for the next. A deadline earlier than the last one queued (a request
    with a shorter timeout) gets a timer of its own.
    """

    def __init__(self) -> None:
        self._queue: deque[tuple[float, asyncio.Future[ClientReply], float]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(
        self,
        loop: asyncio.AbstractEventLoop,
        deadline: float,
        future: asyncio.Future[ClientReply],
        timeout: float,
    ) -> None:
        queue = self._queue
        if queue and deadline < queue[-1][0]:
            loop.call_at(deadline, _expire, future, timeout)
            return
        queue.append((deadline, future, timeout))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        queue = self._queue
        now = loop.time()
        while queue:
            deadline, future, timeout = queue[0]
            if future.done():
                queue.popleft()
            elif deadline <= now:
                queue.popleft()
                _expire(future, timeout)
            else:
                self._timer = loop.call_at(deadline, self._sweep, loop)
                return


def _expire(future: asyncio.Future[ClientReply], timeout: float) -> None:
    if not future.done():
        future.set_exception(IpcTimeout(f"no reply from the Raft process within {timeout:g} s"))


class _RaftProcessConnection(PipelinedConnection):
    """One live connection to the Raft process (the pipelining is the native clients'
    connection's), failing requests with IpcUnavailable and logging what goes wrong."""

    def __init__(self, max_frame_size: int, handshake: Handshake) -> None:
        super().__init__("the Raft process", handshake, max_frame_size, lost_error=IpcUnavailable)

    def _refusal(self, reason: str) -> str:
        return f"the Raft process refused us: {reason}"

    def _on_lost(self, reason: str) -> None:
        log.warning("%s", reason)

    def _on_protocol_error(self, reason: str) -> None:
        log.error("closing the IPC connection: %s", reason)


class IpcClient:
    """Client of the Raft process's Unix socket, shared by every HTTP request of a worker.

    Build requests with ``next_request_id()`` as their id, then ``await request(...)``.
    Not thread-safe: use it from the event loop it first ran on.
    """

    def __init__(
        self,
        path: str,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        connect_timeout: float = 1.0,
        cluster_id: int = 0,
        node_id: int = 0,
    ) -> None:
        self._path = path
        self._handshake = Handshake(PROTOCOL_VERSION, cluster_id, node_id)
        self._max_frame_size = max_frame_size
        self._connect_timeout = connect_timeout
        self._ids = itertools.count(1)
        self._conn: _RaftProcessConnection | None = None
        self._lock = asyncio.Lock()
        self._backoff = 0.0
        self._retry_at = 0.0
        self._last_error = ""
        self._closed = False
        self._deadlines = _Deadlines()
        self.connections_made = 0
        """How many connections this client has opened (for tests and metrics)."""

    @property
    def path(self) -> str:
        return self._path

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.lost is None

    @property
    def in_flight(self) -> int:
        return self._conn.in_flight if self._conn is not None else 0

    def next_request_id(self) -> int:
        return next(self._ids)

    async def connect(self) -> None:
        """Connect now (normally done on demand). Raises IpcUnavailable on failure."""
        await self._ensure_connected(ignore_backoff=True)

    async def request(self, request: ClientRequest, timeout: float) -> ClientReply:
        """Send ``request`` and wait up to ``timeout`` seconds for its reply.

        Raises IpcUnavailable if the Raft process cannot be reached or the connection
        drops before the reply, IpcTimeout if no reply comes in time.
        """
        size = len(request.key) + len(request.value) + REQUEST_OVERHEAD_BYTES
        if size > self._max_frame_size:
            raise ValueError(
                f"request of about {size} bytes exceeds the frame limit of "
                f"{self._max_frame_size} bytes"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = self._conn
        if conn is None or conn.lost is not None:
            try:
                async with asyncio.timeout_at(deadline):
                    conn = await self._ensure_connected(ignore_backoff=False)
            except TimeoutError:
                raise IpcUnavailable(
                    "timed out connecting to the Raft process", sent=False
                ) from None
        future = conn.send(request)
        self._deadlines.add(loop, deadline, future, timeout)
        try:
            return await future
        finally:
            conn.forget(request.request_id)

    async def open_stream(
        self, request: ClientRequest, on_reply: Callable[[ClientReply | None], None]
    ) -> Callable[[], None]:
        """Send a request answered by a stream of replies (WATCH): every reply with its
        id goes to ``on_reply``, and None if the connection drops. Returns the function
        that ends the stream: it stops the delivery and cancels the request in the Raft
        process. Raises IpcUnavailable when the Raft process cannot be reached."""
        conn = self._conn
        if conn is None or conn.lost is not None:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    conn = await self._ensure_connected(ignore_backoff=False)
            except TimeoutError:
                raise IpcUnavailable(
                    "timed out connecting to the Raft process", sent=False
                ) from None
        conn.open_stream(request, on_reply)
        stream_conn = conn

        def end() -> None:
            stream_conn.close_stream(request.request_id)
            if stream_conn.lost is not None:
                return
            cancel = ClientRequest(
                self.next_request_id(), Op.WATCH_CANCEL, limit=request.request_id
            )
            # Nobody waits for the answer; it only has to be read.
            stream_conn.send(cancel).add_done_callback(_ignore_outcome)

        return end

    async def close(self) -> None:
        """Fail every request in flight and close the connection; later requests fail."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close("the worker is shutting down")
            try:
                async with asyncio.timeout(1.0):
                    await conn.closed
            except TimeoutError:
                log.warning("the IPC connection did not close within 1 s")

    async def _ensure_connected(self, *, ignore_backoff: bool) -> _RaftProcessConnection:
        async with self._lock:
            conn = self._conn
            if conn is not None and conn.lost is None:
                return conn
            if self._closed:
                raise IpcUnavailable("the IPC client is closed", sent=False)
            loop = asyncio.get_running_loop()
            now = loop.time()
            if not ignore_backoff and now < self._retry_at:
                raise IpcUnavailable(
                    f"the Raft process is unreachable ({self._last_error}); "
                    f"next connection attempt in {self._retry_at - now:.2f} s",
                    sent=False,
                )
            max_frame_size = self._max_frame_size
            handshake = self._handshake
            try:
                async with asyncio.timeout(self._connect_timeout):
                    _, conn = await loop.create_unix_connection(
                        lambda: _RaftProcessConnection(max_frame_size, handshake), self._path
                    )
            except (OSError, TimeoutError) as exc:
                self._last_error = (
                    "connect timed out" if isinstance(exc, TimeoutError) else str(exc)
                )
                self._backoff = min(max(self._backoff * 2, MIN_BACKOFF_S), MAX_BACKOFF_S)
                self._retry_at = loop.time() + self._backoff
                if self._conn is not None:
                    self._conn = None
                raise IpcUnavailable(
                    f"cannot connect to the Raft process at {self._path}: {self._last_error}",
                    sent=False,
                ) from None
            if self._conn is not None:
                log.info("reconnected to the Raft process at %s", self._path)
            self._backoff = 0.0
            self._retry_at = 0.0
            self._conn = conn
            self.connections_made += 1
            return conn
