"""Short chaos runs of the watch workload on real processes: watchers of a prefix and of
every key, resuming from node to node while nodes are killed, paused and partitioned,
checked against the committed history (the long campaign has its own command,
docs/reliability.md)."""

from __future__ import annotations

import json
from pathlib import Path

from raftkv.testing.chaos import ChaosOptions, run_chaos
from raftkv.testing.watch_check import WatchCase, check_watches

NEMESES = ("kill", "pause", "partition", "kill_leader")


def test_watchers_see_exactly_the_committed_history_under_faults(tmp_path: Path) -> None:
    options = ChaosOptions(
        duration_s=20.0,
        seed=15,
        clients=2,
        set_clients=1,
        nemeses=NEMESES,
        calm_s=(0.3, 1.0),
        fault_s=(1.0, 3.0),
        watchers=6,
        client_watchers=1,
        long_pollers=1,
        late_watcher_at=6.0,
    )
    report = run_chaos(options, tmp_path / "run")
    assert report.ok, report.summary()
    assert {"kill", "pause", "partition"} <= set(report.faults), report.faults
    watch = report.watch
    assert not watch["violations"]
    # The run is only worth something if watchers really followed writes across
    # broken streams, and their events were checked against the committed history.
    assert watch["writes"]["ok"] > 100, watch
    assert watch["streams"] > 3 * watch["watchers"], watch
    assert watch["events_checked"] > 1000, watch
    assert watch["covered_revisions"] >= watch["final_revision"] // 2, watch
    # The saved case replays to the same verdict.
    case = WatchCase.from_json((tmp_path / "run" / "watch.json").read_text())
    assert check_watches(case).ok
    assert json.loads((tmp_path / "run" / "report.json").read_text())["watch"] == watch


def test_a_watcher_from_revision_1_resyncs_past_a_small_history(tmp_path: Path) -> None:
    options = ChaosOptions(
        duration_s=10.0,
        seed=5,
        clients=2,
        set_clients=1,
        nemeses=("kill", "partition"),
        calm_s=(0.3, 1.0),
        fault_s=(1.0, 2.0),
        watchers=4,
        client_watchers=0,
        late_watcher_at=3.0,
        watch_history=30,
    )
    report = run_chaos(options, tmp_path / "run")
    assert report.ok, report.summary()
    watch = report.watch
    assert watch["late_watcher_resynced"], watch
    assert watch["images_checked"] >= 1, watch
