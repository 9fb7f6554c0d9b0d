from __future__ import annotations

import pytest
from raftkv.kvbench.closed_loop import random_chooser, sequential_chooser
from raftkv.kvbench.compare_etcd import etcd_workloads
from raftkv.kvbench.plan import Plan
from raftkv.kvbench.stats import RunResult, percentile
from raftkv.kvbench.workloads import Workload, baseline_workload, format_size, parse_size


def test_sizes_parse_and_print_both_ways() -> None:
    assert [parse_size(s) for s in ("100", "100B", "1KiB", "1k", "16KiB")] == [
        100,
        100,
        1024,
        1024,
        16384,
    ]
    assert [format_size(n) for n in (100, 1024, 16384)] == ["100B", "1KiB", "16KiB"]
    for bad in ("", "x", "0", "-5"):
        with pytest.raises(ValueError, match="bad size"):
            parse_size(bad)


def test_workloads_know_their_mix() -> None:
    assert Workload("write").read_fraction == 0 and not Workload("write").reads
    assert Workload("read").read_fraction == 1 and not Workload("read").stale
    assert Workload("read-stale").stale
    assert Workload("mixed-90-10").read_fraction == 0.9
    with pytest.raises(ValueError, match="unknown workload"):
        Workload("scan")


def test_the_raw_put_is_a_write_of_raftkvs_http_api_only() -> None:
    raw, documented = Workload("write-raw"), Workload("write")
    assert raw.raw_put and raw.http_only and raw.read_fraction == 0 and not raw.reads
    assert not documented.raw_put and not documented.http_only
    # A baseline (one form of write) runs its write against both.
    assert baseline_workload("write-raw") == "write"
    assert baseline_workload("read-stale") == "read-stale"


def test_etcd_runs_each_write_once_and_native_skips_the_raw_put() -> None:
    plan = Plan(
        workloads=["write", "write-raw", "read"],
        value_sizes=[100, 1024],
        concurrency=[16, 64],
        protocols=["http", "native"],
        compare=["etcd"],
    )
    assert [(w.name, w.value_size) for w in etcd_workloads(plan)] == [
        ("write", 100),
        ("read", 100),
        ("write", 1024),
        ("read", 1024),
    ]
    only_raw = Plan(workloads=["write-raw"], compare=["etcd"])
    assert [w.name for w in etcd_workloads(only_raw)] == ["write"]
    # http: 3 workloads, native: 2, etcd: 2; per value size and concurrency.
    assert plan.run_count() == (3 + 2 + 2) * 2 * 2


def test_random_chooser_follows_the_read_fraction_over_the_key_space() -> None:
    choose = random_chooser(Workload("mixed-90-10", 100, keys=50), seed=3)
    requests = [choose() for _ in range(5000)]
    reads = sum(1 for r in requests if r is not None and r.read)
    assert 0.85 < reads / len(requests) < 0.95
    keys = {r.key for r in requests if r is not None}
    assert keys == {b"k%06d" % i for i in range(50)}
    assert all(len(r.value) == 100 for r in requests if r is not None)
    # Seeded: the same seed chooses the same requests.
    again = random_chooser(Workload("mixed-90-10", 100, keys=50), seed=3)
    assert [again() for _ in range(5000)] == requests


def test_sequential_chooser_writes_each_key_once_then_stops() -> None:
    choose = sequential_chooser(5, 9, 10)
    got = [choose() for _ in range(6)]
    assert [r.key for r in got if r is not None] == [b"k000005", b"k000006", b"k000007", b"k000008"]
    assert got[4:] == [None, None]
    assert all(not r.read for r in got if r is not None)


def test_percentiles_use_the_nearest_rank() -> None:
    values = [float(i) for i in range(1, 1001)]
    assert percentile(values, 50) == 500
    assert percentile(values, 99) == 990
    assert percentile(values, 99.9) == 999
    assert percentile(values, 100) == 1000
    assert percentile([], 50) == 0


def test_a_result_from_latencies() -> None:
    result = RunResult.from_latencies(
        [0.001 * i for i in range(1, 101)],
        errors=2,
        duration_s=2.0,
        target="raftkv-http",
        workload="write",
        value_size=100,
        concurrency=8,
        nodes=3,
    )
    assert result.requests == 100 and result.throughput == 50
    assert result.p50_ms == pytest.approx(50) and result.max_ms == pytest.approx(100)
    assert result.p99_ms == pytest.approx(99) and result.p999_ms == pytest.approx(100)
    data = result.to_json()
    assert data["throughput"] == 50 and data["errors"] == 2
    assert data["p999_ms"] == pytest.approx(100) and data["cluster_cpu"] is None
