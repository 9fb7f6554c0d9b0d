"""The Raft process's client-frame server: the HTTP workers' Unix socket and, with
``--client-addr``, the native clients' TCP port.

Both speak one protocol: a Handshake first (protocol version and cluster id checked),
then ClientRequest frames pipelined on the connection; replies go back as ClientReply
frames in whatever order requests finish, and replies made during one loop turn leave in
one write. Requests from the TCP port are checked first (``check``), since no worker
has validated them. A bad frame closes only the connection it came on, with a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from raftkv.wire.protocol import Op, ReplyStatus
from raftkv.wire.tcp import set_nodelay
from raftkv.wire.tls_accept import logged_tls_factory
from raftkv_ext.codec import (
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

if TYPE_CHECKING:
    from raftkv.node.watch_hub import WatchHub
    from raftkv_ext.codec import Message

SubmitFn = Callable[[ClientRequest, Callable[[ClientReply], None]], None]
RequestCheck = Callable[[ClientRequest], str | None]
"""Returns None to serve a request, or the reason it is refused (answered BAD_REQUEST)."""

_WATCH_OPS = frozenset({Op.WATCH, Op.WATCH_CANCEL})

MAX_IN_FLIGHT = 8192
"""Requests one connection may have waiting in the Raft process. Past it the connection
is not read until replies drain, so a client that pipelines without bound is slowed
down by TCP flow control instead of growing the process's memory."""


@dataclass(frozen=True, slots=True)
class _Listener:
    """What differs between the Unix socket and the TCP port."""

    kind: str  # "worker" or "client", for log lines
    check: RequestCheck | None
    nodelay: bool


class _ClientConnection(asyncio.Protocol):
    def __init__(self, server: IpcServer, listener: _Listener) -> None:
        self._server = server
        self._listener = listener
        self._decoder = FrameDecoder(server.max_frame_size)
        self._transport: asyncio.Transport | None = None
        self._peer = f"{listener.kind} connection"
        self._outgoing: list[Message] = []
        self._flush_scheduled = False
        self._greeted = False
        self._in_flight = 0
        self._writing_paused = False
        self._reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._peer = f"{self._listener.kind} connection from {peer[0]}:{peer[1]}"
        if self._listener.nodelay:
            set_nodelay(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        if self._server.watches is not None:
            self._server.watches.drop(self)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except CodecError as exc:
            self._server.logger.warning("closing %s: bad frame: %s", self._peer, exc)
            self.close()
            return
        submit = self._server.submit
        check = self._listener.check
        reply = self.reply
        watches = self._server.watches
        for frame in frames:
            if not self._greeted:
                if not self._greet(frame):
                    return
                continue
            if not isinstance(frame, ClientRequest):
                self._server.logger.warning(
                    "closing %s: unexpected %s frame", self._peer, type(frame).__name__
                )
                self.close()
                return
            refusal = check(frame) if check is not None else None
            if refusal is None and watches is not None and frame.op in _WATCH_OPS:
                # A watch is a stream, not a request in flight; the hub answers it.
                if frame.op == Op.WATCH:
                    watches.open(self, frame)
                else:
                    watches.cancel(self, frame)
                continue
            self._in_flight += 1
            if refusal is None:
                submit(frame, reply)
            else:
                reply(ClientReply(frame.request_id, ReplyStatus.BAD_REQUEST, body=refusal.encode()))
        if self._in_flight >= MAX_IN_FLIGHT:
            self._update_reading()

    def _greet(self, frame: Message) -> bool:
        """The first frame must be a handshake from this cluster and protocol version."""
        server = self._server
        if not isinstance(frame, Handshake):
            reason = f"expected a handshake, got {type(frame).__name__}"
        elif frame.version != PROTOCOL_VERSION:
            reason = f"protocol version {frame.version}, expected {PROTOCOL_VERSION}"
        elif frame.cluster_id not in (0, server.cluster_id):
            reason = f"cluster id {frame.cluster_id}, expected {server.cluster_id}"
        else:
            self._greeted = True
            assert self._transport is not None
            self._transport.write(encode(HandshakeReply(True, server.node_id)))
            return True
        server.logger.warning("refusing %s: %s", self._peer, reason)
        if self._transport is not None:
            self._transport.write(encode(HandshakeReply(False, server.node_id, reason)))
        self.close()
        return False

    def reply(self, message: ClientReply) -> None:
        self._in_flight -= 1
        if self._reading_paused:
            self._update_reading()
        if self._transport is None:
            return  # the peer went away; a worker fails its own requests
        self._outgoing.append(message)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def send_watch(self, message: ClientReply) -> None:
        """One message of a watch stream (WatchSink): sent like a reply, but it does not
        end a request in flight."""
        if self._transport is None:
            return
        self._outgoing.append(message)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def write_backlog(self) -> int:
        """Bytes written to the transport but not yet to the socket (WatchSink). Messages
        queued for this turn's write are not counted: they are bounded by the turn."""
        transport = self._transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._transport is not None and self._outgoing:
            self._transport.write(encode_batch(self._outgoing))
        self._outgoing = []

    # -- backpressure: stop reading while replies cannot be sent or too many wait -----

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        pause = self._writing_paused or self._in_flight >= MAX_IN_FLIGHT
        if pause and not self._reading_paused:
            transport.pause_reading()
            self._reading_paused = True
        elif not pause and self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class IpcServer:
    """Serves client frames on a Unix socket (the workers) and, when ``tcp_address`` is
    given, on a TCP port too (native clients; their requests pass ``tcp_check`` first)."""

    def __init__(
        self,
        path: Path,
        submit: SubmitFn,
        *,
        max_frame_size: int,
        cluster_id: int = 0,
        node_id: int = 0,
        logger: logging.Logger | None = None,
        tcp_address: tuple[str, int] | None = None,
        tcp_check: RequestCheck | None = None,
        tcp_ssl: ssl.SSLContext | None = None,
        watches: WatchHub | None = None,
    ) -> None:
        self.path = path
        # TLS for native clients (the HTTPS port's certificate); None: plaintext.
        self.tcp_ssl = tcp_ssl
        self.cluster_id = cluster_id
        self.node_id = node_id
        self.submit = submit
        # Serves WATCH and WATCH_CANCEL; None: they go to ``submit`` like any request.
        self.watches = watches
        self.max_frame_size = max_frame_size
        self.logger = logger or logging.getLogger("raftkv.ipc")
        self.tcp_address = tcp_address
        self.connections: set[_ClientConnection] = set()
        self._unix = _Listener("worker", None, nodelay=False)
        self._tcp = _Listener("client", tcp_check, nodelay=True)
        self._servers: list[asyncio.AbstractServer] = []
        self._tcp_port: int | None = None

    @property
    def tcp_port(self) -> int | None:
        """The bound TCP port (useful when ``tcp_address`` asked for port 0)."""
        return self._tcp_port

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a process that died
        loop = asyncio.get_running_loop()
        unix = await loop.create_unix_server(
            lambda: _ClientConnection(self, self._unix), path=str(self.path)
        )
        os.chmod(self.path, 0o600)
        self._servers.append(unix)
        if self.tcp_address is None:
            return
        host, port = self.tcp_address

        def plain() -> asyncio.Protocol:
            return _ClientConnection(self, self._tcp)

        factory: Callable[[], asyncio.Protocol] = plain
        if self.tcp_ssl is not None:
            # Handshakes done by us, not by the loop, so that a failed one is logged.
            factory = logged_tls_factory(plain, self.tcp_ssl, self.logger, "native client")
        try:
            tcp = await loop.create_server(
                factory,
                host,
                port,
                # Rebind over TIME_WAIT sockets left by a previous run on this port.
                reuse_address=True,
            )
        except OSError as exc:
            await self.stop()
            # asyncio's own message repeats the address; the errno says it all.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise OSError(
                exc.errno, f"cannot listen for native clients on {host}:{port}: {reason}"
            ) from None
        self._servers.append(tcp)
        self._tcp_port = tcp.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        servers, self._servers = self._servers, []
        self._tcp_port = None
        for server in servers:
            server.close()
        for connection in list(self.connections):
            connection.close()
        for server in servers:
            await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
