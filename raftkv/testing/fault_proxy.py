"""A TCP fault proxy for the peer links of a test cluster (docs/architecture.md, testing layer 4).

Every node of a proxied cluster advertises a proxy port as its ``rpc_addr`` and listens
for peers on another port (``kvnode --rpc-listen``). Peers dial the proxy port; the
proxy forwards each connection to the node's real address and can break, delay or
reset it on command.

Links
-----
The peer transport dials every peer for its own outbound messages, and every connection
opens with a ``Handshake`` frame carrying the dialer's node id. The proxy reads that
first frame (forwarding its bytes unchanged) to learn the *source*; the *destination* is
the node whose proxy port was dialled. A connection therefore belongs to exactly one
directed link ``src -> dst``: it carries src's messages to dst, and dst's handshake reply
back. Faults are set per directed link, so ``block(1, 2)`` silences 1's messages to 2
while 2's messages to 1 (on the connection 2 dialled) still flow: a one-way partition.

A connection whose first frame is not a handshake (or does not decode, or does not
arrive within a few seconds) is forwarded as it is, unchanged, on the link
``(None, dst)``; the node refuses it. Such links are never blocked (the group helpers
and ``block`` name nodes, and these connections have none); ``reset`` and
``set_latency_all`` do apply to them.

Faults
------
* ``block``: a black hole. Nothing more is forwarded on the link's connections in either
  direction; the bytes are held (the proxy stops reading, so the senders' socket buffers
  fill up as they would behind a dead route), nothing is closed. A connection dialled
  while the link is blocked is accepted, identified and then held too; the node never
  sees it.
* ``unblock`` (and ``heal``): every connection of the link is *reset* rather than let
  through. A real network that heals would eventually deliver the held bytes, seconds
  late; Raft copes with either, but late stale bytes would make what a test observes
  after a heal depend on how much happened to be held. Dropping the connections is a
  fault the transport must handle anyway (it redials after a short backoff), and a healed
  link starts from a clean state.
* ``set_latency``: each chunk read from one side is written to the other ``delay`` plus
  a uniform random ``[0, jitter)`` seconds later; chunks keep their order within a
  direction (a chunk never overtakes the one before it). The delay applies to both
  directions of the link's connections. A new setting applies to chunks read from then
  on; chunks already waiting keep their time.
* ``reset``: close existing connections at once with a TCP RST (``SO_LINGER`` 0), both
  sides, discarding whatever was in flight.

Group helpers (``partition``, ``one_way``, ``isolate``, ``bridge``) add blocks to the
ones already in place; ``heal`` removes every block and every latency.

Threading
---------
The proxy runs its own asyncio loop in a background thread, so that synchronous test
code can drive it. Every public method may be called from any thread; a control method
returns once its change is in effect (once ``block()`` has returned, no byte is written
on that link).
Jitter comes from a ``random.Random(seed)`` used only on the proxy's loop, so a run can
be repeated as far as timing allows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import random
import socket
import struct
import threading
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, TypeVar

from raftkv.wire.tcp import set_nodelay
from raftkv_ext.codec import FrameDecoder, Handshake

__all__ = ["Address", "FaultProxy", "LinkKey", "LinkStats"]

Address: TypeAlias = tuple[str, int]
# (source node id, destination node id); the source is None for a connection whose
# first frame was not a handshake.
LinkKey: TypeAlias = tuple[int | None, int]

_T = TypeVar("_T")

_CHUNK: Final = 64 * 1024
# A handshake frame is a few dozen bytes; a first frame longer than this is not one.
_IDENTIFY_LIMIT: Final = 4096
# How long a new connection may take to send a whole first frame before it is forwarded
# unidentified (the node then applies its own handshake timeout).
_IDENTIFY_TIMEOUT: Final = 3.0
# Bytes read from a connection held since it was accepted before the proxy stops reading
# it altogether (the transport sends nothing after its handshake until it is answered).
_HOLD_LIMIT: Final = 1024 * 1024
# Chunks read but not yet written, per direction of a connection; beyond that the proxy
# stops reading, which pushes back on the sender as TCP would.
_QUEUE_CHUNKS: Final = 256
_CONTROL_TIMEOUT: Final = 10.0
_STOP_TIMEOUT: Final = 30.0
_LINGER_RST: Final = struct.pack("ii", 1, 0)


@dataclass(frozen=True, slots=True)
class LinkStats:
    """Counters of one directed link, as returned by ``FaultProxy.stats``."""

    src: int | None
    dst: int
    # Bytes written to dst on the link's connections (src's messages).
    bytes_forwarded: int
    # Bytes written back to src (dst's handshake replies).
    bytes_returned: int
    # Connections accepted on this link in total, and those open now (held ones included).
    connections: int
    open_connections: int
    # Connections closed by reset(), by unblock()/heal() or because a side broke.
    resets: int
    # Dials of the node's real address that failed (the node is down).
    connect_failures: int
    blocked: bool
    delay_s: float
    jitter_s: float


def _close_writer(writer: asyncio.StreamWriter | None, *, rst: bool) -> None:
    if writer is None:
        return
    transport = writer.transport
    if not rst:
        # A graceful close still flushes what was written (a refusal reply, say).
        transport.close()
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # Linger 0: close() sends RST and drops unsent data instead of flushing it.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    transport.abort()


class _Link:
    """Fault settings and counters of one directed link, and its open connections.
    Touched only on the proxy's loop (or before the loop exists)."""

    def __init__(self, src: int | None, dst: int, delay: float, jitter: float) -> None:
        self.src = src
        self.dst = dst
        self.blocked = False
        # Set while not blocked; every forwarding step waits on it.
        self.open = asyncio.Event()
        self.open.set()
        self.delay = delay
        self.jitter = jitter
        self.connections: set[_ProxiedConnection] = set()
        self.bytes_forwarded = 0
        self.bytes_returned = 0
        self.connections_total = 0
        self.resets = 0
        self.connect_failures = 0

    def stats(self) -> LinkStats:
        return LinkStats(
            src=self.src,
            dst=self.dst,
            bytes_forwarded=self.bytes_forwarded,
            bytes_returned=self.bytes_returned,
            connections=self.connections_total,
            open_connections=len(self.connections),
            resets=self.resets,
            connect_failures=self.connect_failures,
            blocked=self.blocked,
            delay_s=self.delay,
            jitter_s=self.jitter,
        )


class _ProxiedConnection:
    """One accepted connection and, once dialled, its upstream twin."""

    def __init__(
        self,
        dst: int,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
    ) -> None:
        self.dst = dst
        self.src: int | None = None
        self.link: _Link | None = None
        self.client_reader = client_reader
        self.client_writer = client_writer
        self.upstream_writer: asyncio.StreamWriter | None = None
        self.task = asyncio.current_task()
        self.closed = False

    def kill(self, *, rst: bool) -> None:
        """Close both sides now and stop the connection's handler."""
        if self.closed:
            return
        self.closed = True
        _close_writer(self.client_writer, rst=rst)
        _close_writer(self.upstream_writer, rst=rst)
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


class _Pipe:
    """One direction of a connection: a reader that queues chunks with their due time
    and a writer that sends them when due, both halted while the link is blocked."""

    def __init__(
        self,
        proxy: FaultProxy,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        forward: bool,
        first: bytes = b"",
    ) -> None:
        self._proxy = proxy
        self._link = link
        self._reader = reader
        self._writer = writer
        self._forward = forward
        self._first = first
        # None marks the end of the stream.
        self._queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_QUEUE_CHUNKS)
        self._last_due = 0.0

    async def read_loop(self) -> None:
        if self._first:
            await self._enqueue(self._first)
        while True:
            data = await self._reader.read(_CHUNK)
            if not data:
                await self._link.open.wait()
                await self._queue.put(None)
                return
            await self._enqueue(data)

    async def _enqueue(self, data: bytes) -> None:
        # Blocked: stop here, holding this chunk and (by not reading) everything after.
        await self._link.open.wait()
        due = self._proxy._due_time(self._link)
        # Jitter must not reorder: a chunk is never due before the one ahead of it.
        due = max(due, self._last_due)
        self._last_due = due
        await self._queue.put((due, data))

    async def write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self._queue.get()
            if item is None:
                await self._link.open.wait()
                # Pass the half-close on; the other direction goes on until its own end.
                if self._writer.can_write_eof():
                    self._writer.write_eof()
                return
            due, data = item
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._link.open.wait()
            self._writer.write(data)
            if self._forward:
                self._link.bytes_forwarded += len(data)
            else:
                self._link.bytes_returned += len(data)
            await self._writer.drain()


class FaultProxy:
    """Forward every node's peer connections and inject faults per directed link.

    ``routes`` maps a node id to (the address the proxy listens on for that node, the
    node's real peer address). A listen port of 0 picks a free port; ``address(node)``
    tells which. See the module docstring for the fault semantics.
    """

    def __init__(
        self,
        routes: Mapping[int, tuple[Address, Address]],
        *,
        seed: int | None = None,
        connect_timeout: float = 2.0,
        logger: logging.Logger | None = None,
    ) -> None:
        if connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        self._routes: dict[int, tuple[Address, Address]] = {}
        self._bound: dict[int, Address] = {}
        self._servers: dict[int, asyncio.Server] = {}
        self._links: dict[LinkKey, _Link] = {}
        self._connections: set[_ProxiedConnection] = set()
        self._default_delay = 0.0
        self._default_jitter = 0.0
        self._rng = random.Random(seed)
        self._connect_timeout = connect_timeout
        self._log = logger if logger is not None else logging.getLogger(__name__)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._stopping = False
        self._tasks_left_at_stop: int | None = None
        for node_id, (listen, real) in routes.items():
            self._add_route_state(node_id, listen, real)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread and listen on every route's proxy address."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("a FaultProxy can be started only once")
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=self._run_loop, args=(loop,), name="fault-proxy", daemon=True
            )
            self._loop = loop
            self._thread = thread
            thread.start()
            self._running = True
        try:
            asyncio.run_coroutine_threadsafe(self._open_all(), loop).result(_CONTROL_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Close every connection and listener, end every task and the thread.
        Idempotent; a stopped proxy cannot be started again."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if not self._running or loop is None or thread is None:
                return
            if threading.current_thread() is thread:
                raise RuntimeError("FaultProxy.stop() cannot be called from its own loop")
        try:
            left = asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_STOP_TIMEOUT)
            self._tasks_left_at_stop = left
        finally:
            with self._lock:
                self._running = False
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_STOP_TIMEOUT)

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._running

    @property
    def tasks_left_at_stop(self) -> int | None:
        """Tasks still alive on the loop after the last ``stop()`` had closed everything
        it tracks (0 when nothing leaked; None before any stop)."""
        return self._tasks_left_at_stop

    def _run_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _open_all(self) -> None:
        for node_id in list(self._routes):
            await self._listen(node_id)

    async def _listen(self, node_id: int) -> None:
        (host, port), _ = self._routes[node_id]
        try:
            server = await asyncio.start_server(
                functools.partial(self._accept, node_id), host, port, reuse_address=True
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"fault proxy cannot listen for node {node_id} on {host}:{port}: {exc}"
            ) from exc
        self._servers[node_id] = server
        bound = server.sockets[0].getsockname()
        self._bound[node_id] = (str(bound[0]), int(bound[1]))
        self._log.debug(
            "proxying node %d: %s:%d -> %s", node_id, *bound[:2], self._routes[node_id][1]
        )

    async def _shutdown(self) -> int:
        self._stopping = True
        for server in self._servers.values():
            server.close()
        tasks = []
        for conn in list(self._connections):
            conn.kill(rst=True)
            if conn.task is not None:
                tasks.append(conn.task)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers.values():
            await server.wait_closed()
        self._servers.clear()
        # A connection accepted just before its listener closed may still have a handler
        # that has not run yet; it sees _stopping and ends at its first step.
        for _ in range(3):
            await asyncio.sleep(0)
        current = asyncio.current_task()
        left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if left:
            self._log.warning("fault proxy: %d task(s) still alive at stop; cancelling", len(left))
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
        return len(left)

    # -- calls into the loop -------------------------------------------------------------

    def _call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the proxy's loop and return its result. Before start() (and after
        stop()) there is no loop to race with, and ``fn`` runs right here."""
        with self._lock:
            loop = self._loop if self._running else None
            if loop is None or threading.current_thread() is self._thread:
                return fn()
            future: concurrent.futures.Future[_T] = concurrent.futures.Future()

            def run() -> None:
                if not future.set_running_or_notify_cancel():
                    return
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)

            loop.call_soon_threadsafe(run)
        return future.result(_CONTROL_TIMEOUT)

    def _call_async(self, make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        with self._lock:
            loop = self._loop if self._running else None
            if loop is not None and threading.current_thread() is self._thread:
                raise RuntimeError("this FaultProxy method cannot be called from its own loop")
            if loop is not None:
                future = asyncio.run_coroutine_threadsafe(make(), loop)
        if loop is None:
            return asyncio.run(make())
        return future.result(_CONTROL_TIMEOUT)

    # -- routes --------------------------------------------------------------------------

    @property
    def nodes(self) -> list[int]:
        """Ids of the routed nodes."""
        return self._call(lambda: sorted(self._routes))

    def address(self, node_id: int) -> Address:
        """Where the proxy listens for ``node_id`` (the bound port once started)."""

        def get() -> Address:
            if node_id in self._bound:
                return self._bound[node_id]
            return self._routes[node_id][0]

        return self._call(get)

    def add_route(self, node_id: int, listen: Address, real: Address) -> Address:
        """Proxy one more node (one added to the cluster at run time). Returns the
        address the proxy listens on for it."""
        with self._lock:
            running = self._running

        if not running:
            self._call(lambda: self._add_route_state(node_id, listen, real))
            return listen

        async def add() -> Address:
            self._add_route_state(node_id, listen, real)
            try:
                await self._listen(node_id)
            except OSError:
                del self._routes[node_id]
                raise
            return self._bound[node_id]

        return self._call_async(add)

    def _add_route_state(self, node_id: int, listen: Address, real: Address) -> None:
        if node_id in self._routes:
            raise ValueError(f"node {node_id} already has a route")
        self._routes[node_id] = ((str(listen[0]), int(listen[1])), (str(real[0]), int(real[1])))
        for other in self._routes:
            if other != node_id:
                self._link(node_id, other)
                self._link(other, node_id)

    def _link(self, src: int | None, dst: int) -> _Link:
        key = (src, dst)
        link = self._links.get(key)
        if link is None:
            link = _Link(src, dst, self._default_delay, self._default_jitter)
            self._links[key] = link
        return link

    # -- faults --------------------------------------------------------------------------

    def block(self, src: int, dst: int) -> None:
        """Black-hole the directed link ``src -> dst`` (see the module docstring)."""
        self._call(lambda: self._block_all([(src, dst)]))

    def unblock(self, src: int, dst: int) -> None:
        """Lift a block; the link's held connections are reset, not let through."""
        self._call(lambda: self._unblock_all([(src, dst)]))

    def partition(self, groups: Sequence[Iterable[int]]) -> None:
        """Symmetric partition: no link between nodes of different groups. Nodes in no
        group keep their links."""
        sets = [set(group) for group in groups]
        seen: set[int] = set()
        for group in sets:
            if seen & group:
                raise ValueError(f"nodes {sorted(seen & group)} are in more than one group")
            seen |= group
        pairs = [
            (a, b)
            for i, left in enumerate(sets)
            for j, right in enumerate(sets)
            if i != j
            for a in left
            for b in right
        ]
        self._call(lambda: self._block_all(pairs))

    def one_way(self, src_nodes: Collection[int], dst_nodes: Collection[int]) -> None:
        """Messages from ``src_nodes`` to ``dst_nodes`` are lost; the other way works."""
        pairs = [(a, b) for a in src_nodes for b in dst_nodes if a != b]
        self._call(lambda: self._block_all(pairs))

    def isolate(self, node: int) -> None:
        """Cut ``node`` off from every other node, both ways."""

        def apply() -> None:
            others = {n for n in self._routes if n != node}
            others |= {s for s, _ in self._links if s is not None and s != node}
            self._block_all([(node, o) for o in others] + [(o, node) for o in others])

        self._call(apply)

    def bridge(self, left: Collection[int], bridge_node: int, right: Collection[int]) -> None:
        """``left`` and ``right`` cannot talk to each other; ``bridge_node`` talks to both."""
        left_set, right_set = set(left), set(right)
        if left_set & right_set:
            raise ValueError(f"nodes {sorted(left_set & right_set)} are on both sides")
        if bridge_node in left_set | right_set:
            raise ValueError(f"bridge node {bridge_node} must be on neither side")
        self.partition([left_set, right_set])

    def heal(self) -> None:
        """Remove every block (resetting the held connections) and every latency."""

        def apply() -> None:
            self._default_delay = self._default_jitter = 0.0
            for link in self._links.values():
                link.delay = link.jitter = 0.0
            self._unblock_all([key for key, link in self._links.items() if link.blocked])

        self._call(apply)

    def blocked_links(self) -> set[tuple[int, int]]:
        """The directed links blocked now."""
        return self._call(
            lambda: {
                (link.src, link.dst)
                for link in self._links.values()
                if link.blocked and link.src is not None
            }
        )

    def _block_all(self, pairs: Iterable[LinkKey]) -> None:
        for src, dst in pairs:
            link = self._link(src, dst)
            if not link.blocked:
                link.blocked = True
                link.open.clear()
                self._log.debug("blocked %s -> %d", src, dst)

    def _unblock_all(self, pairs: Iterable[LinkKey]) -> None:
        for key in pairs:
            link = self._links.get(key)
            if link is None or not link.blocked:
                continue
            # Reset first: a held chunk must never be written once the gate opens.
            for conn in list(link.connections):
                link.resets += 1
                conn.kill(rst=True)
            link.blocked = False
            link.open.set()
            self._log.debug("unblocked %s -> %d", link.src, link.dst)

    def set_latency(self, src: int, dst: int, delay_s: float, jitter_s: float = 0.0) -> None:
        """Delay every chunk on the link ``src -> dst`` (both directions of its
        connections) by ``delay_s`` plus uniform ``[0, jitter_s)``."""
        _check_latency(delay_s, jitter_s)

        def apply() -> None:
            link = self._link(src, dst)
            link.delay, link.jitter = delay_s, jitter_s

        self._call(apply)

    def set_latency_all(self, delay_s: float, jitter_s: float = 0.0) -> None:
        """The same latency on every link, including links first seen later."""
        _check_latency(delay_s, jitter_s)

        def apply() -> None:
            self._default_delay, self._default_jitter = delay_s, jitter_s
            for link in self._links.values():
                link.delay, link.jitter = delay_s, jitter_s

        self._call(apply)

    def reset(self, src: int | None = None, dst: int | None = None) -> int:
        """Reset (TCP RST, both sides) the open connections of every link matching
        ``src`` and ``dst`` (None matches any); returns how many were reset. With no
        ``src``, connections not yet identified are included."""

        def apply() -> int:
            count = 0
            for conn in list(self._connections):
                if conn.closed:
                    continue
                if dst is not None and conn.dst != dst:
                    continue
                if src is not None and (conn.link is None or conn.src != src):
                    continue
                if conn.link is not None:
                    conn.link.resets += 1
                conn.kill(rst=True)
                count += 1
            return count

        return self._call(apply)

    def _due_time(self, link: _Link) -> float:
        now = asyncio.get_running_loop().time()
        jitter = self._rng.uniform(0.0, link.jitter) if link.jitter > 0 else 0.0
        return now + link.delay + jitter

    # -- introspection -------------------------------------------------------------------

    def stats(self) -> dict[LinkKey, LinkStats]:
        """Counters of every link seen or configured, by (src, dst)."""
        return self._call(lambda: {key: link.stats() for key, link in self._links.items()})

    # -- connections ---------------------------------------------------------------------

    async def _accept(
        self, dst: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = _ProxiedConnection(dst, reader, writer)
        if self._stopping:
            conn.kill(rst=True)
            return
        self._connections.add(conn)
        set_nodelay(writer.transport)
        try:
            await self._serve(conn)
            conn.kill(rst=False)
        except asyncio.CancelledError:
            # kill() (reset, unblock, stop) cancels the handler. It ends normally: the
            # streams server of Python 3.11 reports a cancelled handler as an error.
            pass
        except OSError as exc:
            # A side broke (reset, refused, unreachable): break the other side too.
            self._log.debug("connection to node %d (from %s) broke: %s", dst, conn.src, exc)
            if conn.link is not None and not conn.closed:
                conn.link.resets += 1
            conn.kill(rst=True)
        except Exception:
            self._log.exception("fault proxy: connection to node %d failed", dst)
            conn.kill(rst=True)
        finally:
            # Also reached on cancellation (reset, unblock, stop): kill() was called.
            conn.kill(rst=True)
            self._connections.discard(conn)
            if conn.link is not None:
                conn.link.connections.discard(conn)

    async def _serve(self, conn: _ProxiedConnection) -> None:
        first = await self._identify(conn)
        if first is None:
            return
        link = self._link(conn.src, conn.dst)
        conn.link = link
        link.connections.add(conn)
        link.connections_total += 1
        if link.blocked:
            # Accepted but never forwarded: unblocking resets the link's connections.
            await self._hold(conn, len(first))
            return
        _, (host, port) = self._routes[conn.dst]
        try:
            async with asyncio.timeout(self._connect_timeout):
                up_reader, up_writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            link.connect_failures += 1
            self._log.debug("node %d at %s:%d unreachable: %s", conn.dst, host, port, exc)
            # As close as a proxy can get to "connection refused": reset the dialer.
            conn.kill(rst=True)
            return
        conn.upstream_writer = up_writer
        set_nodelay(up_writer.transport)
        forward = _Pipe(self, link, conn.client_reader, up_writer, forward=True, first=first)
        backward = _Pipe(self, link, up_reader, conn.client_writer, forward=False)
        tasks = [
            asyncio.create_task(forward.read_loop()),
            asyncio.create_task(forward.write_loop()),
            asyncio.create_task(backward.read_loop()),
            asyncio.create_task(backward.write_loop()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                failure = task.exception()
                if failure is not None:
                    raise failure
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _identify(self, conn: _ProxiedConnection) -> bytes | None:
        """Read until the first frame is whole and take the source from it. Returns the
        bytes read (to forward unchanged), or None if the dialer closed first."""
        decoder = FrameDecoder(_IDENTIFY_LIMIT)
        buffer = bytearray()
        try:
            async with asyncio.timeout(_IDENTIFY_TIMEOUT):
                while True:
                    data = await conn.client_reader.read(_CHUNK)
                    if not data:
                        return None
                    buffer += data
                    try:
                        messages = decoder.feed(data)
                    except Exception:
                        # Not our protocol (or a hostile first frame): forward as it is.
                        return bytes(buffer)
                    if messages:
                        hello = messages[0]
                        if isinstance(hello, Handshake):
                            conn.src = hello.node_id
                        return bytes(buffer)
        except TimeoutError:
            return bytes(buffer)

    async def _hold(self, conn: _ProxiedConnection, held: int) -> None:
        # Keep reading only to notice a dialer that gives up (its bytes can never be
        # delivered); past a limit, just wait to be reset.
        while held < _HOLD_LIMIT:
            data = await conn.client_reader.read(_CHUNK)
            if not data:
                return
            held += len(data)
        await asyncio.get_running_loop().create_future()


def _check_latency(delay_s: float, jitter_s: float) -> None:
    if delay_s < 0 or jitter_s < 0:
        raise ValueError("delay and jitter must not be negative")
