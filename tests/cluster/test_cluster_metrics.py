"""/metrics of real kvnode processes (two HTTP workers each) under a scripted workload:
writes, a follower killed with SIGKILL, then the leader killed."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from raftkv.testing.cluster import LocalCluster, running_cluster, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
PUT_OK = (("method", "PUT"), ("route", "/kv/{key}"), ("status", "200"))


def scrape(cluster: LocalCluster, node_id: int) -> Samples:
    # A new connection per scrape, so that either worker of the node may answer: each
    # must give the same sums.
    response = httpx.get(f"{cluster.url(node_id)}/metrics", timeout=10.0)
    assert response.status_code == 200, response.text
    families = list(text_string_to_metric_families(response.text))
    duplicated = [n for n, c in Counter(f.name for f in families).items() if c > 1]
    assert duplicated == []
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families
        for s in family.samples
    }


def metric(cluster: LocalCluster, node_id: int, name: str, **labels: str) -> float:
    return scrape(cluster, node_id).get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for_metric(
    cluster: LocalCluster, node_id: int, name: str, at_least: float, **labels: str
) -> float:
    """Wait until the metric reaches ``at_least`` (replication and elections take a
    moment), and return it."""
    seen: list[float] = []

    def reached() -> bool:
        seen.append(metric(cluster, node_id, name, **labels))
        return seen[-1] >= at_least

    try:
        wait_until(reached, 30.0, 0.1, f"{name}{labels} >= {at_least} on node {node_id}")
    except TimeoutError:
        pytest.fail(f"{name}{labels} on node {node_id} stayed at {seen[-1]}")
    return seen[-1]


def put_many(cluster: LocalCluster, node_id: int, prefix: str, count: int) -> None:
    with httpx.Client(timeout=10.0) as client:
        for i in range(count):
            response = client.put(f"{cluster.url(node_id)}/kv/{prefix}/{i}", content=b"value")
            assert response.status_code == 200, response.text


def test_metrics_follow_writes_a_dead_follower_and_an_election(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 3, extra_args=["--workers", "2"]) as cluster:
        leader = cluster.leader()
        follower, other = cluster.followers()

        # Writes raise the committed counter, and every PUT is counted once over both
        # workers of the leader.
        before = scrape(cluster, leader)
        put_many(cluster, leader, "first", 20)
        put_key = ("raftkv_http_request_duration_seconds_count", PUT_OK)
        # A worker writes its counts at most 100 ms after the request (HttpMetrics.flush),
        # so a scrape served by the other worker may see them a moment later.
        wait_until(
            lambda: scrape(cluster, leader).get(put_key, 0.0) - before.get(put_key, 0.0) >= 20,
            5.0,
        )
        after = scrape(cluster, leader)
        committed = "raftkv_proposals_committed_total"
        assert after[(committed, ())] - before[(committed, ())] >= 20
        assert after[put_key] - before.get(put_key, 0.0) == 20
        assert scrape(cluster, leader)[put_key] == after[put_key]
        # The workers count into files of the node's shared directory.
        shared = cluster.nodes[leader].data_dir / "worker-metrics"
        assert list(shared.glob("histogram_*.db"))
        assert after[("raftkv_is_leader", ())] == 1
        assert after[("raftkv_log_fsync_duration_seconds_count", ())] > 0
        assert after[("raftkv_peer_round_trip_seconds_count", (("peer", str(follower)),))] > 0
        wait_for_metric(
            cluster, follower, "raftkv_commit_index", after[("raftkv_commit_index", ())]
        )

        # A follower killed with SIGKILL falls behind on the leader, in entries and in
        # time since the leader last heard from it.
        cluster.kill(follower, signal.SIGKILL)
        peer = str(follower)
        put_many(cluster, leader, "second", 10)
        lag = wait_for_metric(cluster, leader, "raftkv_replication_lag_entries", 10, peer=peer)
        assert lag >= 10
        silent = metric(cluster, leader, "raftkv_replication_lag_seconds", peer=peer)
        later = wait_for_metric(
            cluster, leader, "raftkv_replication_lag_seconds", silent + 0.2, peer=peer
        )
        assert later > silent
        live = scrape(cluster, leader)
        assert live[("raftkv_replication_lag_entries", (("peer", str(other)),))] == 0
        assert live[("raftkv_replication_lag_seconds", (("peer", str(other)),))] < later

        # Back up, it catches up.
        cluster.start_node(follower)
        cluster.wait_ready()
        wait_until(
            lambda: metric(cluster, leader, "raftkv_replication_lag_entries", peer=peer) == 0,
            30.0,
            0.1,
            "the restarted follower to catch up",
        )

        # Killing the leader: a survivor sees the election end with a new leader.
        changes = metric(cluster, other, "raftkv_leader_changes_seen_total")
        term = metric(cluster, other, "raftkv_current_term")
        cluster.kill(leader, signal.SIGKILL)
        new_leader = cluster.wait_ready()
        assert new_leader != leader
        wait_for_metric(cluster, other, "raftkv_leader_changes_seen_total", changes + 1)
        assert metric(cluster, other, "raftkv_current_term") > term
        assert metric(cluster, other, "raftkv_has_leader") == 1
        assert metric(cluster, new_leader, "raftkv_is_leader") == 1
