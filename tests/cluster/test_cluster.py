"""Real kvnode processes on loopback, driven over HTTP (docs/architecture.md testing layer 3)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from raftkv.testing.cluster import LocalCluster, running_cluster, wait_until

# Snapshots every 40 entries so that the tests below exercise snapshot, compaction and
# InstallSnapshot without writing thousands of keys.
FAST_SNAPSHOTS = ["--snapshot-entries", "40", "--snapshot-retain", "10"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster"), 3) as running:
        yield running


def test_readme_examples(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    base = cluster.url(leader)
    client = cluster.client

    stored = client.post(f"{base}/kv/config/db/host", json={"value": "10.0.0.5"})
    assert stored.status_code == 200, stored.text
    body = stored.json()
    assert body["key"] == "config/db/host"
    assert body["revision"] == body["index"] > 1
    assert body["term"] >= 1

    got = client.get(f"{base}/kv/config/db/host")
    assert got.status_code == 200 and got.content == b"10.0.0.5"
    meta = client.get(f"{base}/kv/config/db/host", headers={"Accept": "application/json"})
    assert meta.json()["value"] == "10.0.0.5"
    assert meta.json()["mod_revision"] == body["revision"]

    raw = client.put(f"{base}/kv/blob", content=b"\x00\xffbinary")
    assert raw.status_code == 200
    assert client.get(f"{base}/kv/blob").content == b"\x00\xffbinary"

    client.post(f"{base}/kv/config/db/port", json={"value": "5432"})
    listing = client.get(f"{base}/kv", params={"prefix": "config/"})
    assert [item["key"] for item in listing.json()["items"]] == ["config/db/host", "config/db/port"]

    conflict = client.post(f"{base}/kv/config/db/port", json={"value": "6543", "prev_revision": 1})
    assert conflict.status_code == 409
    assert conflict.json()["current_revision"] > 1

    assert client.delete(f"{base}/kv/blob").status_code == 200
    assert client.get(f"{base}/kv/blob").status_code == 404
    cleaned = client.delete(f"{base}/kv", params={"prefix": "config/"})
    assert cleaned.json()["deleted"] == 2
    assert client.get(f"{base}/kv", params={"prefix": "config/"}).json()["items"] == []

    status = cluster.status(leader)
    assert status["leader"] == leader
    assert status["totalNodes"] == 3 and status["liveNodes"] == 3
    assert set(status["replicationProgress"]) == {str(n) for n in cluster.nodes if n != leader}
    for progress in status["replicationProgress"].values():
        assert progress["matchIndex"] <= status["lastIndex"]
        assert progress["nextIndex"] >= 1


def test_any_node_accepts_writes_and_linearizable_reads(cluster: LocalCluster) -> None:
    for follower in cluster.followers():
        response = cluster.put(follower, f"via/{follower}", f"written through {follower}")
        assert response.status_code == 200, response.text
    for node_id in cluster.nodes:
        for follower in cluster.followers():
            got = cluster.get(node_id, f"via/{follower}")
            assert got.status_code == 200
            assert got.text == f"written through {follower}"


def test_stale_reads_are_served_locally(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    written = cluster.put(leader, "stale/key", "v1").json()
    for node_id in cluster.nodes:
        # A stale read may lag; once the follower has applied the write it sees it.
        wait_until(
            lambda n=node_id: cluster.get(n, "stale/key", consistency="stale").text == "v1",
            timeout=5,
            what=f"node {node_id} to apply index {written['index']}",
        )


def test_status_from_a_follower_shows_the_leaders_view(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    follower = cluster.followers()[0]
    status = cluster.status(follower)
    assert status["leader"] == leader and status["role"] == "leader"
    assert set(status["replicationProgress"]) == {str(n) for n in cluster.nodes if n != leader}
    local = cluster.client.get(f"{cluster.url(follower)}/cluster/status", params={"local": "true"})
    assert local.json()["role"] == "follower" and local.json()["nodeId"] == follower


def test_health_and_nodes(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    for node_id in cluster.nodes:
        health = cluster.client.get(f"{cluster.url(node_id)}/health")
        assert health.status_code == 200 and health.json()["leader"] == leader
        nodes = cluster.client.get(f"{cluster.url(node_id)}/cluster/nodes").json()
        assert {n["id"] for n in nodes["nodes"]} == set(cluster.nodes)
        assert [n["id"] for n in nodes["nodes"] if n["isLeader"]] == [leader]


def test_garbage_to_peer_and_http_ports_harms_nothing(cluster: LocalCluster) -> None:
    node = cluster.nodes[cluster.followers()[0]]
    for port in (node.rpc_port, node.http_port):
        for payload in (
            b"\x00" * 64,
            b"GET / HTTP/1.1\r\n\r\n",
            b"\xff" * 4096,
            b"RFKV" + b"\x01" * 40,
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(payload)
                sock.settimeout(2)
                with contextlib.suppress(TimeoutError, ConnectionResetError):
                    sock.recv(4096)
    bad_json = cluster.client.post(
        f"{node.url}/kv/x", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert bad_json.status_code == 400 and "error" in bad_json.json()
    assert all(n.running for n in cluster.nodes.values())
    assert cluster.put(cluster.leader(), "after/garbage", "fine").status_code == 200
    assert cluster.get(node.node_id, "after/garbage").text == "fine"


def _write_many(cluster: LocalCluster, node_id: int, prefix: str, count: int) -> dict[str, str]:
    acked = {}
    for i in range(count):
        key, value = f"{prefix}/{i:04d}", f"value-{i}"
        response = cluster.put(node_id, key, value)
        assert response.status_code == 200, response.text
        acked[key] = value
    return acked


def _assert_all_readable(cluster: LocalCluster, node_id: int, acked: dict[str, str]) -> None:
    for key, value in acked.items():
        got = cluster.get(node_id, key)
        assert got.status_code == 200, f"{key}: {got.status_code} {got.text}"
        assert got.text == value


@pytest.mark.parametrize("storage", ["segment", "sqlite"])
def test_kill_leader_elects_new_one_and_loses_nothing(tmp_path: Path, storage: str) -> None:
    with running_cluster(tmp_path, 3, storage=storage, extra_args=FAST_SNAPSHOTS) as cluster:
        old_leader = cluster.leader()
        acked = _write_many(cluster, old_leader, "k9", 60)
        killed_at = time.monotonic()
        cluster.kill(old_leader)
        new_leader = cluster.wait_ready(timeout=10)
        elected_after = time.monotonic() - killed_at
        assert new_leader != old_leader
        # A few election timeouts (150-300 ms each), plus HTTP polling slack.
        assert elected_after < 5.0, f"new leader after {elected_after:.1f}s"
        _assert_all_readable(cluster, new_leader, acked)

        # The killed node restarts and catches up, then serves every write.
        more = _write_many(cluster, new_leader, "after", 20)
        cluster.start_node(old_leader)
        cluster.wait_ready()
        wait_until(
            lambda: cluster.get(old_leader, "after/0019", consistency="stale").status_code == 200,
            timeout=15,
            what="the restarted node to catch up",
        )
        _assert_all_readable(cluster, old_leader, acked | more)


@pytest.mark.parametrize("storage", ["segment", "sqlite"])
def test_full_cluster_restart_keeps_data(tmp_path: Path, storage: str) -> None:
    with running_cluster(tmp_path, 3, storage=storage, extra_args=FAST_SNAPSHOTS) as cluster:
        acked = _write_many(cluster, cluster.leader(), "durable", 70)
        for node_id in cluster.nodes:
            assert cluster.terminate(node_id) == 0
        for node_id in cluster.nodes:
            cluster.start_node(node_id)
        leader = cluster.wait_ready()
        for node_id in cluster.nodes:
            _assert_all_readable(cluster, node_id, acked)
        assert cluster.put(leader, "durable/new", "x").status_code == 200


@pytest.mark.parametrize("storage", ["segment", "sqlite"])
def test_follower_that_missed_a_snapshot_catches_up(tmp_path: Path, storage: str) -> None:
    with running_cluster(tmp_path, 3, storage=storage, extra_args=FAST_SNAPSHOTS) as cluster:
        leader = cluster.leader()
        lagging = cluster.followers()[0]
        cluster.kill(lagging)
        acked = _write_many(cluster, leader, "missed", 120)
        # The leader has compacted past everything the stopped follower holds.
        status = cluster.status(leader)
        assert status["lastIndex"] > 120
        cluster.start_node(lagging)
        cluster.wait_ready()
        wait_until(
            lambda: cluster.get(lagging, "missed/0119", consistency="stale").status_code == 200,
            timeout=20,
            what="the lagging follower to install the snapshot",
        )
        assert "installed snapshot" in cluster.nodes[lagging].log_text()
        _assert_all_readable(cluster, lagging, acked)


@pytest.mark.parametrize("storage", ["segment", "sqlite"])
def test_sigterm_shuts_down_cleanly_and_restarts(tmp_path: Path, storage: str) -> None:
    with running_cluster(tmp_path, 1, storage=storage) as cluster:
        acked = _write_many(cluster, 1, "term", 10)
        assert cluster.terminate(1) == 0
        assert "stopped cleanly" in cluster.nodes[1].log_text()
        cluster.start_node(1)
        cluster.wait_ready()
        _assert_all_readable(cluster, 1, acked)


def test_no_quorum_answers_503_with_retry_after(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 3, extra_args=["--request-timeout", "1.5"]) as cluster:
        leader = cluster.leader()
        for follower in cluster.followers():
            cluster.kill(follower)
        response = cluster.put(leader, "lonely", "value")
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        assert "may or may not" in response.json()["error"]


def test_a_dead_worker_is_restarted(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 1) as cluster:
        node = cluster.nodes[1]
        workers = _worker_pids(node.data_dir / "raft.sock")
        assert len(workers) == 1
        os.kill(workers[0], signal.SIGKILL)
        wait_until(
            lambda: _worker_pids(node.data_dir / "raft.sock") not in ([], workers),
            timeout=10,
            what="a new worker",
        )
        wait_until(
            lambda: _ok(lambda: cluster.put(1, "k", "v").status_code == 200),
            timeout=10,
            what="the new worker to serve",
        )


def _ok(check: object) -> bool:
    try:
        return bool(check())  # type: ignore[operator]
    except httpx.HTTPError:
        return False


def _worker_pids(socket_path: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"raftkv.http.worker" in cmdline and str(socket_path).encode() in cmdline:
                pids.append(int(proc.name))
    return sorted(pids)


def test_a_corrupted_log_stops_the_node_naming_file_and_offset(tmp_path: Path) -> None:
    from raftkv_ext.segment_log import RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES

    with running_cluster(tmp_path, 1) as cluster:
        node = cluster.nodes[1]
        _write_many(cluster, 1, "c", 20)
        assert cluster.terminate(1) == 0
        segment = sorted((node.data_dir / "log").glob("*.seg"))[0]
        data = bytearray(segment.read_bytes())
        # A byte inside the first record's payload: not the tail, so not a torn write.
        data[SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 3] ^= 0xFF
        segment.write_bytes(bytes(data))

        cluster.start_node(1)
        assert node.process is not None
        assert node.process.wait(timeout=30) == 3
        log = node.log_text()
        assert "refusing to start" in log
        assert str(segment) in log
        assert f"offset {SEGMENT_HEADER_BYTES}" in log
        assert "Traceback" not in log
