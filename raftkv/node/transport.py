"""Peer transport of the Raft process: TCP links between the nodes of one cluster.

Connections
-----------
Every node dials each peer for its *own* outbound messages; a connection it accepts only
carries the dialer's messages to it. Each direction is therefore a plain FIFO pipe with a
single writer: per-direction order is TCP order, and no request/response matching is
needed, because a Raft "response" is just another one-way message on the other link.

Every connection opens with a ``Handshake`` (protocol version, cluster id, node id) from
the dialer. The dialer then sends nothing until the acceptor has answered with a
``HandshakeReply``; after the reply only Raft messages flow, dialer to acceptor, and the
acceptor never writes again. Because the dialer may not pipeline behind its handshake,
an unauthenticated connection can make the acceptor buffer only a few kilobytes.

The acceptor refuses (and both sides log) another protocol version, another cluster id,
and a node id that is not a current peer. Any frame it cannot decode, a frame that is
not a Raft message, or a message that claims another sender or another recipient than
the handshake established, closes that one connection with a logged warning; nothing a
peer sends can raise into the event loop.

Delivery
--------
Raft tolerates lost messages, so the transport favours bounded memory over
completeness: messages for a peer that is not connected (or whose socket is full) are
buffered up to ``max_buffered_bytes``; beyond that they are dropped and the core is told
through ``on_unreachable`` so it falls back to probing. ``on_unreachable`` is also
called when a dial fails and, once, when an established connection breaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import struct
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

from raftkv.wire.peer_tls import PeerTls
from raftkv.wire.tcp import set_nodelay
from raftkv.wire.tls_accept import describe_handshake_error, logged_tls_factory
from raftkv_ext.codec import (
    DEFAULT_MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    AppendEntries,
    AppendEntriesResponse,
    FrameDecoder,
    Handshake,
    HandshakeReply,
    InstallSnapshot,
    InstallSnapshotResponse,
    Propose,
    ProposeResponse,
    ReadIndex,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
    encode,
    encode_batch,
)
from raftkv_ext.errors import CodecError

if TYPE_CHECKING:
    from raftkv_ext.codec import Message, RaftMessage

__all__ = ["DEFAULT_MAX_BUFFERED_BYTES", "PeerStats", "PeerTransport"]

DEFAULT_MAX_BUFFERED_BYTES: Final = 64 * 1024 * 1024

# Every class the transport carries after the handshake (the codec's RaftMessage union).
_RAFT_MESSAGE_TYPES: Final = (
    AppendEntries,
    AppendEntriesResponse,
    RequestVote,
    RequestVoteResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    TimeoutNow,
    ReadIndex,
    ReadIndexResponse,
    Propose,
    ProposeResponse,
)

# Handshake frames are a few dozen bytes; a stranger gets no more buffer than this
# before it has proven it belongs to the cluster.
_HANDSHAKE_FRAME_LIMIT: Final = 4096
# Refusal reasons travel in the reply; keep them well inside the frame limit above.
_MAX_REASON_CHARS: Final = 512
# How long stop() lets closing connections flush what they have before aborting them.
_CLOSE_GRACE: Final = 1.0
# A connection must live this long for the dialer to start its backoff over; a peer that
# accepts and then drops us at once must not be redialled in a tight loop.
_STABLE_AFTER: Final = 1.0
_FRAME_LENGTH: Final = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class PeerStats:
    """A snapshot of one peer link's counters, as returned by ``PeerTransport.stats``."""

    address: tuple[str, int]
    # Our outbound connection is up and its handshake was accepted.
    connected: bool
    # The peer's connection to us is up and its handshake was accepted.
    inbound_connected: bool
    bytes_sent: int
    messages_sent: int
    bytes_received: int
    messages_received: int
    # Messages discarded because the outbound buffer was full (or the frame too large).
    messages_dropped: int
    # Encoded bytes waiting for the connection (not counting the socket's own buffer).
    buffered_bytes: int
    # Outbound connections established after the first one.
    reconnects: int
    dial_failures: int
    last_error: str | None


def _format_address(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


def _jittered(delay: float, rng: random.Random) -> float:
    # +-20 %: enough to keep nodes that lost a peer at the same moment from redialling
    # in lockstep, small enough to keep the backoff schedule recognisable.
    return delay * rng.uniform(0.8, 1.2)


class _PeerConnection(asyncio.Protocol):
    """What both directions share: the transport, a close reason and a ``closed`` future
    that ``stop()`` can wait for."""

    def __init__(self, owner: PeerTransport) -> None:
        self._owner = owner
        self.transport: asyncio.Transport | None = None
        self.peername = "?"
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._close_reason: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peername = _format_address(transport.get_extra_info("peername"))
        set_nodelay(transport)
        self._owner._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._connections.discard(self)
        if self._close_reason is None:
            self._close_reason = f"connection lost: {exc}" if exc else "closed by the peer"
        if not self.closed.done():
            self.closed.set_result(self._close_reason)

    def eof_received(self) -> bool | None:
        # Neither side half-closes; treat EOF as the end of the connection.
        return None

    def close(self, reason: str, *, abort: bool = False) -> None:
        """Close deliberately; ``reason`` becomes the result of ``closed``."""
        if self._close_reason is None:
            self._close_reason = reason
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                # close() still flushes what is buffered, e.g. a refusal reply.
                self.transport.close()

    @property
    def closing(self) -> bool:
        return self._close_reason is not None

    @property
    def stalled(self) -> bool:
        """The peer stopped reading: a graceful close would wait for it in vain."""
        return False


class _InboundConnection(_PeerConnection):
    """An accepted connection: a peer's messages to us."""

    def __init__(self, owner: PeerTransport) -> None:
        super().__init__(owner)
        self.peer_id: int | None = None
        self._decoder = FrameDecoder(_HANDSHAKE_FRAME_LIMIT)
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._owner._closed:
            self.close("transport is stopping", abort=True)
            return
        self._timer = asyncio.get_running_loop().call_later(
            self._owner._handshake_timeout, self._handshake_timed_out
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)
        self._owner._inbound_closed(self)

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self.peer_id is None and not self.closing:
            self._reject(f"no handshake within {self._owner._handshake_timeout:g} s")

    def _reject(self, reason: str) -> None:
        who = f"node {self.peer_id}" if self.peer_id is not None else "unidentified peer"
        self._owner._log.warning(
            "closing peer connection from %s (%s): %s", self.peername, who, reason
        )
        self.close(reason, abort=True)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            messages = self._decoder.feed(data)
        except CodecError as exc:
            self._reject(f"invalid frame: {exc}")
            return
        if self.peer_id is None:
            if messages:
                self._handshake(messages)
            return
        self._owner._received(self, len(data), messages)

    def _handshake(self, messages: list[Message]) -> None:
        hello = messages[0]
        if not isinstance(hello, Handshake):
            self._reject(f"expected a handshake, got {type(hello).__name__}")
            return
        if len(messages) > 1 or self._decoder.buffered:
            self._reject("sent data before its handshake was answered")
            return
        owner = self._owner
        reason = owner._check_handshake(hello)
        if reason is not None:
            owner._log.warning(
                "refused peer connection from %s (node %d, cluster %d, version %d): %s",
                self.peername,
                hello.node_id,
                hello.cluster_id,
                hello.version,
                reason,
            )
            assert self.transport is not None
            reply = HandshakeReply(False, owner.node_id, reason[:_MAX_REASON_CHARS])
            self.transport.write(encode(reply))
            self.close(f"handshake refused: {reason}")
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.peer_id = hello.node_id
        # Only now may real frames arrive, so only now allow frames of full size.
        self._decoder = FrameDecoder(owner.max_frame_size)
        assert self.transport is not None
        self.transport.write(encode(HandshakeReply(True, owner.node_id)))
        owner._inbound_accepted(self)

    def reject_messages(self, reason: str) -> None:
        self._reject(reason)


class _OutboundConnection(_PeerConnection):
    """A dialled connection: our messages to one peer."""

    def __init__(self, owner: PeerTransport, link: _PeerLink) -> None:
        super().__init__(owner)
        self._link = link
        # Result: None once the peer accepted us, else why the handshake failed. A result
        # rather than an exception, so a handshake nobody waits for any more (timed out,
        # cancelled) cannot leave an unretrieved exception behind.
        self.handshake: asyncio.Future[str | None] = self.closed.get_loop().create_future()
        self.refused = False
        self.paused = False
        self._decoder = FrameDecoder(_HANDSHAKE_FRAME_LIMIT)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        owner = self._owner
        hello = Handshake(PROTOCOL_VERSION, owner.cluster_id, owner.node_id)
        assert self.transport is not None
        self.transport.write(encode(hello))

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, ssl.SSLError) and not self.handshake.done():
            # With TLS 1.3 the peer judges our certificate after our side of the TLS
            # handshake is done, so its refusal arrives here: a refusal all the same.
            self.refused = True
        super().connection_lost(exc)
        if not self.handshake.done():
            self.handshake.set_result(
                f"connection closed during the handshake ({self.closed.result()})"
            )
        self._link.connection_closed(self)

    def _fail_handshake(self, reason: str) -> None:
        if not self.handshake.done():
            self.handshake.set_result(reason)
        self.close(reason, abort=True)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.handshake.done():
            # The acceptor only ever sends its reply; anything else means the other end
            # is not speaking our protocol and the stream cannot be trusted.
            self._owner._log.warning(
                "closing connection to node %d at %s: it sent data after its handshake reply",
                self._link.peer_id,
                self.peername,
            )
            self.close("peer sent data after its handshake reply", abort=True)
            return
        try:
            messages = self._decoder.feed(data)
        except CodecError as exc:
            self._fail_handshake(f"invalid handshake reply: {exc}")
            return
        if not messages:
            return
        reply = messages[0]
        if not isinstance(reply, HandshakeReply):
            self._fail_handshake(f"expected a handshake reply, got {type(reply).__name__}")
        elif len(messages) > 1 or self._decoder.buffered:
            self._fail_handshake("unexpected data after the handshake reply")
        elif not reply.accepted:
            self.refused = True
            self._fail_handshake(f"handshake refused by node {reply.node_id}: {reply.reason}")
        elif reply.node_id != self._link.peer_id:
            # The address is configured for one node but another one answers: sending it
            # our messages would deliver them to the wrong member.
            self.refused = True
            self._fail_handshake(
                f"address belongs to node {reply.node_id}, expected node {self._link.peer_id}"
            )
        else:
            self.handshake.set_result(None)

    @property
    def stalled(self) -> bool:
        return self.paused

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._link.flush()


class _PeerLink:
    """Outbound side of one peer: its buffer, its connection and the task that keeps
    (re)dialling it. Also holds the counters of the inbound side for ``stats()``."""

    def __init__(self, owner: PeerTransport, peer_id: int, address: tuple[str, int]) -> None:
        self._owner = owner
        self.peer_id = peer_id
        self.address = address
        # Encoded batches (one per send() call) and how many messages each holds.
        self._pending: deque[tuple[bytes, int]] = deque()
        self.pending_bytes = 0
        # Set only while the connection is up and the handshake accepted.
        self.connection: _OutboundConnection | None = None
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._retired = False
        # Whether on_unreachable was already called for the current overflow; reset when
        # the buffer drains, so one full buffer makes one call, not one per send().
        self._overflowed = False
        self.inbound: _InboundConnection | None = None
        self.bytes_sent = 0
        self.messages_sent = 0
        self.bytes_received = 0
        self.messages_received = 0
        self.messages_dropped = 0
        self.connects = 0
        self.dial_failures = 0
        self.last_error: str | None = None

    # -- sending -------------------------------------------------------------------------

    def enqueue(self, data: bytes, count: int) -> None:
        conn = self.connection
        if conn is not None and not conn.paused and not conn.closing and not self._pending:
            self._write(conn, data, count)
            return
        if self.pending_bytes + len(data) > self._owner._max_buffered_bytes:
            self.messages_dropped += count
            if not self._overflowed:
                self._overflowed = True
                self._owner._log.warning(
                    "buffer for node %d is full (%d bytes); dropping messages",
                    self.peer_id,
                    self.pending_bytes,
                )
                self._owner._report_unreachable(self.peer_id)
            return
        self._pending.append((data, count))
        self.pending_bytes += len(data)
        if conn is None:
            self._wakeup.set()

    def _write(self, conn: _OutboundConnection, data: bytes, count: int) -> None:
        assert conn.transport is not None
        conn.transport.write(data)
        self.bytes_sent += len(data)
        self.messages_sent += count

    def flush(self) -> None:
        """Write buffered batches until the socket pushes back (pause_writing is called
        from inside write() once the transport's buffer passes its high-water mark)."""
        conn = self.connection
        while self._pending and conn is not None and not conn.paused and not conn.closing:
            data, count = self._pending.popleft()
            self.pending_bytes -= len(data)
            self._write(conn, data, count)
        if self.pending_bytes < self._owner._max_buffered_bytes:
            self._overflowed = False

    def discard_pending(self) -> None:
        self._pending.clear()
        self.pending_bytes = 0

    # -- connection management -----------------------------------------------------------

    def start(self) -> None:
        if self._task is None and not self._retired:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"raftkv-peer-{self._owner.node_id}-to-{self.peer_id}"
            )

    def retire(self) -> asyncio.Task[None] | None:
        """Stop dialling and close the connection without reporting the peer."""
        self._retired = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        if self.connection is not None:
            self.connection.close("peer link closed")
        self.discard_pending()
        return task

    def redial(self, reason: str) -> None:
        """Drop the current connection (the address changed); the task dials again."""
        if self.connection is not None:
            self.connection.close(reason)
            # From now on messages wait for the new connection instead of going to the
            # old address while the close completes.
            self.connection = None

    def connection_closed(self, conn: _OutboundConnection) -> None:
        if self.connection is conn:
            self.connection = None

    async def _run(self) -> None:
        owner = self._owner
        log = owner._log
        backoff = owner._backoff_initial
        ever_dialled = False
        failures_in_a_row = 0
        previous_failure: str | None = None
        while True:
            if not self._pending:
                # Dial lazily: the first time only once there is something to send;
                # after a failure or a break, also periodically, so that an idle link
                # is up again before it is needed (a follower's link to another follower
                # carries nothing until the next election).
                timeout = owner._backoff_max if ever_dialled else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
            self._wakeup.clear()
            ever_dialled = True
            host, port = self.address
            conn, error, refused = await self._dial(host, port)
            if conn is None:
                self.dial_failures += 1
                failures_in_a_row += 1
                self.last_error = error
                # A refusal is a configuration problem and always worth a warning. A
                # peer that is simply not up yet is normal while a cluster starts: say
                # so once, then keep quiet until something else goes wrong.
                changed = error != previous_failure
                previous_failure = error
                if refused and changed:
                    level = logging.WARNING
                elif failures_in_a_row == 1 or changed:
                    level = logging.INFO
                else:
                    level = logging.DEBUG
                log.log(level, "cannot reach node %d at %s:%d: %s", self.peer_id, host, port, error)
                owner._report_unreachable(self.peer_id)
                await asyncio.sleep(_jittered(backoff, owner._rng))
                backoff = min(backoff * 2, owner._backoff_max)
                continue

            failures_in_a_row = 0
            previous_failure = None
            self.connects += 1
            log.info("connected to node %d at %s:%d", self.peer_id, host, port)
            connected_at = asyncio.get_running_loop().time()
            self.connection = conn
            self.flush()
            reason = await asyncio.shield(conn.closed)
            self.connection = None
            self.last_error = reason
            log.warning(
                "connection to node %d at %s:%d broke: %s", self.peer_id, host, port, reason
            )
            owner._report_unreachable(self.peer_id)
            if asyncio.get_running_loop().time() - connected_at >= _STABLE_AFTER:
                backoff = owner._backoff_initial
            await asyncio.sleep(_jittered(backoff, owner._rng))
            backoff = min(backoff * 2, owner._backoff_max)

    async def _dial(self, host: str, port: int) -> tuple[_OutboundConnection | None, str, bool]:
        """Connect and handshake within ``connect_timeout``. Returns the connection (None
        on failure), why it failed, and whether the peer refused us (as opposed to not
        being reachable at all)."""
        owner = self._owner
        loop = asyncio.get_running_loop()
        conn: _OutboundConnection | None = None
        error: str | None
        try:
            async with asyncio.timeout(owner._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _OutboundConnection(owner, self),
                    host,
                    port,
                    # With peer TLS the certificate must name the address we dial.
                    ssl=owner._client_ssl,
                    server_hostname=host if owner._client_ssl is not None else None,
                )
                error = await asyncio.shield(conn.handshake)
        except TimeoutError:
            error = f"no connection and handshake within {owner._connect_timeout:g} s"
        except ssl.SSLError as exc:
            # The peer's certificate is not one we trust (or it refused ours): a
            # configuration problem, reported like a refusal.
            return None, describe_handshake_error(exc), True
        except OSError as exc:
            error = exc.strerror or str(exc) or type(exc).__name__
        except BaseException:
            if conn is not None:
                conn.close("dial cancelled", abort=True)
            raise
        if conn is None:
            return None, error or "connection failed", False
        if error is None and not conn.closing:
            return conn, "", False
        error = error or "connection closed during the handshake"
        conn.close(error, abort=True)
        return None, error, conn.refused


class PeerTransport:
    """TCP links to the other members of the cluster; see the module docstring."""

    def __init__(
        self,
        node_id: int,
        cluster_id: int,
        listen_host: str,
        listen_port: int,
        peers: Mapping[int, tuple[str, int]],
        on_messages: Callable[[list[RaftMessage]], None],
        on_unreachable: Callable[[int], None],
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        connect_timeout: float = 1.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        handshake_timeout: float = 5.0,
        logger: logging.Logger | None = None,
        tls: PeerTls | None = None,
    ) -> None:
        if max_frame_size < _HANDSHAKE_FRAME_LIMIT:
            raise ValueError(f"max_frame_size must be at least {_HANDSHAKE_FRAME_LIMIT}")
        if max_buffered_bytes < 0:
            raise ValueError("max_buffered_bytes must not be negative")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        if connect_timeout <= 0 or handshake_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.max_frame_size = max_frame_size
        self._on_messages = on_messages
        self._on_unreachable = on_unreachable
        self._max_buffered_bytes = max_buffered_bytes
        self._connect_timeout = connect_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._handshake_timeout = handshake_timeout
        self._log = logger if logger is not None else logging.getLogger(__name__)
        # Mutual TLS (raftkv/wire/peer_tls.py): None means plaintext peer links.
        self._server_ssl = tls.server_context() if tls is not None else None
        self._client_ssl = tls.client_context() if tls is not None else None
        # Jitter only; seeded from the OS so that nodes do not share a sequence.
        self._rng = random.Random()
        self._links: dict[int, _PeerLink] = {}
        # Every open connection, both directions, including dials still in handshake.
        self._connections: set[_PeerConnection] = set()
        self._retired_tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._closed = False
        self._apply_peers(peers)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for peers. Outbound connections are dialled when first needed."""
        if self._started:
            raise RuntimeError("PeerTransport.start() called twice")
        if self._closed:
            raise RuntimeError("PeerTransport was stopped and cannot be restarted")
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self._inbound_factory(),
                self.listen_host,
                self.listen_port,
                # Rebind over TIME_WAIT sockets left by a previous run on this port.
                reuse_address=True,
            )
        except OSError as exc:
            where = f"{self.listen_host}:{self.listen_port}"
            raise OSError(
                exc.errno,
                f"cannot listen for peer connections on {where}: {exc.strerror or exc}",
            ) from exc
        self._loop = loop
        self._started = True
        for link in self._links.values():
            link.start()
        self._log.info(
            "node %d listening for peers on %s:%d%s",
            self.node_id,
            self.listen_host,
            self.bound_port,
            " (mutual TLS)" if self._server_ssl is not None else "",
        )

    def _inbound_factory(self) -> Callable[[], asyncio.Protocol]:
        def plain() -> asyncio.Protocol:
            return _InboundConnection(self)

        if self._server_ssl is None:
            return plain
        # Not create_server(ssl=...): that would keep a failed handshake (a dialer with
        # no certificate, or one from another CA) out of the log.
        return logged_tls_factory(
            plain, self._server_ssl, self._log, "peer", handshake_timeout=self._handshake_timeout
        )

    async def stop(self) -> None:
        """Close the listener and every connection, cancel every task. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        tasks = [t for t in (link.retire() for link in self._links.values()) if t is not None]
        tasks.extend(self._retired_tasks)
        self._retired_tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for conn in list(self._connections):
            # A graceful close lets the last messages out (a TimeoutNow sent just before
            # a planned shutdown, say); a peer that does not read gets no grace.
            conn.close("transport stopped", abort=conn.stalled)
        await self._wait_connections_closed(_CLOSE_GRACE)
        # A peer that never reads keeps close() from completing; stop anyway.
        for conn in list(self._connections):
            conn.close("transport stopped", abort=True)
        await self._wait_connections_closed(_CLOSE_GRACE)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _wait_connections_closed(self, timeout: float) -> None:
        waiting = [conn.closed for conn in self._connections if not conn.closed.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)

    @property
    def bound_port(self) -> int:
        """The port actually listened on (``listen_port`` may be 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("PeerTransport is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    # -- sending -------------------------------------------------------------------------

    def send(self, messages: Sequence[RaftMessage]) -> None:
        """Queue ``messages`` for their recipients without blocking. The messages for one
        peer are encoded into one buffer and written with one write."""
        if self._closed or not messages:
            return
        by_peer: dict[int, list[RaftMessage]] = {}
        for message in messages:
            by_peer.setdefault(message.recipient, []).append(message)
        for peer_id, batch in by_peer.items():
            link = self._links.get(peer_id)
            if link is None:
                # Membership may have moved on before the core did; Raft copes with loss.
                self._log.debug(
                    "dropping %d message(s) for node %d: not a known peer", len(batch), peer_id
                )
                continue
            data = encode_batch(batch)
            if len(data) > self.max_frame_size:
                data, batch = self._without_oversized(link, data, batch)
                if not batch:
                    continue
            link.enqueue(data, len(batch))

    def _without_oversized(
        self, link: _PeerLink, data: bytes, batch: list[RaftMessage]
    ) -> tuple[bytes, list[RaftMessage]]:
        # The receiver would refuse a frame above max_frame_size by closing the
        # connection, and the core would resend it after every reconnect; drop it here.
        # Only batches that are large in total get here, so the walk is rare.
        keep: list[RaftMessage] = []
        offset = 0
        for message in batch:
            # The length field counts the type byte and the body; it is what the
            # receiver's decoder compares with its max_frame_size.
            (length,) = _FRAME_LENGTH.unpack_from(data, offset)
            offset += _FRAME_LENGTH.size + length
            if length > self.max_frame_size:
                link.messages_dropped += 1
                link.last_error = f"dropped a {type(message).__name__} of {length} bytes"
                self._log.error(
                    "dropping %s to node %d: its frame of %d bytes exceeds max_frame_size %d",
                    type(message).__name__,
                    link.peer_id,
                    length,
                    self.max_frame_size,
                )
                self._report_unreachable(link.peer_id)
            else:
                keep.append(message)
        if len(keep) == len(batch):
            return data, batch
        return (encode_batch(keep) if keep else b""), keep

    # -- membership ----------------------------------------------------------------------

    def update_peers(self, peers: Mapping[int, tuple[str, int]]) -> None:
        """Make ``peers`` the set of nodes to talk to: dial new ones, drop removed ones,
        redial a peer whose address changed."""
        if self._closed:
            return
        self._apply_peers(peers)

    def _apply_peers(self, peers: Mapping[int, tuple[str, int]]) -> None:
        # The driver may hand us the whole membership, ourselves included.
        wanted = {pid: (str(a[0]), int(a[1])) for pid, a in peers.items() if pid != self.node_id}
        for peer_id in [pid for pid in self._links if pid not in wanted]:
            link = self._links.pop(peer_id)
            task = link.retire()
            if task is not None:
                self._retired_tasks.add(task)
                task.add_done_callback(self._retired_tasks.discard)
            if link.inbound is not None:
                link.inbound.close("node removed from the cluster")
            self._log.info("node %d removed from the peer set", peer_id)
        for peer_id, address in wanted.items():
            existing = self._links.get(peer_id)
            if existing is None:
                link = _PeerLink(self, peer_id, address)
                self._links[peer_id] = link
                if self._started:
                    link.start()
            elif existing.address != address:
                self._log.info(
                    "node %d moved from %s:%d to %s:%d", peer_id, *existing.address, *address
                )
                existing.address = address
                existing.redial("peer address changed")

    # -- inbound -------------------------------------------------------------------------

    def _check_handshake(self, hello: Handshake) -> str | None:
        """Why a dialer must be refused, or None to accept it."""
        if hello.version != PROTOCOL_VERSION:
            return (
                f"protocol version {hello.version} is not supported "
                f"(this node speaks version {PROTOCOL_VERSION})"
            )
        if hello.cluster_id != self.cluster_id:
            return (
                f"cluster id {hello.cluster_id} does not match this node's cluster "
                f"id {self.cluster_id}"
            )
        if hello.node_id == self.node_id:
            return f"node id {hello.node_id} is this node's own id"
        if hello.node_id not in self._links:
            return f"node id {hello.node_id} is not a known member of this cluster"
        if self._closed:
            return "node is shutting down"
        return None

    def _inbound_accepted(self, conn: _InboundConnection) -> None:
        assert conn.peer_id is not None
        link = self._links[conn.peer_id]
        previous, link.inbound = link.inbound, conn
        if previous is not None and previous is not conn:
            # A peer dials anew only when its old connection is dead to it (it restarted,
            # or the link broke); ours may still look alive, so keep one per direction.
            self._log.info(
                "node %d reconnected from %s; closing its previous connection from %s",
                conn.peer_id,
                conn.peername,
                previous.peername,
            )
            previous.close("replaced by a newer connection from the same node")
        else:
            self._log.info(
                "accepted peer connection from node %d at %s", conn.peer_id, conn.peername
            )

    def _inbound_closed(self, conn: _InboundConnection) -> None:
        if conn.peer_id is None:
            return
        link = self._links.get(conn.peer_id)
        if link is not None and link.inbound is conn:
            link.inbound = None
            if not self._closed:
                # The outbound side logs its own breaks; this is the peer's side going
                # away (it stopped, crashed or lost the network). A connection replaced
                # by a newer one is not a drop and was logged when it was replaced.
                self._log.info(
                    "connection from node %d at %s closed: %s",
                    conn.peer_id,
                    conn.peername,
                    conn.closed.result() if conn.closed.done() else "closed",
                )

    def _received(self, conn: _InboundConnection, nbytes: int, messages: list[Message]) -> None:
        """Check and deliver the messages decoded from one read of ``conn``."""
        peer_id = conn.peer_id
        assert peer_id is not None
        link = self._links.get(peer_id)
        if link is not None:
            link.bytes_received += nbytes
        batch: list[RaftMessage] = []
        problem: str | None = None
        for message in messages:
            if not isinstance(message, _RAFT_MESSAGE_TYPES):
                problem = f"unexpected {type(message).__name__} frame after the handshake"
                break
            if message.sender != peer_id:
                problem = (
                    f"{type(message).__name__} claims sender {message.sender} on the "
                    f"connection of node {peer_id}"
                )
                break
            if message.recipient != self.node_id:
                problem = (
                    f"{type(message).__name__} is addressed to node {message.recipient}, "
                    f"not to this node ({self.node_id})"
                )
                break
            batch.append(message)
        # Messages before a bad one came from the authenticated peer in order; they are
        # as good as if the connection had broken right after them.
        if batch and not self._closed:
            if link is not None:
                link.messages_received += len(batch)
            try:
                self._on_messages(batch)
            except Exception:
                # The driver's fault, not the peer's: keep the connection, keep the loop.
                self._log.exception("on_messages raised while handling node %d's messages", peer_id)
        if problem is not None:
            conn.reject_messages(problem)

    def _report_unreachable(self, peer_id: int) -> None:
        # Deferred to its own loop callback, so the driver never sees the callback
        # re-entering it from inside send().
        if self._loop is None:
            self._call_unreachable(peer_id)
        else:
            self._loop.call_soon(self._call_unreachable, peer_id)

    def _call_unreachable(self, peer_id: int) -> None:
        if self._closed or peer_id not in self._links:
            return
        try:
            self._on_unreachable(peer_id)
        except Exception:
            self._log.exception("on_unreachable raised for node %d", peer_id)

    # -- introspection -------------------------------------------------------------------

    def stats(self) -> dict[int, PeerStats]:
        """Counters of every current peer, by node id."""
        return {
            peer_id: PeerStats(
                address=link.address,
                connected=link.connection is not None,
                inbound_connected=link.inbound is not None,
                bytes_sent=link.bytes_sent,
                messages_sent=link.messages_sent,
                bytes_received=link.bytes_received,
                messages_received=link.messages_received,
                messages_dropped=link.messages_dropped,
                buffered_bytes=link.pending_bytes,
                reconnects=max(0, link.connects - 1),
                dial_failures=link.dial_failures,
                last_error=link.last_error,
            )
            for peer_id, link in self._links.items()
        }
