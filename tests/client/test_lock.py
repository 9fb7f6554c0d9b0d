"""``Lock`` and ``AsyncLock`` against one real node (``LocalCluster``): mutual exclusion
among threads and among tasks, fencing tokens that grow in the order the lock was
acquired, the timeout, a release that wakes the next waiter at once, and a holder that
can no longer keep its lease alive (cut off from the cluster, or a process paused with
SIGSTOP): it is told (``on_lost``) before the next waiter gets the lock, and that waiter
gets it only after the first holder's lease ran out: no earlier than the first
holder's last acknowledged keep-alive send + TTL."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from raftkv.client import (
    AsyncClient,
    AsyncLock,
    Client,
    Lock,
    LockTimeoutError,
    UnavailableError,
)
from raftkv.client.lease_keeper import safety_margin
from raftkv.client.lock import DEFAULT_LOCK_PREFIX
from raftkv.testing.cluster import LocalCluster, running_cluster, wait_until

TTL = 1.5
"""For the tests that wait for a lease to run out."""
SAFE_TTL = 3.0
"""For the others: a keep-alive delayed by a loaded machine must not lose the lease."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("lock"), 1) as running:
        yield running


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster.url(1)) as opened:
        yield opened


def queue_keys(client: Client, name: str) -> list[str]:
    return [kv.key for kv in client.list(f"{DEFAULT_LOCK_PREFIX}{name}/")]


def lease_ids(client: Client) -> set[int]:
    return {lease.id for lease in client.leases()}


@dataclass
class Held:
    token: int
    entered: float
    left: float


def assert_exclusive(held: list[Held]) -> None:
    """No two holds overlap, and the tokens grow in the order of acquisition."""
    ordered = sorted(held, key=lambda h: h.entered)
    for before, after in itertools.pairwise(ordered):
        assert after.entered >= before.left, (before, after)
        assert after.token > before.token, (before, after)


class Cuttable(httpx.HTTPTransport):
    """A transport the test can cut: the client then reaches no node at all."""

    def __init__(self) -> None:
        super().__init__()
        self.cut = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.cut.is_set():
            raise httpx.ConnectError("cut off by the test", request=request)
        return super().handle_request(request)


class AsyncCuttable(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.cut = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.cut:
            raise httpx.ConnectError("cut off by the test", request=request)
        return await super().handle_async_request(request)


# ---------------------------------------------------------------------- exclusion


def test_threads_take_turns_with_growing_tokens(cluster: LocalCluster) -> None:
    held: list[Held] = []
    inside = [0]
    errors: list[BaseException] = []

    def contend() -> None:
        try:
            with Client(cluster.url(1)) as own:
                for _ in range(3):
                    lock = Lock(own, "threads", ttl=SAFE_TTL)
                    with lock as token:
                        entered = time.monotonic()
                        inside[0] += 1
                        assert inside[0] == 1, "two holders at once"
                        assert token == lock.token
                        time.sleep(0.02)
                        inside[0] -= 1
                        held.append(Held(token, entered, time.monotonic()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=contend) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(held) == 12
    assert_exclusive(held)
    with Client(cluster.url(1)) as client:
        assert queue_keys(client, "threads") == []


def test_tasks_take_turns_with_growing_tokens(cluster: LocalCluster) -> None:
    held: list[Held] = []
    inside = [0]

    async def contend(client: AsyncClient) -> None:
        for _ in range(3):
            lock = AsyncLock(client, "tasks", ttl=SAFE_TTL)
            async with lock as token:
                entered = time.monotonic()
                inside[0] += 1
                assert inside[0] == 1, "two holders at once"
                await asyncio.sleep(0.02)
                inside[0] -= 1
                held.append(Held(token, entered, time.monotonic()))

    async def scenario() -> None:
        async with AsyncClient(cluster.url(1)) as client:
            await asyncio.wait_for(asyncio.gather(*(contend(client) for _ in range(4))), 60)

    asyncio.run(scenario())
    assert len(held) == 12
    assert_exclusive(held)


# ---------------------------------------------------------------------- waiting


def test_the_timeout_leaves_nothing_behind(client: Client) -> None:
    holder = Lock(client, "timeout", ttl=SAFE_TTL)
    holder.acquire()
    try:
        before = lease_ids(client)
        waiter = Lock(client, "timeout", ttl=SAFE_TTL)
        started = time.monotonic()
        with pytest.raises(LockTimeoutError):
            waiter.acquire(timeout=0.3)
        waited = time.monotonic() - started
        assert 0.3 <= waited < 3, waited
        assert not waiter.lost and waiter.token == 0
        # The waiter's queue key and lease are gone; the holder still holds.
        assert queue_keys(client, "timeout") == [holder.key]
        assert lease_ids(client) <= before
        assert not holder.lost
    finally:
        holder.release()
    assert queue_keys(client, "timeout") == []


def test_the_async_timeout_leaves_nothing_behind(cluster: LocalCluster, client: Client) -> None:
    async def scenario() -> None:
        async with AsyncClient(cluster.url(1)) as aclient:
            holder = AsyncLock(aclient, "async-timeout", ttl=SAFE_TTL)
            await holder.acquire()
            try:
                waiter = AsyncLock(aclient, "async-timeout", ttl=SAFE_TTL)
                with pytest.raises(LockTimeoutError):
                    await waiter.acquire(timeout=0.3)
                assert queue_keys(client, "async-timeout") == [holder.key]
            finally:
                await holder.release()

    asyncio.run(scenario())
    assert queue_keys(client, "async-timeout") == []


def test_a_release_wakes_the_next_waiter_at_once(cluster: LocalCluster, client: Client) -> None:
    holder = Lock(client, "wake", ttl=SAFE_TTL)
    first = holder.acquire()
    got: queue.Queue[tuple[int, float]] = queue.Queue()

    def wait_for_it() -> None:
        with Client(cluster.url(1)) as own, Lock(own, "wake", ttl=SAFE_TTL) as token:
            got.put((token, time.monotonic()))

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    try:
        wait_until(lambda: len(queue_keys(client, "wake")) == 2, 10, what="the waiter in line")
        time.sleep(0.3)
        assert got.empty()  # still waiting
        released = time.monotonic()
        holder.release()
        second, acquired = got.get(timeout=10)
    finally:
        holder.release()
        waiter.join(10)
    assert second > first
    assert acquired - released < 0.5, acquired - released


# ---------------------------------------------------------------------- losing the lease


def test_a_holder_cut_off_is_told_before_the_next_one_gets_the_lock(
    cluster: LocalCluster, client: Client
) -> None:
    transport = Cuttable()
    lost_at: queue.Queue[tuple[float, str]] = queue.Queue()
    with Client(cluster.url(1), transport=transport, timeout=0.5, retry_for=1.0) as cut_off:
        holder = Lock(
            cut_off, "cut", ttl=TTL, on_lost=lambda why: lost_at.put((time.monotonic(), why))
        )
        first = holder.acquire()
        time.sleep(0.6)  # a keep-alive or two go through
        transport.cut.set()
        last_valid = holder.valid_until
        waiter = Lock(client, "cut", ttl=TTL)
        second = waiter.acquire(timeout=15)
        acquired = time.monotonic()
        try:
            told, reason = lost_at.get(timeout=5)
            assert holder.lost
            assert "acknowledged" in reason
            # No keep-alive was acknowledged after the cut: the holder's validity stayed.
            assert holder.valid_until == last_valid
            assert told >= last_valid
            # Told before the waiter got it, and the waiter got it only once the lease
            # could have run out: a TTL after the last acknowledged keep-alive was sent.
            assert told <= acquired
            assert acquired >= last_valid + safety_margin(TTL)
            assert second > first
        finally:
            waiter.release()
            # Its revoke is best effort: the lease ran out on the node already.
            with contextlib.suppress(UnavailableError):
                holder.release()
    assert queue_keys(client, "cut") == []


def test_an_async_holder_cut_off_loses_the_lock(cluster: LocalCluster) -> None:
    async def scenario() -> None:
        transport = AsyncCuttable()
        lost = asyncio.Event()
        async with (
            AsyncClient(cluster.url(1), transport=transport, timeout=0.5, retry_for=1.0) as cut_off,
            AsyncClient(cluster.url(1)) as other,
        ):
            holder = AsyncLock(cut_off, "async-cut", ttl=TTL, on_lost=lambda _why: lost.set())
            first = await holder.acquire()
            transport.cut = True
            waiter = AsyncLock(other, "async-cut", ttl=TTL)
            second = await asyncio.wait_for(waiter.acquire(), 15)
            assert lost.is_set() and holder.lost
            assert second > first
            await waiter.release()
            with contextlib.suppress(UnavailableError):
                await holder.release()
            assert await other.list(f"{DEFAULT_LOCK_PREFIX}async-cut/") == []

    asyncio.run(scenario())


HOLDER = """
import sys, time
from raftkv.client import Client, Lock

client = Client(sys.argv[1])
lock = None

def lost(reason):
    print("lost", repr(lock.valid_until), reason, flush=True)

lock = Lock(client, sys.argv[2], ttl=float(sys.argv[3]), on_lost=lost)
print("token", lock.acquire(), flush=True)
while True:
    time.sleep(0.05)
"""


def test_a_paused_holder_process_loses_the_lock(cluster: LocalCluster, client: Client) -> None:
    """The realistic case: the holder's process stops (SIGSTOP, as a long GC pause or a
    swapped-out VM would), its keep-alives with it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTKV_")}
    holder = subprocess.Popen(
        [sys.executable, "-P", "-c", HOLDER, cluster.url(1), "paused", str(TTL)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert holder.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in holder.stdout or ()])
    reader.start()
    try:
        word, first = lines.get(timeout=20).split()
        assert word == "token"
        time.sleep(0.7)  # a keep-alive or two go through
        holder.send_signal(signal.SIGSTOP)
        second = Lock(client, "paused", ttl=TTL)
        token = second.acquire(timeout=15)
        acquired = time.monotonic()
        holder.send_signal(signal.SIGCONT)
        # Resumed, the holder finds out at once that it lost the lock.
        word, valid_until, *_reason = lines.get(timeout=10).split()
        assert word == "lost"
        # Its validity (the last acknowledged keep-alive send + TTL - margin) ended
        # before the second holder got the lock, by at least the margin.
        assert acquired >= float(valid_until) + safety_margin(TTL)
        assert token > int(first)
        second.release()
    finally:
        holder.send_signal(signal.SIGCONT)
        holder.kill()
        holder.wait(10)
        reader.join(10)
