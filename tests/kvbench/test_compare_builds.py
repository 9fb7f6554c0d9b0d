"""bench/compare_builds.py: the medians, ratios and table from made-up runs, and the
kvbench command each build gets (no kvbench is run)."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "compare_builds.py"


@pytest.fixture(scope="module")
def compare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compare_builds", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def sample(compare: ModuleType, build: str, protocol: str, workload: str, ops: float) -> object:
    return compare.Sample(
        build=build,
        protocol=protocol,
        workload=workload,
        round=1,
        throughput=ops,
        p99_ms=ops / 1000,
        errors=1 if build == "after" else 0,
        leader_changes=0,
        driver="wrk" if protocol == "http" else "native",
        generator_cpu=0.2,
    )


def test_medians_ratio_and_verdict_per_workload(compare: ModuleType) -> None:
    samples = [
        *(sample(compare, "before", "http", "write", ops) for ops in (1000, 6000, 5000)),
        *(sample(compare, "after", "http", "write", ops) for ops in (5900, 100, 6000)),
        *(sample(compare, "before", "native", "read", ops) for ops in (40_000, 50_000)),
        *(sample(compare, "after", "native", "read", ops) for ops in (45_000, 46_000)),
    ]
    rows = compare.summarise(samples, 0.97)
    # Only workloads that ran, in the fixed order.
    assert [(r["protocol"], r["workload"]) for r in rows] == [("http", "write"), ("native", "read")]
    write, read = rows
    assert write["before"]["throughput"] == 5000 and write["after"]["throughput"] == 5900
    assert write["ratio"] == pytest.approx(1.18) and write["ok"]
    assert write["after"]["errors"] == 3 and write["before"]["errors"] == 0
    assert read["before"]["throughput"] == 45_000 and read["after"]["throughput"] == 45_500
    assert read["ok"]
    below = compare.summarise(samples, 1.05)
    assert [r["ok"] for r in below] == [True, False]
    text = compare.format_table(below, 1.05)
    assert "1.180x" in text and "BELOW" in text and "5,900" in text


def test_a_build_without_runs_has_no_ratio(compare: ModuleType) -> None:
    rows = compare.summarise([sample(compare, "before", "http", "read", 7000)], 0.97)
    assert rows[0]["ratio"] is None and not rows[0]["ok"]
    assert "BELOW" in compare.format_table(rows, 0.97)


def test_each_build_runs_its_own_kvbench_with_the_same_settings(compare: ModuleType) -> None:
    args = compare.parse_args(
        ["--before", "/b", "--after", "/a", "--driver", "wrk", "--node-arg=--workers=2"]
    )
    command = compare.kvbench_command(Path("/b"), "http", "read", args, Path("/out"))
    assert command[0] == "/b/bin/kvbench"
    text = " ".join(command)
    for part in ("--protocol http", "--workload read", "--concurrency 64", "--nodes 3"):
        assert part in text
    assert "--driver wrk" in text and "--node-arg=--workers=2" in text
    assert command[command.index("--output") + 1] == "/out"


WRK_OUTPUT = """Running 8s test @ http://127.0.0.1:18301
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    12.81ms    4.10ms  61.22ms   80.12%
  Latency Distribution
     50%   12.10ms
     75%   14.52ms
     90%   17.31ms
     99%   28.44ms
  39823 requests in 8.00s, 5.91MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   4977.37
Transfer/sec:    756.43KB
"""


def test_wrk_figures_are_read_from_its_report(compare: ModuleType) -> None:
    throughput, p99_ms, errors = compare._wrk_figures(WRK_OUTPUT)
    assert throughput == 4977.37
    assert p99_ms == 28.44
    assert errors == 4 + 2 + 1


def test_a_p99_in_seconds_or_microseconds_is_converted(compare: ModuleType) -> None:
    assert compare._wrk_figures("     99%    1.50s\n")[1] == 1500.0
    assert compare._wrk_figures("     99%  850.00us\n")[1] == 0.85


def test_the_paired_ratio_compares_the_two_runs_of_each_round(compare: ModuleType) -> None:
    base = sample(compare, "before", "native", "write", 0)
    runs = [(1, 100.0, 110.0), (2, 200.0, 180.0), (3, 150.0, 165.0)]
    samples = [
        dataclasses.replace(base, build=build, round=round_, throughput=ops)
        for round_, before, after in runs
        for build, ops in (("before", before), ("after", after))
    ]
    (row,) = compare.summarise(samples, 0.97)
    assert row["paired_ratio"] == pytest.approx((1.1 * 0.9 * 1.1) ** (1 / 3))
    assert row["ratio"] == pytest.approx(165.0 / 150.0)
    assert f"{row['paired_ratio']:.3f}x" in compare.format_table([row], 0.97)
