"""The watch benchmark (``kvbench --scenario watch``): what 1,000 prefix watchers and 10
watchers of the whole keyspace cost a cluster under write load, and how late they hear
of each write.

One fresh local cluster. Writes (``POST /kv/{key}``, JSON) go to the leader; every
watch stream is opened on one follower, the node a deployment would point watchers at
(the leader is kept for the writes). Runs with and without watchers alternate, the order
turning every round (base, watch, watch, base, ...), so that drift on the machine hits
both sides alike; the ratio is given of the medians and as the geometric mean of each
round's watch/base pair, as bench/compare_builds.py does.

Each run with watchers measures, in this order:

1. memory per idle stream: the RSS (``/proc/<pid>/status`` VmRSS) of the watched node's
   Raft process and HTTP workers (children of the Raft process) before the streams are
   opened and once all are open and idle, the difference divided by the streams (one
   throwaway stream is opened and closed first, so that the worker's feed, started by
   the first watch of its life, is not counted);
2. the write load, with CPU time of every process of the cluster over the measured
   window (``/proc/<pid>/stat``);
3. every event line's arrival against the write it carries: commit-to-watcher latency
   from the write's acknowledgement at the writer (and, for reference, from when it was
   sent), both on the machine's monotonic clock; events delivered per second across all
   watchers; and the checks that every acknowledged write reached exactly its prefix's
   watcher and every whole-keyspace watcher.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import math
import multiprocessing
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .cpu import cpu_seconds, http_workers
from .rounds import geometric_mean, median, num, order_of, paired_ratios, sleep_until, spread
from .scenarios import rss_bytes
from .stats import percentile
from .target import RaftkvCluster
from .watch_load import WriteLog, WriteSpec, run_writes, watch_prefix
from .watch_streams import Deliveries, StreamsSpec, WatcherPool

GOAL_THROUGHPUT_RATIO = 0.85
GOAL_P99_MS = 50.0
GOAL_BYTES_PER_STREAM = 20_000
# Runs are 1e9 write ids apart, so a stray event of another run is never matched.
_IDS_PER_RUN = 1_000_000_000
_WRITER_START_S = 3.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_METRICS = re.compile(r"^(raftkv_http_watch\w*|raftkv_watch\w*) ([0-9.e+-]+)$", re.MULTILINE)

Say = Callable[[str], None]


@dataclass(slots=True)
class WatchBenchConfig:
    nodes: int = 3
    rounds: int = 2
    duration_s: float = 8.0
    warmup_s: float = 2.0
    concurrency: int = 64
    keys: int = 100_000
    value_size: int = 100
    prefixes: int = 1000
    all_watchers: int = 10
    seed: int = 1
    node_args: list[str] = field(default_factory=list)
    settle_s: float = 1.0
    drain_timeout_s: float = 15.0

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.prefixes < 1 or self.all_watchers < 0:
            raise ValueError("need at least one round and one prefix watcher")
        if self.keys < self.prefixes:
            raise ValueError(f"{self.keys} keys cannot cover {self.prefixes} prefixes")

    @property
    def stream_prefixes(self) -> list[str]:
        """Stream n watches prefix n for n < prefixes; the rest watch every key."""
        return [watch_prefix(p, self.prefixes) for p in range(self.prefixes)] + [
            ""
        ] * self.all_watchers

    def cluster_args(self) -> list[str]:
        """kvnode flags of the benchmark's cluster: the user's, plus room for every
        stream on the watched node's worker (--max-connections, per worker, default
        1000; --watch-max-per-client, default 4096) unless the user set them."""
        args = list(self.node_args)
        streams = self.prefixes + self.all_watchers
        # The streams, the writers (should leadership move to the watched node) and
        # the benchmark's own status requests.
        connections = max(4096, streams + self.concurrency + 64)
        if not any(a.startswith("--max-connections") for a in args):
            args.append(f"--max-connections={connections}")
        if streams > 4096 and not any(a.startswith("--watch-max-per-client") for a in args):
            args.append(f"--watch-max-per-client={streams}")
        return args


# ---------------------------------------------------------------------- processes


@dataclass(frozen=True, slots=True)
class NodeProcesses:
    raft: int
    workers: tuple[int, ...]

    @property
    def all(self) -> tuple[int, ...]:
        return (self.raft, *self.workers)


def node_processes(cluster: RaftkvCluster) -> dict[int, NodeProcesses]:
    """Node id → its Raft process and HTTP workers."""
    return {
        node: NodeProcesses(pid, http_workers(pid)) for node, pid in cluster.raft_pids().items()
    }


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy so far (``/proc/stat``: all but
    idle and iowait), whoever ran."""
    with open("/proc/stat") as handle:
        ticks = [int(x) for x in handle.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _CLOCK_TICKS


def runqueue_wait_seconds(pid: int) -> float:
    """Seconds the main thread of ``pid`` (the one running the event loop) spent ready
    to run but waiting for a core (``/proc/<pid>/schedstat``, second field): time lost
    to contention. Other threads (the fsync thread) are not counted."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def cpu_pressure_seconds() -> float:
    """Seconds during which some runnable task waited for a core (``/proc/pressure/cpu``,
    the ``some`` line's total); 0 where the kernel has no pressure information."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return int(line.rsplit("total=", 1)[1]) / 1e6
    return 0.0


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """CPU and run-queue seconds per pid, and the machine's busy and pressure seconds."""

    cpu: dict[int, float]
    waited: dict[int, float]
    machine_busy: float
    pressure: float

    @classmethod
    def take(cls, pids: Iterable[int]) -> CpuSnapshot:
        cpu, waited = {}, {}
        for pid in pids:
            with contextlib.suppress(OSError, IndexError, ValueError):
                cpu[pid] = cpu_seconds(pid)
                waited[pid] = runqueue_wait_seconds(pid)
        return cls(cpu, waited, machine_busy_seconds(), cpu_pressure_seconds())

    def since(self, before: CpuSnapshot) -> CpuSnapshot:
        return CpuSnapshot(
            {p: t - before.cpu[p] for p, t in self.cpu.items() if p in before.cpu},
            {p: t - before.waited[p] for p, t in self.waited.items() if p in before.waited},
            self.machine_busy - before.machine_busy,
            self.pressure - before.pressure,
        )


def _rss(processes: NodeProcesses) -> dict[str, int]:
    found = {"raft": rss_bytes(processes.raft)}
    for n, pid in enumerate(processes.workers):
        found[f"worker{n}"] = rss_bytes(pid)
    return found


def scrape_watch_metrics(url: str) -> dict[str, float]:
    """The node's watch counters and gauges from ``/metrics`` (empty if unavailable)."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=10.0).text
    except httpx.HTTPError:
        return {}
    return {name: float(value) for name, value in _METRICS.findall(text)}


# ---------------------------------------------------------------------- arithmetic


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """Count and percentiles (ms) of latencies that may be negative (an event can
    reach a follower's watcher before the leader's answer reaches the writer)."""
    ordered = sorted(seconds)
    if not ordered:
        return {"count": 0}
    return {
        "count": len(ordered),
        "min_ms": round(ordered[0] * 1000, 3),
        "p50_ms": round(percentile(ordered, 50) * 1000, 3),
        "p90_ms": round(percentile(ordered, 90) * 1000, 3),
        "p99_ms": round(percentile(ordered, 99) * 1000, 3),
        "p999_ms": round(percentile(ordered, 99.9) * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
        "negative_share": round(sum(1 for s in ordered if s < 0) / len(ordered), 4),
    }


def write_summary(log: WriteLog) -> dict[str, Any]:
    """Throughput and latency of the writes acknowledged inside the measured window."""
    start, end = log.window
    latencies = [a - s for s, a in zip(log.sent, log.acked, strict=True) if start <= a <= end]
    ordered = sorted(latencies)
    seconds = end - start
    return {
        "writes": len(ordered),
        "throughput": round(len(ordered) / seconds, 1) if seconds > 0 else 0.0,
        "p50_ms": round(percentile(ordered, 50) * 1000, 3),
        "p99_ms": round(percentile(ordered, 99) * 1000, 3),
        "p999_ms": round(percentile(ordered, 99.9) * 1000, 3),
        "max_ms": round((ordered[-1] if ordered else 0.0) * 1000, 3),
        "errors": log.errors,
        "first_error": log.first_error,
        "writes_sent": len(log.sent),
    }


def match_deliveries(
    log: WriteLog,
    deliveries: Deliveries,
    *,
    prefixes: int,
    all_watchers: int,
    timeline_s: float = 0.5,
) -> dict[str, Any]:
    """Every delivery against the write it carries: latencies of the writes acknowledged
    in the measured window, events per second arriving in it, and the routing checks
    (each acknowledged write exactly once at its prefix's stream and at every stream
    of the whole keyspace)."""
    start, end = log.window
    count = len(log.sent)
    at_prefix = [0] * count
    at_all = [0] * count
    from_ack: list[float] = []
    from_send: list[float] = []
    prefix_side: list[float] = []
    all_side: list[float] = []
    in_window = unknown = misrouted = 0
    # The latencies by when the write was acknowledged: a pause shows as a slice.
    slices = max(1, math.ceil((end - start) / timeline_s))
    slice_s = (end - start) / slices if end > start else 1.0
    by_slice: list[list[float]] = [[] for _ in range(slices)]
    sent, acked, keys, first = log.sent, log.acked, log.key, log.first_id
    for write_id, arrived, stream in zip(
        deliveries.ids, deliveries.times, deliveries.stream, strict=True
    ):
        n = write_id - first
        if not 0 <= n < count:
            unknown += 1
            continue
        if start <= arrived <= end:
            in_window += 1
        if stream < prefixes:
            if keys[n] % prefixes == stream:
                at_prefix[n] += 1
            else:
                misrouted += 1
        else:
            at_all[n] += 1
        acked_at = acked[n]
        if start <= acked_at <= end:
            late = arrived - acked_at
            from_ack.append(late)
            from_send.append(arrived - sent[n])
            (prefix_side if stream < prefixes else all_side).append(late)
            by_slice[min(int((acked_at - start) / slice_s), slices - 1)].append(late)
    missing = duplicates = unacked_delivered = 0
    for n in range(count):
        if math.isnan(acked[n]):
            unacked_delivered += at_prefix[n] + at_all[n]
            continue
        missing += max(0, 1 - at_prefix[n]) + max(0, all_watchers - at_all[n])
        duplicates += max(0, at_prefix[n] - 1) + max(0, at_all[n] - all_watchers)
    seconds = end - start
    return {
        "deliveries": len(deliveries.ids),
        "events_per_s": round(in_window / seconds, 1) if seconds > 0 else 0.0,
        "from_ack": latency_summary(from_ack),
        "from_send": latency_summary(from_send),
        "prefix_watchers_from_ack": latency_summary(prefix_side),
        "all_watchers_from_ack": latency_summary(all_side),
        "missing": missing,
        "duplicates": duplicates,
        "misrouted": misrouted,
        "unknown_ids": unknown,
        "delivered_unacknowledged": unacked_delivered,
        # [seconds into the window, p50 ms, p99 ms, max ms] of each slice.
        "timeline": [
            [round(i * slice_s, 2), *_slice_figures(late)] for i, late in enumerate(by_slice)
        ],
    }


def _slice_figures(seconds: list[float]) -> list[float]:
    ordered = sorted(seconds)
    if not ordered:
        return [0.0, 0.0, 0.0]
    return [
        round(percentile(ordered, 50) * 1000, 1),
        round(percentile(ordered, 99) * 1000, 1),
        round(ordered[-1] * 1000, 1),
    ]


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at the cluster during a run: the watched node's apply lag behind the
    leader's commit index (entries), and the run-queue seconds so far of the watched
    node's Raft process and workers and of the leader's Raft process."""

    at: float
    lag: int
    waited: tuple[float, float, float]


_WAIT_ROLES = ("watched_raft", "watched_workers", "leader_raft")


def sample_summary(
    samples: Sequence[Sample], window: tuple[float, float], slice_s: float = 0.5
) -> dict[str, Any]:
    """The apply lag (median and largest over the window, largest per slice) and the
    milliseconds each process spent waiting for a core in each slice, on the slices of
    the latency timeline: a slice whose watchers were late shows which it was."""
    start, end = window
    lags = sorted(s.lag for s in samples)
    slices = max(1, math.ceil((end - start) / slice_s))
    worst = [0] * slices
    waited = [[0.0] * slices for _ in _WAIT_ROLES]
    previous: Sample | None = None
    for sample in samples:
        n = min(max(int((sample.at - start) / slice_s), 0), slices - 1)
        worst[n] = max(worst[n], sample.lag)
        if previous is not None:
            for role, (now, before) in enumerate(zip(sample.waited, previous.waited, strict=True)):
                waited[role][n] += max(0.0, now - before) * 1000
        previous = sample
    return {
        "samples": len(lags),
        "median_entries": lags[len(lags) // 2] if lags else 0,
        "max_entries": lags[-1] if lags else 0,
        "timeline_max_entries": worst,
        "timeline_runqueue_wait_ms": {
            role: [round(ms, 1) for ms in waited[i]] for i, role in enumerate(_WAIT_ROLES)
        },
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per side, the with/without ratios and the verdict on each goal."""
    sides: dict[str, dict[str, Any]] = {}
    for side in ("base", "watch"):
        mine = [r for r in runs if r["side"] == side]
        sides[side] = {
            "runs": len(mine),
            "throughput": [r["writes"]["throughput"] for r in mine],
            "p50_ms": [r["writes"]["p50_ms"] for r in mine],
            "p99_ms": [r["writes"]["p99_ms"] for r in mine],
            "median_throughput": median([r["writes"]["throughput"] for r in mine]),
            "median_p50_ms": median([r["writes"]["p50_ms"] for r in mine]),
            "median_p99_ms": median([r["writes"]["p99_ms"] for r in mine]),
            "median_p999_ms": median([r["writes"]["p999_ms"] for r in mine]),
            "errors": sum(r["writes"]["errors"] for r in mine),
            "leader_changes": sum(r["leader_changes"] for r in mine),
        }
    base, watch = sides["base"]["median_throughput"], sides["watch"]["median_throughput"]
    pairs = paired_ratios(runs, lambda r: float(r["writes"]["throughput"]), "watch", "base")
    watched = [r for r in runs if r["side"] == "watch"]
    p99s = [r["watch"]["from_ack"].get("p99_ms", math.inf) for r in watched]
    memory = [r["memory"]["bytes_per_stream"] for r in watched]
    ratio = watch / base if base and watch is not None else None
    paired = geometric_mean(pairs)
    return {
        "sides": sides,
        "throughput_ratio": ratio,
        "paired_ratio": paired,
        "paired_ratios": pairs,
        "watch_from_ack_p50_ms": [r["watch"]["from_ack"].get("p50_ms") for r in watched],
        "watch_from_ack_p99_ms": p99s,
        "watch_from_ack_p999_ms": [r["watch"]["from_ack"].get("p999_ms") for r in watched],
        "watch_from_send_p99_ms": [r["watch"]["from_send"].get("p99_ms") for r in watched],
        "events_per_s": [r["watch"]["events_per_s"] for r in watched],
        "bytes_per_stream": memory,
        "goals": {
            "throughput_within_15_percent": {
                "target": f">= {GOAL_THROUGHPUT_RATIO} (paired ratio)",
                "met": paired is not None and paired >= GOAL_THROUGHPUT_RATIO,
            },
            "commit_to_watcher_p99": {
                "target": f"<= {GOAL_P99_MS:g} ms in every run",
                "met": bool(p99s) and max(p99s) <= GOAL_P99_MS,
            },
            "memory_per_idle_stream": {
                "target": f"<= {GOAL_BYTES_PER_STREAM} bytes (first opening on the node)",
                "met": bool(memory) and memory[0] <= GOAL_BYTES_PER_STREAM,
            },
            "events_per_s_reported": {"met": bool(watched)},
        },
    }


# ---------------------------------------------------------------------- logs


_LOG_LEVEL = re.compile(r" (WARNING|ERROR|CRITICAL) ")
_NUMBERS = re.compile(r"\d+(\.\d+)?")


def scan_logs(paths: Iterable[Path]) -> dict[str, Any]:
    """Warnings and errors in the nodes' logs, grouped with their numbers blanked."""
    levels: Counter[str] = Counter()
    shapes: Counter[str] = Counter()
    examples: dict[str, str] = {}
    tracebacks = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("Traceback"):
                    tracebacks += 1
                found = _LOG_LEVEL.search(line)
                if found is None:
                    continue
                levels[found.group(1)] += 1
                # Drop the timestamp; node names and numbers become N.
                shape = _NUMBERS.sub("N", line[found.start() :])
                shapes[shape] += 1
                examples.setdefault(shape, line)
    return {
        "counts": dict(levels),
        "tracebacks": tracebacks,
        "distinct": [
            {"count": n, "example": examples[shape]} for shape, n in shapes.most_common(20)
        ],
    }


_SNAPSHOT = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO (\S+) raftkv\.node: "
    r"snapshot at index \d+ \(\d+ bytes\) in (\d+) ms"
)


def snapshot_intervals(paths: Iterable[Path]) -> list[tuple[float, float, str]]:
    """(start, end, node) on the wall clock of every snapshot the nodes logged: each
    forks a child that rewrites the whole state, a burst of CPU on every node at once
    (they reach the same index together)."""
    found = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text(errors="replace").splitlines():
                match = _SNAPSHOT.match(line)
                if match is None:
                    continue
                stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
                end = stamp.timestamp()  # the log's local time, as time.time() counts
                found.append((end - int(match.group(3)) / 1000, end, match.group(2)))
    return sorted(found)


def snapshot_slices(
    run: dict[str, Any], intervals: Sequence[tuple[float, float, str]], slice_s: float = 0.5
) -> list[int]:
    """The slices of a run's timeline during which some node was taking a snapshot."""
    start = run.get("window_wallclock")
    if start is None or "watch" not in run:
        return []
    hit = []
    for n in range(len(run["watch"]["timeline"])):
        low, high = start + n * slice_s, start + (n + 1) * slice_s
        if any(begin < high and end > low for begin, end, _ in intervals):
            hit.append(n)
    return hit


# ---------------------------------------------------------------------- runs


class _Bench:
    def __init__(self, cluster: RaftkvCluster, config: WatchBenchConfig, say: Say) -> None:
        self.cluster = cluster
        self.config = config
        self.say = say
        self.writer = concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn")
        )
        self.runs = 0

    def roles(self) -> tuple[int, int, dict[int, NodeProcesses]]:
        """(leader, the follower that gets the watchers, every node's processes)."""
        leader = self.cluster.leader_id()
        processes = node_processes(self.cluster)
        followers = [n for n in processes if n != leader]
        # A single node has no follower: its watchers then share the leader.
        watched = min(followers) if followers else leader
        return leader, watched, processes

    def _url(self, node: int) -> str:
        local = self.cluster.local
        assert local is not None
        return local.url(node)

    def _warm_feed(self, url: str) -> None:
        """Open and close one stream: the worker's feed starts with its first watch."""
        with (
            httpx.Client(timeout=10.0) as client,
            client.stream("GET", f"{url}/watch", params={"prefix": "w/"}) as answer,
        ):
            answer.raise_for_status()
            next(answer.iter_lines())

    def _load(
        self, leader: int, watched: int, processes: dict[int, NodeProcesses]
    ) -> tuple[WriteLog, CpuSnapshot, float, list[Sample]]:
        """One write run; the CPU seconds each process used in its measured window, and
        the samples taken through it (``_sample``)."""
        config = self.config
        host, port = "127.0.0.1", int(self._url(leader).rsplit(":", 1)[1])
        start_at = time.monotonic() + _WRITER_START_S
        spec = WriteSpec(
            host=host,
            port=port,
            connections=config.concurrency,
            duration_s=config.duration_s,
            warmup_s=config.warmup_s,
            keys=config.keys,
            prefixes=config.prefixes,
            value_size=config.value_size,
            seed=config.seed * 1000 + self.runs,
            first_id=self.runs * _IDS_PER_RUN,
            start_at=start_at,
        )
        future = self.writer.submit(run_writes, spec)
        pids = [pid for p in processes.values() for pid in p.all]
        sleep_until(start_at + config.warmup_s)
        began, cpu_before = time.monotonic(), CpuSnapshot.take(pids)
        samples = self._sample(
            leader, watched, processes, start_at + config.warmup_s + config.duration_s
        )
        ended, cpu_after = time.monotonic(), CpuSnapshot.take(pids)
        log = future.result()
        used = cpu_after.since(cpu_before)
        late = log.window[0] - (start_at + config.warmup_s)
        if late > 0.1:
            self.say(f"watch: the writer started {late:.2f} s late; CPU window is off by that")
        return log, used, ended - began, samples

    def _sample(
        self,
        leader: int,
        watched: int,
        processes: dict[int, NodeProcesses],
        until: float,
        every_s: float = 0.05,
    ) -> list[Sample]:
        """Every ``every_s`` until ``until``: how far the watched node's applied index
        trails the leader's commit index (a follower applies a write, and its watchers
        hear of it, only after the leader committed it) and the run-queue waits."""
        samples: list[Sample] = []
        watched_url, leader_url = self._url(watched), self._url(leader)
        groups = (
            [processes[watched].raft],
            list(processes[watched].workers),
            [processes[leader].raft],
        )
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < until:
                with contextlib.suppress(httpx.HTTPError, KeyError, ValueError, OSError):
                    local = {"local": "true"}
                    applied = client.get(f"{watched_url}/cluster/status", params=local).json()
                    commit = client.get(f"{leader_url}/cluster/status", params=local).json()
                    waited = [sum(runqueue_wait_seconds(p) for p in pids) for pids in groups]
                    samples.append(
                        Sample(
                            time.monotonic(),
                            int(commit["commitIndex"]) - int(applied["appliedIndex"]),
                            (waited[0], waited[1], waited[2]),
                        )
                    )
                sleep_until(min(until, time.monotonic() + every_s))
        return samples

    @staticmethod
    def _cores(
        used: CpuSnapshot,
        seconds: float,
        processes: dict[int, NodeProcesses],
        roles: dict[str, int],
    ) -> dict[str, dict[str, float]]:
        """Cores used (CPU seconds per second) and the share of the window spent
        waiting for a core, per process of the cluster, and the machine's."""

        def share(values: dict[int, float], pids: Iterable[int]) -> float:
            return round(sum(values.get(pid, 0.0) for pid in pids) / seconds, 3)

        every = [pid for p in processes.values() for pid in p.all]
        cores = {
            "machine_busy": round(used.machine_busy / seconds, 3),
            "cluster": share(used.cpu, every),
        }
        waited = {"machine_some_pressure": round(used.pressure / seconds, 3)}
        for role, node in roles.items():
            p = processes[node]
            cores[f"{role}_raft"] = share(used.cpu, [p.raft])
            cores[f"{role}_workers"] = share(used.cpu, p.workers)
            waited[f"{role}_raft"] = share(used.waited, [p.raft])
            waited[f"{role}_workers"] = share(used.waited, p.workers)
        return {"cores": cores, "runqueue_wait": waited}

    def run(self, side: str, round_number: int) -> dict[str, Any]:
        config = self.config
        self.runs += 1
        leader, watched, processes = self.roles()
        others = [n for n in processes if n not in (leader, watched)]
        roles = {"leader": leader, "watched": watched}
        roles.update({("other" if len(others) == 1 else f"other{n}"): n for n in others})
        url = self._url(watched)
        term_before = self.cluster.term()
        result: dict[str, Any] = {
            "side": side,
            "round": round_number,
            "leader": leader,
            "watched_node": watched,
        }
        pool: WatcherPool | None = None
        try:
            if side == "watch":
                self._warm_feed(url)
                time.sleep(config.settle_s / 2)
                rss_before = _rss(processes[watched])
                prefixes = config.stream_prefixes
                pool = WatcherPool(StreamsSpec("127.0.0.1", int(url.rsplit(":", 1)[1]), prefixes))
                opened = pool.open()
                if opened.started != len(prefixes):
                    raise RuntimeError(
                        f"{opened.started} of {len(prefixes)} watch streams started on node "
                        f"{watched}: {opened.first_failure}"
                    )
                time.sleep(config.settle_s)
                rss_after = _rss(processes[watched])
                grown = sum(rss_after.values()) - sum(rss_before.values())
                result["memory"] = {
                    "streams": len(prefixes),
                    "open_s": round(opened.seconds, 2),
                    "rss_before": rss_before,
                    "rss_after": rss_after,
                    "bytes_per_stream": round(grown / len(prefixes)),
                }
                metrics_before = scrape_watch_metrics(url)
            log, used, seconds, samples = self._load(leader, watched, processes)
            result["writes"] = write_summary(log)
            # The window on the wall clock, to line it up with the nodes' logs.
            result["window_wallclock"] = round(time.time() - time.monotonic() + log.window[0], 3)
            result["samples"] = sample_summary(samples, log.window)
            result["writer_cpu"] = round(log.cpu_s / (config.duration_s + config.warmup_s), 3)
            result["cpu"] = self._cores(used, seconds, processes, roles)
            if pool is not None:
                expected = log.ok_count() * (1 + config.all_watchers)
                deliveries = pool.finish(expected, config.drain_timeout_s)
                result["watch"] = match_deliveries(
                    log, deliveries, prefixes=config.prefixes, all_watchers=config.all_watchers
                )
                result["watch"].update(
                    lines=deliveries.lines,
                    bytes=deliveries.bytes,
                    progress_lines=deliveries.progress,
                    resync_lines=deliveries.resyncs,
                    out_of_order=deliveries.out_of_order,
                    unparsed=deliveries.unparsed,
                    closed_by_server=deliveries.closed_by_server,
                    reader_cpu=round(deliveries.cpu_s / max(deliveries.seconds, 1e-9), 3),
                    reader_loop_lag_p99_ms=deliveries.loop_lag_p99_ms,
                    reader_loop_lag_max_ms=deliveries.loop_lag_max_ms,
                )
                after = scrape_watch_metrics(url)
                # Counters as their change over the run, gauges as they are at its end.
                result["watch"]["node_metrics"] = {
                    name: value - metrics_before.get(name, 0.0)
                    if name.endswith("_total")
                    else value
                    for name, value in after.items()
                }
        finally:
            if pool is not None:
                pool.close()
        result["leader_changes"] = max(0, self.cluster.term() - term_before)
        return result

    def close(self) -> None:
        self.writer.shutdown(wait=True)


def run_watch_bench(
    config: WatchBenchConfig, output: Path | None = None, say: Say | None = None
) -> dict[str, Any]:
    """The whole benchmark on a fresh cluster; returns the results document (and
    copies the nodes' logs to ``output/logs`` when given)."""
    tell = say or (lambda _: None)
    with RaftkvCluster(nodes=config.nodes, extra_args=config.cluster_args()) as cluster:
        bench = _Bench(cluster, config, tell)
        runs: list[dict[str, Any]] = []
        try:
            for round_number in range(config.rounds):
                order = order_of(round_number, "base", "watch")
                for side in order:
                    tell(f"watch: round {round_number + 1}/{config.rounds}, {side}")
                    runs.append(bench.run(side, round_number))
        finally:
            bench.close()
            local = cluster.local
            logs = [node.log_path for node in local.nodes.values()] if local else []
            found = scan_logs(logs)
            intervals = snapshot_intervals(logs)
            for run in runs:
                if "watch" in run:
                    run["watch"]["snapshot_slices"] = snapshot_slices(run, intervals)
            if output is not None:
                (output / "logs").mkdir(parents=True, exist_ok=True)
                for path in logs:
                    with contextlib.suppress(FileNotFoundError):
                        shutil.copy(path, output / "logs" / path.name)
        return {
            "config": {
                "nodes": config.nodes,
                "rounds": config.rounds,
                "duration_s": config.duration_s,
                "warmup_s": config.warmup_s,
                "concurrency": config.concurrency,
                "keys": config.keys,
                "value_size": config.value_size,
                "prefix_watchers": config.prefixes,
                "all_watchers": config.all_watchers,
                "node_args": config.cluster_args(),
            },
            "runs": runs,
            "summary": summarise(runs),
            "logs": found,
        }


# ---------------------------------------------------------------------- the report


def _cpu_lines(runs: list[dict[str, Any]]) -> list[str]:
    """Medians per side of the cores the watched node used and of the machine's load."""
    lines = []
    for side in ("base", "watch"):
        mine = [r["cpu"] for r in runs if r["side"] == side]
        if not mine:
            continue

        def med(kind: str, name: str, of: list[dict[str, Any]] = mine) -> str:
            return num(median([c[kind].get(name, 0.0) for c in of]), ".2f")

        lines.append(
            f"CPU {side:<5} (cores, medians): watched node's workers "
            f"{med('cores', 'watched_workers')}, Raft process {med('cores', 'watched_raft')}; "
            f"leader's workers {med('cores', 'leader_workers')}, Raft process "
            f"{med('cores', 'leader_raft')}; cluster {med('cores', 'cluster')}, machine busy "
            f"{med('cores', 'machine_busy')} of the cores, a task waiting for a core "
            f"{med('runqueue_wait', 'machine_some_pressure')} of the time"
        )
    return lines


def late_slices(run: dict[str, Any]) -> dict[str, Any]:
    """The half-second slices of a watched run whose watchers' p99 missed the goal,
    with the run-queue wait of the watched node's Raft process in them and in the
    other slices (medians, ms)."""
    timeline = run["watch"]["timeline"]
    waits = run["samples"]["timeline_runqueue_wait_ms"]["watched_raft"]
    late = [i for i, row in enumerate(timeline) if row[2] > GOAL_P99_MS]
    others = [i for i in range(len(timeline)) if i not in late]
    snapshots = set(run["watch"].get("snapshot_slices", []))
    return {
        "late": len(late),
        "slices": len(timeline),
        "late_with_snapshot": len(snapshots.intersection(late)),
        "with_snapshot": len(snapshots),
        "wait_late_ms": median([waits[i] for i in late if i < len(waits)]),
        "wait_other_ms": median([waits[i] for i in others if i < len(waits)]),
        "p99_other_ms": median([timeline[i][2] for i in others]),
    }


def _stall_lines(runs: list[dict[str, Any]]) -> list[str]:
    lines = []
    for run in runs:
        if "watch" not in run:
            continue
        found = late_slices(run)
        lines.append(
            f"round {run['round'] + 1}: {found['late']} of {found['slices']} half-second "
            f"slices had a watcher p99 over {GOAL_P99_MS:g} ms ({found['late_with_snapshot']} "
            f"of them during a snapshot; {found['with_snapshot']} slices had one); the "
            f"watched node's Raft process waited for a core "
            f"{num(found['wait_late_ms'], '.0f')} ms in those (median), "
            f"{num(found['wait_other_ms'], '.0f')} ms in the others, whose p99 was "
            f"{num(found['p99_other_ms'], '.1f')} ms (median)"
        )
    return lines


def format_report(document: dict[str, Any]) -> str:
    runs = document["runs"]
    summary = document["summary"]
    header = (
        f"{'round':>5} {'side':<6}{'writes/s':>10}{'p50 ms':>8}{'p99 ms':>8}{'p99.9':>8}"
        f"{'err':>5}{'elect':>6}{'watch p50':>10}{'watch p99':>10}{'watch p99.9':>12}"
        f"{'events/s':>10}{'missing':>8}{'B/stream':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in runs:
        w = r["writes"]
        watch = r.get("watch", {})
        lines.append(
            f"{r['round'] + 1:>5} {r['side']:<6}{w['throughput']:>10,.0f}{w['p50_ms']:>8.1f}"
            f"{w['p99_ms']:>8.1f}{w['p999_ms']:>8.1f}{w['errors']:>5}{r['leader_changes']:>6}"
            f"{num(watch.get('from_ack', {}).get('p50_ms'), '.1f'):>10}"
            f"{num(watch.get('from_ack', {}).get('p99_ms'), '.1f'):>10}"
            f"{num(watch.get('from_ack', {}).get('p999_ms'), '.1f'):>12}"
            f"{num(watch.get('events_per_s')):>10}{num(watch.get('missing'), 'd'):>8}"
            f"{num(r.get('memory', {}).get('bytes_per_stream')):>9}"
        )
    sides = summary["sides"]
    goals = summary["goals"]

    def verdict(name: str) -> str:
        return "met" if goals[name]["met"] else "MISSED"

    lines += [
        "",
        f"writes/s without watchers {spread(sides['base']['throughput'], ',.0f')}, "
        f"with {spread(sides['watch']['throughput'], ',.0f')}: ratio of medians "
        f"{num(summary['throughput_ratio'], '.3f')}x, paired "
        f"{num(summary['paired_ratio'], '.3f')}x "
        f"({spread(summary['paired_ratios'], '.3f')}); "
        f"goal >= {GOAL_THROUGHPUT_RATIO}: {verdict('throughput_within_15_percent')}",
        f"write p50/p99/p99.9 without watchers {num(sides['base']['median_p50_ms'], '.1f')}/"
        f"{num(sides['base']['median_p99_ms'], '.1f')}/"
        f"{num(sides['base'].get('median_p999_ms'), '.1f')} ms, with "
        f"{num(sides['watch']['median_p50_ms'], '.1f')}/"
        f"{num(sides['watch']['median_p99_ms'], '.1f')}/"
        f"{num(sides['watch'].get('median_p999_ms'), '.1f')} ms (medians of the runs)",
        f"commit-to-watcher (from the acknowledgement) p50 "
        f"{spread(summary['watch_from_ack_p50_ms'], '.1f')} ms, p99 "
        f"{spread(summary['watch_from_ack_p99_ms'], '.1f')} ms, p99.9 "
        f"{spread(summary.get('watch_from_ack_p999_ms', []), '.1f')} ms; goal <= "
        f"{GOAL_P99_MS:g} ms (p99): {verdict('commit_to_watcher_p99')}",
        f"from the send, p99 {spread(summary['watch_from_send_p99_ms'], '.1f')} ms",
        f"events delivered per second, all watchers: {spread(summary['events_per_s'], ',.0f')}",
        f"memory per idle stream: {spread(summary['bytes_per_stream'], ',.0f')} bytes; "
        f"goal <= {GOAL_BYTES_PER_STREAM:,}: {verdict('memory_per_idle_stream')}",
    ]
    lines += _cpu_lines(runs)
    lines += _stall_lines(runs)
    watched = [r["watch"] for r in runs if "watch" in r]
    behind = [w["node_metrics"].get("raftkv_http_watch_slow_total") for w in watched]
    lines.append(
        "watchers' client: CPU "
        f"{spread([w['reader_cpu'] for w in watched], '.2f')} cores, its loop late by at "
        f"most {spread([w['reader_loop_lag_max_ms'] for w in watched], '.0f')} ms; "
        f"missing/duplicate/misrouted events "
        f"{sum(w['missing'] for w in watched)}/{sum(w['duplicates'] for w in watched)}/"
        f"{sum(w['misrouted'] for w in watched)}; watchers that fell behind (node metric) "
        f"{spread(behind, '.0f')}"
    )
    logs = document["logs"]
    lines.append(
        f"node logs: {logs['counts'] or 'no warnings or errors'}"
        + (f", {logs['tracebacks']} tracebacks" if logs["tracebacks"] else "")
    )
    for item in logs["distinct"][:5]:
        lines.append(f"  {item['count']:>5} x {item['example'][:160]}")
    return "\n".join(lines)
