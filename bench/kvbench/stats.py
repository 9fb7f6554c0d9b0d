"""The outcome of one measured run and the arithmetic on it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .cpu import ClusterCpu


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, nearest rank."""
    if not sorted_values:
        return 0.0
    # The epsilon keeps float error (99.9 / 100 * 1000 = 999.0000000000001) from
    # moving the rank up by one.
    rank = max(1, math.ceil(q * len(sorted_values) / 100 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(slots=True)
class RunResult:
    """One measured run: throughput counts successful requests only."""

    target: str  # "raftkv-http", "raftkv-native", "etcd", "pysyncobj"
    workload: str
    value_size: int
    concurrency: int
    nodes: int
    duration_s: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    leader_changes: int = 0
    driver: str = ""
    # CPU the load generator used over the run, in cores (1.0 = one core busy the whole
    # time): close to the cores it has means it, not the store, may be the limit.
    generator_cpu: float = 0.0
    # CPU of every process of every member of the cluster under test per request over
    # the measured window; None where kvbench cannot see the processes (a cluster it
    # did not start, the PySyncObj baseline).
    cluster_cpu: ClusterCpu | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["throughput"] = round(self.throughput, 1)
        data["cluster_cpu"] = self.cluster_cpu.to_json() if self.cluster_cpu else None
        return data

    @classmethod
    def from_latencies(
        cls, latencies_s: list[float], *, errors: int, duration_s: float, **fields: Any
    ) -> RunResult:
        ordered = sorted(latencies_s)
        return cls(
            duration_s=duration_s,
            requests=len(ordered),
            errors=errors,
            p50_ms=percentile(ordered, 50) * 1000,
            p99_ms=percentile(ordered, 99) * 1000,
            p999_ms=percentile(ordered, 99.9) * 1000,
            max_ms=(ordered[-1] if ordered else 0.0) * 1000,
            **fields,
        )
