"""The lock benchmark: the lock names of each mode, the exclusion check, the arithmetic
on runs, and (end to end, small) that ``kvbench --scenario lock`` runs the Python Lock
recipe against a real 3-node cluster and writes sane figures. No figure is held to a
speed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from array import array
from pathlib import Path
from typing import Any

import pytest
from raftkv.kvbench.lock_bench import (
    LOCK_TTL_S,
    LockBenchConfig,
    LockResult,
    exclusion_check,
    lock_names,
    order_of,
    run_summary,
    summarise,
)


def test_contended_threads_share_one_name_and_the_others_have_one_each() -> None:
    assert lock_names("contended", "kvbench0001", 3) == ["kvbench0001"] * 3
    assert lock_names("uncontended", "kvbench0001", 3) == [
        "kvbench0001-0", "kvbench0001-1", "kvbench0001-2"
    ]  # fmt: skip
    with pytest.raises(ValueError):
        lock_names("shared", "x", 1)
    assert [order_of(n) for n in range(3)] == [
        ("uncontended", "contended"), ("contended", "uncontended"), ("uncontended", "contended")
    ]  # fmt: skip
    assert LOCK_TTL_S > 0
    with pytest.raises(ValueError):
        LockBenchConfig(concurrency=[])
    with pytest.raises(ValueError):
        LockBenchConfig(concurrency=[0])


def _result(rows: list[tuple[float, float, float, float, int]], mode: str) -> LockResult:
    return LockResult(
        mode,
        2,
        began=array("d", [r[0] for r in rows]),
        acquired=array("d", [r[1] for r in rows]),
        releasing=array("d", [r[2] for r in rows]),
        released=array("d", [r[3] for r in rows]),
        tokens=array("q", [r[4] for r in rows]),
        window=(10.0, 12.0),
    )


def test_holders_that_overlap_or_go_back_in_tokens_are_counted() -> None:
    good = _result([(0.0, 1.0, 1.1, 1.2, 5), (0.5, 1.15, 1.2, 1.3, 7)], "contended")
    assert exclusion_check(good) == {"acquisitions": 2, "overlaps": 0, "tokens_not_increasing": 0}
    # The second got the lock before the first called release(), with a lower token.
    bad = _result([(0.0, 1.0, 1.1, 1.2, 9), (0.5, 1.05, 1.2, 1.3, 7)], "contended")
    assert exclusion_check(bad) == {"acquisitions": 2, "overlaps": 1, "tokens_not_increasing": 1}


def test_a_run_counts_the_acquisitions_that_returned_in_the_window() -> None:
    rows = [
        (9.0, 9.5, 9.5, 9.6, 1),  # warm-up: not counted
        (10.0, 10.010, 10.010, 10.015, 2),
        (10.5, 10.530, 10.530, 10.540, 3),
        (11.9, 12.5, 12.5, 12.6, 4),  # after the window
    ]
    summary = run_summary(_result(rows, "contended"))
    assert summary["acquisitions"] == 2 and summary["per_s"] == 1.0
    assert summary["acquire_p50_ms"] == 10.0 and summary["acquire_p99_ms"] == 30.0
    assert summary["release_p50_ms"] == 5.0 and summary["release_p99_ms"] == 10.0
    assert summary["acquire_p999_ms"] == 30.0 and summary["release_p999_ms"] == 10.0
    assert summary["exclusion"]["acquisitions"] == 4
    assert "exclusion" not in run_summary(_result(rows, "uncontended"))


def _run(mode: str, round_number: int, per_s: float) -> dict[str, Any]:
    load = {
        "per_s": per_s, "acquisitions": 10, "acquire_p50_ms": 1.0, "acquire_p99_ms": 2.0,
        "acquire_p999_ms": 3.0, "release_p50_ms": 0.5, "release_p99_ms": 1.0,
        "release_p999_ms": 1.5, "errors": 0, "warmup_errors": 0,
    }  # fmt: skip
    if mode == "contended":
        load["exclusion"] = {"acquisitions": 10, "overlaps": 0, "tokens_not_increasing": 0}
    return {
        "mode": mode,
        "threads": 4,
        "round": round_number,
        "load": load,
        "leader_changes": 0,
        "client_cpu": 0.5,
    }


def test_the_summary_pairs_contended_with_uncontended_per_round() -> None:
    runs = [
        _run("uncontended", 0, 100.0),
        _run("contended", 0, 50.0),
        _run("contended", 1, 30.0),
        _run("uncontended", 1, 50.0),
    ]
    found = summarise(runs)["by_threads"]["4"]
    assert found["contended_paired_ratios"] == [pytest.approx(0.5), pytest.approx(0.6)]
    assert found["contended_paired_ratio"] == pytest.approx(math.sqrt(0.3))
    assert found["modes"]["uncontended"]["median_per_s"] == 75.0
    assert found["modes"]["uncontended"]["median_acquire_p999_ms"] == 3.0
    assert found["modes"]["contended"]["overlaps"] == 0


def test_the_lock_scenario_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable, "-P", "-m", "raftkv.kvbench",
            "--scenario", "lock",
            "--rounds", "1",
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
    document = json.loads((out / "lock.json").read_text())
    assert document["command"].startswith("kvbench --scenario lock")
    # Without --concurrency the lock scenario runs 4 threads, not the sweep's 64.
    assert document["config"]["threads"] == [4]
    runs = document["runs"]
    assert [(r["mode"], r["threads"], r["round"]) for r in runs] == [
        ("uncontended", 4, 0), ("contended", 4, 0)
    ]  # fmt: skip
    for run in runs:
        load = run["load"]
        assert load["acquisitions"] > 0 and load["per_s"] > 0, run
        assert load["errors"] == 0 and load["warmup_errors"] == 0, run
        assert 0 < load["acquire_p50_ms"] <= load["acquire_p99_ms"] <= load["acquire_max_ms"]
        assert 0 < load["release_p50_ms"] <= load["release_p99_ms"] <= load["release_max_ms"]
        assert run["client_cpu"] > 0 and run["cpu"]["cluster"] > 0
    exclusion = runs[1]["load"]["exclusion"]
    assert exclusion["acquisitions"] >= runs[1]["load"]["acquisitions"]
    assert exclusion["overlaps"] == 0 and exclusion["tokens_not_increasing"] == 0
    assert "contended/uncontended" in done.stdout
