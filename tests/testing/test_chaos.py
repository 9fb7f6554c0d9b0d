"""A short chaos run on real processes (the long ones have their own command)."""

from __future__ import annotations

from pathlib import Path

from raftkv.testing.chaos import NEMESES, ChaosOptions, run_chaos


def test_a_short_chaos_run_finds_no_anomaly(tmp_path: Path) -> None:
    options = ChaosOptions(duration_s=45.0, seed=11, clients=6, calm_s=(0.3, 1.0))
    report = run_chaos(options, tmp_path / "run")
    assert report.ok, report.summary() + "\n" + report.linearizability_detail
    assert report.linearizable and report.converged
    assert report.operations["ok"] > 200
    assert report.set_acked > 50 and not report.set_lost
    # The run is only worth something if it really broke things.
    assert sum(report.faults.values()) >= 8
    assert len(report.faults) >= 5, report.faults
    assert set(report.faults) <= set(NEMESES)
    assert (tmp_path / "run" / "history.json").exists()
