"""A built-in HTTP/1.1 load generator, used to preload keys and when ``wrk`` is not
installed. Keep-alive connections, one request at a time on each (as wrk does),
responses parsed by httptools (the parser uvicorn uses), on uvloop. ``Encoder`` turns a
request into bytes: raftkv's API by default, etcd's JSON gateway for the baseline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

import httptools
import uvloop

from .closed_loop import Chooser, Request

# (request, host header, stale) -> the whole HTTP request
Encoder = Callable[[Request, bytes, bool], bytes]


def encode_raftkv(request: Request, host: bytes, stale: bool) -> bytes:
    key = request.key
    if request.read:
        suffix = b"?consistency=stale" if stale else b""
        return b"GET /kv/%s%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (key, suffix, host)
    return (
        b"PUT /kv/%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (key, host, len(request.value), request.value)
    )


class _KeepAliveLoadConnection(asyncio.Protocol):
    """One keep-alive connection of the load: sends a request, waits for its response,
    records it and sends the next, until the run's deadline."""

    def __init__(self, runner: _Runner, host: bytes) -> None:
        self._runner = runner
        self._host = host
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._sent_at = 0.0
        self._done = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._runner.errors += 1
            self._close()

    # -- httptools callbacks
    def on_message_complete(self) -> None:
        runner = self._runner
        status = self._parser.get_status_code()
        if 200 <= status < 300:
            if runner.recording:
                runner.latencies.append(time.perf_counter() - self._sent_at)
        else:
            runner.errors += 1
        self._send_next()

    def _send_next(self) -> None:
        runner = self._runner
        request = runner.next_request()
        if request is None or self._transport is None:
            self._close()
            return
        self._sent_at = time.perf_counter()
        self._transport.write(runner.encode(request, self._host, runner.stale))

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _Runner:
    def __init__(
        self, choose: Chooser, encode: Encoder, stale: bool, deadline: float, warmup_until: float
    ) -> None:
        self.choose = choose
        self.encode = encode
        self.stale = stale
        self.deadline = deadline
        self.warmup_until = warmup_until
        self.latencies: list[float] = []
        self.errors = 0
        self.recording = False

    def next_request(self) -> Request | None:
        now = time.perf_counter()
        if now >= self.deadline:
            return None
        if not self.recording and now >= self.warmup_until:
            self.recording = True
            self.latencies.clear()
            self.errors = 0
        return self.choose()


async def _run(
    host: str,
    port: int,
    choose: Chooser,
    *,
    connections: int,
    duration_s: float,
    warmup_s: float,
    stale: bool,
    encode: Encoder,
) -> tuple[list[float], int, float]:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    runner = _Runner(choose, encode, stale, start + warmup_s + duration_s, start + warmup_s)
    if warmup_s <= 0:
        runner.recording = True
    protocols = []
    for _ in range(connections):
        _, protocol = await loop.create_connection(
            lambda: _KeepAliveLoadConnection(runner, f"{host}:{port}".encode()), host, port
        )
        protocols.append(protocol)
    await asyncio.gather(*(p.lost for p in protocols))
    measured = time.perf_counter() - max(start + warmup_s, start)
    return runner.latencies, runner.errors, measured


def run_http_load(
    host: str,
    port: int,
    choose: Chooser,
    *,
    connections: int,
    duration_s: float,
    warmup_s: float = 0.0,
    stale: bool = False,
    encode: Encoder = encode_raftkv,
) -> tuple[list[float], int, float]:
    """Drive ``connections`` keep-alive connections until ``duration_s`` after the
    warm-up (or until ``choose`` runs dry); return (latencies of successful requests
    after the warm-up, errors, seconds measured)."""
    return uvloop.run(
        _run(
            host,
            port,
            choose,
            connections=connections,
            duration_s=duration_s,
            warmup_s=warmup_s,
            stale=stale,
            encode=encode,
        )
    )
