"""The PySyncObj baseline: the replication path of another Python Raft library, 3
processes on loopback, driven at the same number of commands in flight as our native
protocol runs (the closest thing we have to calling the replication path directly)."""

from __future__ import annotations

from .plan import Plan, Progress
from .pysyncobj_baseline import run_pysyncobj_baseline
from .stats import RunResult


def run_pysyncobj(plan: Plan, progress: Progress, results: list[RunResult]) -> None:
    size = plan.value_sizes[0]
    for concurrency in plan.concurrency:
        with progress.run(f"pysyncobj write c={concurrency}", plan.duration_s + plan.warmup_s):
            found = run_pysyncobj_baseline(
                duration_s=plan.duration_s,
                warmup_s=plan.warmup_s,
                outstanding=concurrency,
                keys=plan.keys,
                value_size=size,
                nodes=plan.nodes,
                seed=plan.seed,
            )
        results.append(
            RunResult(
                target="pysyncobj",
                workload="write",
                value_size=size,
                concurrency=concurrency,
                nodes=plan.nodes,
                duration_s=found.duration_s,
                requests=found.committed,
                errors=found.errors,
                p50_ms=found.p50_ms,
                p99_ms=found.p99_ms,
                p999_ms=found.p999_ms,
                max_ms=found.max_ms,
                leader_changes=found.leader_changes,
                driver=f"pysyncobj {found.version}",
                extra={"fsync": False},
            )
        )
