"""A short chaos run on real processes (the long ones have their own command)."""

from __future__ import annotations

import random
from pathlib import Path

from raftkv.testing.chaos import NEMESES, ChaosOptions, run_chaos, tear_an_unsynced_write
from raftkv_ext.entry import ENTRY_NORMAL, Entry
from raftkv_ext.segment_log import SegmentLog


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


def test_a_torn_tail_tears_only_a_write_that_was_never_synced(tmp_path: Path) -> None:
    """The torn-tail nemesis must model a crash, not a lying disk: every entry the log
    held (synced, perhaps acknowledged) survives, and only the interrupted append is
    cut off on restart."""
    entries = [Entry(i, 1 + i // 4, ENTRY_NORMAL, b"v%d" % i) for i in range(1, 11)]
    with SegmentLog(str(tmp_path)) as log:
        log.append(entries)
        log.sync()
    for seed in range(20):
        tear_an_unsynced_write(tmp_path, random.Random(seed))
        with SegmentLog(str(tmp_path)) as log:
            assert log.recovery.truncated_bytes > 0, seed
            assert log.last_index == 10
            assert log.entries(1, 11) == entries
