"""Connections to a node's native client port (``kvnode --client-addr``).

``open_native_connection`` connects and does the handshake, and hands back the streams
for the caller to write its own frames (a load generator). ``open_pipelined`` does the
same with a ``PipelinedConnection``, the protocol ``raftkv.client.native``'s clients send their
requests through: requests go out as ClientRequest frames, those issued in one event-loop
turn in one write, and each ClientReply resolves the future of the request with its id.

Failures are reported as OSError (ConnectionError) when the node cannot be reached or
hangs up, TimeoutError when it does not answer in time, and RaftkvError when it refuses
the handshake; the clients turn them into their own errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from ssl import SSLContext
from typing import cast

from raftkv.wire.errors import RaftkvError
from raftkv.wire.tcp import set_nodelay
from raftkv_ext.codec import (
    PROTOCOL_VERSION,
    ClientReply,
    ClientRequest,
    FrameDecoder,
    Handshake,
    HandshakeReply,
    decode,
    encode,
    encode_batch,
)
from raftkv_ext.errors import CodecError

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "ConnectionLost",
    "PipelinedConnection",
    "accepted_node_id",
    "open_native_connection",
    "open_pipelined",
    "set_nodelay",
]

DEFAULT_CONNECT_TIMEOUT = 2.0
# A HandshakeReply is a node id, a flag and a short reason; anything longer is not one.
_MAX_HANDSHAKE_REPLY = 64 * 1024


def accepted_node_id(message: object, where: str) -> int:
    """The node id in an accepting HandshakeReply; RaftkvError for anything else."""
    if not isinstance(message, HandshakeReply):
        raise RaftkvError(f"{where} answered the handshake with a {type(message).__name__} frame")
    if not message.accepted:
        raise RaftkvError(f"{where} refused the connection: {message.reason}")
    return message.node_id


async def open_native_connection(
    host: str,
    port: int,
    *,
    cluster_id: int = 0,
    timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ssl: SSLContext | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a node's native port and do the handshake; nothing else is read.

    From then on the caller writes ClientRequest frames (``raftkv_ext.codec.encode`` or
    ``encode_batch``) and reads ClientReply frames (a ``FrameDecoder`` fed from the
    reader), matching them by request id. ``cluster_id`` 0 skips the cluster check.

    Raises OSError (ConnectionError) when the node cannot be reached or hangs up,
    TimeoutError after ``timeout`` seconds, and RaftkvError when it refuses the handshake
    (another cluster, another protocol version).
    """
    where = f"{host}:{port}"
    async with asyncio.timeout(timeout):
        # ssl: a node started with --cert-file serves TLS on its native port too.
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl)
        try:
            set_nodelay(writer.transport)
            writer.write(encode(Handshake(PROTOCOL_VERSION, cluster_id, 0)))
            try:
                head = await reader.readexactly(4)
                length = int.from_bytes(head, "little")
                if not 0 < length <= _MAX_HANDSHAKE_REPLY:
                    raise RaftkvError(f"{where} answered the handshake with a {length}-byte frame")
                body = await reader.readexactly(length)
            except asyncio.IncompleteReadError:
                raise ConnectionError(
                    f"{where} closed the connection during the handshake"
                ) from None
            try:
                reply = decode(head + body)
            except CodecError as exc:
                raise RaftkvError(
                    f"{where} answered the handshake with a bad frame: {exc}"
                ) from None
            accepted_node_id(reply, where)
        except BaseException:
            writer.close()
            raise
    return reader, writer


# -- a connection carrying many requests --------------------------------------------------


class ConnectionLost(Exception):
    """The connection went away before the reply; ``sent``: the request may have reached
    the node."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


def _retrieve(future: asyncio.Future[int]) -> None:
    if not future.cancelled():
        future.exception()


class PipelinedConnection(asyncio.Protocol):
    """One connection: the handshake, then requests out and replies in, matched by id.

    Shared by the native clients (TCP) and the HTTP worker's connection to its Raft
    process (a Unix socket, ``raftkv.http.serving.ipc_client``): ``lost_error`` is the exception
    class requests fail with when the connection goes, and a subclass may log through
    ``_on_lost`` and ``_on_protocol_error``.
    """

    def __init__(
        self,
        where: str,
        handshake: Handshake,
        max_frame_size: int,
        *,
        lost_error: Callable[..., Exception] = ConnectionLost,
    ) -> None:
        self._where = where
        self._lost_error = lost_error
        self._handshake = handshake
        self._loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder(max_frame_size)
        self._transport: asyncio.Transport | None = None
        # Every request still waiting for its reply, written or not.
        self._waiting: dict[int, asyncio.Future[ClientReply]] = {}
        # Requests answered by a stream of replies (WATCH): each reply goes to the
        # callback, and None when the connection is lost.
        self._streams: dict[int, Callable[[ClientReply | None], None]] = {}
        # Requests not yet written: they leave together at the end of this loop turn.
        self._outbox: list[ClientRequest] = []
        self._flush_scheduled = False
        self.greeted: asyncio.Future[int] = self._loop.create_future()
        # Whoever waits for the handshake reads its outcome; when nobody does (the
        # attempt was given up), this keeps asyncio from reporting it as never retrieved.
        self.greeted.add_done_callback(_retrieve)
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.lost: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        set_nodelay(transport)
        self._transport.write(encode(self._handshake))

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except CodecError as exc:
            self._abort(f"undecodable frame from {self._where}: {exc}")
            return
        for message in messages:
            if not self.greeted.done() and isinstance(message, HandshakeReply):
                if not message.accepted:
                    self._abort(self._refusal(message.reason))
                    return
                self.greeted.set_result(message.node_id)
                continue
            if not isinstance(message, ClientReply) or not self.greeted.done():
                self._abort(f"unexpected {type(message).__name__} frame from {self._where}")
                return
            future = self._waiting.pop(message.request_id, None)
            # No future: the request timed out or was cancelled; its late reply is dropped.
            if future is not None:
                if not future.done():
                    future.set_result(message)
                continue
            stream = self._streams.get(message.request_id)
            if stream is not None:
                stream(message)

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost fails what is in flight

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection to {self._where} lost" + (f": {exc}" if exc else "")
        if self.lost is None:
            self._on_lost(reason)
        self._fail_all(reason)
        self._end_streams()
        if not self.greeted.done():
            self.greeted.set_exception(ConnectionError(reason))
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, request: ClientRequest) -> asyncio.Future[ClientReply]:
        if self.lost is not None:
            raise self._lost_error(self.lost, sent=False)
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

    def open_stream(
        self, request: ClientRequest, on_reply: Callable[[ClientReply | None], None]
    ) -> None:
        """Send a request answered by many replies (WATCH): each goes to ``on_reply``
        until ``close_stream``; ``on_reply(None)`` when the connection is lost."""
        if self.lost is not None:
            raise self._lost_error(self.lost, sent=False)
        request_id = request.request_id
        if request_id in self._waiting or request_id in self._streams:
            raise ValueError(f"request id {request_id} is already in flight")
        self._streams[request_id] = on_reply
        self._outbox.append(request)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def close_stream(self, request_id: int) -> None:
        """Stop delivering the stream's replies (its request should be cancelled too)."""
        self._streams.pop(request_id, None)

    def _end_streams(self) -> None:
        streams, self._streams = self._streams, {}
        for on_reply in streams.values():
            on_reply(None)

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    def close(self, reason: str) -> None:
        self._fail_all(reason)
        self._end_streams()
        if self._transport is not None:
            self._transport.close()

    def _flush(self) -> None:
        self._flush_scheduled = False
        waiting = self._waiting
        streams = self._streams
        batch = [r for r in self._outbox if r.request_id in waiting or r.request_id in streams]
        self._outbox = []
        if not batch or self._transport is None or self.lost is not None:
            return
        try:
            data = encode_batch(batch)
        except (ValueError, OverflowError):
            data = self._encode_one_by_one(batch)
        self._transport.write(data)

    def _encode_one_by_one(self, batch: list[ClientRequest]) -> bytes:
        """Encode what can be encoded; fail the requests that cannot (never expected:
        fields are checked when a request is built), rather than leave them waiting."""
        parts: list[bytes] = []
        for request in batch:
            try:
                parts.append(encode(request))
            except (ValueError, OverflowError) as exc:
                future = self._waiting.pop(request.request_id, None)
                if future is not None and not future.done():
                    future.set_exception(exc)
        return b"".join(parts)

    def _refusal(self, reason: str) -> str:
        return f"{self._where} refused the connection: {reason}"

    def _on_lost(self, reason: str) -> None:
        """The connection went away (not after a protocol error); for subclasses."""

    def _on_protocol_error(self, reason: str) -> None:
        """The peer broke the protocol and the connection is aborted; for subclasses."""

    def _abort(self, reason: str) -> None:
        self._on_protocol_error(reason)
        if not self.greeted.done():
            self.greeted.set_exception(RaftkvError(reason))
        self._fail_all(reason)
        if self._transport is not None:
            self._transport.abort()

    def _fail_all(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
        unsent = {r.request_id for r in self._outbox}
        self._outbox = []
        waiting, self._waiting = self._waiting, {}
        for request_id, future in waiting.items():
            if not future.done():
                future.set_exception(self._lost_error(reason, sent=request_id not in unsent))


async def open_pipelined(
    host: str,
    port: int,
    *,
    cluster_id: int,
    max_frame_size: int,
    timeout: float,
    ssl: SSLContext | None = None,
) -> tuple[PipelinedConnection, int]:
    """Connect, do the handshake, and return the connection and the node's id."""
    where = f"{host}:{port}"
    handshake = Handshake(PROTOCOL_VERSION, cluster_id, 0)
    loop = asyncio.get_running_loop()
    connection: PipelinedConnection | None = None
    try:
        async with asyncio.timeout(timeout):
            _, connection = await loop.create_connection(
                lambda: PipelinedConnection(where, handshake, max_frame_size),
                host,
                port,
                ssl=ssl,
            )
            node_id = await connection.greeted
    except BaseException:
        if connection is not None:
            connection.close("the connection attempt failed")
        raise
    return connection, node_id
