"""``Election`` and ``AsyncElection`` against one real node (``LocalCluster``):
campaign, leader, proclaim and resign; the next candidate leads after a resignation and
after the leader's lease runs out; a leader whose key is gone can no longer proclaim;
observe yields every change, including one made while it starts."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from raftkv.client import (
    AsyncClient,
    AsyncElection,
    Client,
    Election,
    KeyValue,
    Leader,
    LockLostError,
    UnavailableError,
)
from raftkv.client.election import DEFAULT_ELECTION_PREFIX
from raftkv.client.lease_keeper import safety_margin
from raftkv.testing.cluster import LocalCluster, running_cluster

TTL = 1.5
"""For the tests that wait for a lease to run out."""
SAFE_TTL = 3.0
"""For the others: a keep-alive delayed by a loaded machine must not lose the lease."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("election"), 1) as running:
        yield running


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster.url(1)) as opened:
        yield opened


def campaign_in_background(election: Election, value: str) -> queue.Queue[tuple[int, float]]:
    """Start ``election.campaign(value)`` on a thread; the queue gets (revision, when)."""
    elected: queue.Queue[tuple[int, float]] = queue.Queue()

    def run() -> None:
        elected.put((election.campaign(value, timeout=20), time.monotonic()))

    threading.Thread(target=run, daemon=True).start()
    return elected


def candidates(client: Client, name: str) -> int:
    return len(client.list(f"{DEFAULT_ELECTION_PREFIX}{name}/"))


def wait_for_candidates(client: Client, name: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while candidates(client, name) != count:
        assert time.monotonic() < deadline, f"expected {count} candidates"
        time.sleep(0.02)


def test_campaign_proclaim_resign(client: Client) -> None:
    leading = Election(client, "basic", ttl=SAFE_TTL)
    watcher = Election(client, "basic")  # no candidacy needed to look
    assert watcher.leader() is None
    revision = leading.campaign("node-a")
    leader = watcher.leader()
    assert leader is not None
    assert (leader.value, leader.revision) == (b"node-a", revision)
    assert leader.key.startswith(f"{DEFAULT_ELECTION_PREFIX}basic/")
    assert leading.leader() == leader

    leading.proclaim("node-a:8080")
    assert watcher.leader() == Leader(leader.key, b"node-a:8080", revision)

    with pytest.raises(RuntimeError):
        leading.campaign("again")  # one candidacy per Election
    leading.resign()
    assert watcher.leader() is None
    assert not leading.lost
    with pytest.raises(LockLostError):
        leading.proclaim("after resigning")
    assert candidates(client, "basic") == 0


def test_the_next_candidate_leads_after_a_resignation(
    cluster: LocalCluster, client: Client
) -> None:
    first = Election(client, "handover", ttl=SAFE_TTL)
    first_revision = first.campaign("a")
    with Client(cluster.url(1)) as other:
        second = Election(other, "handover", ttl=SAFE_TTL)
        elected = campaign_in_background(second, "b")
        wait_for_candidates(client, "handover", 2)
        time.sleep(0.3)
        assert elected.empty()  # still a candidate
        leader = first.leader()
        assert leader is not None and leader.value == b"a"

        resigned = time.monotonic()
        first.resign()
        second_revision, when = elected.get(timeout=10)
        assert when - resigned < 0.5
        assert second_revision > first_revision
        assert first.leader() == Leader(
            f"{DEFAULT_ELECTION_PREFIX}handover/{_key_suffix(other, 'handover')}",
            b"b",
            second_revision,
        )
        second.resign()


def _key_suffix(client: Client, name: str) -> str:
    (kv,) = client.list(f"{DEFAULT_ELECTION_PREFIX}{name}/")
    return kv.key.rsplit("/", 1)[1]


class Cuttable(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.cut = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.cut.is_set():
            raise httpx.ConnectError("cut off by the test", request=request)
        return super().handle_request(request)


def test_the_next_candidate_leads_once_the_leaders_lease_runs_out(
    cluster: LocalCluster, client: Client
) -> None:
    transport = Cuttable()
    told: queue.Queue[float] = queue.Queue()
    with Client(cluster.url(1), transport=transport, timeout=0.5, retry_for=1.0) as cut_off:
        first = Election(
            cut_off, "expiry", ttl=TTL, on_lost=lambda _why: told.put(time.monotonic())
        )
        first_revision = first.campaign("a")
        second = Election(client, "expiry", ttl=TTL)
        elected = campaign_in_background(second, "b")
        wait_for_candidates(client, "expiry", 2)
        time.sleep(0.6)  # keep-alives go through: nothing changes
        assert elected.empty()
        transport.cut.set()
        cut = time.monotonic()
        second_revision, when = elected.get(timeout=15)
        lost_at = told.get(timeout=5)
        assert first.lost
        # Told before the next one leads, and that only once the lease could have run
        # out (test_lock.py checks the bound exactly, with Lock.valid_until).
        assert cut < lost_at <= when
        assert when - cut >= TTL * 2 / 3 - safety_margin(TTL)
        assert second_revision > first_revision
        leader = second.leader()
        assert leader is not None and leader.value == b"b"
        with pytest.raises(LockLostError):
            first.proclaim("still me?")
        with contextlib.suppress(UnavailableError):
            first.resign()
        second.resign()


def test_a_leader_whose_key_was_deleted_cannot_proclaim(client: Client) -> None:
    """Regression: proclaim used a plain put, which made the deleted key anew, as a new
    candidate behind the real leader, while this one still believed it led."""
    first = Election(client, "deleted", ttl=SAFE_TTL)
    first.campaign("a")
    second = Election(client, "deleted", ttl=SAFE_TTL)
    elected = campaign_in_background(second, "b")
    wait_for_candidates(client, "deleted", 2)
    leader = first.leader()
    assert leader is not None
    client.delete(leader.key)  # an operator's 'kvctl delete', say
    revision, _ = elected.get(timeout=10)
    with pytest.raises(LockLostError):
        first.proclaim("a2")
    now = second.leader()
    assert now is not None and (now.value, now.revision) == (b"b", revision)
    assert candidates(client, "deleted") == 1  # no key made anew
    first.resign()
    second.resign()


def _observe_into(
    election: Election, seen: queue.Queue[Leader | None], count: int
) -> threading.Thread:
    """Observe on a thread, putting the first ``count`` leaders seen on ``seen``; then
    stop (closing the iterator closes its watch)."""

    def run() -> None:
        changes = election.observe()
        try:
            for _ in range(count):
                seen.put(next(changes))
        finally:
            changes.close()  # type: ignore[attr-defined]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _value(leader: Leader | None) -> bytes | None:
    return None if leader is None else leader.value


def test_observe_yields_every_change(cluster: LocalCluster, client: Client) -> None:
    seen: queue.Queue[Leader | None] = queue.Queue()
    with Client(cluster.url(1)) as observing:
        observer = _observe_into(Election(observing, "observed"), seen, 5)
        assert seen.get(timeout=10) is None
        first = Election(client, "observed", ttl=SAFE_TTL)
        first.campaign("a")
        assert _value(seen.get(timeout=10)) == b"a"
        first.proclaim("a2")
        assert _value(seen.get(timeout=10)) == b"a2"
        # A candidate joining behind the leader changes nothing: the next change seen
        # is the next leader.
        second = Election(client, "observed", ttl=SAFE_TTL)
        elected = campaign_in_background(second, "b")
        wait_for_candidates(client, "observed", 2)
        first.resign()
        elected.get(timeout=10)
        assert _value(seen.get(timeout=10)) == b"b"
        second.resign()
        assert seen.get(timeout=10) is None
        observer.join(10)


class ListHook(Client):
    """A client that runs ``after_list`` (once) right after its next listing."""

    after_list: Any = None

    def list(self, prefix: str = "", **kwargs: Any) -> list[KeyValue]:
        items = super().list(prefix, **kwargs)
        hook, self.after_list = self.after_list, None
        if hook is not None:
            hook()
        return items


def test_observe_sees_a_change_made_while_it_starts(cluster: LocalCluster, client: Client) -> None:
    """Regression: observe read the leader, then started its watch; a change between
    the two was never reported (the old leader stayed on show)."""
    leading = Election(client, "race", ttl=SAFE_TTL)
    leading.campaign("a")
    seen: queue.Queue[Leader | None] = queue.Queue()
    with ListHook(cluster.url(1)) as observing:
        observing.after_list = leading.resign
        observer = _observe_into(Election(observing, "race"), seen, 2)
        assert _value(seen.get(timeout=10)) == b"a"  # read just before the resignation
        assert seen.get(timeout=10) is None
        observer.join(10)


def test_async_election(cluster: LocalCluster) -> None:
    async def scenario() -> None:
        async with AsyncClient(cluster.url(1)) as one, AsyncClient(cluster.url(1)) as two:
            first = AsyncElection(one, "async", ttl=SAFE_TTL)
            watcher = AsyncElection(two, "async")
            assert await watcher.leader() is None
            changes = watcher.observe()
            assert await anext(changes) is None

            first_revision = await first.campaign("a")
            leader = await anext(changes)
            assert leader is not None and (leader.value, leader.revision) == (
                b"a",
                first_revision,
            )
            await first.proclaim("a2")
            assert _value(await anext(changes)) == b"a2"

            second = AsyncElection(two, "async", ttl=SAFE_TTL)
            campaign = asyncio.create_task(second.campaign("b"))
            await asyncio.sleep(0.3)
            assert not campaign.done()
            await first.resign()
            second_revision = await asyncio.wait_for(campaign, 10)
            assert second_revision > first_revision
            assert _value(await asyncio.wait_for(anext(changes), 10)) == b"b"
            with pytest.raises(LockLostError):
                await first.proclaim("gone")
            await second.resign()
            assert await asyncio.wait_for(anext(changes), 10) is None
            await changes.aclose()

    asyncio.run(scenario())
