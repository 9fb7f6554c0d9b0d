from __future__ import annotations

import json
from pathlib import Path

from raftkv.kvbench.report import ratio_lines, ratios, table, write_json, write_plots
from raftkv.kvbench.stats import RunResult


def run(target: str, concurrency: int, requests: int, p99: float) -> RunResult:
    return RunResult(
        target=target,
        workload="write",
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
    plots = write_plots(tmp_path, RESULTS)
    assert [p.name for p in plots] == ["write-100B.png"]
    assert plots[0].read_bytes().startswith(b"\x89PNG")
