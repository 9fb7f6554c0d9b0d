"""The transaction benchmark (``kvbench --scenario txn``): transactions of two compares
and two puts per second against plain writes, at the same concurrency, on one fresh
local cluster (fsync on) in one invocation.

Every key is written once first (``--keys``, ``--value-size``, over the native
protocol), so both sides overwrite existing keys. Then runs of plain writes
(``POST /kv/{key}``, JSON) and of transactions (``POST /txn``) go to the leader,
alternating with the order turning every round (plain, txn, txn, plain, ...) so that
drift on the machine hits both sides alike. Both sides come from the same generator
(``txn_load.py``) in a process of its own. The ratio txn/plain is given of the medians
and as the geometric mean of each round's pair, as the watch benchmark does; writes/s
counts two writes per transaction that took its success branch.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import rounds
from .rounds import geometric_mean, median, num, paired_ratios, sleep_until, spread
from .scenarios import preload, wait_applied
from .stats import percentile
from .target import RaftkvCluster
from .txn_load import SIDES, WRITES_PER_REQUEST, LoadResult, LoadSpec, run_load, txn_document
from .watch_bench import CpuSnapshot, NodeProcesses, node_processes

# Time for the generator's process to connect before the run starts.
_GENERATOR_START_S = 2.0

Say = Callable[[str], None]


@dataclass(slots=True)
class TxnBenchConfig:
    nodes: int = 3
    rounds: int = 2
    duration_s: float = 10.0
    warmup_s: float = 2.0
    concurrency: int = 64
    keys: int = 100_000
    value_size: int = 100
    seed: int = 1
    node_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError("need at least one round")
        if self.keys < 2:
            raise ValueError("a transaction puts two distinct keys: --keys must be at least 2")
        if self.concurrency < 1 or self.value_size < 1 or self.duration_s <= 0:
            raise ValueError("concurrency, value size and duration must be positive")


def order_of(round_number: int) -> tuple[str, str]:
    """plain, txn in even rounds; txn, plain in odd ones."""
    return rounds.order_of(round_number, "plain", "txn")


def run_summary(result: LoadResult) -> dict[str, Any]:
    """Requests/s, writes/s and latency of the requests answered in the window."""
    start, end = result.window
    seconds = end - start
    ordered = sorted(result.latencies)
    requests = len(ordered)
    rate = requests / seconds if seconds > 0 else 0.0
    if result.side == "txn":
        writes = result.succeeded * WRITES_PER_REQUEST["txn"]
    else:
        writes = requests
    summary: dict[str, Any] = {
        "requests": requests,
        "throughput": round(rate, 1),
        "writes_per_s": round(writes / seconds, 1) if seconds > 0 else 0.0,
        "p50_ms": round(percentile(ordered, 50) * 1000, 3),
        "p99_ms": round(percentile(ordered, 99) * 1000, 3),
        "p999_ms": round(percentile(ordered, 99.9) * 1000, 3),
        "max_ms": round((ordered[-1] if ordered else 0.0) * 1000, 3),
        "errors": result.errors,
        "warmup_errors": result.warmup_errors,
        "first_error": result.first_error,
        "seconds": round(seconds, 3),
    }
    if result.side == "txn":
        summary["succeeded"] = result.succeeded
        summary["failed"] = result.failed
    return summary


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per side and the txn/plain ratios: of the medians and paired by round."""
    sides: dict[str, dict[str, Any]] = {}
    for side in SIDES:
        mine = [r["load"] for r in runs if r["side"] == side]
        mine_runs = [r for r in runs if r["side"] == side]
        sides[side] = {
            "runs": len(mine),
            "throughput": [m["throughput"] for m in mine],
            "writes_per_s": [m["writes_per_s"] for m in mine],
            "median_throughput": median([m["throughput"] for m in mine]),
            "median_writes_per_s": median([m["writes_per_s"] for m in mine]),
            "median_p50_ms": median([m["p50_ms"] for m in mine]),
            "median_p99_ms": median([m["p99_ms"] for m in mine]),
            "median_p999_ms": median([m["p999_ms"] for m in mine]),
            "errors": sum(m["errors"] for m in mine),
            "warmup_errors": sum(m["warmup_errors"] for m in mine),
            "leader_changes": sum(r["leader_changes"] for r in mine_runs),
            "median_cluster_cpu_ms_per_request": median(
                [r["cpu"]["cluster_ms_per_request"] for r in mine_runs if "cpu" in r]
            ),
        }
    txn_runs = [r["load"] for r in runs if r["side"] == "txn"]
    sides["txn"]["succeeded"] = sum(m["succeeded"] for m in txn_runs)
    sides["txn"]["failed"] = sum(m["failed"] for m in txn_runs)

    def ratio_of_medians(name: str) -> float | None:
        plain, txn = sides["plain"][name], sides["txn"][name]
        return txn / plain if plain and txn is not None else None

    def paired(name: str) -> list[float]:
        return paired_ratios(runs, lambda r: float(r["load"][name]), "txn", "plain")

    pairs = paired("throughput")
    write_pairs = paired("writes_per_s")
    return {
        "sides": sides,
        "throughput_ratio": ratio_of_medians("median_throughput"),
        "paired_ratio": geometric_mean(pairs),
        "paired_ratios": pairs,
        "writes_ratio": ratio_of_medians("median_writes_per_s"),
        "paired_writes_ratio": geometric_mean(write_pairs),
        "paired_writes_ratios": write_pairs,
    }


class _Bench:
    def __init__(self, cluster: RaftkvCluster, config: TxnBenchConfig, say: Say) -> None:
        self.cluster = cluster
        self.config = config
        self.say = say
        # spawn, not fork: this process holds threads (the cluster's log readers).
        self.generator = concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn")
        )
        self.runs = 0

    def run(self, side: str, round_number: int) -> dict[str, Any]:
        config = self.config
        self.runs += 1
        local = self.cluster.local
        assert local is not None, "the txn benchmark needs a cluster kvbench started"
        leader = self.cluster.leader_id()
        processes = node_processes(self.cluster)
        port = int(local.url(leader).rsplit(":", 1)[1])
        term_before = self.cluster.term()
        start_at = time.monotonic() + _GENERATOR_START_S
        spec = LoadSpec(
            side=side,
            host="127.0.0.1",
            port=port,
            connections=config.concurrency,
            duration_s=config.duration_s,
            warmup_s=config.warmup_s,
            keys=config.keys,
            value_size=config.value_size,
            seed=config.seed * 1000 + self.runs,
            start_at=start_at,
        )
        future = self.generator.submit(run_load, spec)
        pids = [pid for p in processes.values() for pid in p.all]
        sleep_until(start_at + config.warmup_s)
        began, before = time.monotonic(), CpuSnapshot.take(pids)
        sleep_until(start_at + config.warmup_s + config.duration_s)
        ended, after = time.monotonic(), CpuSnapshot.take(pids)
        result = future.result()
        load = run_summary(result)
        late = result.window[0] - (start_at + config.warmup_s)
        if late > 0.1:
            self.say(f"txn: the generator started {late:.2f} s late; CPU window is off by that")
        return {
            "side": side,
            "round": round_number,
            "leader": leader,
            "load": load,
            "generator_cpu": round(result.cpu_s / (config.duration_s + config.warmup_s), 3),
            "cpu": _cores(after.since(before), ended - began, processes, leader, load["requests"]),
            "leader_changes": max(0, self.cluster.term() - term_before),
        }

    def close(self) -> None:
        self.generator.shutdown(wait=True)


def _cores(
    used: CpuSnapshot,
    seconds: float,
    processes: dict[int, NodeProcesses],
    leader: int,
    requests: int,
) -> dict[str, float]:
    """Cores the cluster and the leader's processes used over the window, the machine's
    busy cores, and the cluster's CPU milliseconds per answered request."""

    def total(pids: Sequence[int]) -> float:
        return sum(used.cpu.get(pid, 0.0) for pid in pids)

    cluster = total([pid for p in processes.values() for pid in p.all])
    seconds = max(seconds, 1e-9)
    return {
        "cluster": round(cluster / seconds, 3),
        "leader_raft": round(total([processes[leader].raft]) / seconds, 3),
        "leader_workers": round(total(processes[leader].workers) / seconds, 3),
        "machine_busy": round(used.machine_busy / seconds, 3),
        "cluster_ms_per_request": round(cluster * 1000 / requests, 4) if requests else 0.0,
    }


def run_txn_bench(config: TxnBenchConfig, say: Say | None = None) -> dict[str, Any]:
    """The whole benchmark on a fresh cluster; returns the results document."""
    tell = say or (lambda _: None)
    with RaftkvCluster(nodes=config.nodes, extra_args=config.node_args) as cluster:
        tell(f"txn: preloading {config.keys} keys on {config.nodes} nodes...")
        loaded = preload(cluster, config.keys, config.value_size)
        bench = _Bench(cluster, config, tell)
        runs: list[dict[str, Any]] = []
        try:
            for round_number in range(config.rounds):
                for side in order_of(round_number):
                    tell(f"txn: round {round_number + 1}/{config.rounds}, {side}")
                    runs.append(bench.run(side, round_number))
                    # The next run starts with every node caught up.
                    wait_applied(cluster)
        finally:
            bench.close()
        return {
            "config": {
                "nodes": config.nodes,
                "rounds": config.rounds,
                "duration_s": config.duration_s,
                "warmup_s": config.warmup_s,
                "concurrency": config.concurrency,
                "keys": config.keys,
                "value_size": config.value_size,
                "seed": config.seed,
                "node_args": config.node_args,
                "plain_request": "POST /kv/{key} {value}",
                "txn_request": "POST /txn",
                "txn_example": txn_document("k000001", "k000002", "v" * config.value_size),
            },
            "preload": loaded,
            "runs": runs,
            "summary": summarise(runs),
        }


# ---------------------------------------------------------------------- the report


def format_report(document: dict[str, Any]) -> str:
    runs = document["runs"]
    summary = document["summary"]
    header = (
        f"{'round':>5} {'side':<6}{'req/s':>9}{'writes/s':>10}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'p999 ms':>9}{'err':>5}{'elect':>6}{'ok':>8}{'failed':>7}{'cpu ms/req':>11}"
    )
    lines = [header, "-" * len(header)]
    for r in runs:
        load = r["load"]
        lines.append(
            f"{r['round'] + 1:>5} {r['side']:<6}{load['throughput']:>9,.0f}"
            f"{load['writes_per_s']:>10,.0f}{load['p50_ms']:>8.1f}{load['p99_ms']:>8.1f}"
            f"{load['p999_ms']:>9.1f}{load['errors']:>5}{r['leader_changes']:>6}"
            f"{num(load.get('succeeded'), 'd'):>8}{num(load.get('failed'), 'd'):>7}"
            f"{r['cpu']['cluster_ms_per_request']:>11.3f}"
        )
    sides = summary["sides"]
    plain, txn = sides["plain"], sides["txn"]
    lines += [
        "",
        f"requests/s plain {spread(plain['throughput'], ',.0f')}, txn "
        f"{spread(txn['throughput'], ',.0f')}: txn/plain ratio of medians "
        f"{num(summary['throughput_ratio'], '.3f')}x, paired "
        f"{num(summary['paired_ratio'], '.3f')}x ({spread(summary['paired_ratios'], '.3f')})",
        f"writes/s plain {spread(plain['writes_per_s'], ',.0f')}, txn (2 per succeeded "
        f"transaction) {spread(txn['writes_per_s'], ',.0f')}: ratio of medians "
        f"{num(summary['writes_ratio'], '.3f')}x, paired "
        f"{num(summary['paired_writes_ratio'], '.3f')}x",
    ]
    for name, side in (("plain", plain), ("txn", txn)):
        lines.append(
            f"{name:<5} p50/p99/p99.9 {num(side['median_p50_ms'], '.1f')}/"
            f"{num(side['median_p99_ms'], '.1f')}/{num(side['median_p999_ms'], '.1f')} ms "
            f"(medians of the runs), errors {side['errors']} (+{side['warmup_errors']} in "
            f"warm-ups), leader changes {side['leader_changes']}, cluster CPU "
            f"{num(side['median_cluster_cpu_ms_per_request'], '.3f')} ms per request"
        )
    lines.append(
        f"transactions: {txn['succeeded']:,} took the success branch, "
        f"{txn['failed']:,} the failure branch"
    )
    first = [r["load"]["first_error"] for r in runs if r["load"]["first_error"]]
    if first:
        lines.append(f"first error: {first[0][:200]}")
    return "\n".join(lines)
