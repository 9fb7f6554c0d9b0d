"""The watchers of the watch benchmark: one process holding every stream, so that 1,010
watchers cost the machine one event loop and not 1,010 clients.

Each stream is a raw keep-alive connection with ``GET /watch?prefix=P``, the response
(chunked) decoded by httptools and split into NDJSON lines. A line is read with a
minimal parser: its ``kind`` and ``revision`` from the head of the line (the server
writes compact JSON with ``kind`` first; any other line falls back to a full JSON
parse), and for an ``events`` line only the write ids at the start of each value. Every
delivery (write id, arrival time, stream) is kept; the arrival time is
``time.monotonic()`` when the bytes were handed to the protocol, once per read.

The process is driven over a pipe (``WatcherPool``): open the streams and report once
every one has its ``start`` line; then, told how many deliveries to expect, wait for
them (or a timeout), close every stream and send back what arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import re
import resource
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import quote

import httptools
import orjson
import uvloop

from .watch_load import ID_DIGITS

_HEAD = re.compile(rb'\{"kind":"([a-z]+)","revision":(\d+)')
_VALUE_ID = re.compile(rb'"value":"(\d{%d})' % ID_DIGITS)
_OPEN_BATCH = 100


@dataclass(slots=True)
class StreamsSpec:
    """Where to watch and what: one stream per entry of ``prefixes`` (``""``: every key)."""

    host: str
    port: int
    prefixes: list[str]
    open_timeout_s: float = 60.0


@dataclass(slots=True)
class OpenReport:
    streams: int
    started: int
    failed: int
    first_failure: str
    seconds: float
    start_revisions: tuple[int, int]  # lowest and highest


@dataclass(slots=True)
class Deliveries:
    """Everything the streams received: delivery ``n`` is write ``ids[n]`` arriving at
    ``times[n]`` on stream ``stream[n]``."""

    ids: array[int] = field(default_factory=lambda: array("q"))
    times: array[float] = field(default_factory=lambda: array("d"))
    stream: array[int] = field(default_factory=lambda: array("l"))
    lines: int = 0
    bytes: int = 0
    progress: int = 0
    resyncs: int = 0
    out_of_order: int = 0
    unparsed: int = 0
    closed_by_server: int = 0
    cpu_s: float = 0.0
    seconds: float = 0.0
    # How late this process's event loop ran a 10 ms timer while recording: when it
    # is late, so are the arrival times it notes (the client, not the server, is slow).
    loop_lag_p99_ms: float = 0.0
    loop_lag_max_ms: float = 0.0


class _Pool:
    def __init__(self) -> None:
        self.out = Deliveries()
        self.started = 0
        self.failed = 0
        self.first_failure = ""
        self.start_revisions: list[int] = []
        self.closing = False
        self.all_started = asyncio.get_running_loop().create_future()
        self.expected = 0

    def settle(self, total: int) -> None:
        if self.started + self.failed >= total and not self.all_started.done():
            self.all_started.set_result(None)


class _Stream(asyncio.Protocol):
    """One watch stream: its response decoded, its lines read as they complete."""

    def __init__(self, pool: _Pool, index: int, request: bytes, total: int) -> None:
        self._pool = pool
        self._index = index
        self._request = request
        self._total = total
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._partial = b""
        self._now = 0.0
        self._status = 0
        self._revision = -1
        self._started = False
        self._failed = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self._pool.closing:
            self._pool.out.closed_by_server += 1
            self._fail(f"connection closed ({exc or 'by the server'})")

    def data_received(self, data: bytes) -> None:
        self._now = time.monotonic()
        self._pool.out.bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"bad HTTP from the server: {exc}")
            self.close()

    # -- httptools callbacks
    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self._status != 200:
            self._partial += body
            return
        data = self._partial + body if self._partial else body
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line:
                self._line(line)

    def on_message_complete(self) -> None:
        if self._status != 200:
            self._fail(f"{self._status} {self._partial[:200].decode(errors='replace')}")
            self.close()

    # -- the lines
    def _line(self, line: bytes) -> None:
        out = self._pool.out
        out.lines += 1
        head = _HEAD.match(line)
        if head is not None:
            kind = head.group(1).decode()
            revision = int(head.group(2))
        else:
            try:
                document: dict[str, Any] = orjson.loads(line)
                kind = str(document["kind"])
                revision = int(document["revision"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                out.unparsed += 1
                return
        if kind == "events":
            if revision <= self._revision:
                out.out_of_order += 1
            now = self._now
            index = self._index
            for found in _VALUE_ID.findall(line):
                out.ids.append(int(found))
                out.times.append(now)
                out.stream.append(index)
        elif kind == "progress":
            out.progress += 1
        elif kind == "resync":
            out.resyncs += 1
        elif kind == "start" and not self._started:
            self._started = True
            self._pool.started += 1
            self._pool.start_revisions.append(revision)
            self._pool.settle(self._total)
        self._revision = max(self._revision, revision)

    def _fail(self, why: str) -> None:
        if self._failed or self._started:
            return
        self._failed = True
        pool = self._pool
        pool.failed += 1
        if not pool.first_failure:
            pool.first_failure = why
        pool.settle(self._total)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _watch_request(host: str, port: int, prefix: str) -> bytes:
    return (
        b"GET /watch?prefix=%s HTTP/1.1\r\nHost: %s:%d\r\nAccept: application/x-ndjson\r\n\r\n"
        % (quote(prefix, safe="").encode(), host.encode(), port)
    )


async def _watch_loop(lags: list[float], interval_s: float = 0.01) -> None:
    while True:
        due = time.monotonic() + interval_s
        await asyncio.sleep(interval_s)
        lags.append(max(0.0, time.monotonic() - due))


def _stream_factory(
    pool: _Pool, index: int, spec: StreamsSpec, prefix: str
) -> Callable[[], _Stream]:
    request = _watch_request(spec.host, spec.port, prefix)
    return lambda: _Stream(pool, index, request, len(spec.prefixes))


async def _serve(conn: Connection, spec: StreamsSpec) -> None:
    loop = asyncio.get_running_loop()
    pool = _Pool()
    total = len(spec.prefixes)
    streams: list[_Stream] = []
    began = time.monotonic()
    for first in range(0, total, _OPEN_BATCH):
        batch = spec.prefixes[first : first + _OPEN_BATCH]
        opened = await asyncio.gather(
            *(
                loop.create_connection(
                    _stream_factory(pool, first + n, spec, prefix), spec.host, spec.port
                )
                for n, prefix in enumerate(batch)
            ),
            return_exceptions=True,
        )
        for item in opened:
            if isinstance(item, BaseException):
                pool.failed += 1
                pool.first_failure = pool.first_failure or f"connect: {item}"
            else:
                streams.append(item[1])
    pool.settle(total)
    try:
        async with asyncio.timeout(spec.open_timeout_s):
            await pool.all_started
    except TimeoutError:
        pass
    revisions = pool.start_revisions or [0]
    conn.send(
        OpenReport(
            streams=total,
            started=pool.started,
            failed=pool.failed,
            first_failure=pool.first_failure,
            seconds=time.monotonic() - began,
            start_revisions=(min(revisions), max(revisions)),
        )
    )
    # Deliveries before this point (none are expected: no writes yet) are kept too.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    recording_from = time.monotonic()
    lags: list[float] = []
    watchdog = asyncio.create_task(_watch_loop(lags))
    command = await asyncio.to_thread(conn.recv)
    if command[0] == "drain":
        _, expected, timeout_s = command
        deadline = time.monotonic() + timeout_s
        while len(pool.out.ids) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    pool.out.cpu_s = usage.ru_utime + usage.ru_stime - cpu_before
    pool.out.seconds = time.monotonic() - recording_from
    watchdog.cancel()
    lags.sort()
    if lags:
        pool.out.loop_lag_p99_ms = round(lags[int(len(lags) * 0.99)] * 1000, 2)
        pool.out.loop_lag_max_ms = round(lags[-1] * 1000, 2)
    pool.closing = True
    for stream in streams:
        stream.close()
    await asyncio.sleep(0)
    conn.send(pool.out)


def _process_main(conn: Connection, spec: StreamsSpec) -> None:
    try:
        uvloop.run(_serve(conn, spec))
    except EOFError:
        pass  # the parent went away
    except Exception as exc:  # reported to the parent, which raises it
        with contextlib.suppress(OSError):
            conn.send(RuntimeError(f"watch streams process: {exc!r}"))
    finally:
        conn.close()


class WatcherPool:
    """The watchers' process: ``open()`` returns once every stream started (or failed);
    ``finish(expected, timeout_s)`` waits for that many deliveries and closes them all."""

    def __init__(self, spec: StreamsSpec) -> None:
        self._spec = spec
        # spawn, not fork: the parent holds threads (progress bar) and HTTP clients.
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_process_main, args=(child, spec), name="kvbench-watchers", daemon=True
        )
        self._child = child

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def _receive(self, timeout_s: float) -> Any:
        if not self._conn.poll(timeout_s):
            raise TimeoutError(f"the watch streams process did not answer in {timeout_s:.0f} s")
        answer = self._conn.recv()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def open(self) -> OpenReport:
        self._process.start()
        self._child.close()
        report: OpenReport = self._receive(self._spec.open_timeout_s + 60)
        return report

    def finish(self, expected: int, timeout_s: float) -> Deliveries:
        self._conn.send(("drain", expected, timeout_s))
        deliveries: Deliveries = self._receive(timeout_s + 60)
        return deliveries

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send(("close",))
                self._process.join(10)
            except (BrokenPipeError, OSError):
                pass
        if self._process.is_alive():
            self._process.kill()
        if self._process.pid is not None:
            self._process.join(10)
        self._conn.close()
        self._child.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
