"""What kvbench prints and writes: a table of runs, a table of the CPU each run cost the
cluster per request, our/baseline ratios for matching runs, results.json, and PNG plots
of throughput and latency against concurrency."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cpu import HTTP, OTHER, RAFT, ClusterCpu
from .stats import RunResult
from .workloads import baseline_workload, format_size

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


def _baseline_key(r: RunResult) -> tuple[str, int, int]:
    """The key of the baseline run a run of ours compares with: a baseline runs its one
    form of write against both of our HTTP writes."""
    return (baseline_workload(r.workload), r.value_size, r.concurrency)


def _cpu_total(r: RunResult) -> float | None:
    return r.cluster_cpu.total_us if r.cluster_cpu is not None else None


def ratios(results: list[RunResult]) -> list[dict[str, Any]]:
    """ours/baseline for every run of ours with a matching baseline run."""
    baselines = {(r.target, *_key(r)): r for r in results if r.target in BASELINE_OF}
    out = []
    for baseline_target, mine_target in BASELINE_OF.items():
        for mine in results:
            if mine.target != mine_target:
                continue
            r = baselines.get((baseline_target, *_baseline_key(mine)))
            if r is None or r.throughput == 0:
                continue
            ours_cpu, baseline_cpu = _cpu_total(mine), _cpu_total(r)
            out.append(
                {
                    "baseline": r.target,
                    "ours": mine_target,
                    "workload": mine.workload,
                    "baseline_workload": r.workload,
                    "value_size": r.value_size,
                    "concurrency": r.concurrency,
                    "throughput_ratio": mine.throughput / r.throughput,
                    "p99_ratio": mine.p99_ms / r.p99_ms if r.p99_ms else None,
                    "p999_ratio": mine.p999_ms / r.p999_ms if r.p999_ms else None,
                    "cpu_ratio": (
                        ours_cpu / baseline_cpu if ours_cpu is not None and baseline_cpu else None
                    ),
                    "ours_throughput": mine.throughput,
                    "baseline_throughput": r.throughput,
                    "ours_p99_ms": mine.p99_ms,
                    "baseline_p99_ms": r.p99_ms,
                    "ours_p999_ms": mine.p999_ms,
                    "baseline_p999_ms": r.p999_ms,
                    "ours_cpu_us_per_request": ours_cpu,
                    "baseline_cpu_us_per_request": baseline_cpu,
                }
            )
    return out


def _times(ratio: float | None) -> str:
    return f" ({ratio:.2f}x)" if ratio is not None else ""


def ratio_lines(items: list[dict[str, Any]]) -> str:
    lines = []
    for item in items:
        against = ""
        if item.get("baseline_workload", item["workload"]) != item["workload"]:
            against = f" (against {item['baseline']} {item['baseline_workload']})"
        line = (
            f"{item['ours']}/{item['baseline']} {item['workload']} "
            f"{format_size(item['value_size'])} c={item['concurrency']}{against}: "
            f"throughput {item['throughput_ratio']:.2f}x "
            f"({item['ours_throughput']:,.0f} vs {item['baseline_throughput']:,.0f}/s), "
            f"p99 {item['ours_p99_ms']:.1f} vs {item['baseline_p99_ms']:.1f} ms"
            + _times(item["p99_ratio"])
            + f", p99.9 {item['ours_p999_ms']:.1f} vs {item['baseline_p999_ms']:.1f} ms"
            + _times(item.get("p999_ratio"))
        )
        if item.get("cpu_ratio") is not None:
            line += (
                f", CPU/request {item['ours_cpu_us_per_request']:.0f} vs "
                f"{item['baseline_cpu_us_per_request']:.0f} us ({item['cpu_ratio']:.2f}x)"
            )
        lines.append(line)
    return "\n".join(lines)


CPU_LEGEND = (
    "CPU per request, us: user+system time (/proc/<pid>/stat) of every process of each\n"
    "member over the measured window, divided by the requests completed in it.\n"
    "ldr http/raft: the leader's HTTP workers and Raft process; flw raft/http: each\n"
    "follower's, in node order; other: the children of all members that are neither\n"
    "(snapshot writers); members: each member's total, leader first (an etcd member is\n"
    "one process); total: all of them; /etcd: total over etcd's in the same run."
)


def _us(value: float) -> str:
    return f"{value:.1f}"


def _each(values: list[float]) -> str:
    return "/".join(_us(v) for v in values) or "-"


def cpu_rows(results: list[RunResult]) -> list[list[str]]:
    """One row per run with CPU figures: role columns for raftkv, member totals for
    every system, and the ratio to etcd's total for raftkv's HTTP runs."""
    etcd = {_key(r): r.cluster_cpu for r in results if r.target == "etcd" and r.cluster_cpu}
    rows = []
    for r in results:
        cpu = r.cluster_cpu
        if cpu is None:
            continue
        members = _each([cpu.us(cpu.leader), *(cpu.us(f) for f in cpu.followers)])
        if cpu.system == "etcd":
            roles = ["-"] * 5
        else:
            roles = [
                _us(cpu.us(cpu.leader, HTTP)),
                _us(cpu.us(cpu.leader, RAFT)),
                _each([cpu.us(f, RAFT) for f in cpu.followers]),
                _each([cpu.us(f, HTTP) for f in cpu.followers]),
                _us(sum(cpu.us(m, OTHER) for m in cpu.members)),
            ]
        against: ClusterCpu | None = None
        if r.target == BASELINE_OF["etcd"]:
            against = etcd.get(_baseline_key(r))
        versus = f"{cpu.total_us / against.total_us:.2f}" if against and against.total_us else ""
        rows.append(
            [
                r.target,
                r.workload,
                format_size(r.value_size),
                str(r.concurrency),
                *roles,
                members,
                _us(cpu.total_us),
                versus,
            ]
        )
    return rows


# Why a target's runs have no CPU figures (raftkv's: see the default in cpu_table).
_NO_CPU = {"pysyncobj": "not measured for this baseline", "etcd": "a member had exited"}

_CPU_HEADER = [
    "target", "workload", "value", "conc", "ldr http", "ldr raft", "flw raft", "flw http",
    "other", "members", "total", "/etcd",
]  # fmt: skip


def cpu_table(results: list[RunResult]) -> str:
    """The CPU table with its legend, and a note for each target without CPU figures;
    empty when there are no results."""
    notes = [
        f"(no CPU figures for {target}: "
        f"{_NO_CPU.get(target, 'a cluster kvbench did not start (--endpoints)')})"
        for target in sorted({r.target for r in results if r.cluster_cpu is None})
    ]
    rows = cpu_rows(results)
    if not rows:
        return "\n".join(notes)
    widths = [max(len(row[i]) for row in [_CPU_HEADER, *rows]) for i in range(len(_CPU_HEADER))]

    def line(cells: list[str]) -> str:
        # Names left-aligned, figures right-aligned, two spaces apart.
        return "  ".join(
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    header = line(_CPU_HEADER)
    return "\n".join(
        [CPU_LEGEND, "", header, "-" * len(header), *(line(row) for row in rows), *notes]
    )


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
    """Throughput and p50/p99/p99.9 latency against concurrency, one PNG per workload and
    value size, one line per target and percentile. Returns the files written."""
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
            # One colour per target; its p50 dashed and p99.9 dotted beside its p99.
            color = f"C{number}"
            _line(left, xs, [r.throughput for r in points], target, color)
            _line(right, xs, [r.p999_ms for r in points], f"{target} p99.9", color, style=":")
            _line(right, xs, [r.p99_ms for r in points], f"{target} p99", color)
            _line(right, xs, [r.p50_ms for r in points], f"{target} p50", color, style="--")
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
    axis: Any, xs: list[int], ys: list[float], label: str, color: str, *, style: str = "-"
) -> None:
    plot: Callable[..., Any] = axis.plot
    plot(xs, ys, style, marker="o", label=label, color=color)
