"""The load of the lease benchmark (``kvbench --scenario lease``), in a process of its
own, on uvloop, over keep-alive HTTP/1.1 connections whose answers httptools parses.

- **Writes** (both sides): exactly the transaction benchmark's plain side
  (``txn_load.py``): the documented ``POST /kv/{key}`` with ``{"value": ...}`` on
  ``connections`` connections, one request at a time on each, random keys.
- **Keep-alives** (side ``leases``): every lease of the setup once per third of its TTL,
  spread evenly over time (one every ``ttl / 3 / leases`` seconds, the leases in turn).
  ``keepalive_mode`` ``stream`` (the default, what a client holding many leases uses,
  as etcd's clients use ``LeaseKeepAlive``): ``keepalive_connections`` streaming
  keep-alives (``POST /lease/keepalive``), each carrying its share of the leases; the
  keep-alives falling due are written every ``STREAM_TICK_S`` as one chunk of NDJSON
  lines, and each answer line is timed from its chunk's send. ``request``: one
  ``POST /lease/{id}/keepalive`` per keep-alive. The schedule is open-loop: a
  keep-alive that falls due goes out on an idle connection of its own pool, which starts
  with ``keepalive_connections`` connections and opens another (up to
  ``keepalive_cap``) only when every one is busy, so the schedule is kept whatever the
  latency; how late each one left against its schedule is measured. A 404 (the lease is
  gone) is counted apart: the benchmark fails on it.
- **Expiring leases** (side ``leases``): ``expiry_rate`` times a second, ``POST /lease``
  with ``expiry_ttl``, then ``POST /kv/{prefix}{n}`` attached to it, never kept alive;
  a ``GET /watch?prefix=...`` stream opened before the run notes when each key's delete
  event arrives. Lateness = that arrival - (the grant's send time + TTL): how late after
  the earliest moment the store may expire it (docs/api.md, "How exact expiry is") a
  client hears that it did. It includes the time the grant took to commit (the leader
  starts the TTL when it applies the grant), so it is also given from the grant's
  acknowledgement + TTL: the lease's deadline lies between the two. After the run the
  process waits for the deletes of every such key (``drain_s`` past the last one's
  deadline at most).

Setup and the unmeasured refresh between runs run here too (``grant_leases``,
``refresh_leases``). Times are ``time.monotonic()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from array import array
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, cast
from urllib.parse import quote

import httptools
import orjson
import uvloop

from .key_space import bench_value
from .txn_load import LoadResult, LoadSpec, _Connection, _Load

SIDES: Final = ("plain", "leases")
LEASE_KEY_PREFIX: Final = "lease/"
EXPIRY_KEY_PREFIX: Final = "expiry/"
SETUP_CONNECTIONS: Final = 64
KEEPALIVE_MODES: Final = ("stream", "request")
STREAM_TICK_S: Final = 0.02
"""How often a keep-alive stream writes the lines that fell due."""


def lease_key(i: int) -> str:
    """The key attached to setup lease number ``i`` (``lease/k000042``)."""
    if i < 0:
        raise ValueError(f"lease numbers start at 0, not {i}")
    return f"{LEASE_KEY_PREFIX}k{i:06d}"


def expiry_prefix(run: int) -> str:
    """The prefix of one run's expiring keys: each run watches only its own."""
    return f"{EXPIRY_KEY_PREFIX}{run:04d}/"


def _post(path: bytes, host: bytes, body: bytes = b"") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (path, host, len(body), body)
    )


def keepalive_request(lease_id: int, host: bytes) -> bytes:
    return _post(b"/lease/%d/keepalive" % lease_id, host)


def grant_request(ttl: float, host: bytes) -> bytes:
    return _post(b"/lease", host, orjson.dumps({"ttl": ttl}))


def put_request(key: str, value: str, lease_id: int, host: bytes) -> bytes:
    path = b"/kv/" + quote(key, safe="/").encode()
    return _post(path, host, orjson.dumps({"value": value, "lease": lease_id}))


def keepalive_schedule(
    ids: list[int], interval_s: float, start: float, until: float
) -> Iterator[tuple[int, float]]:
    """(lease id, due time) of every keep-alive from ``start`` until ``until``: the
    leases in turn, evenly spaced, each one once per ``interval_s``."""
    if not ids or interval_s <= 0:
        return
    spacing = interval_s / len(ids)
    k = 0
    while (due := start + k * spacing) < until:
        yield ids[k % len(ids)], due
        k += 1


# ---------------------------------------------------------------------- connections


class _Conn(asyncio.Protocol):
    """One keep-alive connection of a pool: one request at a time."""

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[tuple[int, bytes]] | None = None
        self._body = b""
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self.open = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self.open:
            self.open = False
            self._pool.lost(self)
        self._fail(ConnectionError(f"connection lost: {exc or 'closed by the server'}"))

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"bad HTTP answer: {exc}"))
            self.close()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        answer, self._answer = self._answer, None
        body, self._body = self._body, b""
        if answer is not None and not answer.done():
            answer.set_result((self._parser.get_status_code(), body))

    def _fail(self, exc: Exception) -> None:
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_exception(exc)

    def call(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self._transport is not None and self._answer is None
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return self._answer

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _Pool:
    """Connections to one node, opened on demand: a call takes an idle one, or opens one
    more while fewer than ``cap`` are open, or waits for one to be free."""

    def __init__(self, host: str, port: int, cap: int) -> None:
        self.host, self.port, self.cap = host, port, cap
        self.loop = asyncio.get_running_loop()
        self.idle: list[_Conn] = []
        self.waiters: deque[asyncio.Future[_Conn]] = deque()
        self.size = 0
        self.peak = 0
        self.lost_count = 0

    async def _open(self) -> _Conn:
        self.size += 1
        self.peak = max(self.peak, self.size)
        try:
            _, conn = await self.loop.create_connection(lambda: _Conn(self), self.host, self.port)
        except BaseException:
            self.size -= 1
            raise
        return conn

    async def prime(self, count: int) -> None:
        opened = [await self._open() for _ in range(min(count, self.cap))]
        for conn in opened:
            self.release(conn)

    async def _acquire(self) -> _Conn:
        while self.idle:
            conn = self.idle.pop()
            if conn.open:
                return conn
        if self.size < self.cap:
            return await self._open()
        waiter: asyncio.Future[_Conn] = self.loop.create_future()
        self.waiters.append(waiter)
        return await waiter

    def release(self, conn: _Conn) -> None:
        if not conn.open:
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.idle.append(conn)

    def lost(self, conn: _Conn) -> None:
        self.size -= 1
        self.lost_count += 1
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        if self.waiters:
            self.loop.create_task(self._replace())

    async def _replace(self) -> None:
        with contextlib.suppress(OSError):
            self.release(await self._open())

    async def call(self, request: bytes) -> tuple[int, bytes, float]:
        """(status, body, when it was sent)."""
        conn = await self._acquire()
        try:
            sent = time.monotonic()
            status, body = await conn.call(request)
            return status, body, sent
        finally:
            self.release(conn)

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class _Tasks:
    """Fire-and-forget tasks, kept referenced until done."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def join(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _describe(status: int, body: bytes) -> str:
    return f"{status} {body[:200].decode(errors='replace')}"


# ---------------------------------------------------------------------- setup


@dataclass(slots=True)
class SetupSpec:
    host: str
    port: int
    count: int
    ttl: float
    value_size: int
    connections: int = SETUP_CONNECTIONS


@dataclass(slots=True)
class SetupResult:
    ids: list[int]
    seconds: float
    errors: int
    first_error: str


async def _workers(count: int, connections: int, work: Callable[[int], Awaitable[None]]) -> None:
    """``work(i)`` for every ``i`` below ``count``, ``connections`` at a time."""
    numbers = iter(range(count))

    async def worker() -> None:
        for i in numbers:
            await work(i)

    await asyncio.gather(*(worker() for _ in range(max(1, min(connections, count)))))


async def _grant(spec: SetupSpec) -> SetupResult:
    pool = _Pool(spec.host, spec.port, spec.connections)
    host = f"{spec.host}:{spec.port}".encode()
    value = bench_value(spec.value_size).decode()
    ids = [0] * spec.count
    result = SetupResult([], 0.0, 0, "")

    def failed(why: str) -> None:
        result.errors += 1
        result.first_error = result.first_error or why

    async def one(i: int) -> None:
        try:
            status, body, _ = await pool.call(grant_request(spec.ttl, host))
            if status != 200:
                failed(f"grant: {_describe(status, body)}")
                return
            lease_id = int(orjson.loads(body)["id"])
            status, body, _ = await pool.call(put_request(lease_key(i), value, lease_id, host))
            if status != 200:
                failed(f"put {lease_key(i)}: {_describe(status, body)}")
                return
            ids[i] = lease_id
        except (ConnectionError, OSError, ValueError, KeyError) as exc:
            failed(f"lease {i}: {exc!r}")

    began = time.monotonic()
    await pool.prime(spec.connections)
    await _workers(spec.count, spec.connections, one)
    result.seconds = time.monotonic() - began
    result.ids = [i for i in ids if i]
    pool.close()
    return result


def grant_leases(spec: SetupSpec) -> SetupResult:
    """Grant ``count`` leases of ``ttl`` seconds and attach ``lease_key(i)`` to lease i."""
    return uvloop.run(_grant(spec))


@dataclass(slots=True)
class RefreshSpec:
    host: str
    port: int
    ids: list[int]
    connections: int = SETUP_CONNECTIONS


@dataclass(slots=True)
class RefreshResult:
    seconds: float = 0.0
    ok: int = 0
    gone: int = 0
    errors: int = 0
    first_error: str = ""
    gone_ids: list[int] = field(default_factory=list)


async def _refresh(spec: RefreshSpec) -> RefreshResult:
    pool = _Pool(spec.host, spec.port, spec.connections)
    host = f"{spec.host}:{spec.port}".encode()
    result = RefreshResult()

    async def one(i: int) -> None:
        lease_id = spec.ids[i]
        try:
            status, body, _ = await pool.call(keepalive_request(lease_id, host))
        except (ConnectionError, OSError) as exc:
            result.errors += 1
            result.first_error = result.first_error or repr(exc)
            return
        if status == 200:
            result.ok += 1
        elif status == 404:
            result.gone += 1
            result.gone_ids.append(lease_id)
        else:
            result.errors += 1
            result.first_error = result.first_error or _describe(status, body)

    began = time.monotonic()
    await pool.prime(spec.connections)
    await _workers(len(spec.ids), spec.connections, one)
    result.seconds = time.monotonic() - began
    pool.close()
    return result


def refresh_leases(spec: RefreshSpec) -> RefreshResult:
    """One keep-alive of every lease, as fast as ``connections`` allow (unmeasured)."""
    return uvloop.run(_refresh(spec))


# ---------------------------------------------------------------------- the run


@dataclass(slots=True)
class LeaseLoadSpec:
    """One run of one side (picklable: it crosses to the generator's process)."""

    side: str
    host: str
    port: int
    connections: int
    duration_s: float
    warmup_s: float
    keys: int
    value_size: int
    seed: int
    start_at: float = 0.0
    lease_ids: list[int] = field(default_factory=list)
    lease_ttl: float = 30.0
    keepalive_connections: int = 4
    keepalive_cap: int = 256
    keepalive_mode: str = "stream"
    expiry_rate: float = 20.0
    expiry_ttl: float = 2.0
    expiry_prefix: str = EXPIRY_KEY_PREFIX
    drain_s: float = 10.0

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise ValueError(f"unknown side {self.side!r}; one of {', '.join(SIDES)}")
        if self.keepalive_mode not in KEEPALIVE_MODES:
            raise ValueError(
                f"unknown keep-alive mode {self.keepalive_mode!r}; "
                f"one of {', '.join(KEEPALIVE_MODES)}"
            )


@dataclass(slots=True)
class KeepAliveStats:
    """Keep-alives of a ``leases`` run. ``latencies``: of those answered 200 in the
    measured window; ``lags``: how late each one due in the window was sent against its
    schedule. ``gone``: answered 404 (anywhere in the run)."""

    target_per_s: float
    scheduled: int = 0
    ok: int = 0
    ok_in_window: int = 0
    gone: int = 0
    errors: int = 0
    first_error: str = ""
    first_gone: str = ""
    latencies: array[float] = field(default_factory=lambda: array("d"))
    lags: array[float] = field(default_factory=lambda: array("d"))
    peak_connections: int = 0
    connections_lost: int = 0


@dataclass(slots=True)
class ExpiryStats:
    """The expiring leases of a ``leases`` run. ``lateness``: seconds, of the keys whose
    grant was sent in the measured window, from grant sent + TTL and (``from_ack``) from
    the grant's acknowledgement + TTL; ``missing``: keys written whose delete never
    arrived; ``early``: deletes that arrived before grant sent + TTL."""

    rate: float
    ttl: float
    granted: int = 0
    written: int = 0
    measured: int = 0
    errors: int = 0
    first_error: str = ""
    lateness: array[float] = field(default_factory=lambda: array("d"))
    lateness_from_ack: array[float] = field(default_factory=lambda: array("d"))
    missing: int = 0
    early: int = 0
    deletes: int = 0
    duplicate_deletes: int = 0
    resyncs: int = 0
    watch_error: str = ""
    drain_s: float = 0.0


@dataclass(slots=True)
class LeaseLoadResult:
    side: str
    writes: LoadResult
    keepalive: KeepAliveStats | None = None
    expiry: ExpiryStats | None = None
    window: tuple[float, float] = (0.0, 0.0)
    loop_lag_p99_ms: float = 0.0
    loop_lag_max_ms: float = 0.0
    cpu_s: float = 0.0


class _KeepAliveStream(asyncio.Protocol):
    """One ``POST /lease/keepalive``: chunks of lines out, answer lines in, in order."""

    def __init__(self, host: bytes, stats: KeepAliveStats, window: tuple[float, float]) -> None:
        self.host = host
        self.stats = stats
        self.window = window
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiting: deque[tuple[int, float, float]] = deque()  # id, sent, due
        self.partial = b""
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(
            b"POST /lease/keepalive HTTP/1.1\r\nHost: %s\r\n"
            b"Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n" % self.host
        )

    def send(self, due: list[tuple[int, float]]) -> None:
        if not due or self.transport is None or self.transport.is_closing():
            return
        sent = time.monotonic()
        start, end = self.window
        body = b"".join(b'{"id":%d}\n' % lease_id for lease_id, _ in due)
        self.transport.write(b"%x\r\n%s\r\n" % (len(body), body))
        for lease_id, when in due:
            self.waiting.append((lease_id, sent, when))
            if start <= when < end:
                self.stats.lags.append(max(0.0, sent - when))

    async def finish(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"0\r\n\r\n")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await self.done
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"unparsable answer: {exc}")

    def on_body(self, body: bytes) -> None:
        *lines, self.partial = (self.partial + body).split(b"\n")
        now = time.monotonic()
        start, end = self.window
        stats = self.stats
        for line in lines:
            if not line or not self.waiting:
                continue
            lease_id, sent, _ = self.waiting.popleft()
            answer = orjson.loads(line)
            if "ttl" in answer:
                stats.ok += 1
                if start <= now <= end:
                    stats.ok_in_window += 1
                    stats.latencies.append(now - sent)
            elif answer.get("status") == 404:
                stats.gone += 1
                stats.first_gone = stats.first_gone or f"lease {lease_id}: {answer}"
            else:
                stats.errors += 1
                stats.first_error = stats.first_error or f"lease {lease_id}: {answer}"

    def on_message_complete(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def _fail(self, why: str) -> None:
        self.stats.errors += 1
        self.stats.first_error = self.stats.first_error or why
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting:
            self.stats.connections_lost += 1
            self._fail(f"a keep-alive stream was lost with {len(self.waiting)} unanswered")
        elif not self.done.done():
            self.done.set_result(None)


class _Watch(asyncio.Protocol):
    """``GET /watch?prefix=P``: the arrival time of the first delete event of each key."""

    def __init__(self, request: bytes, stats: ExpiryStats) -> None:
        self._request = request
        self._stats = stats
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._partial = b""
        self._status = 0
        self._now = 0.0
        self.closing = False
        self.deleted: dict[str, float] = {}
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self.closing:
            self._error(f"watch stream closed ({exc or 'by the server'})")

    def data_received(self, data: bytes) -> None:
        self._now = time.monotonic()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._error(f"bad HTTP on the watch stream: {exc}")
            self.close()

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        data = self._partial + body
        if self._status != 200:
            self._partial = data
            return
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line:
                self._line(line)

    def on_message_complete(self) -> None:
        if self._status != 200:
            self._error(f"watch: {_describe(self._status, self._partial)}")

    def _line(self, line: bytes) -> None:
        try:
            message: dict[str, Any] = orjson.loads(line)
        except orjson.JSONDecodeError:
            self._error(f"watch: unparsed line {line[:200]!r}")
            return
        kind = message.get("kind")
        if kind == "start" and not self.started.done():
            self.started.set_result(None)
        elif kind == "resync":
            self._stats.resyncs += 1
        elif kind == "events":
            for event in message.get("events", ()):
                if event.get("type") != "delete":
                    continue
                key = str(event.get("key"))
                self._stats.deletes += 1
                if key in self.deleted:
                    self._stats.duplicate_deletes += 1
                else:
                    self.deleted[key] = self._now

    def _error(self, why: str) -> None:
        self._stats.watch_error = self._stats.watch_error or why
        if not self.started.done():
            self.started.set_exception(RuntimeError(why))

    def close(self) -> None:
        self.closing = True
        if self._transport is not None:
            self._transport.close()


async def _loop_lag(lags: list[float], interval_s: float = 0.01) -> None:
    while True:
        due = time.monotonic() + interval_s
        await asyncio.sleep(interval_s)
        lags.append(max(0.0, time.monotonic() - due))


class _LeaseTraffic:
    """The keep-alives and the expiring leases of one ``leases`` run."""

    def __init__(self, spec: LeaseLoadSpec, window: tuple[float, float]) -> None:
        self.spec = spec
        self.window = window
        self.host = f"{spec.host}:{spec.port}".encode()
        interval = spec.lease_ttl / 3
        self.keepalive = KeepAliveStats(round(len(spec.lease_ids) / interval, 1))
        self.expiry = ExpiryStats(spec.expiry_rate, spec.expiry_ttl)
        self.tasks = _Tasks()
        self.keepalives = _Pool(spec.host, spec.port, spec.keepalive_cap)
        self.grants = _Pool(spec.host, spec.port, spec.keepalive_cap)
        self.sent: dict[str, float] = {}
        self.acked: dict[str, float] = {}
        self.written: set[str] = set()
        self.watch: _Watch | None = None
        self.value = bench_value(spec.value_size).decode()

    async def open(self) -> None:
        spec = self.spec
        await self.keepalives.prime(spec.keepalive_connections)
        if spec.expiry_rate <= 0:
            return
        await self.grants.prime(2)
        request = (
            b"GET /watch?prefix=%s HTTP/1.1\r\nHost: %s\r\nAccept: application/x-ndjson\r\n\r\n"
            % (quote(spec.expiry_prefix, safe="").encode(), self.host)
        )
        loop = asyncio.get_running_loop()
        _, self.watch = await loop.create_connection(
            lambda: _Watch(request, self.expiry), spec.host, spec.port
        )
        async with asyncio.timeout(30):
            await self.watch.started

    # -- keep-alives
    async def run_keepalives(self, start: float, until: float) -> None:
        spec = self.spec
        if spec.keepalive_mode == "stream":
            await self._run_streams(start, until)
            return
        schedule = keepalive_schedule(spec.lease_ids, spec.lease_ttl / 3, start, until)
        for lease_id, due in schedule:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.keepalive.scheduled += 1
            self.tasks.spawn(self._keepalive(lease_id, due))

    async def _run_streams(self, start: float, until: float) -> None:
        spec = self.spec
        loop = asyncio.get_running_loop()
        count = max(1, spec.keepalive_connections)
        streams: list[_KeepAliveStream] = []
        for _ in range(count):
            _, stream = await loop.create_connection(
                lambda: _KeepAliveStream(self.host, self.keepalive, self.window),
                spec.host,
                spec.port,
            )
            streams.append(stream)
        self.keepalive.peak_connections = count
        schedule = keepalive_schedule(spec.lease_ids, spec.lease_ttl / 3, start, until)
        pending: list[list[tuple[int, float]]] = [[] for _ in streams]
        turn = 0
        upcoming = next(schedule, None)
        while upcoming is not None:
            tick_end = time.monotonic() + STREAM_TICK_S
            while upcoming is not None and upcoming[1] <= tick_end:
                pending[turn % count].append(upcoming)
                turn += 1
                self.keepalive.scheduled += 1
                upcoming = next(schedule, None)
            # What falls due before the next tick goes now: at most a tick early.
            for stream, due in zip(streams, pending, strict=True):
                stream.send(due)
                due.clear()
            await asyncio.sleep(STREAM_TICK_S)
        for stream in streams:
            await stream.finish()

    async def _keepalive(self, lease_id: int, due: float) -> None:
        stats = self.keepalive
        start, end = self.window
        try:
            status, body, sent = await self.keepalives.call(keepalive_request(lease_id, self.host))
        except (ConnectionError, OSError) as exc:
            stats.errors += 1
            stats.first_error = stats.first_error or f"lease {lease_id}: {exc!r}"
            return
        now = time.monotonic()
        if start <= due < end:
            stats.lags.append(sent - due)
        if status == 200:
            stats.ok += 1
            if start <= now <= end:
                stats.ok_in_window += 1
                stats.latencies.append(now - sent)
        elif status == 404:
            stats.gone += 1
            stats.first_gone = stats.first_gone or f"lease {lease_id}: {_describe(status, body)}"
        else:
            stats.errors += 1
            stats.first_error = stats.first_error or f"lease {lease_id}: {_describe(status, body)}"

    # -- expiring leases
    async def run_expiring(self, start: float, until: float) -> None:
        rate = self.spec.expiry_rate
        if rate <= 0:
            return
        n = 0
        while (due := start + n / rate) < until:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.tasks.spawn(self._expiring(n))
            n += 1

    async def _expiring(self, n: int) -> None:
        stats = self.expiry
        key = f"{self.spec.expiry_prefix}{n:08d}"
        try:
            status, body, sent = await self.grants.call(grant_request(stats.ttl, self.host))
            if status != 200:
                raise ValueError(f"grant: {_describe(status, body)}")
            self.acked[key] = time.monotonic()
            stats.granted += 1
            self.sent[key] = sent
            lease_id = int(orjson.loads(body)["id"])
            status, body, _ = await self.grants.call(
                put_request(key, self.value, lease_id, self.host)
            )
            if status != 200:
                raise ValueError(f"put {key}: {_describe(status, body)}")
        except (ConnectionError, OSError, ValueError, KeyError) as exc:
            stats.errors += 1
            stats.first_error = stats.first_error or str(exc)
            return
        stats.written += 1
        self.written.add(key)

    async def drain(self) -> None:
        """Wait for the in-flight requests, then for the delete of every key written."""
        await self.tasks.join()
        watch = self.watch
        if watch is None:
            return
        began = time.monotonic()
        last = max(self.sent.values(), default=began)
        deadline = max(began, last + self.expiry.ttl) + self.spec.drain_s
        while time.monotonic() < deadline and not self.expiry.watch_error:
            if all(key in watch.deleted for key in self.written):
                break
            await asyncio.sleep(0.05)
        self.expiry.drain_s = round(time.monotonic() - began, 3)
        watch.close()

    def finish(self) -> None:
        stats = self.expiry
        start, end = self.window
        deleted = self.watch.deleted if self.watch is not None else {}
        for key in self.written:
            sent = self.sent[key]
            arrived = deleted.get(key)
            if arrived is None:
                stats.missing += 1
                continue
            late = arrived - (sent + stats.ttl)
            if late < 0:
                stats.early += 1
            if start <= sent < end:
                stats.measured += 1
                stats.lateness.append(late)
                stats.lateness_from_ack.append(arrived - (self.acked[key] + stats.ttl))
        self.keepalive.peak_connections = self.keepalives.peak
        self.keepalive.connections_lost = self.keepalives.lost_count
        self.keepalives.close()
        self.grants.close()


async def _run(spec: LeaseLoadSpec) -> LeaseLoadResult:
    loop = asyncio.get_running_loop()
    traffic: _LeaseTraffic | None = None
    if spec.side == "leases":
        # Before the start: the watch stream must have its start line first.
        placeholder = (spec.start_at + spec.warmup_s, spec.start_at + spec.warmup_s)
        traffic = _LeaseTraffic(spec, placeholder)
        await traffic.open()
    delay = spec.start_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    start = max(time.monotonic(), spec.start_at)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    writes = _Load(
        LoadSpec(
            side="plain",
            host=spec.host,
            port=spec.port,
            connections=spec.connections,
            duration_s=spec.duration_s,
            warmup_s=spec.warmup_s,
            keys=spec.keys,
            value_size=spec.value_size,
            seed=spec.seed,
        ),
        start,
    )
    window = writes.result.window
    lags: list[float] = []
    watchdog = asyncio.create_task(_loop_lag(lags))
    work: list[Awaitable[Any]] = []
    if traffic is not None:
        traffic.window = window
        work.append(traffic.run_keepalives(start, window[1]))
        work.append(traffic.run_expiring(start, window[1]))
    connections = []
    for _ in range(spec.connections):
        _, protocol = await loop.create_connection(
            lambda: _Connection(writes), spec.host, spec.port
        )
        connections.append(protocol)
    await asyncio.gather(*work, *(c.done for c in connections))
    # The loop's lateness and the CPU over the run, not over the drain.
    watchdog.cancel()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = LeaseLoadResult(spec.side, writes.result, window=window)
    result.cpu_s = usage.ru_utime + usage.ru_stime - cpu_before
    if traffic is not None:
        await traffic.drain()
        traffic.finish()
        result.keepalive, result.expiry = traffic.keepalive, traffic.expiry
    lags.sort()
    if lags:
        result.loop_lag_p99_ms = round(lags[int(len(lags) * 0.99)] * 1000, 2)
        result.loop_lag_max_ms = round(lags[-1] * 1000, 2)
    return result


def run_load(spec: LeaseLoadSpec) -> LeaseLoadResult:
    """One run: the writes, and for side ``leases`` the keep-alives and the expiring
    leases; returns what was measured (and the CPU this process used from the start to
    the end of the load, the wait for the last deletes left out)."""
    return uvloop.run(_run(spec))
