"""The load generator for raftkv's native protocol: binary frames over TCP, many
requests in flight on each connection.

No futures, no per-request coroutine: each connection keeps ``depth`` requests
outstanding, and every reply sends the next request; frames leaving during one loop
turn are encoded in one batch. A run can be spread over several processes so that the
generator has as many cores as it needs (``generator_cpu`` in the result shows what it
used)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import uvloop

from raftkv.wire.protocol import Flag, Op, ReplyStatus
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

from .closed_loop import Chooser, Request, random_chooser, sequential_chooser
from .workloads import Workload

_MAX_FRAME = 64 * 1024 * 1024
_TIMEOUT_MS = 10_000


class _Stats:
    def __init__(
        self,
        deadline: float,
        warmup_until: float,
        *,
        retry: bool = False,
        on_recording: Callable[[], None] | None = None,
    ) -> None:
        self.deadline = deadline
        self.warmup_until = warmup_until
        self.on_recording = on_recording
        self.recording = warmup_until <= time.perf_counter()
        if self.recording and on_recording is not None:
            on_recording()
        self.latencies: list[float] = []
        self.errors = 0
        # A preload resends what failed (a write in flight when the leader changed is
        # answered "may or may not have been applied"; a put of the same value is safe
        # to repeat) so that every key exists at the end.
        self.retry = retry
        self.to_retry: list[Request] = []
        self.retried = 0


class _PipelinedLoadConnection(asyncio.Protocol):
    """One native-protocol connection of the load: after the handshake it keeps ``depth``
    requests in flight, sending the next as each reply comes in, until the deadline."""

    def __init__(self, choose: Chooser, stats: _Stats, depth: int, stale: bool) -> None:
        self._choose = choose
        self._stats = stats
        self._depth = depth
        self._read_flags = int(Flag.STALE_READ) if stale else 0
        self._decoder = FrameDecoder(_MAX_FRAME)
        self._transport: asyncio.Transport | None = None
        self._sent_at: dict[int, float] = {}
        self._requests: dict[int, Request] = {}  # kept only when failures are retried
        self._next_id = 1
        self._outgoing: list[ClientRequest] = []
        self._flush_scheduled = False
        self._greeted = False
        self._draining = False
        loop = asyncio.get_running_loop()
        self.finished: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(encode(Handshake(PROTOCOL_VERSION, 0, 0)))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._stats.errors += len(self._sent_at)
        self._sent_at.clear()
        if not self.finished.done():
            self.finished.set_result(None)

    def data_received(self, data: bytes) -> None:
        stats = self._stats
        sent_at = self._sent_at
        now = time.perf_counter()
        for frame in self._decoder.feed(data):
            if not self._greeted:
                if not isinstance(frame, HandshakeReply) or not frame.accepted:
                    # Counted, not raised: the run goes on with the other connections
                    # and the result shows the errors.
                    stats.errors += 1
                    if self._transport is not None:
                        self._transport.close()
                    return
                self._greeted = True
                for _ in range(self._depth):
                    self._send_next(now)
                continue
            reply = cast(ClientReply, frame)
            started = sent_at.pop(reply.request_id, None)
            if started is None:
                continue
            sent = self._requests.pop(reply.request_id, None)
            if reply.status == ReplyStatus.OK:
                if stats.recording:
                    stats.latencies.append(now - started)
            elif sent is not None:
                stats.to_retry.append(sent)
                stats.retried += 1
            elif stats.recording:
                stats.errors += 1
            self._send_next(now)
        if self._draining and not sent_at and self._transport is not None:
            self._transport.close()

    def _send_next(self, now: float) -> None:
        stats = self._stats
        if now >= stats.deadline:
            self._draining = True
            return
        if not stats.recording and now >= stats.warmup_until:
            stats.recording = True
            stats.latencies.clear()
            stats.errors = 0
            if stats.on_recording is not None:
                stats.on_recording()
        request = stats.to_retry.pop() if stats.to_retry else self._choose()
        if request is None:
            self._draining = True
            return
        request_id = self._next_id
        self._next_id += 1
        if request.read:
            message = ClientRequest(
                request_id, Op.GET, request.key, flags=self._read_flags, timeout_ms=_TIMEOUT_MS
            )
        else:
            message = ClientRequest(
                request_id, Op.PUT, request.key, request.value, timeout_ms=_TIMEOUT_MS
            )
        self._sent_at[request_id] = now
        if stats.retry:
            self._requests[request_id] = request
        self._outgoing.append(message)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._transport is not None and self._outgoing:
            self._transport.write(encode_batch(self._outgoing))
        self._outgoing = []


@dataclass(slots=True)
class NativeLoad:
    """One generator process's share of a run (picklable, so it crosses to a child)."""

    host: str
    port: int
    connections: int
    depth: int
    duration_s: float
    warmup_s: float
    workload: Workload
    seed: int
    # A preload writes keys preload_from..preload_to-1 once instead of random requests.
    preload_from: int = 0
    preload_to: int = 0


async def _drive(
    load: NativeLoad, on_recording: Callable[[], None] | None = None
) -> tuple[list[float], int, float]:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    preload = load.preload_to > load.preload_from
    stats = _Stats(
        start + load.warmup_s + load.duration_s,
        start + load.warmup_s,
        retry=preload,
        on_recording=on_recording,
    )
    if preload:
        choose = sequential_chooser(load.preload_from, load.preload_to, load.workload.value_size)
    else:
        choose = random_chooser(load.workload, load.seed)
    connections = []
    for _ in range(load.connections):
        _, protocol = await loop.create_connection(
            lambda: _PipelinedLoadConnection(choose, stats, load.depth, load.workload.stale),
            load.host,
            load.port,
        )
        connections.append(protocol)
    await asyncio.gather(*(c.finished for c in connections))
    measured = time.perf_counter() - (start + load.warmup_s)
    return stats.latencies, stats.errors, measured


def _run_share(
    load: NativeLoad, on_recording: Callable[[], None] | None = None
) -> tuple[list[float], int, float, float]:
    before = resource.getrusage(resource.RUSAGE_SELF)
    latencies, errors, measured = uvloop.run(_drive(load, on_recording))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return latencies, errors, measured, cpu


# In a generator child process: set when its warm-up ends (see _run_shares).
_recording_event: Any = None


def _init_child(event: Any) -> None:
    global _recording_event  # noqa: PLW0603 - the pool hands it over only this way
    _recording_event = event


def _run_share_in_child(load: NativeLoad) -> tuple[list[float], int, float, float]:
    event = _recording_event
    return _run_share(load, event.set if event is not None else None)


def run_native_load(
    host: str,
    port: int,
    workload: Workload,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
    processes: int = 1,
    depth: int = 16,
    seed: int = 1,
    on_recording: Callable[[], None] | None = None,
) -> tuple[list[float], int, float, float]:
    """Keep ``concurrency`` requests in flight (``depth`` per connection, spread over
    ``processes`` generator processes). Returns (latencies of successful requests after
    the warm-up, errors, seconds measured, generator CPU in cores). ``on_recording`` is
    called in this process when the warm-up ends (of the first generator process to
    end it, with several)."""
    depth = max(1, min(depth, concurrency))
    connections = max(1, concurrency // depth)
    processes = max(1, min(processes, connections))
    shares = [
        NativeLoad(
            host,
            port,
            connections // processes + (1 if i < connections % processes else 0),
            depth,
            duration_s,
            warmup_s,
            workload,
            seed * 1000 + i,
        )
        for i in range(processes)
    ]
    return _run_shares(shares, on_recording)


def preload_native(
    host: str, port: int, workload: Workload, *, processes: int = 1, concurrency: int = 256
) -> tuple[int, float]:
    """Write every key of the workload once; returns (errors, seconds)."""
    processes = max(1, processes)
    per = -(-workload.keys // processes)
    depth = 32
    connections = max(1, concurrency // depth // processes)
    shares = [
        NativeLoad(
            host,
            port,
            connections,
            depth,
            3600.0,
            0.0,
            workload,
            0,
            preload_from=i * per,
            preload_to=min(workload.keys, (i + 1) * per),
        )
        for i in range(processes)
    ]
    _, errors, seconds, _ = _run_shares(shares)
    return errors, seconds


def _run_shares(
    shares: list[NativeLoad], on_recording: Callable[[], None] | None = None
) -> tuple[list[float], int, float, float]:
    if len(shares) == 1:
        latencies, errors, measured, cpu = _run_share(shares[0], on_recording)
        return latencies, errors, measured, cpu / measured if measured > 0 else 0.0
    # spawn, not fork: the caller may hold threads (cluster log readers) and a loop.
    context = multiprocessing.get_context("spawn")
    # The children start close together, not at once. The first to end its warm-up
    # stands for all (a thread here passes it on), so a measured window may take in the
    # last moments of the others' warm-ups, whose requests are not counted: with several
    # generator processes, CPU per request leans a little high.
    event = context.Event()
    finished = threading.Event()

    def relay() -> None:
        while not event.wait(0.05):
            if finished.is_set():
                return
        if on_recording is not None:
            on_recording()

    relay_thread = threading.Thread(target=relay, daemon=True)
    relay_thread.start()
    try:
        with context.Pool(len(shares), initializer=_init_child, initargs=(event,)) as pool:
            parts = pool.map(_run_share_in_child, shares)
    finally:
        finished.set()
        relay_thread.join()
    latencies = [x for part in parts for x in part[0]]
    errors = sum(part[1] for part in parts)
    measured = max(part[2] for part in parts)
    cpu = sum(part[3] for part in parts)
    return latencies, errors, measured, cpu / measured if measured > 0 else 0.0


def default_processes() -> int:
    return max(1, (os.cpu_count() or 1) // 2)
