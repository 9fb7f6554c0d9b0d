"""What kvbench prints and writes: a table of runs, our/baseline ratios for matching
runs, results.json, and PNG plots of throughput and latency against concurrency."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .stats import RunResult
from .workloads import format_size

# Which of our targets a baseline is compared with: etcd's JSON gateway against our HTTP
# API, PySyncObj's in-process calls against our native protocol (the closest we have to
# calling the replication path directly).
BASELINE_OF = {"etcd": "raftkv-http", "pysyncobj": "raftkv-native"}


def table(results: list[RunResult]) -> str:
    header = (
        f"{'target':<14}{'workload':<13}{'value':>7}{'conc':>6}{'ops/s':>11}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'errors':>8}{'elect':>6}{'gen cpu':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.target:<14}{r.workload:<13}{format_size(r.value_size):>7}{r.concurrency:>6}"
            f"{r.throughput:>11,.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.p999_ms:>10.2f}"
            f"{r.errors:>8}{r.leader_changes:>6}{r.generator_cpu:>8.2f}"
        )
    return "\n".join(lines)


def _key(r: RunResult) -> tuple[str, int, int]:
    return (r.workload, r.value_size, r.concurrency)


def ratios(results: list[RunResult]) -> list[dict[str, Any]]:
    """ours/baseline for every baseline run with a matching run of ours."""
    ours = {(r.target, *_key(r)): r for r in results}
    out = []
    for r in results:
        mine_target = BASELINE_OF.get(r.target)
        if mine_target is None:
            continue
        mine = ours.get((mine_target, *_key(r)))
        if mine is None or r.throughput == 0:
            continue
        out.append(
            {
                "baseline": r.target,
                "ours": mine_target,
                "workload": r.workload,
                "value_size": r.value_size,
                "concurrency": r.concurrency,
                "throughput_ratio": mine.throughput / r.throughput,
                "p99_ratio": mine.p99_ms / r.p99_ms if r.p99_ms else None,
                "ours_throughput": mine.throughput,
                "baseline_throughput": r.throughput,
                "ours_p99_ms": mine.p99_ms,
                "baseline_p99_ms": r.p99_ms,
            }
        )
    return out


def ratio_lines(items: list[dict[str, Any]]) -> str:
    lines = []
    for item in items:
        p99 = item["p99_ratio"]
        lines.append(
            f"{item['ours']}/{item['baseline']} {item['workload']} "
            f"{format_size(item['value_size'])} c={item['concurrency']}: "
            f"throughput {item['throughput_ratio']:.2f}x "
            f"({item['ours_throughput']:,.0f} vs {item['baseline_throughput']:,.0f}/s), "
            f"p99 {item['ours_p99_ms']:.1f} vs {item['baseline_p99_ms']:.1f} ms"
            + (f" ({p99:.2f}x)" if p99 is not None else "")
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": _cpu_count(),
    }


def write_json(path: Path, results: list[RunResult], command: str, plan: dict[str, Any]) -> None:
    document = {
        "command": command,
        "machine": machine(),
        "plan": plan,
        "results": [r.to_json() for r in results],
        "ratios": ratios(results),
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 0


def write_plots(directory: Path, results: list[RunResult]) -> list[Path]:
    """Throughput and p99 latency against concurrency, one PNG per workload and value
    size, one line per target. Returns the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError(
            "plots need matplotlib: pip install 'raftkv[bench]' (or pass --no-plots)"
        ) from exc
    groups: dict[tuple[str, int], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.workload, r.value_size), []).append(r)
    written = []
    for (workload, size), runs in sorted(groups.items()):
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        for number, target in enumerate(sorted({r.target for r in runs})):
            points = sorted((r for r in runs if r.target == target), key=lambda r: r.concurrency)
            xs = [r.concurrency for r in points]
            color = f"C{number}"  # one colour per target; p50 dashed beside its p99
            _line(left, xs, [r.throughput for r in points], target, color)
            _line(right, xs, [r.p99_ms for r in points], f"{target} p99", color)
            _line(right, xs, [r.p50_ms for r in points], f"{target} p50", color, dashed=True)
        left.set(title="throughput", xlabel="concurrency", ylabel="requests/s")
        right.set(title="latency", xlabel="concurrency", ylabel="ms")
        for axis in (left, right):
            axis.set_xscale("log", base=2)
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize=8)
        figure.suptitle(f"{workload}, {format_size(size)} values")
        figure.tight_layout()
        path = directory / f"{workload}-{format_size(size)}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def _line(
    axis: Any, xs: list[int], ys: list[float], label: str, color: str, *, dashed: bool = False
) -> None:
    plot: Callable[..., Any] = axis.plot
    plot(xs, ys, "--" if dashed else "-", marker="o", label=label, color=color)
