"""Real kvnode processes: replication health in /cluster/nodes and /cluster/status, and
the log output of `kvnode --log-format json` and `--log-level`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raftkv.node.replication_health import LAGGING_ENTRIES
from raftkv.testing.cluster import LocalCluster, NodeProcess, running_cluster, wait_until

JSON_FIELDS = {"time", "level", "node", "process", "pid", "logger", "message"}


def node_entry(cluster: LocalCluster, asked: int, node_id: int) -> dict[str, Any]:
    """Node ``node_id`` as ``/cluster/nodes`` on node ``asked`` describes it."""
    response = cluster.client.get(f"{cluster.url(asked)}/cluster/nodes")
    response.raise_for_status()
    entries = {entry["id"]: entry for entry in response.json()["nodes"]}
    found: dict[str, Any] = entries[node_id]
    return found


def test_a_killed_follower_is_unreachable_until_it_returns(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 3) as cluster:
        leader = cluster.leader()
        follower, other = cluster.followers()
        wait_until(
            lambda: node_entry(cluster, leader, follower)["health"] == "healthy",
            timeout=20,
            what=f"node {follower} to be healthy",
        )
        me = node_entry(cluster, leader, leader)
        assert (me["lagEntries"], me["lastContactSeconds"], me["health"]) == (0, None, "healthy")

        cluster.kill(follower)

        def dead() -> bool:
            entry = node_entry(cluster, leader, follower)
            return entry["health"] == "unreachable" and entry["reachable"] is False

        wait_until(dead, timeout=20, what=f"the killed node {follower} to be unreachable")
        first = node_entry(cluster, leader, follower)
        assert (first["health"], first["reachable"]) == ("unreachable", False)
        assert isinstance(first["lastContactSeconds"], float)

        # Writes go on with the remaining majority, and the dead follower falls behind.
        writes = 25
        for i in range(writes):
            assert cluster.put(leader, f"lag/{i}", str(i)).status_code == 200
        later = node_entry(cluster, leader, follower)
        assert later["health"] == "unreachable"
        assert later["lagEntries"] >= first["lagEntries"] + writes
        wait_until(
            lambda: (
                node_entry(cluster, leader, follower)["lastContactSeconds"]
                > first["lastContactSeconds"]
            ),
            timeout=10,
            what="the time since the last contact to grow",
        )

        # The other follower's worker shows the leader's view, and so does the status.
        forwarded = node_entry(cluster, other, follower)
        assert forwarded["health"] == "unreachable"
        assert forwarded["lagEntries"] >= writes
        progress = cluster.status(other)["replicationProgress"]
        assert progress[str(follower)]["health"] == "unreachable"
        assert progress[str(follower)]["lag"] >= writes
        assert isinstance(progress[str(other)]["lastContactSeconds"], float)
        # Polled: a machine that stalls the leader for an election timeout would show
        # even a live follower as unreachable for a moment, as it should.
        wait_until(
            lambda: cluster.status(other)["replicationProgress"][str(other)]["health"] == "healthy",
            timeout=10,
            what=f"the live follower {other} to be healthy in the status",
        )
        # Asking the leader is not logged one line per request at the default level.
        assert "HTTP Request" not in cluster.nodes[other].log_text()

        cluster.start_node(follower)
        wait_until(
            lambda: node_entry(cluster, leader, follower)["health"] == "healthy",
            timeout=30,
            what=f"the restarted node {follower} to be healthy again",
        )
        back = node_entry(cluster, leader, follower)
        assert back["reachable"] is True
        assert back["lagEntries"] <= LAGGING_ENTRIES
        assert back["lastContactSeconds"] is not None
        wait_until(
            lambda: (
                cluster.get(follower, f"lag/{writes - 1}", consistency="stale").text
                == str(writes - 1)
            ),
            timeout=10,
            what="the restarted follower to apply the writes it missed",
        )


def json_lines(node: NodeProcess) -> list[dict[str, Any]]:
    """Every line node ``node`` wrote (both of its processes share the file); each one
    must be a JSON object with every field."""
    records = []
    for line in node.log_text().splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert set(record) >= JSON_FIELDS, line
        assert record["node"] == node.node_id, line
        assert record["process"] in ("raft", "worker"), line
        records.append(record)
    return records


def test_json_logs_are_one_object_per_line_from_both_processes(tmp_path: Path) -> None:
    flags = ["--log-format", "json", "--log-level", "debug"]
    with running_cluster(tmp_path, 3, extra_args=flags) as cluster:
        leader = cluster.leader()
        follower, killed = cluster.followers()
        for i in range(5):
            assert cluster.put(follower, f"json/{i}", str(i)).status_code == 200
        # The follower's worker asks the leader for this: an HTTP client in the worker.
        assert cluster.status(follower)["role"] == "leader"
        cluster.kill(killed)
        wait_until(
            lambda: f"connection to node {killed}" in cluster.nodes[leader].log_text(),
            timeout=10,
            what="the leader to log the dropped connection",
        )
    records = {node_id: json_lines(node) for node_id, node in cluster.nodes.items()}

    for node_id in (leader, follower):
        kinds = {record["process"] for record in records[node_id]}
        assert kinds == {"raft", "worker"}, f"node {node_id} logged from {kinds}"
    messages = [record["message"] for record in records[leader]]
    assert any(message.endswith("won the election") for message in messages)
    assert any(message.startswith(f"connection to node {killed}") for message in messages)

    everything = [record for lines in records.values() for record in lines]
    # --log-level debug reaches both processes.
    debug_from = {record["process"] for record in everything if record["level"] == "DEBUG"}
    assert debug_from == {"raft", "worker"}


def test_the_log_level_applies_to_both_processes(tmp_path: Path) -> None:
    flags = ["--log-format", "json", "--log-level", "warning"]
    with running_cluster(tmp_path, 1, extra_args=flags) as cluster:
        assert cluster.put(1, "quiet", "yes").status_code == 200
        assert cluster.get(1, "quiet").text == "yes"
    # The node served (its worker answered); neither process wrote an INFO line, such as
    # the worker's "Application startup complete." or the Raft process's election.
    levels = {record["level"] for record in json_lines(cluster.nodes[1])}
    assert levels <= {"WARNING", "ERROR", "CRITICAL"}
