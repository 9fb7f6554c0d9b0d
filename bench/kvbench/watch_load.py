"""The writes of the watch benchmark: the documented ``POST /kv/{key}`` with
``{"value": ...}`` over keep-alive HTTP/1.1 connections, one request at a time on each
(as wrk does), keeping the send and acknowledgement time of every write so that the
watchers' side can be matched against it.

Keys are partitioned among the watched prefixes: key number ``i`` of ``keys`` lives under
prefix ``i % prefixes`` (``w/042/k000042`` for 1,000 prefixes), and no prefix is a prefix
of another, so every write is seen by exactly one prefix watcher (and by every watcher of
the whole keyspace). Each value starts with the write's id in ``ID_DIGITS`` decimal digits,
padded to the value size with ``v``.

Times are ``time.monotonic()``: CLOCK_MONOTONIC, one clock for every process of the
machine, so the watchers' process can compare its arrival times with these.
"""

from __future__ import annotations

import asyncio
import math
import random
import resource
import time
from array import array
from dataclasses import dataclass, field
from typing import cast

import httptools
import uvloop

ID_DIGITS = 12
KEY_ROOT = "w/"


def prefix_width(prefixes: int) -> int:
    """Digits of a prefix number: every prefix has the same length, so none is a
    prefix of another."""
    if prefixes < 1:
        raise ValueError(f"need at least one prefix, not {prefixes}")
    return len(str(prefixes - 1))


def watch_prefix(p: int, prefixes: int) -> str:
    """Prefix number ``p`` (``w/042/`` for p = 42 of 1,000)."""
    return f"{KEY_ROOT}{p:0{prefix_width(prefixes)}d}/"


def watch_key(i: int, prefixes: int) -> str:
    """Key number ``i``: under prefix ``i % prefixes``."""
    if i < 0:
        raise ValueError(f"key numbers start at 0, not {i}")
    return f"{watch_prefix(i % prefixes, prefixes)}k{i:06d}"


def id_value(write_id: int, size: int) -> bytes:
    """The value of write ``write_id``: its id in ID_DIGITS digits, then ``v`` up to
    ``size`` bytes."""
    if size < ID_DIGITS:
        raise ValueError(f"values carry a {ID_DIGITS}-digit id: at least {ID_DIGITS} bytes")
    if not 0 <= write_id < 10**ID_DIGITS:
        raise ValueError(f"write id {write_id} does not fit in {ID_DIGITS} digits")
    return b"%0*d" % (ID_DIGITS, write_id) + b"v" * (size - ID_DIGITS)


@dataclass(slots=True)
class WriteSpec:
    """One run of writes (picklable: it crosses to the writer's process)."""

    host: str
    port: int
    connections: int
    duration_s: float
    warmup_s: float
    keys: int
    prefixes: int
    value_size: int
    seed: int
    first_id: int = 0
    # When the run starts (time.monotonic()): the caller samples CPU times on the
    # same schedule. 0: at once.
    start_at: float = 0.0


@dataclass(slots=True)
class WriteLog:
    """Every write of a run, by id: write ``first_id + n`` was sent at ``sent[n]`` to
    key number ``key[n]`` and acknowledged (2xx) at ``acked[n]`` (NaN: it failed, or the
    connection closed first). ``window`` is the measured part of the run."""

    first_id: int
    sent: array[float] = field(default_factory=lambda: array("d"))
    acked: array[float] = field(default_factory=lambda: array("d"))
    key: array[int] = field(default_factory=lambda: array("l"))
    errors: int = 0
    first_error: str = ""
    window: tuple[float, float] = (0.0, 0.0)
    cpu_s: float = 0.0

    def ok_count(self) -> int:
        return sum(1 for t in self.acked if not math.isnan(t))


class _Writes:
    def __init__(self, spec: WriteSpec, start: float) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.host = f"{spec.host}:{spec.port}".encode()
        self.keys = [watch_key(i, spec.prefixes).encode() for i in range(spec.keys)]
        self.deadline = start + spec.warmup_s + spec.duration_s
        self.log = WriteLog(spec.first_id, window=(start + spec.warmup_s, self.deadline))

    def next_request(self, now: float) -> tuple[int, bytes] | None:
        if now >= self.deadline:
            return None
        log = self.log
        n = len(log.sent)
        k = self.rng.randrange(self.spec.keys)
        body = b'{"value":"%s"}' % id_value(log.first_id + n, self.spec.value_size)
        log.sent.append(now)
        log.acked.append(math.nan)
        log.key.append(k)
        request = (
            b"POST /kv/%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (self.keys[k], self.host, len(body), body)
        )
        return n, request


class _WriterConnection(asyncio.Protocol):
    """One keep-alive connection: a write, its answer, the next write."""

    def __init__(self, writes: _Writes) -> None:
        self._writes = writes
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._current = -1
        self._body = b""
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._current >= 0:
            self._writes.log.errors += 1
            self._current = -1
        if not self.done.done():
            self.done.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._writes.log.errors += 1
            self._current = -1
            self._close()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        now = time.monotonic()
        log = self._writes.log
        status = self._parser.get_status_code()
        if 200 <= status < 300:
            log.acked[self._current] = now
        else:
            log.errors += 1
            if not log.first_error:
                log.first_error = f"{status} {self._body[:200].decode(errors='replace')}"
        self._current = -1
        self._body = b""
        self._send_next()

    def _send_next(self) -> None:
        if self._transport is None:
            return
        chosen = self._writes.next_request(time.monotonic())
        if chosen is None:
            self._close()
            return
        self._current, request = chosen
        self._transport.write(request)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def _run(spec: WriteSpec) -> WriteLog:
    loop = asyncio.get_running_loop()
    delay = spec.start_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    writes = _Writes(spec, max(time.monotonic(), spec.start_at))
    connections = []
    for _ in range(spec.connections):
        _, protocol = await loop.create_connection(
            lambda: _WriterConnection(writes), spec.host, spec.port
        )
        connections.append(protocol)
    await asyncio.gather(*(c.done for c in connections))
    return writes.log


def run_writes(spec: WriteSpec) -> WriteLog:
    """Drive ``spec.connections`` connections until the warm-up and the measured
    duration are over; return every write's times (and the CPU this process used)."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    log = uvloop.run(_run(spec))
    after = resource.getrusage(resource.RUSAGE_SELF)
    log.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return log
