"""The measurements that are not a throughput sweep: memory held per key, the time a
node with a large state needs to restart and serve, and how long a snapshot taken under
full write load stalls writes. Each runs on a cluster kvbench started."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from .key_space import raftkv_key
from .native_load import preload_native, run_native_load
from .stats import percentile
from .target import RaftkvCluster
from .workloads import Workload


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_applied(cluster: RaftkvCluster, timeout: float = 120.0) -> int:
    """Wait until every node has applied the leader's commit index; return it."""
    client = httpx.Client(timeout=10.0)
    deadline = time.monotonic() + timeout
    try:
        while True:
            applied = []
            commit = 0
            for url in cluster.urls():
                status = client.get(f"{url}/cluster/status", params={"local": "true"}).json()
                applied.append(int(status["appliedIndex"]))
                commit = max(commit, int(status["commitIndex"]))
            if min(applied) >= commit:
                return commit
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes applied {applied}, commit {commit}")
            time.sleep(0.2)
    finally:
        client.close()


@dataclass(slots=True)
class ScenarioResult:
    name: str
    figures: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.name, **self.figures}


def preload(cluster: RaftkvCluster, keys: int, value_size: int) -> dict[str, Any]:
    host, port = cluster.native_addr()
    errors, seconds = preload_native(host, port, Workload("write", value_size, keys))
    if errors:
        raise RuntimeError(f"preload of {keys} keys failed {errors} times")
    wait_applied(cluster)
    return {
        "keys": keys,
        "value_size": value_size,
        "preload_s": round(seconds, 1),
        "preload_rate": round(keys / seconds),
    }


def memory(cluster: RaftkvCluster) -> ScenarioResult:
    """RSS of every Raft process (after a preload); the HTTP workers are not counted:
    they hold no data."""
    pids = cluster.raft_pids()
    per_node = {node: rss_bytes(pid) for node, pid in pids.items()}
    return ScenarioResult(
        "memory",
        {
            "rss_mb": {str(n): round(b / 2**20, 1) for n, b in per_node.items()},
            "max_rss_mb": round(max(per_node.values()) / 2**20, 1),
        },
    )


def restart(cluster: RaftkvCluster, keys: int) -> ScenarioResult:
    """Kill -9 a follower and start it again: seconds until it serves a linearizable read
    of a preloaded key itself, and until its /health says it knows the leader."""
    local = cluster.local
    assert local is not None, "the restart scenario needs a cluster kvbench started"
    leader = cluster.leader_id()
    victim = next(n for n in sorted(local.nodes) if n != leader)
    url = local.url(victim)
    key = raftkv_key(keys // 2)
    local.kill(victim)
    client = httpx.Client(timeout=2.0)
    started = time.monotonic()
    local.start_node(victim)
    healthy_at: float | None = None
    try:
        while True:
            elapsed = time.monotonic() - started
            if elapsed > 120:
                raise TimeoutError(f"node {victim} did not serve within 120 s")
            try:
                if healthy_at is None and client.get(f"{url}/health").status_code == 200:
                    healthy_at = elapsed
                if client.get(f"{url}/kv/{key}").status_code == 200:
                    served = elapsed
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
    finally:
        client.close()
    return ScenarioResult(
        "restart",
        {
            "node": victim,
            "keys": keys,
            "healthy_s": round(healthy_at if healthy_at is not None else served, 2),
            "serves_s": round(served, 2),
        },
    )


def snapshot_stall(
    cluster: RaftkvCluster, *, duration_s: float, concurrency: int, election_timeout_ms: float
) -> ScenarioResult:
    """Full native write load; after a third of the run every node is asked for a
    snapshot at once. The longest write latency of the run is compared with one
    election timeout."""
    host, port = cluster.native_addr()
    outcome: dict[str, Any] = {}
    term_before = cluster.term()

    def load() -> None:
        latencies, errors, measured, _ = run_native_load(
            host,
            port,
            Workload("write", 100, 100_000),
            concurrency=concurrency,
            duration_s=duration_s,
            warmup_s=0.0,
        )
        outcome.update(latencies=latencies, errors=errors, measured=measured)

    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(duration_s / 3)
    snapshots = []
    with httpx.Client(timeout=60.0) as client:
        for url in cluster.urls():
            began = time.monotonic()
            reply = client.post(f"{url}/cluster/snapshot")
            snapshots.append(
                {
                    "url": url,
                    "status": reply.status_code,
                    "seconds": time.monotonic() - began,
                    **(reply.json() if reply.status_code == 200 else {}),
                }
            )
    thread.join()
    leader_changes = cluster.term() - term_before
    ordered = sorted(outcome["latencies"])
    worst_ms = (ordered[-1] if ordered else 0.0) * 1000
    return ScenarioResult(
        "snapshot-stall",
        {
            "writes": len(ordered),
            "errors": outcome["errors"],
            "throughput": round(len(ordered) / outcome["measured"]),
            "p99_ms": round(percentile(ordered, 99) * 1000, 2),
            "p999_ms": round(percentile(ordered, 99.9) * 1000, 2),
            "max_ms": round(worst_ms, 2),
            "election_timeout_ms": election_timeout_ms,
            "within_election_timeout": worst_ms <= election_timeout_ms,
            "leader_changes": leader_changes,
            "snapshots": snapshots,
        },
    )


def run_targets(
    *,
    nodes: int,
    keys: int,
    concurrency: int,
    duration_s: float,
    node_args: list[str],
    election_timeout_ms: float,
) -> list[ScenarioResult]:
    """Preload ``keys`` 100-byte values, then: memory, snapshot stall, restart."""
    with RaftkvCluster(nodes=nodes, extra_args=node_args) as cluster:
        loaded = preload(cluster, keys, 100)
        held = memory(cluster)
        held.figures.update(loaded)
        stall = snapshot_stall(
            cluster,
            duration_s=duration_s,
            concurrency=concurrency,
            election_timeout_ms=election_timeout_ms,
        )
        wait_applied(cluster)
        restarted = restart(cluster, keys)
        return [held, stall, restarted]
