"""What the same-invocation scenarios share (``--scenario watch`` and ``txn``): two
sides run in alternating rounds on one cluster, the order turning every round so that
drift hits both alike, compared by the ratio of their medians and paired round by
round (the geometric mean of each round's ratio, as ``bench/compare_builds.py`` does);
and the few formatting helpers of their reports."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "geometric_mean",
    "median",
    "num",
    "order_of",
    "paired_ratios",
    "sleep_until",
    "spread",
]


def order_of(round_number: int, first: str, second: str) -> tuple[str, str]:
    """``first, second`` in even rounds; ``second, first`` in odd ones."""
    return (first, second) if round_number % 2 == 0 else (second, first)


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def geometric_mean(values: Sequence[float]) -> float | None:
    # A zero (a side that managed nothing) makes the mean 0, not an error.
    if not values:
        return None
    return 0.0 if min(values) <= 0 else statistics.geometric_mean(values)


def paired_ratios(
    runs: list[dict[str, Any]], value: Callable[[dict[str, Any]], float], over: str, under: str
) -> list[float]:
    """Per round, ``over``'s value divided by ``under``'s (rounds with both sides)."""
    by_round = {(r["round"], r["side"]): value(r) for r in runs}
    return [
        by_round[(n, over)] / by_round[(n, under)]
        for n, side in by_round
        if side == under and by_round[(n, under)] and (n, over) in by_round
    ]


def sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def num(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def spread(values: Sequence[float | None], spec: str) -> str:
    shown = [format(v, spec) for v in values if v is not None]
    return " / ".join(shown) if shown else "-"
