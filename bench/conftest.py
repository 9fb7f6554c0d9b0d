"""Shared set-up of the micro-benchmarks: the closing summary.

Each benchmark stores its throughput in the ``bench_results`` dict as
``results[measurement][implementation] = per second`` (from the median round, and under
``implementation + "_best"`` from the fastest round), plus an optional ``"target"``; the
summary at the end of the run sets our figures beside the plain-Python baseline measured
in the same run.
"""

from __future__ import annotations

import pytest

_RESULTS: dict[str, dict[str, float]] = {}


@pytest.fixture
def bench_results() -> dict[str, dict[str, float]]:
    return _RESULTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _RESULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("segment log vs plain-Python baseline (per second)")
    # The median round is the headline; the best round shows what the code does when the
    # disk is not busy with other work (fsync latency dominates small batches).
    write(
        f"{'measurement':<34}{'ours':>14}{'baseline':>14}{'ratio':>8}"
        f"{'ours best':>14}{'base best':>14}{'ratio':>8}  target (median / best)"
    )
    for name, row in _RESULTS.items():
        if "reference" in row:
            # Not an implementation: a bound set by the machine (printed after the table).
            continue
        target = row.get("target")
        verdict = ""
        if target is not None and "segment" in row:
            verdict = (
                f">= {target:,.0f}: {_met(row['segment'], target)} / "
                f"{_met(row.get('segment_best'), target)}"
            )
        write(
            f"{name:<34}{_num(row.get('segment')):>14}{_num(row.get('python')):>14}"
            f"{_ratio(row.get('segment'), row.get('python')):>8}"
            f"{_num(row.get('segment_best')):>14}{_num(row.get('python_best')):>14}"
            f"{_ratio(row.get('segment_best'), row.get('python_best')):>8}  {verdict}"
        )

    for name, row in _RESULTS.items():
        if "reference" in row:
            write(
                f"reference, {name}: {_num(row['reference'])} median, "
                f"{_num(row.get('reference_best'))} best"
            )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ratio(ours: float | None, base: float | None) -> str:
    return "-" if ours is None or not base else f"{ours / base:.2f}x"


def _met(value: float | None, target: float) -> str:
    if value is None:
        return "-"
    return "met" if value >= target else "MISSED"
