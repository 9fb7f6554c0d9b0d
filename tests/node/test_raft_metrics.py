"""The Raft process's metrics: the collector on a stand-in node, and a real node's
answer to Op.METRICS after writes."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from raftkv.node.lease_clock import LeaseStats
from raftkv.node.node import RaftNode
from raftkv.node.node_config import NodeAddress, NodeConfig
from raftkv.node.raft_metrics import RaftMetrics
from raftkv.node.requests import PendingRequest
from raftkv.node.watch_hub import WatchStats
from raftkv.raft.core import Role
from raftkv.testing.cluster import free_ports
from raftkv.wire.protocol import Op, ReplyStatus
from raftkv_ext.codec import ClientReply, ClientRequest


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels; the text must parse
    and name each family once."""
    families = list(text_string_to_metric_families(text))
    names = Counter(family.name for family in families)
    assert [name for name, count in names.items() if count > 1] == []
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


# -- the collector, on a stand-in for RaftNode ---------------------------------------------


@dataclass
class FakeProgress:
    match: int


@dataclass
class FakeCore:
    role: Role = Role.FOLLOWER
    leader_id: int = 0
    term: int = 1
    committed: int = 0
    last_index: int = 0
    progress: dict[int, FakeProgress] = field(default_factory=dict)


@dataclass
class FakeNode:
    """The parts of NodeView the collector reads."""

    raft_state: FakeCore = field(default_factory=FakeCore)
    applied_index: int = 0
    last_heard: dict[int, float] = field(default_factory=dict)
    pending: int = 0
    watches: WatchStats = field(default_factory=lambda: WatchStats(0, 0, 0, 0, 0, 0))
    leases: LeaseStats = field(default_factory=lambda: LeaseStats(0, 0, 0, 0))

    def pending_writes(self) -> int:
        return self.pending

    def watch_stats(self) -> WatchStats:
        return self.watches

    def lease_stats(self) -> LeaseStats:
        return self.leases


def test_follower_state_and_counters_since_start() -> None:
    node = FakeNode(FakeCore(leader_id=2, term=7, committed=40, last_index=42))
    node.applied_index = 39
    metrics = RaftMetrics(node)  # type: ignore[arg-type]
    metrics.count_from_here()
    node.raft_state.committed, node.applied_index = 50, 48
    node.pending = 3
    text = metrics.exposition().decode()
    assert value(text, "raftkv_has_leader") == 1
    assert value(text, "raftkv_is_leader") == 0
    assert value(text, "raftkv_current_term") == 7
    assert value(text, "raftkv_commit_index") == 50
    assert value(text, "raftkv_applied_index") == 48
    assert value(text, "raftkv_last_log_index") == 42
    assert value(text, "raftkv_proposals_committed_total") == 10
    assert value(text, "raftkv_proposals_applied_total") == 9
    assert value(text, "raftkv_proposals_pending") == 3
    # Only the leader knows the followers' lag: the families are there, empty.
    assert not any(name.startswith("raftkv_replication_lag") for name, _ in samples(text))


def test_watch_streams_and_history_are_reported() -> None:
    node = FakeNode(watches=WatchStats(3, 1, 120, 2, 500, 40))
    text = RaftMetrics(node).exposition().decode()  # type: ignore[arg-type]
    assert value(text, "raftkv_watches") == 3
    assert value(text, "raftkv_watches_held") == 1
    assert value(text, "raftkv_watch_events_sent_total") == 120
    assert value(text, "raftkv_watch_resyncs_total") == 2
    assert value(text, "raftkv_watch_history_changes") == 500
    assert value(text, "raftkv_watch_history_floor") == 40


def test_leader_reports_each_followers_lag(monkeypatch: pytest.MonkeyPatch) -> None:
    core = FakeCore(Role.LEADER, leader_id=1, committed=95, last_index=100)
    core.progress = {2: FakeProgress(100), 3: FakeProgress(60)}
    node = FakeNode(core)
    metrics = RaftMetrics(node)  # type: ignore[arg-type]
    monkeypatch.setattr("raftkv.node.raft_metrics.time.monotonic", lambda: 1000.0)
    node.last_heard = {2: 999.75, 3: 990.0}
    text = metrics.exposition().decode()
    assert value(text, "raftkv_is_leader") == 1
    assert value(text, "raftkv_replication_lag_entries", peer="2") == 0
    assert value(text, "raftkv_replication_lag_entries", peer="3") == 40
    assert value(text, "raftkv_replication_lag_seconds", peer="2") == 0.25
    assert value(text, "raftkv_replication_lag_seconds", peer="3") == 10.0


def test_failed_writes_are_counted_once_and_reads_not() -> None:
    metrics = RaftMetrics(FakeNode())  # type: ignore[arg-type]
    before = value(metrics.exposition().decode(), "raftkv_proposals_failed_total")
    replies: list[ClientReply] = []
    write = PendingRequest(ClientRequest(1, Op.PUT, b"k", b"v"), replies.append, 0.0, True)
    read = PendingRequest(ClientRequest(2, Op.GET, b"k"), replies.append, 0.0, False)
    write.fail(ReplyStatus.UNAVAILABLE, "no leader")
    write.fail(ReplyStatus.TIMEOUT, "answered already: no second reply, no second count")
    read.fail(ReplyStatus.UNAVAILABLE, "no leader")
    assert len(replies) == 2
    after = value(metrics.exposition().decode(), "raftkv_proposals_failed_total")
    assert after - before == 1


def test_fsync_is_timed_and_a_slow_one_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    readings = iter([0.0, 0.003, 10.0, 10.25])
    metrics = RaftMetrics(FakeNode(), clock=lambda: next(readings))  # type: ignore[arg-type]
    synced: list[int] = []
    with caplog.at_level(logging.WARNING, logger="raftkv.metrics"):
        metrics.timed_fsync(lambda: synced.append(1))  # 3 ms
        metrics.timed_fsync(lambda: synced.append(2))  # 250 ms
    assert synced == [1, 2]
    assert [r.getMessage() for r in caplog.records] == ["slow fsync: 250 ms"]
    text = metrics.exposition().decode()
    assert value(text, "raftkv_log_fsync_duration_seconds_count") == 2
    assert value(text, "raftkv_log_fsync_duration_seconds_sum") == 0.253
    assert value(text, "raftkv_log_fsync_duration_seconds_bucket", le="0.004") == 1
    assert value(text, "raftkv_log_fsync_duration_seconds_bucket", le="0.256") == 2


def test_no_family_of_the_raft_process_uses_the_workers_prefix() -> None:
    text = RaftMetrics(FakeNode()).exposition().decode()  # type: ignore[arg-type]
    names = {family.name for family in text_string_to_metric_families(text)}
    assert "raftkv_leader_changes_seen" in names
    assert "raftkv_raft_process_cpu_seconds" in names
    assert all(name.startswith("raftkv_") for name in names)
    assert not any(name.startswith("raftkv_http_") for name in names)


# -- a real node ----------------------------------------------------------------------------


async def ask(node: RaftNode, request: ClientRequest, timeout: float = 10.0) -> ClientReply:
    answer: asyncio.Future[ClientReply] = asyncio.get_running_loop().create_future()
    node.submit(request, answer.set_result)
    return await asyncio.wait_for(answer, timeout)


async def write_and_scrape(base: Path) -> tuple[str, str]:
    http_port, rpc_port = free_ports(2)
    cluster = {1: NodeAddress(1, f"127.0.0.1:{http_port}", f"127.0.0.1:{rpc_port}")}
    config = NodeConfig(1, cluster, base, snapshot_entries=5, snapshot_log_ratio=0.0)
    node = RaftNode(config)
    await node.start()
    try:
        for _ in range(200):
            # Leader, and its own first entries (the configuration, the no-op) committed,
            # so that only the writes below move the committed count.
            if (
                node.raft_state.role is Role.LEADER
                and node.raft_state.committed == node.raft_state.last_index
            ):
                break
            await asyncio.sleep(0.02)
        before = (await ask(node, ClientRequest(1, Op.METRICS))).body.decode()
        for i in range(12):
            reply = await ask(
                node, ClientRequest(10 + i, Op.PUT, b"k%d" % i, b"v", client_id=7, seq=i + 1)
            )
            assert reply.status == ReplyStatus.OK
        for _ in range(200):  # the snapshot is written by a child process
            if node.latest_snapshot is not None:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
        after = await ask(node, ClientRequest(2, Op.METRICS))
        assert after.status == ReplyStatus.OK
        return before, after.body.decode()
    finally:
        await node.stop()


def test_a_node_answers_metrics_that_follow_its_writes(tmp_path: Path) -> None:
    before, after = asyncio.run(write_and_scrape(tmp_path / "node"))
    assert value(after, "raftkv_is_leader") == 1
    assert value(after, "raftkv_leader_changes_seen_total") == 1
    committed = value(after, "raftkv_proposals_committed_total")
    assert committed - value(before, "raftkv_proposals_committed_total") == 12
    assert value(after, "raftkv_proposals_applied_total") == committed
    assert value(after, "raftkv_commit_index") == value(after, "raftkv_applied_index")
    assert (
        value(after, "raftkv_log_fsync_duration_seconds_count")
        >= 12
        > value(before, "raftkv_log_fsync_duration_seconds_count")
    )
    assert value(after, "raftkv_apply_duration_seconds_count") >= 12
    assert value(after, "raftkv_snapshot_duration_seconds_count", origin="local") >= 1
    assert value(after, "raftkv_proposals_pending") == 0


def test_lease_gauges_and_counters() -> None:
    node = FakeNode(leases=LeaseStats(leases=3, attached_keys=5, expired=2, expiries_proposed=4))
    metrics = RaftMetrics(node)  # type: ignore[arg-type]
    metrics.lease_expiry_lateness.observe(0.02)
    text = metrics.exposition().decode()
    assert value(text, "raftkv_leases") == 3
    assert value(text, "raftkv_lease_keys") == 5
    assert value(text, "raftkv_lease_expiries_total") == 2
    assert value(text, "raftkv_lease_expiries_proposed_total") == 4
    assert value(text, "raftkv_lease_expiry_lateness_seconds_count") == 1
