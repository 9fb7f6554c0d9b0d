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
from typing import cast

from raftkv_ext.codec import (
    DEFAULT_MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    ClientReply,
    ClientRequest,
    FrameDecoder,
    Handshake,
    HandshakeReply,
    encode,
    encode_batch,
)
from raftkv_ext.errors import CodecError

__all__ = ["IpcClient", "IpcTimeout", "IpcUnavailable"]

log = logging.getLogger(__name__)

MIN_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0
# Bytes a ClientRequest frame takes besides its key and value.
_REQUEST_OVERHEAD = 128


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


class _Connection(asyncio.Protocol):
    """One live connection: the requests it carries and the replies it reads."""

    def __init__(self, max_frame_size: int, handshake: Handshake) -> None:
        self._handshake = handshake
        self._loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder(max_frame_size)
        self._transport: asyncio.Transport | None = None
        # Every request of this connection still waiting for its reply, sent or not.
        self._waiting: dict[int, asyncio.Future[ClientReply]] = {}
        # Requests not yet written: they go out together at the end of this loop turn.
        self._outbox: list[ClientRequest] = []
        self._flush_scheduled = False
        self.lost = False
        self.closed: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        # Every connection opens with a handshake (DESIGN.md, "Wire"); requests may follow
        # at once, and the Raft process closes the connection if it refuses it.
        self._transport.write(encode(self._handshake))

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except CodecError as exc:
            self._protocol_error(f"undecodable frame from the Raft process: {exc}")
            return
        for message in messages:
            if isinstance(message, HandshakeReply):
                if not message.accepted:
                    self._protocol_error(f"the Raft process refused us: {message.reason}")
                    return
                continue
            if not isinstance(message, ClientReply):
                self._protocol_error(
                    f"unexpected {type(message).__name__} frame from the Raft process"
                )
                return
            future = self._waiting.pop(message.request_id, None)
            # No future: the request timed out or was cancelled; the late reply is dropped.
            if future is not None and not future.done():
                future.set_result(message)

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost fails what is in flight

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc is not None else ""
        if not self.lost:
            log.warning("connection to the Raft process lost%s", reason)
        self._fail_all(f"connection to the Raft process lost{reason}")
        if not self.closed.done():
            self.closed.set_result(None)

    # -- used by IpcClient --------------------------------------------------------------

    def send(self, request: ClientRequest) -> asyncio.Future[ClientReply]:
        if self.lost:
            raise IpcUnavailable("connection to the Raft process lost", sent=False)
        request_id = request.request_id
        if request_id in self._waiting:
            raise ValueError(f"request id {request_id} is already in flight")
        future: asyncio.Future[ClientReply] = self._loop.create_future()
        self._waiting[request_id] = future
        self._outbox.append(request)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return future

    def forget(self, request_id: int) -> None:
        self._waiting.pop(request_id, None)

    def close(self, reason: str) -> None:
        self._fail_all(reason)
        if self._transport is not None:
            self._transport.close()

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    # -- internals ----------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.lost or not self._outbox or self._transport is None:
            return
        batch = [r for r in self._outbox if r.request_id in self._waiting]
        self._outbox = []
        if not batch:
            return
        try:
            data = encode_batch(batch)
        except (ValueError, OverflowError):
            data = self._encode_one_by_one(batch)
        self._transport.write(data)

    def _encode_one_by_one(self, batch: list[ClientRequest]) -> bytes:
        """Encode what can be encoded; fail the requests that cannot (never expected:
        fields are checked when a request is built and sizes by IpcClient.request)."""
        parts: list[bytes] = []
        for request in batch:
            try:
                parts.append(encode(request))
            except (ValueError, OverflowError) as exc:
                future = self._waiting.pop(request.request_id, None)
                if future is not None and not future.done():
                    future.set_exception(exc)
        return b"".join(parts)

    def _protocol_error(self, reason: str) -> None:
        log.error("closing the IPC connection: %s", reason)
        self._fail_all(reason)
        if self._transport is not None:
            self._transport.abort()

    def _fail_all(self, reason: str) -> None:
        self.lost = True
        unsent = {r.request_id for r in self._outbox}
        self._outbox = []
        waiting, self._waiting = self._waiting, {}
        for request_id, future in waiting.items():
            if not future.done():
                future.set_exception(IpcUnavailable(reason, sent=request_id not in unsent))


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
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()
        self._backoff = 0.0
        self._retry_at = 0.0
        self._last_error = ""
        self._closed = False
        self.connections_made = 0
        """How many connections this client has opened (for tests and metrics)."""

    @property
    def path(self) -> str:
        return self._path

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.lost

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
        size = len(request.key) + len(request.value) + _REQUEST_OVERHEAD
        if size > self._max_frame_size:
            raise ValueError(
                f"request of about {size} bytes exceeds the frame limit of "
                f"{self._max_frame_size} bytes"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = self._conn
        if conn is None or conn.lost:
            try:
                async with asyncio.timeout_at(deadline):
                    conn = await self._ensure_connected(ignore_backoff=False)
            except TimeoutError:
                raise IpcUnavailable(
                    "timed out connecting to the Raft process", sent=False
                ) from None
        future = conn.send(request)
        try:
            async with asyncio.timeout_at(deadline):
                return await future
        except TimeoutError:
            raise IpcTimeout(f"no reply from the Raft process within {timeout:g} s") from None
        finally:
            conn.forget(request.request_id)

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

    async def _ensure_connected(self, *, ignore_backoff: bool) -> _Connection:
        async with self._lock:
            conn = self._conn
            if conn is not None and not conn.lost:
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
                        lambda: _Connection(max_frame_size, handshake), self._path
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
