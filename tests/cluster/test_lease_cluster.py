"""Leases on real kvnode processes (docs/api.md, "Leases"): a TTL key expires after its
TTL and never before, on every node; a lease kept alive survives a SIGKILL of the
leader and a restart of every node, and runs out once the keep-alives stop; watchers
see all of a lease's keys deleted at one revision; followers answer lease reads with
times left never below the leader's.

Times are this machine's monotonic clock, which every node uses too. "Not before" is
checked against the moment the client *sent* the write or keep-alive that started the
TTL (a node applies it later, so its deadline can only be later); "gone by" allows a
generous bound for the Expire to be proposed, committed and applied.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from raftkv.testing.cluster import LocalCluster, running_cluster, wait_until

JSON = {"Accept": "application/json"}
EXPIRY_BOUND_S = 3.0
"""How long after its deadline an expired key may still be readable."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("lease"), 3) as running:
        yield running


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


def grant(cluster: LocalCluster, node: int, ttl: float) -> int:
    response = cluster.client.post(f"{cluster.url(node)}/lease", json={"ttl": ttl})
    return int(ok(response)["id"])


def attach(cluster: LocalCluster, node: int, key: str, lease: int) -> int:
    response = cluster.client.post(
        f"{cluster.url(node)}/kv/{key}", json={"value": key, "lease": lease}
    )
    return int(ok(response)["revision"])


class Probe:
    """Reads of a key, each with when it was sent and answered and its status."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, int]] = []

    def read(self, client: httpx.Client, url: str, key: str, **params: str) -> int:
        sent = time.monotonic()
        response = client.get(f"{url}/kv/{key}", params=params, timeout=5.0)
        self.samples.append((sent, time.monotonic(), response.status_code))
        assert response.status_code in (200, 404), response.text
        return response.status_code

    def first_gone(self) -> float:
        """When the first 404 was received."""
        return next(received for _, received, status in self.samples if status == 404)

    def last_seen(self) -> float:
        """When the last 200 before the first 404 was received."""
        seen = 0.0
        for _, received, status in self.samples:
            if status == 404:
                break
            seen = received
        return seen


def wait_gone(
    cluster: LocalCluster, nodes: list[int], key: str, until: float, **params: str
) -> Probe:
    """Read ``key`` round the nodes every 50 ms until one answers 404 (which every node
    must then answer), failing at monotonic time ``until``."""
    probe = Probe()
    i = 0
    while True:
        node = nodes[i % len(nodes)]
        i += 1
        if probe.read(cluster.client, cluster.url(node), key, **params) == 404:
            break
        assert time.monotonic() < until, f"{key} still readable on node {node}"
        time.sleep(0.05)
    for node in nodes:  # linearizable: once gone on one node, gone on all
        assert cluster.get(node, key).status_code == 404
    return probe


class KeepAlive:
    """Keeps a lease alive every ``interval`` s from a thread, through the given nodes in
    turn, retrying (on the next node) after a 503 or a connection error."""

    def __init__(self, urls: list[str], lease: int, interval: float) -> None:
        self.urls = list(urls)
        self.lease = lease
        self.interval = interval
        self.ok_sends: list[float] = []
        """When each keep-alive answered 200 was sent."""
        self.last_sent = 0.0
        """When the last keep-alive (answered or not) was sent."""
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        turn = 0
        with httpx.Client(timeout=2.0) as client:
            while not self._stop.is_set():
                url = self.urls[turn % len(self.urls)]
                turn += 1
                sent = time.monotonic()
                self.last_sent = sent
                try:
                    response = client.post(f"{url}/lease/{self.lease}/keepalive")
                except httpx.HTTPError:
                    self._stop.wait(0.1)
                    continue
                if response.status_code == 503:
                    self._stop.wait(0.1)
                    continue
                if response.status_code != 200:
                    self.errors.append(f"{response.status_code} {response.text}")
                    return
                self.ok_sends.append(sent)
                self._stop.wait(max(0.0, sent + self.interval - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive()


@contextlib.contextmanager
def keeping_alive(urls: list[str], lease: int, interval: float) -> Iterator[KeepAlive]:
    keeper = KeepAlive(urls, lease, interval)
    try:
        yield keeper
    finally:
        keeper.stop()


class Stream:
    """An NDJSON watch stream read in a thread. Progress messages every 0.2 s let the
    thread notice it is asked to stop."""

    def __init__(self, url: str, params: dict[str, str]) -> None:
        self.messages: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._ended = False
        self._client = httpx.Client(timeout=httpx.Timeout(10.0, read=30.0))
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(
            target=self._read, args=(url, {"progress": "0.2", **params}), daemon=True
        )
        self._thread.start()

    def _read(self, url: str, params: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", url, params=params) as response:
                self._response = response
                for line in response.iter_lines():
                    if self._stop.is_set():
                        break
                    if line:
                        with self._changed:
                            self.messages.append(orjson.loads(line))
                            self._changed.notify_all()
        except httpx.HTTPError:
            pass
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> None:
        with self._changed:
            self._changed.wait_for(lambda: predicate(self.events()) or self._ended, timeout)
            assert predicate(self.events()), f"stream ended or timed out: {self.messages}"

    def started(self) -> bool:
        with self._changed:
            return bool(self.messages)

    def events(self) -> list[dict[str, Any]]:
        return [e for m in self.messages if m["kind"] == "events" for e in m["events"]]

    def close(self) -> None:
        self._stop.set()
        if self._response is not None:
            with contextlib.suppress(Exception):
                self._response.close()
        self._client.close()
        self._thread.join(5)


@contextlib.contextmanager
def watching(url: str, **params: str) -> Iterator[Stream]:
    stream = Stream(url, params)
    try:
        wait_until(stream.started, timeout=10.0, what="the watch to start")
        yield stream
    finally:
        stream.close()


# -- on one cluster -------------------------------------------------------------------------


def test_a_key_with_a_ttl_expires_after_its_ttl_and_never_before(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    follower = cluster.followers()[0]
    nodes = [leader, *cluster.followers()]
    ttl = 2.0
    sent = time.monotonic()
    written = ok(
        cluster.client.post(f"{cluster.url(follower)}/kv/ttl/json", json={"value": "j", "ttl": ttl})
    )
    assert written["ttl"] == ttl and written["lease"] >= 1
    raw_sent = time.monotonic()
    raw = ok(
        cluster.client.put(f"{cluster.url(leader)}/kv/ttl/raw", content=b"r", params={"ttl": "1"})
    )
    assert raw["ttl"] == 1.0 and raw["lease"] != written["lease"]
    # Its time left counts down from the TTL on every node.
    for node in nodes:
        doc = ok(cluster.client.get(f"{cluster.url(node)}/kv/ttl/json", headers=JSON))
        assert doc["lease"] == written["lease"]
        assert ttl - (time.monotonic() - sent) - 0.05 <= doc["ttl"] <= ttl
        headers = cluster.client.get(f"{cluster.url(node)}/kv/ttl/json").headers
        assert headers["X-Raftkv-Lease"] == str(written["lease"])
        assert 0 < float(headers["X-Raftkv-Ttl"]) <= ttl

    raw_probe = wait_gone(cluster, nodes, "ttl/raw", raw_sent + 1.0 + EXPIRY_BOUND_S)
    probe = wait_gone(cluster, nodes, "ttl/json", sent + ttl + EXPIRY_BOUND_S)
    for what, p, start, seconds in (("raw", raw_probe, raw_sent, 1.0), ("json", probe, sent, ttl)):
        # Never gone before its TTL counted from the send, and still read close to it.
        assert p.first_gone() >= start + seconds, (what, p.samples)
        assert p.last_seen() >= start + seconds - 0.25, (what, p.samples)
    # The keys' own leases ended with them.
    listed = ok(cluster.client.get(f"{cluster.url(follower)}/lease"))["leases"]
    assert not {item["id"] for item in listed} & {written["lease"], raw["lease"]}


def test_a_follower_shows_a_ttl_not_below_the_leaders(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    followers = cluster.followers()
    ttl = 3.0
    ok(cluster.client.post(f"{cluster.url(leader)}/kv/ft/k", json={"value": "v", "ttl": ttl}))
    for _ in range(5):
        for follower in followers:
            before = time.monotonic()
            at_leader = ok(cluster.client.get(f"{cluster.url(leader)}/kv/ft/k", headers=JSON))
            for consistency in ("linearizable", "stale"):
                at_follower = ok(
                    cluster.client.get(
                        f"{cluster.url(follower)}/kv/ft/k",
                        headers=JSON,
                        params={"consistency": consistency},
                    )
                )
                elapsed = time.monotonic() - before
                assert at_follower["lease"] == at_leader["lease"]
                # Read after the leader's: lower by no more than the time in between.
                assert at_follower["ttl"] >= at_leader["ttl"] - elapsed - 0.05, (
                    at_leader,
                    at_follower,
                    elapsed,
                )
                assert at_follower["ttl"] <= ttl
        time.sleep(0.2)
    cluster.client.delete(f"{cluster.url(leader)}/kv/ft/k")


def test_lease_reads_on_a_follower(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    follower = cluster.followers()[0]
    url = cluster.url(follower)
    ttl = 3.0
    lease = grant(cluster, leader, ttl)
    # Linearizable: the grant acknowledged by the leader is seen by the follower at once.
    doc = ok(cluster.client.get(f"{url}/lease/{lease}"))
    assert doc["id"] == lease and doc["ttl"] == ttl and doc["keys"] == []
    assert 0 < doc["remaining"] <= ttl
    for key in ("fl/b", "fl/a"):
        attach(cluster, leader, key, lease)
    started = time.monotonic()
    time.sleep(1.0)
    doc = ok(cluster.client.get(f"{url}/lease/{lease}"))
    assert doc["keys"] == [{"key": "fl/a"}, {"key": "fl/b"}] and doc["more"] is False
    assert 0 < doc["remaining"] <= ttl - (time.monotonic() - started) + 0.05
    assert ok(cluster.client.get(f"{url}/lease/{lease}", params={"limit": "1"}))["more"] is True
    stale = ok(cluster.client.get(f"{url}/lease/{lease}", params={"consistency": "stale"}))
    assert stale["keys"] == doc["keys"]
    # A keep-alive through the follower starts the TTL again, there and on the leader.
    kept = ok(cluster.client.post(f"{url}/lease/{lease}/keepalive"))
    assert kept["id"] == lease and kept["ttl"] == ttl
    for node in (follower, leader):
        assert ok(cluster.client.get(f"{cluster.url(node)}/lease/{lease}"))["remaining"] > ttl - 0.5
    listed = ok(cluster.client.get(f"{url}/lease"))
    assert listed["count"] == len(listed["leases"])
    ids = [item["id"] for item in listed["leases"]]
    assert ids == sorted(ids) and lease in ids
    item = next(item for item in listed["leases"] if item["id"] == lease)
    assert item["ttl"] == ttl and 0 < item["remaining"] <= ttl
    assert cluster.client.get(f"{url}/lease/{lease + 1000}").status_code == 404
    # Revoked through the follower.
    revoked = ok(cluster.client.delete(f"{url}/lease/{lease}"))
    assert revoked["deleted"] == 2
    assert cluster.client.get(f"{url}/lease/{lease}").status_code == 404
    assert cluster.get(leader, "fl/a").status_code == 404


def test_watchers_see_a_leases_keys_deleted_at_one_revision(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    follower = cluster.followers()[0]
    revoked = grant(cluster, leader, 30)
    with (
        watching(f"{cluster.url(follower)}/watch", prefix="wl/") as on_follower,
        watching(f"{cluster.url(leader)}/watch", prefix="wl/") as on_leader,
    ):
        for key in ("wl/r/a", "wl/r/b", "wl/r/c"):
            attach(cluster, leader, key, revoked)
        expiring = grant(cluster, follower, 1.5)
        for key in ("wl/e/a", "wl/e/b"):
            attach(cluster, follower, key, expiring)
        answer = ok(cluster.client.delete(f"{cluster.url(follower)}/lease/{revoked}"))
        assert answer["deleted"] == 3

        def deletes(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [e for e in events if e["type"] == "delete"]

        for stream in (on_follower, on_leader):
            stream.wait_for(lambda events: len(deletes(events)) == 5, timeout=10.0)
            gone = deletes(stream.events())
            by_revision: dict[int, set[str]] = {}
            for event in gone:
                by_revision.setdefault(event["revision"], set()).add(event["key"])
            assert by_revision[answer["revision"]] == {"wl/r/a", "wl/r/b", "wl/r/c"}
            assert len(by_revision) == 2
            (expired_at,) = set(by_revision) - {answer["revision"]}
            assert by_revision[expired_at] == {"wl/e/a", "wl/e/b"}
            assert expired_at > answer["revision"]
            puts = [e for e in stream.events() if e["type"] == "put"]
            assert len(puts) == 5 and all(e["revision"] < answer["revision"] for e in puts)


# -- failures -------------------------------------------------------------------------------


def test_a_kept_alive_lease_survives_a_leader_kill_and_expires_once_let_go(
    tmp_path: Path,
) -> None:
    ttl = 3.0
    with running_cluster(tmp_path, 3) as cluster:
        leader = cluster.leader()
        survivors = cluster.followers()
        urls = [cluster.url(n) for n in survivors]
        lease = grant(cluster, survivors[0], ttl)
        for key in ("ka/a", "ka/b"):
            attach(cluster, leader, key, lease)
        with keeping_alive(urls, lease, ttl / 3) as keeper:
            time.sleep(0.5)
            cluster.kill(leader)
            killed = time.monotonic()
            new_leader = cluster.wait_ready(timeout=20.0)
            assert new_leader in survivors
            # Kept for well over two TTLs after the kill; the keys never go away.
            while time.monotonic() < killed + 2.5 * ttl:
                for node in survivors:
                    for key in ("ka/a", "ka/b"):
                        response = cluster.get(node, key, consistency="stale")
                        assert response.status_code == 200, (node, key, response.text)
                time.sleep(0.25)
            assert keeper.errors == []
            assert keeper.ok_sends and keeper.ok_sends[-1] > killed + ttl
        last_ok, last_sent = keeper.ok_sends[-1], keeper.last_sent
        assert keeper.errors == []
        doc = ok(cluster.client.get(f"{cluster.url(new_leader)}/lease/{lease}"))
        assert [k["key"] for k in doc["keys"]] == ["ka/a", "ka/b"]
        probe = wait_gone(cluster, survivors, "ka/a", last_sent + ttl + EXPIRY_BOUND_S)
        assert probe.first_gone() >= last_ok + ttl, probe.samples
        for node in survivors:
            assert cluster.get(node, "ka/b").status_code == 404
            assert cluster.client.get(f"{cluster.url(node)}/lease/{lease}").status_code == 404


def test_a_lease_outlives_a_restart_of_every_node(tmp_path: Path) -> None:
    ttl = 3.0
    with running_cluster(tmp_path, 3) as cluster:
        leader = cluster.leader()
        kept = grant(cluster, leader, ttl)
        left = grant(cluster, leader, ttl)
        attach(cluster, leader, "rs/kept", kept)
        attach(cluster, leader, "rs/left", left)
        for node in cluster.nodes:
            assert cluster.terminate(node) == 0
        for node in cluster.nodes:
            cluster.start_node(node)
        ready_from = time.monotonic()
        cluster.wait_ready(timeout=30.0)
        nodes = list(cluster.nodes)
        # Both leases and their keys are back, counting down again.
        for lease, key in ((kept, "rs/kept"), (left, "rs/left")):
            doc = ok(cluster.client.get(f"{cluster.url(nodes[0])}/lease/{lease}"))
            assert doc["keys"] == [{"key": key}] and doc["ttl"] == ttl
            assert 0 < doc["remaining"] <= ttl + 1.0  # a leader adds an election timeout
            assert cluster.get(nodes[1], key).status_code == 200
        with keeping_alive([cluster.url(n) for n in nodes], kept, ttl / 3) as keeper:
            # The one let go runs out, within its TTL (counted from when the nodes came
            # back, at the latest) and a bound.
            probe = wait_gone(cluster, nodes, "rs/left", ready_from + ttl + 1.0 + EXPIRY_BOUND_S)
            assert probe.last_seen() > 0  # it was there after the restart
            # The one kept alive is still there more than a TTL after the restart.
            while time.monotonic() < ready_from + 1.5 * ttl:
                assert cluster.get(nodes[2], "rs/kept").status_code == 200
                time.sleep(0.25)
        assert keeper.errors == [] and keeper.ok_sends
        probe = wait_gone(cluster, nodes, "rs/kept", keeper.last_sent + ttl + EXPIRY_BOUND_S)
        assert probe.first_gone() >= keeper.ok_sends[-1] + ttl, probe.samples
        assert ok(cluster.client.get(f"{cluster.url(nodes[1])}/lease"))["leases"] == []
