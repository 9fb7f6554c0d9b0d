from __future__ import annotations

import json
from pathlib import Path

from raftkv.kvbench.cpu import ETCD, HTTP, OTHER, RAFT, ClusterCpu
from raftkv.kvbench.report import (
    cpu_rows,
    cpu_table,
    ratio_lines,
    ratios,
    table,
    write_json,
    write_plots,
)
from raftkv.kvbench.stats import RunResult


def run(
    target: str, concurrency: int, requests: int, p99: float, workload: str = "write"
) -> RunResult:
    return RunResult(
        target=target,
        workload=workload,
        value_size=100,
        concurrency=concurrency,
        nodes=3,
        duration_s=10.0,
        requests=requests,
        errors=0,
        p50_ms=p99 / 3,
        p99_ms=p99,
        p999_ms=p99 * 2,
        max_ms=p99 * 3,
    )


RESULTS = [
    run("raftkv-http", 16, 30_000, 6.0),
    run("raftkv-http", 64, 150_000, 12.0),
    run("etcd", 16, 20_000, 8.0),
    run("etcd", 64, 50_000, 24.0),
    run("raftkv-native", 64, 400_000, 3.0),
    run("pysyncobj", 64, 80_000, 10.0),
]


def test_ratios_pair_each_baseline_with_the_matching_run_of_ours() -> None:
    found = {(r["baseline"], r["concurrency"]): r for r in ratios(RESULTS)}
    assert set(found) == {("etcd", 16), ("etcd", 64), ("pysyncobj", 64)}
    assert found[("etcd", 64)]["throughput_ratio"] == 3.0
    assert found[("etcd", 64)]["p99_ratio"] == 0.5
    assert found[("etcd", 16)]["throughput_ratio"] == 1.5
    assert found[("pysyncobj", 64)]["ours"] == "raftkv-native"
    assert found[("pysyncobj", 64)]["throughput_ratio"] == 5.0
    text = ratio_lines(ratios(RESULTS))
    assert "raftkv-http/etcd write 100B c=64: throughput 3.00x" in text


def test_table_has_a_row_per_run() -> None:
    lines = table(RESULTS).splitlines()
    assert len(lines) == 2 + len(RESULTS)
    assert "15,000" in lines[3]  # 150,000 requests in 10 s


def test_json_and_plots_are_written(tmp_path: Path) -> None:
    write_json(tmp_path / "results.json", RESULTS, "kvbench --compare etcd", {"nodes": 3})
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["command"] == "kvbench --compare etcd"
    assert len(document["results"]) == len(RESULTS)
    assert document["results"][1]["throughput"] == 15000
    assert len(document["ratios"]) == 3
    assert all(r["cluster_cpu"] is None for r in document["results"])
    plots = write_plots(tmp_path, RESULTS)
    assert [p.name for p in plots] == ["write-100B.png"]
    assert plots[0].read_bytes().startswith(b"\x89PNG")


def test_ratio_lines_give_p99_9_too() -> None:
    text = ratio_lines(ratios(RESULTS))
    # p99.9 is twice the p99 in these runs.
    assert "raftkv-http/etcd write 100B c=64: " in text
    assert "p99.9 24.0 vs 48.0 ms (0.50x)" in text


def raftkv_cpu(requests: int) -> ClusterCpu:
    return ClusterCpu(
        "raftkv",
        leader="1",
        members=["1", "2", "3"],
        window_s=10.0,
        requests=requests,
        seconds={
            "1": {RAFT: 6.0, HTTP: 21.0, OTHER: 0.3},
            "2": {RAFT: 3.0},
            "3": {RAFT: 3.3, HTTP: 0.15},
        },
    )


def with_cpu() -> list[RunResult]:
    documented = run("raftkv-http", 64, 150_000, 12.0)
    documented.cluster_cpu = raftkv_cpu(150_000)
    raw = run("raftkv-http", 64, 200_000, 9.0, workload="write-raw")
    raw.cluster_cpu = raftkv_cpu(200_000)
    etcd = run("etcd", 64, 50_000, 24.0)
    etcd.cluster_cpu = ClusterCpu(
        "etcd",
        "m2",
        ["m1", "m2", "m3"],
        10.0,
        50_000,
        {m: {ETCD: 10.0} for m in ("m1", "m2", "m3")},
    )
    pysyncobj = run("pysyncobj", 64, 80_000, 10.0)
    return [documented, raw, etcd, pysyncobj]


def test_both_http_writes_are_compared_with_etcds_put_throughput_latency_and_cpu() -> None:
    found = {r["workload"]: r for r in ratios(with_cpu())}
    assert set(found) == {"write", "write-raw"}
    assert found["write-raw"]["baseline_workload"] == "write"
    assert found["write-raw"]["throughput_ratio"] == 4.0
    # 33.75 s over 150,000 requests: 225 us; etcd: 30 s over 50,000: 600 us.
    assert found["write"]["ours_cpu_us_per_request"] == 225.0
    assert found["write"]["baseline_cpu_us_per_request"] == 600.0
    assert found["write"]["cpu_ratio"] == 0.375
    text = ratio_lines(ratios(with_cpu()))
    assert "raftkv-http/etcd write-raw 100B c=64 (against etcd write): throughput 4.00x" in text
    assert "CPU/request 225 vs 600 us (0.38x)" in text


def test_the_cpu_table_splits_raftkv_by_role_and_etcd_by_member() -> None:
    rows = {(r[0], r[1]): r for r in cpu_rows(with_cpu())}
    assert set(rows) == {("raftkv-http", "write"), ("raftkv-http", "write-raw"), ("etcd", "write")}
    # target workload value conc | ldr http, ldr raft, flw raft, flw http, other | members,
    # total, /etcd
    assert rows[("raftkv-http", "write")][2:] == [
        "100B", "64",
        "140.0", "40.0", "20.0/22.0", "0.0/1.0", "2.0",
        "182.0/20.0/23.0", "225.0", "0.38",
    ]  # fmt: skip
    assert rows[("raftkv-http", "write-raw")][-2:] == ["168.8", "0.28"]
    assert rows[("etcd", "write")][4:] == ["-"] * 5 + ["200.0/200.0/200.0", "600.0", ""]
    text = cpu_table(with_cpu())
    assert "(no CPU figures for pysyncobj: not measured for this baseline)" in text
    header = next(line for line in text.splitlines() if line.startswith("target"))
    assert header.split() == [
        "target", "workload", "value", "conc", "ldr", "http", "ldr", "raft", "flw", "raft",
        "flw", "http", "other", "members", "total", "/etcd",
    ]  # fmt: skip
    # No run with CPU figures (a cluster kvbench did not start): no table, but why.
    assert cpu_table(RESULTS).splitlines() == [
        "(no CPU figures for etcd: a member had exited)",
        "(no CPU figures for pysyncobj: not measured for this baseline)",
        "(no CPU figures for raftkv-http: a cluster kvbench did not start (--endpoints))",
        "(no CPU figures for raftkv-native: a cluster kvbench did not start (--endpoints))",
    ]
    assert cpu_table([]) == ""
