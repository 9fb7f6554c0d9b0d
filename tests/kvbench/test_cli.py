"""kvbench end to end: it starts a real 3-node cluster, drives both protocols with the
built-in generators (CI has no wrk), and writes what it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def kvbench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "raftkv.kvbench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_a_small_sweep_measures_both_protocols_and_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = kvbench(
        "--driver", "python",
        "--protocol", "http,native",
        "--workload", "write,write-raw,mixed-50-50",
        "--concurrency", "2,8",
        "--duration", "1",
        "--warmup", "0.3",
        "--keys", "300",
        "--output", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads((out / "results.json").read_text())
    results = document["results"]
    combos = {(r["target"], r["workload"], r["concurrency"]) for r in results}
    # The raw PUT is an HTTP workload: the native protocol has one form of write.
    assert combos == {
        (t, w, c)
        for t in ("raftkv-http", "raftkv-native")
        for w in ("write", "write-raw", "mixed-50-50")
        for c in (2, 8)
        if (t, w) != ("raftkv-native", "write-raw")
    }
    for r in results:
        assert r["requests"] > 0 and r["throughput"] > 0, r
        assert r["errors"] == 0, r
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["p999_ms"] <= r["max_ms"], r
        assert r["nodes"] == 3
        # Every run of a cluster kvbench started has the CPU of all three nodes.
        cpu = r["cluster_cpu"]
        assert cpu["system"] == "raftkv" and cpu["requests"] == r["requests"], r
        assert set(cpu["members_us_per_request"]) == {"1", "2", "3"}
        assert len(cpu["us_per_request"]["followers_raft"]) == 2
        assert cpu["us_per_request"]["total"] > 0
    assert document["command"].startswith("kvbench ")
    for name in ("write-100B.png", "write-raw-100B.png", "mixed-50-50-100B.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    assert "raftkv-native" in done.stdout and "ops/s" in done.stdout
    assert "ldr http" in done.stdout and "p99.9" in done.stdout


def test_the_targets_scenario_measures_memory_a_snapshot_under_load_and_a_restart(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    done = kvbench(
        "--scenario", "targets",
        "--keys", "2000",
        "--concurrency", "16",
        "--duration", "3",
        "--output", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    memory, stall, restart = json.loads((out / "targets.json").read_text())
    assert memory["scenario"] == "memory" and memory["keys"] == 2000
    assert set(memory["rss_mb"]) == {"1", "2", "3"}
    assert all(mb > 10 for mb in memory["rss_mb"].values())
    assert stall["scenario"] == "snapshot-stall"
    assert stall["errors"] == 0 and stall["writes"] > 0
    assert isinstance(stall["leader_changes"], int)
    assert [s["status"] for s in stall["snapshots"]] == [200, 200, 200]
    assert 0 < stall["p99_ms"] <= stall["max_ms"]
    assert restart["scenario"] == "restart" and restart["serves_s"] > 0


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    for args, message in [
        (("--workload", "scan"), "unknown workload"),
        (("--value-size", "lots"), "bad size"),
        (("--compare", "zookeeper"), "unknown baseline"),
        (("--protocol", "grpc"), "unknown protocol"),
        (("--workload", "write-raw", "--protocol", "native"), "HTTP only"),
    ]:
        done = kvbench(*args, "--output", str(tmp_path))
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr
