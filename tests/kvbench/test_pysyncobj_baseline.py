"""The PySyncObj baseline, run for real: three member processes on loopback for a few
seconds. Only consistency is asserted, never speed."""

from __future__ import annotations

import importlib
import math
import sys
from typing import Any

import pytest
from raftkv.kvbench import pysyncobj_baseline
from raftkv.kvbench.pysyncobj_baseline import (
    SYNCOBJ_CONF,
    PySyncObjNotInstalledError,
    load_pysyncobj,
    percentile,
    run_pysyncobj_baseline,
)


def test_a_short_run_commits_commands_and_its_figures_agree() -> None:
    result = run_pysyncobj_baseline(
        duration_s=3.0, warmup_s=1.0, outstanding=200, keys=1000, value_size=100, seed=1
    )
    assert result.committed > 0
    assert result.duration_s > 0
    assert result.throughput == result.committed / result.duration_s
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms <= result.p999_ms
    assert result.p999_ms <= result.max_ms
    assert isinstance(result.errors, int) and isinstance(result.leader_changes, int)
    assert (result.nodes, result.outstanding) == (3, 200)
    assert result.version == importlib.import_module("pysyncobj.version").VERSION


def test_the_configuration_is_pysyncobjs_batched_in_memory_default() -> None:
    conf = load_pysyncobj().SyncObjConf(**SYNCOBJ_CONF)
    conf.validate()
    assert conf.appendEntriesUseBatch is True
    assert conf.journalFile is None and conf.fullDumpFile is None


def test_a_missing_pysyncobj_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pysyncobj", None)  # makes the import fail
    with pytest.raises(PySyncObjNotInstalledError, match=r"pip install 'raftkv\[bench\]'"):
        run_pysyncobj_baseline(duration_s=1.0)


@pytest.mark.parametrize(
    "bad",
    [{"duration_s": 0.0}, {"warmup_s": -1.0}, {"outstanding": 0}, {"outstanding": 10**6},
     {"keys": 0}, {"nodes": 0}, {"value_size": -1}],
)  # fmt: skip
def test_impossible_runs_are_refused_before_starting_anything(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        run_pysyncobj_baseline(**bad)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 99.9) == 100.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 50) == 7.0
    assert math.isnan(percentile([], 50))
    assert pysyncobj_baseline.INSTALL_HINT.endswith("pip install 'raftkv[bench]'")
