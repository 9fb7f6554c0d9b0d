"""Cluster operations on real processes: grow, shrink, remove the leader, replace a
wiped node, transfer leadership under load, back up and restore."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from raftkv.testing.cluster import LocalCluster, running_cluster, wait_until

FAST_SNAPSHOTS = ["--snapshot-entries", "60", "--snapshot-retain", "20"]


class Writer(threading.Thread):
    """Writes unique keys through every running node in turn, as a client would; keeps
    what was acknowledged and the longest stretch during which nothing succeeded."""

    def __init__(self, cluster: LocalCluster, prefix: str) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.prefix = prefix
        self.acked: dict[str, str] = {}
        self.stop_event = threading.Event()
        self.longest_outage = 0.0
        self.errors: list[str] = []

    def run(self) -> None:
        # A short timeout: a client moves on from a node that does not answer.
        client = httpx.Client(timeout=2.0)
        last_success = time.monotonic()
        i = 0
        while not self.stop_event.is_set():
            running = [n for n, node in self.cluster.nodes.items() if node.running]
            node_id = running[i % len(running)]
            key, value = f"{self.prefix}/{i:05d}", f"v{i}"
            try:
                response = client.post(
                    f"{self.cluster.url(node_id)}/kv/{key}", json={"value": value}
                )
                ok = response.status_code == 200
                if not ok:
                    self.errors.append(f"{response.status_code} {response.text[:100]}")
            except httpx.HTTPError as exc:
                ok = False
                self.errors.append(repr(exc))
            now = time.monotonic()
            if ok:
                self.acked[key] = value
                self.longest_outage = max(self.longest_outage, now - last_success)
                last_success = now
            else:
                time.sleep(0.05)
            i += 1
        client.close()

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)


def members(cluster: LocalCluster, via: int) -> dict[int, str]:
    nodes = cluster.client.get(f"{cluster.url(via)}/cluster/nodes").json()["nodes"]
    return {n["id"]: n["membership"] for n in nodes if n["membership"] != "removed"}


def assert_readable_everywhere(cluster: LocalCluster, acked: dict[str, str]) -> None:
    for node_id, node in cluster.nodes.items():
        if not node.running:
            continue
        for key, value in acked.items():
            got = cluster.get(node_id, key)
            assert got.status_code == 200 and got.text == value, (node_id, key, got.text)


def remove(cluster: LocalCluster, via: int, node_id: int) -> dict[str, Any]:
    response = cluster.client.delete(f"{cluster.url(via)}/cluster/members/{node_id}", timeout=60)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_grow_to_five_and_shrink_to_three_under_writes(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 3, extra_args=FAST_SNAPSHOTS) as cluster:
        writer = Writer(cluster, "grow")
        writer.start()
        time.sleep(0.5)
        added = [cluster.add_node(), cluster.add_node()]
        for node_id in added:
            wait_until(
                lambda n=node_id: members(cluster, cluster.leader()).get(n) == "voter",
                timeout=30,
                what=f"node {node_id} to become a voter",
            )
        assert sorted(members(cluster, cluster.leader())) == [1, 2, 3, 4, 5]
        time.sleep(0.5)
        for node_id in (1, 2):
            remove(cluster, cluster.leader(), node_id)
            cluster.terminate(node_id)
        time.sleep(0.5)
        writer.finish()
        leader = cluster.wait_ready()
        assert sorted(members(cluster, leader)) == [3, 4, 5]
        assert len(writer.acked) > 20, writer.errors[-5:]
        # No stretch without a successful write longer than a few election timeouts.
        assert writer.longest_outage < 3.0, (writer.longest_outage, writer.errors[-5:])
        assert_readable_everywhere(cluster, writer.acked)

        # cluster.json still lists 1, 2 and 3; a restarted node goes by the replicated
        # membership and ignores the stale entries.
        assert cluster.terminate(3) == 0
        cluster.start_node(3)
        cluster.wait_ready()
        local = cluster.client.get(
            f"{cluster.url(3)}/cluster/nodes", params={"local": "true"}
        ).json()
        assert sorted(n["id"] for n in local["nodes"]) == [3, 4, 5]
        assert_readable_everywhere(cluster, writer.acked)


def test_removing_the_leader_hands_over(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 3) as cluster:
        leader = cluster.leader()
        acked = {f"before/{i}": str(i) for i in range(20)}
        for key, value in acked.items():
            assert cluster.put(leader, key, value).status_code == 200
        via = next(n for n in cluster.nodes if n != leader)
        started = time.monotonic()
        remove(cluster, via, leader)
        cluster.terminate(leader)
        new_leader = cluster.wait_ready(timeout=10)
        assert new_leader != leader
        assert time.monotonic() - started < 10
        assert sorted(members(cluster, new_leader)) == sorted(set(cluster.nodes) - {leader})
        assert cluster.put(new_leader, "after", "x").status_code == 200
        assert_readable_everywhere(cluster, acked)


def test_a_node_with_a_wiped_disk_rejoins_under_its_id(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 3, extra_args=FAST_SNAPSHOTS) as cluster:
        leader = cluster.leader()
        acked = {f"wipe/{i:03d}": str(i) for i in range(150)}
        for key, value in acked.items():
            assert cluster.put(leader, key, value).status_code == 200
        victim = next(n for n in cluster.nodes if n != leader)
        cluster.kill(victim)
        shutil.rmtree(cluster.nodes[victim].data_dir)
        cluster.rejoin(victim, join_via=leader)
        wait_until(
            lambda: (
                members(cluster, cluster.leader()).get(victim) == "voter"
                and cluster.get(victim, "wipe/149", consistency="stale").status_code == 200
            ),
            timeout=30,
            what="the wiped node to catch up and be a voter again",
        )
        assert (
            "demot" in cluster.nodes[leader].log_text()
            or "learner" in cluster.nodes[leader].log_text()
        )
        assert "promoted" in cluster.nodes[victim].log_text()
        assert_readable_everywhere(cluster, acked)


def test_transfer_leadership_under_load(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 3) as cluster:
        writer = Writer(cluster, "transfer")
        writer.start()
        time.sleep(0.5)
        old = cluster.leader()
        target = [n for n in cluster.nodes if n != old][-1]
        response = cluster.client.post(
            f"{cluster.url(old)}/cluster/leader", json={"id": target}, timeout=30
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"leader": target}
        time.sleep(0.5)
        writer.finish()
        assert cluster.wait_ready() == target
        assert writer.longest_outage < 2.0, (writer.longest_outage, writer.errors[-5:])
        assert_readable_everywhere(cluster, writer.acked)


def _all_items(cluster: LocalCluster, node_id: int) -> list[tuple[str, str, int]]:
    listing = cluster.client.get(
        f"{cluster.url(node_id)}/kv", params={"prefix": "", "limit": 10000}
    ).json()
    return [(i["key"], i["value"], i["mod_revision"]) for i in listing["items"]]


def test_backup_and_restore_into_a_new_cluster(tmp_path: Path) -> None:
    source_dir, target_dir = tmp_path / "source", tmp_path / "target"
    source_dir.mkdir()
    target_dir.mkdir()
    with running_cluster(source_dir, 3, extra_args=FAST_SNAPSHOTS) as source:
        leader = source.leader()
        for i in range(120):
            assert source.put(leader, f"data/{i:03d}", f"value {i}").status_code == 200
        assert source.client.delete(f"{source.url(leader)}/kv/data/007").status_code == 200
        # Leases and their time left travel in the backup too.
        base = source.url(leader)
        granted = source.client.post(f"{base}/lease", json={"ttl": 600, "id": 42})
        assert granted.status_code == 200, granted.text
        leased = {"value": "held", "lease": 42}
        assert source.client.post(f"{base}/kv/data/leased", json=leased).status_code == 200
        ttl_write = {"value": "expires", "ttl": 900}
        assert source.client.post(f"{base}/kv/data/ttl", json=ttl_write).status_code == 200
        expected = _all_items(source, leader)
        follower = next(n for n in source.nodes if n != leader)
        backup = source.client.get(f"{source.url(follower)}/cluster/backup", timeout=60)
        assert backup.status_code == 200
        backup_file = tmp_path / "backup.snap"
        backup_file.write_bytes(backup.content)
        import hashlib

        assert (
            hashlib.sha256(backup.content).hexdigest() == backup.headers["X-Raftkv-Backup-Sha256"]
        )

    target = LocalCluster(target_dir, 3)
    hashes = set()
    for node_id, node in target.nodes.items():
        restored = subprocess.run(
            [
                sys.executable, "-P", "-m", "raftkv.cli.kvnode",
                "--node-id", str(node_id),
                "--cluster", str(target.cluster_file),
                "--data-dir", str(node.data_dir),
                "restore", "--from", str(backup_file),
            ],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        assert restored.returncode == 0, restored.stderr
        assert "121 keys and 2 leases" in restored.stdout
        hashes.add(restored.stdout.rsplit("state hash", 1)[1].strip())
    assert len(hashes) == 1
    with target:
        target.start()
        leader = target.leader()
        assert _all_items(target, leader) == expected
        assert target.put(leader, "data/new", "written after the restore").status_code == 200
        assert target.get(leader, "data/000").text == "value 0"
        lease = target.client.get(f"{target.url(leader)}/lease/42").json()
        assert lease["ttl"] == 600 and lease["keys"] == [{"key": "data/leased"}]
        # The countdown goes on from the time left the backup recorded, not from zero.
        assert lease["remaining"] is not None and 500 < lease["remaining"] <= 600
        ttl_key = target.client.get(
            f"{target.url(leader)}/kv/data/ttl", headers={"accept": "application/json"}
        ).json()
        assert ttl_key["lease"] and 800 < ttl_key["ttl"] <= 900
        # Every restored replica converges to the same state.
        wait_until(lambda: len(_live_hashes(target)) == 1, timeout=10, what="replicas to converge")


def _live_hashes(cluster: LocalCluster) -> set[tuple[str, int]]:
    hashes = set()
    for node_id in cluster.nodes:
        status = cluster.client.get(
            f"{cluster.url(node_id)}/cluster/status", params={"hash": "true"}
        ).json()
        hashes.add((status["stateHash"], status["stateHashIndex"]))
    return hashes


def test_repair_brings_back_a_node_with_a_corrupted_log(tmp_path: Path) -> None:
    from raftkv_ext.segment_log import RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES

    with running_cluster(tmp_path, 3) as cluster:
        leader = cluster.leader()
        acked = {f"repair/{i:03d}": str(i) for i in range(50)}
        for key, value in acked.items():
            assert cluster.put(leader, key, value).status_code == 200
        base = cluster.url(leader)
        assert cluster.client.post(f"{base}/lease", json={"ttl": 600, "id": 7}).status_code == 200
        held = {"value": "v", "lease": 7}
        assert cluster.client.post(f"{base}/kv/repair/leased", json=held).status_code == 200
        victim = next(n for n in cluster.nodes if n != leader)
        node = cluster.nodes[victim]
        assert cluster.terminate(victim) == 0
        segment = sorted((node.data_dir / "log").glob("*.seg"))[0]
        data = bytearray(segment.read_bytes())
        data[SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 3] ^= 0xFF
        segment.write_bytes(bytes(data))

        cluster.start_node(victim)
        assert node.process is not None and node.process.wait(timeout=30) == 3
        assert str(segment) in node.log_text()

        # Nothing is done on the other nodes: the damaged node repairs itself.
        node.extra_args = ["repair"]
        cluster.start_node(victim)
        wait_until(
            lambda: (
                members(cluster, cluster.leader()).get(victim) == "voter"
                and cluster.get(victim, "repair/049", consistency="stale").status_code == 200
            ),
            timeout=30,
            what="the repaired node to resync and be a voter again",
        )
        aside = list(tmp_path.glob(f"node-{victim}.damaged-*"))
        assert len(aside) == 1 and (aside[0] / "log").is_dir()
        assert_readable_everywhere(cluster, acked)
        # The repaired node has the lease back, with its key, from the cluster.
        lease = cluster.client.get(
            f"{cluster.url(victim)}/lease/7", params={"consistency": "stale"}
        ).json()
        assert lease["keys"] == [{"key": "repair/leased"}]
