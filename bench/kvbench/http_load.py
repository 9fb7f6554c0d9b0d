"""A built-in HTTP/1.1 load generator, used to preload keys and when ``wrk`` is not
installed. Keep-alive connections, one request at a time on each (as wrk does),
responses parsed by httptools (the parser uvicorn uses), on uvloop. ``Encoder`` turns a
request into bytes: raftkv's documented API by default (writes are ``POST /kv/{key}``
with ``{"value": ...}``), its raw ``PUT`` for the ``write-raw`` workload, etcd's JSON
gateway for the baseline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

import httptools
import uvloop

from .closed_loop import Chooser, Request
from .key_space import json_put_body

# (request, host header, stale) -> the whole HTTP request
Encoder = Callable[[Request, bytes, bool], bytes]


def _encode_get(request: Request, host: bytes, stale: bool) -> bytes:
    suffix = b"?consistency=stale" if stale else b""
    return b"GET /kv/%s%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (request.key, suffix, host)


def encode_raftkv(request: Request, host: bytes, stale: bool) -> bytes:
    """raftkv's documented requests: ``GET /kv/{key}`` reads, ``POST /kv/{key}`` writes
    with the JSON body ``{"value": "<value as text>"}``."""
    if request.read:
        return _encode_get(request, host, stale)
    body = json_put_body(request.value)
    return (
        b"POST /kv/%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (request.key, host, len(body), body)
    )


def encode_raftkv_raw(request: Request, host: bytes, stale: bool) -> bytes:
    """Like ``encode_raftkv``, but writes are ``PUT /kv/{key}`` with the value as the raw
    body (the ``write-raw`` workload)."""
    if request.read:
        return _encode_get(request, host, stale)
    return (
        b"PUT /kv/%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (request.key, host, len(request.value), request.value)
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
        self,
        choose: Chooser,
        encode: Encoder,
        stale: bool,
        deadline: float,
        warmup_until: float,
        on_recording: Callable[[], None] | None = None,
    ) -> None:
        self.choose = choose
        self.encode = encode
        self.stale = stale
        self.deadline = deadline
        self.warmup_until = warmup_until
        self.on_recording = on_recording
        self.latencies: list[float] = []
        self.errors = 0
        self.recording = False

    def start_recording(self) -> None:
        self.recording = True
        self.latencies.clear()
        self.errors = 0
        if self.on_recording is not None:
            self.on_recording()

    def next_request(self) -> Request | None:
        now = time.perf_counter()
        if now >= self.deadline:
            return None
        if not self.recording and now >= self.warmup_until:
            self.start_recording()
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
    on_recording: Callable[[], None] | None,
) -> tuple[list[float], int, float]:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    runner = _Runner(
        choose, encode, stale, start + warmup_s + duration_s, start + warmup_s, on_recording
    )
    if warmup_s <= 0:
        runner.start_recording()
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
    on_recording: Callable[[], None] | None = None,
) -> tuple[list[float], int, float]:
    """Drive ``connections`` keep-alive connections until ``duration_s`` after the
    warm-up (or until ``choose`` runs dry); return (latencies of successful requests
    after the warm-up, errors, seconds measured). ``on_recording`` is called, on the
    event loop, the moment the warm-up ends and the measured window begins (a
    ``CpuMeter`` reads the cluster's CPU then)."""
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
            on_recording=on_recording,
        )
    )
