"""The load of the transaction benchmark: either side, plain writes or transactions,
from one generator so that the comparison is fair.

Both sides are driven the same way as the watch benchmark's writes (``watch_load.py``):
in a process of their own, on uvloop, over keep-alive HTTP/1.1 connections, one request
at a time on each (as wrk does), answers parsed by httptools. Keys are ``raftkv_key(i)``
for random ``i`` out of ``keys``, values ``bench_value(value_size)``, as the sweep's.

- plain: the documented ``POST /kv/{key}`` with ``{"value": ...}``;
- txn: ``POST /txn`` comparing two distinct random keys (``mod_revision < 2**62`` on
  each, which holds whether or not the key exists) and putting both: two writes per
  request. The failure branch is empty, so a transaction that took it wrote nothing;
  the answer's ``succeeded`` is counted either way.

Times are ``time.monotonic()``, the clock the caller samples CPU times on.
"""

from __future__ import annotations

import asyncio
import random
import resource
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, Final, cast

import httptools
import orjson
import uvloop

from .key_space import bench_value, raftkv_key

SIDES: Final = ("plain", "txn")
# Every key's mod_revision is below this (a missing key's is 0): the compares hold.
COMPARE_BELOW: Final = 2**62
WRITES_PER_REQUEST: Final = {"plain": 1, "txn": 2}

_SUCCEEDED = b'"succeeded":true'
_FAILED = b'"succeeded":false'


def txn_document(key1: str, key2: str, value: str) -> dict[str, Any]:
    """The transaction of the benchmark: two compares, two puts, no failure branch."""
    if key1 == key2:
        raise ValueError("a transaction writes each key once: the keys must differ")
    return {
        "compare": [
            {"key": key1, "target": "mod_revision", "op": "<", "value": COMPARE_BELOW},
            {"key": key2, "target": "mod_revision", "op": "<", "value": COMPARE_BELOW},
        ],
        "success": [
            {"put": {"key": key1, "value": value}},
            {"put": {"key": key2, "value": value}},
        ],
        "failure": [],
    }


@dataclass(slots=True)
class LoadSpec:
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
    # When the run starts (time.monotonic()): the caller samples CPU times on the
    # same schedule. 0: at once.
    start_at: float = 0.0

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise ValueError(f"unknown side {self.side!r}; one of {', '.join(SIDES)}")
        if self.side == "txn" and self.keys < 2:
            raise ValueError("a transaction puts two distinct keys: at least 2 keys")


@dataclass(slots=True)
class LoadResult:
    """What a run measured: the latency (seconds) of every request answered 2xx inside
    the measured ``window``, the errors in it (and in the warm-up), and, for
    transactions, how many of those took the success or the failure branch."""

    side: str
    latencies: array[float] = field(default_factory=lambda: array("d"))
    errors: int = 0
    warmup_errors: int = 0
    first_error: str = ""
    succeeded: int = 0
    failed: int = 0
    window: tuple[float, float] = (0.0, 0.0)
    cpu_s: float = 0.0


class _Load:
    def __init__(self, spec: LoadSpec, start: float) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.host = f"{spec.host}:{spec.port}".encode()
        self.names = [raftkv_key(i) for i in range(spec.keys)]
        self.value = bench_value(spec.value_size).decode()
        self.plain_body = orjson.dumps({"value": self.value})
        self.window_start = start + spec.warmup_s
        self.deadline = self.window_start + spec.duration_s
        self.result = LoadResult(spec.side, window=(self.window_start, self.deadline))
        self.txn = spec.side == "txn"

    def next_request(self, now: float) -> bytes | None:
        if now >= self.deadline:
            return None
        rng = self.rng
        if not self.txn:
            key = self.names[rng.randrange(self.spec.keys)].encode()
            body = self.plain_body
            return (
                b"POST /kv/%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (key, self.host, len(body), body)
            )
        first = rng.randrange(self.spec.keys)
        # A second key that is not the first, uniform over the others.
        second = (first + 1 + rng.randrange(self.spec.keys - 1)) % self.spec.keys
        body = orjson.dumps(txn_document(self.names[first], self.names[second], self.value))
        return (
            b"POST /txn HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (self.host, len(body), body)
        )

    def answered(self, sent: float, now: float, status: int, body: bytes) -> None:
        result = self.result
        measured = self.window_start <= now <= self.deadline
        problem = ""
        if not 200 <= status < 300:
            problem = f"{status} {body[:200].decode(errors='replace')}"
        elif self.txn:
            outcome = _succeeded(body)
            if outcome is None:
                problem = f"{status} no succeeded in {body[:200].decode(errors='replace')}"
            elif measured:
                if outcome:
                    result.succeeded += 1
                else:
                    result.failed += 1
        if problem:
            self.error(now, problem)
        elif measured:
            result.latencies.append(now - sent)

    def error(self, now: float, why: str) -> None:
        result = self.result
        if now < self.window_start:
            result.warmup_errors += 1
        elif now <= self.deadline:
            result.errors += 1
        if not result.first_error:
            result.first_error = why


def _succeeded(body: bytes) -> bool | None:
    """The answer's ``succeeded`` (None when it has none): a byte search, as the
    server writes it, else a parse."""
    if _SUCCEEDED in body:
        return True
    if _FAILED in body:
        return False
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    found = doc.get("succeeded") if isinstance(doc, dict) else None
    return found if isinstance(found, bool) else None


class _Connection(asyncio.Protocol):
    """One keep-alive connection: a request, its answer, the next request."""

    def __init__(self, load: _Load) -> None:
        self._load = load
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._sent_at = 0.0
        self._waiting = False
        self._body = b""
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._waiting:
            self._load.error(time.monotonic(), f"connection lost: {exc}")
            self._waiting = False
        if not self.done.done():
            self.done.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._load.error(time.monotonic(), f"bad HTTP answer: {exc}")
            self._waiting = False
            self._close()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        now = time.monotonic()
        self._waiting = False
        self._load.answered(self._sent_at, now, self._parser.get_status_code(), self._body)
        self._body = b""
        self._send_next()

    def _send_next(self) -> None:
        if self._transport is None:
            return
        now = time.monotonic()
        request = self._load.next_request(now)
        if request is None:
            self._close()
            return
        self._sent_at = now
        self._waiting = True
        self._transport.write(request)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def _run(spec: LoadSpec) -> LoadResult:
    loop = asyncio.get_running_loop()
    delay = spec.start_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    load = _Load(spec, max(time.monotonic(), spec.start_at))
    connections = []
    for _ in range(spec.connections):
        _, protocol = await loop.create_connection(lambda: _Connection(load), spec.host, spec.port)
        connections.append(protocol)
    await asyncio.gather(*(c.done for c in connections))
    return load.result


def run_load(spec: LoadSpec) -> LoadResult:
    """Drive ``spec.connections`` connections until the warm-up and the measured
    duration are over; return what was measured (and the CPU this process used)."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = uvloop.run(_run(spec))
    after = resource.getrusage(resource.RUSAGE_SELF)
    result.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result
