"""The transaction benchmark: the transaction it sends, how answers are counted, the
arithmetic on runs, and (end to end, small) that ``kvbench --scenario txn`` runs against
a real 3-node cluster and writes sane figures. No figure is held to a speed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from array import array
from pathlib import Path
from typing import Any

import orjson
import pytest
from raftkv.kvbench.txn_bench import TxnBenchConfig, order_of, run_summary, summarise
from raftkv.kvbench.txn_load import COMPARE_BELOW, LoadResult, LoadSpec, _Load, txn_document


def test_the_transaction_compares_two_distinct_keys_and_puts_both() -> None:
    doc = txn_document("k000001", "k000002", "v" * 100)
    assert [c["key"] for c in doc["compare"]] == ["k000001", "k000002"]
    for compare in doc["compare"]:
        assert compare["target"] == "mod_revision" and compare["op"] == "<"
        assert 0 <= compare["value"] == COMPARE_BELOW < 2**63
    assert doc["success"] == [
        {"put": {"key": "k000001", "value": "v" * 100}},
        {"put": {"key": "k000002", "value": "v" * 100}},
    ]
    with pytest.raises(ValueError):
        txn_document("k1", "k1", "v")


def _spec(side: str, keys: int = 10) -> LoadSpec:
    return LoadSpec(
        side, "127.0.0.1", 1, 1, duration_s=1.0, warmup_s=1.0, keys=keys, value_size=100, seed=3
    )


def test_requests_are_the_documented_ones_and_a_txn_never_writes_a_key_twice() -> None:
    plain = _Load(_spec("plain"), 0.0).next_request(0.5)
    assert plain is not None and plain.startswith(b"POST /kv/k0000")
    assert plain.endswith(b'{"value":"' + b"v" * 100 + b'"}')
    load = _Load(_spec("txn", keys=2), 0.0)
    for _ in range(50):
        request = load.next_request(0.5)
        assert request is not None and request.startswith(b"POST /txn HTTP/1.1\r\n")
        doc = orjson.loads(request.split(b"\r\n\r\n", 1)[1])
        assert sorted(op["put"]["key"] for op in doc["success"]) == ["k000000", "k000001"]
    assert load.next_request(2.0) is None  # past the deadline
    with pytest.raises(ValueError):
        _spec("txn", keys=1)
    with pytest.raises(ValueError):
        _spec("scan")


def test_answers_are_counted_by_branch_and_only_in_the_window() -> None:
    load = _Load(_spec("txn"), 0.0)  # window 1.0 .. 2.0
    ok = b'{"succeeded":true,"revision":7,"index":7,"term":2,"results":[]}'
    spaced = b'{"succeeded": false, "revision": 8}'
    load.answered(0.4, 0.5, 200, ok)  # warm-up: not counted
    load.answered(1.0, 1.1, 200, ok)
    load.answered(1.1, 1.3, 200, spaced)
    load.answered(1.2, 1.4, 503, b'{"error":"no leader"}')
    load.answered(1.3, 1.5, 200, b'{"revision":9}')  # no succeeded: an error
    load.answered(0.1, 0.2, 500, b"boom")
    result = load.result
    assert (result.succeeded, result.failed) == (1, 1)
    assert list(result.latencies) == pytest.approx([0.1, 0.2])
    assert (result.errors, result.warmup_errors) == (2, 1)
    assert result.first_error == '503 {"error":"no leader"}'


def test_a_run_counts_two_writes_per_succeeded_transaction() -> None:
    latencies = array("d", [0.001] * 90 + [0.010] * 10)
    result = LoadResult("txn", latencies, succeeded=80, failed=20, window=(10.0, 12.0))
    summary = run_summary(result)
    assert summary["requests"] == 100 and summary["throughput"] == 50.0
    assert summary["writes_per_s"] == 80.0
    assert summary["p50_ms"] == 1.0 and summary["p99_ms"] == 10.0
    assert (summary["succeeded"], summary["failed"]) == (80, 20)
    plain = run_summary(LoadResult("plain", array("d", [0.002] * 30), window=(0.0, 3.0)))
    assert plain["writes_per_s"] == plain["throughput"] == 10.0 and "succeeded" not in plain


def _run(side: str, round_number: int, throughput: float) -> dict[str, Any]:
    writes = throughput * (2 if side == "txn" else 1)
    load = {
        "throughput": throughput, "writes_per_s": writes, "p50_ms": 1.0, "p99_ms": 2.0,
        "p999_ms": 3.0, "errors": 0, "warmup_errors": 0,
        "succeeded": 10, "failed": 1,
    }  # fmt: skip
    cpu = {"cluster_ms_per_request": 1.0}
    return {"side": side, "round": round_number, "load": load, "leader_changes": 0, "cpu": cpu}


def test_the_summary_pairs_each_round() -> None:
    assert [order_of(n) for n in range(3)] == [
        ("plain", "txn"), ("txn", "plain"), ("plain", "txn")
    ]  # fmt: skip
    runs = [
        _run("plain", 0, 1000.0),
        _run("txn", 0, 900.0),
        _run("txn", 1, 400.0),
        _run("plain", 1, 500.0),
    ]
    summary = summarise(runs)
    assert summary["paired_ratios"] == [pytest.approx(0.9), pytest.approx(0.8)]
    assert summary["paired_ratio"] == pytest.approx(math.sqrt(0.72))
    assert summary["throughput_ratio"] == pytest.approx(650 / 750)
    assert summary["paired_writes_ratio"] == pytest.approx(2 * math.sqrt(0.72))
    txn = summary["sides"]["txn"]
    assert (txn["succeeded"], txn["failed"], txn["runs"]) == (20, 2, 2)
    with pytest.raises(ValueError):
        TxnBenchConfig(keys=1)


def test_the_txn_scenario_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable, "-P", "-m", "raftkv.kvbench",
            "--scenario", "txn",
            "--rounds", "1",
            "--keys", "200",
            "--concurrency", "4",
            "--duration", "1",
            "--warmup", "0.3",
            "--output", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads((out / "txn.json").read_text())
    assert document["command"].startswith("kvbench --scenario txn")
    assert document["config"]["keys"] == 200 and document["preload"]["keys"] == 200
    runs = document["runs"]
    assert [(r["side"], r["round"]) for r in runs] == [("plain", 0), ("txn", 0)]
    for run in runs:
        load = run["load"]
        assert load["requests"] > 0 and load["throughput"] > 0, run
        assert load["errors"] == 0 and load["warmup_errors"] == 0, run
        assert 0 < load["p50_ms"] <= load["p99_ms"] <= load["p999_ms"] <= load["max_ms"], run
        assert run["cpu"]["cluster"] > 0 and isinstance(run["leader_changes"], int)
    txn = runs[1]["load"]
    # Every compare holds: each answered transaction took its success branch.
    assert txn["succeeded"] == txn["requests"] > 0 and txn["failed"] == 0
    assert txn["writes_per_s"] == pytest.approx(2 * txn["throughput"], rel=0.01)
    summary = document["summary"]
    assert summary["paired_ratio"] > 0 and summary["throughput_ratio"] > 0
    assert summary["sides"]["txn"]["succeeded"] == txn["succeeded"]
    assert "took the success branch" in done.stdout
