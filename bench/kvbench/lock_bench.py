"""The lock benchmark (``kvbench --scenario lock``): how many times a second the Python
lock recipe (``raftkv.client.Lock``, docs/client.md "Locks and elections") can be taken
and given back, and how long taking and giving it back take, on one fresh local cluster
(fsync on) in one invocation.

Each run has ``threads`` client threads, in a process of their own (spawned), each with
its own ``raftkv.client.Client`` given every node's URL (the leader's first), each
repeating what ``with Lock(client, name): pass`` does: ``lock = Lock(client, name)``,
``lock.acquire()``, ``lock.release()``, with the Lock's default TTL, timing the two
calls. An acquire is a lease grant, a key attached to it, a listing of the lock's queue
and, when someone holds the lock, a watch of the key before one's own until it is
deleted; a release stops the lease's keeper and revokes the lease.

- **contended**: every thread takes the same lock name;
- **uncontended**: each thread takes a lock name of its own.

Runs of the two modes alternate, the order turning every round (uncontended,
contended, contended, uncontended, ...), for each thread count of ``--concurrency``
(``1,4,16`` makes a sweep). Figures are of the acquisitions whose ``acquire()`` returned
inside the measured window (after the warm-up): acquisitions/s, and acquire and release
latency. With the lock contended, every acquisition (warm-up too) is checked against the
others: in the order the holders got the lock, each one must have got it after the one
before called ``release()``, with a higher fencing token. One Python process drives the
threads: its CPU is reported (cores), so that a client-bound figure shows as one.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import itertools
import multiprocessing
import resource
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from raftkv.client import Client, Lock

from . import rounds
from .rounds import geometric_mean, median, num, paired_ratios, sleep_until, spread
from .stats import percentile
from .target import RaftkvCluster
from .watch_bench import CpuSnapshot, node_processes

MODES: Final = ("uncontended", "contended")
LOCK_TTL_S: Final = float(inspect.signature(Lock).parameters["ttl"].default)
# Time for the threads' process to start (the first time: to import the client) and for
# every thread to have its client.
_GENERATOR_START_S = 3.0

Say = Callable[[str], None]


@dataclass(slots=True)
class LockBenchConfig:
    nodes: int = 3
    rounds: int = 2
    duration_s: float = 10.0
    warmup_s: float = 2.0
    concurrency: list[int] = field(default_factory=lambda: [4])
    seed: int = 1
    node_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.rounds < 1 or not self.concurrency:
            raise ValueError("need at least one round and one thread count")
        if min(self.concurrency) < 1 or self.duration_s <= 0:
            raise ValueError("thread counts and duration must be positive")


def order_of(round_number: int) -> tuple[str, str]:
    """uncontended, contended in even rounds; contended, uncontended in odd ones."""
    return rounds.order_of(round_number, "uncontended", "contended")


def lock_names(mode: str, base: str, threads: int) -> list[str]:
    """The lock name of each thread: one for all (contended) or one each."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
    if mode == "contended":
        return [base] * threads
    return [f"{base}-{n}" for n in range(threads)]


@dataclass(slots=True)
class LockSpec:
    """One run (picklable: it crosses to the threads' process)."""

    endpoints: list[str]
    mode: str
    threads: int
    duration_s: float
    warmup_s: float
    name: str
    start_at: float = 0.0


@dataclass(slots=True)
class LockResult:
    """Every acquisition of a run: thread ``n`` called ``acquire()`` at ``began``, it
    returned ``token`` at ``acquired``, ``release()`` was called at ``releasing`` and
    returned at ``released``."""

    mode: str
    threads: int
    began: array[float] = field(default_factory=lambda: array("d"))
    acquired: array[float] = field(default_factory=lambda: array("d"))
    releasing: array[float] = field(default_factory=lambda: array("d"))
    released: array[float] = field(default_factory=lambda: array("d"))
    tokens: array[int] = field(default_factory=lambda: array("q"))
    errors: int = 0
    warmup_errors: int = 0
    first_error: str = ""
    window: tuple[float, float] = (0.0, 0.0)
    cpu_s: float = 0.0


def _thread(
    client: Client,
    name: str,
    deadline: float,
    result: LockResult,
    guard: threading.Lock,
) -> None:
    window_start = result.window[0]
    while (began := time.monotonic()) < deadline:
        lock = Lock(client, name)
        try:
            token = lock.acquire()
            acquired = time.monotonic()
            releasing = time.monotonic()
            lock.release()
            released = time.monotonic()
        except Exception as exc:  # counted and shown; the thread goes on
            now = time.monotonic()
            with guard:
                if now < window_start:
                    result.warmup_errors += 1
                elif now <= deadline:
                    result.errors += 1
                result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"
            time.sleep(0.05)
            continue
        with guard:
            result.began.append(began)
            result.acquired.append(acquired)
            result.releasing.append(releasing)
            result.released.append(released)
            result.tokens.append(token)


def run_locks(spec: LockSpec) -> LockResult:
    """Run ``spec.threads`` threads until the warm-up and the measured duration are
    over; return every acquisition (and the CPU this process used)."""
    names = lock_names(spec.mode, spec.name, spec.threads)
    clients = [Client(spec.endpoints) for _ in range(spec.threads)]
    sleep_until(spec.start_at)
    start = max(time.monotonic(), spec.start_at)
    deadline = start + spec.warmup_s + spec.duration_s
    result = LockResult(spec.mode, spec.threads, window=(start + spec.warmup_s, deadline))
    guard = threading.Lock()
    before = resource.getrusage(resource.RUSAGE_SELF)
    threads = [
        threading.Thread(
            target=_thread, args=(client, name, deadline, result, guard), name=f"locker-{n}"
        )
        for n, (client, name) in enumerate(zip(clients, names, strict=True))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = resource.getrusage(resource.RUSAGE_SELF)
    result.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    for client in clients:
        client.close()
    return result


def exclusion_check(result: LockResult) -> dict[str, int]:
    """In the order the holders got the lock: how many got it before the one before them
    called ``release()`` (overlaps), and how many had a fencing token not above theirs."""
    order = sorted(range(len(result.acquired)), key=lambda i: result.acquired[i])
    overlaps = lower_tokens = 0
    for before, after in itertools.pairwise(order):
        if result.acquired[after] < result.releasing[before]:
            overlaps += 1
        if result.tokens[after] <= result.tokens[before]:
            lower_tokens += 1
    return {"acquisitions": len(order), "overlaps": overlaps, "tokens_not_increasing": lower_tokens}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def run_summary(result: LockResult) -> dict[str, Any]:
    """Acquisitions/s and the latencies of the acquisitions that returned in the window."""
    start, end = result.window
    seconds = end - start
    measured = [i for i, at in enumerate(result.acquired) if start <= at <= end]
    acquire = sorted(result.acquired[i] - result.began[i] for i in measured)
    release = sorted(result.released[i] - result.releasing[i] for i in measured)
    found: dict[str, Any] = {
        "acquisitions": len(measured),
        "per_s": round(len(measured) / seconds, 1) if seconds > 0 else 0.0,
        "acquire_p50_ms": _ms(percentile(acquire, 50)),
        "acquire_p99_ms": _ms(percentile(acquire, 99)),
        "acquire_p999_ms": _ms(percentile(acquire, 99.9)),
        "acquire_max_ms": _ms(acquire[-1] if acquire else 0.0),
        "release_p50_ms": _ms(percentile(release, 50)),
        "release_p99_ms": _ms(percentile(release, 99)),
        "release_p999_ms": _ms(percentile(release, 99.9)),
        "release_max_ms": _ms(release[-1] if release else 0.0),
        "errors": result.errors,
        "warmup_errors": result.warmup_errors,
        "first_error": result.first_error,
        "seconds": round(seconds, 3),
    }
    if result.mode == "contended":
        found["exclusion"] = exclusion_check(result)
    return found


class _Bench:
    def __init__(self, cluster: RaftkvCluster, config: LockBenchConfig, say: Say) -> None:
        self.cluster = cluster
        self.config = config
        self.say = say
        # spawn, not fork: this process holds threads (the cluster's log readers).
        self.generator = concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn")
        )
        self.runs = 0

    def run(self, mode: str, threads: int, round_number: int) -> dict[str, Any]:
        config = self.config
        self.runs += 1
        local = self.cluster.local
        assert local is not None, "the lock benchmark needs a cluster kvbench started"
        leader = self.cluster.leader_id()
        urls = [local.url(leader)] + [u for u in self.cluster.urls() if u != local.url(leader)]
        processes = node_processes(self.cluster)
        term_before = self.cluster.term()
        start_at = time.monotonic() + _GENERATOR_START_S
        spec = LockSpec(
            endpoints=urls,
            mode=mode,
            threads=threads,
            duration_s=config.duration_s,
            warmup_s=config.warmup_s,
            name=f"kvbench{self.runs:04d}",
            start_at=start_at,
        )
        future = self.generator.submit(run_locks, spec)
        pids = [pid for p in processes.values() for pid in p.all]
        sleep_until(start_at + config.warmup_s)
        began, before = time.monotonic(), CpuSnapshot.take(pids)
        sleep_until(start_at + config.warmup_s + config.duration_s)
        ended, after = time.monotonic(), CpuSnapshot.take(pids)
        result = future.result()
        load = run_summary(result)
        late = result.window[0] - (start_at + config.warmup_s)
        if late > 0.1:
            self.say(f"lock: the threads started {late:.2f} s late; CPU window is off by that")
        used = after.since(before)
        cluster_cpu = sum(used.cpu.values())
        seconds = max(ended - began, 1e-9)
        count = load["acquisitions"]
        return {
            "mode": mode,
            "threads": threads,
            "round": round_number,
            "leader": leader,
            "load": load,
            "client_cpu": round(result.cpu_s / (config.duration_s + config.warmup_s), 3),
            "cpu": {
                "cluster": round(cluster_cpu / seconds, 3),
                "machine_busy": round(used.machine_busy / seconds, 3),
                "cluster_ms_per_acquisition": round(cluster_cpu * 1000 / count, 3)
                if count
                else 0.0,
            },
            "leader_changes": max(0, self.cluster.term() - term_before),
        }

    def close(self) -> None:
        self.generator.shutdown(wait=True)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per thread count and mode: the medians of the runs; contended/uncontended paired."""
    found: dict[str, Any] = {}
    for threads in sorted({r["threads"] for r in runs}):
        mine = [r for r in runs if r["threads"] == threads]
        modes: dict[str, Any] = {}
        for mode in MODES:
            loads = [r["load"] for r in mine if r["mode"] == mode]

            def med(name: str, of: list[dict[str, Any]] = loads) -> float | None:
                return median([m[name] for m in of])

            modes[mode] = {
                "runs": len(loads),
                "per_s": [m["per_s"] for m in loads],
                "median_per_s": med("per_s"),
                "median_acquire_p50_ms": med("acquire_p50_ms"),
                "median_acquire_p99_ms": med("acquire_p99_ms"),
                "median_acquire_p999_ms": med("acquire_p999_ms"),
                "median_release_p50_ms": med("release_p50_ms"),
                "median_release_p99_ms": med("release_p99_ms"),
                "median_release_p999_ms": med("release_p999_ms"),
                "acquisitions": sum(m["acquisitions"] for m in loads),
                "errors": sum(m["errors"] for m in loads),
                "warmup_errors": sum(m["warmup_errors"] for m in loads),
                "leader_changes": sum(r["leader_changes"] for r in mine if r["mode"] == mode),
                "median_client_cpu": median([r["client_cpu"] for r in mine if r["mode"] == mode]),
            }
        exclusion = [r["load"]["exclusion"] for r in mine if "exclusion" in r["load"]]
        modes["contended"]["overlaps"] = sum(e["overlaps"] for e in exclusion)
        modes["contended"]["tokens_not_increasing"] = sum(
            e["tokens_not_increasing"] for e in exclusion
        )
        pairs = paired_ratios(
            [{**r, "side": r["mode"]} for r in mine],
            lambda r: float(r["load"]["per_s"]),
            "contended",
            "uncontended",
        )
        found[str(threads)] = {
            "modes": modes,
            "contended_paired_ratio": geometric_mean(pairs),
            "contended_paired_ratios": pairs,
        }
    return {"by_threads": found}


def run_lock_bench(config: LockBenchConfig, say: Say | None = None) -> dict[str, Any]:
    """The whole benchmark on a fresh cluster; returns the results document."""
    tell = say or (lambda _: None)
    with RaftkvCluster(nodes=config.nodes, extra_args=config.node_args) as cluster:
        bench = _Bench(cluster, config, tell)
        runs: list[dict[str, Any]] = []
        try:
            for threads in config.concurrency:
                for round_number in range(config.rounds):
                    for mode in order_of(round_number):
                        tell(
                            f"lock: {threads} threads, round {round_number + 1}/"
                            f"{config.rounds}, {mode}"
                        )
                        runs.append(bench.run(mode, threads, round_number))
        finally:
            bench.close()
        return {
            "config": {
                "nodes": config.nodes,
                "rounds": config.rounds,
                "duration_s": config.duration_s,
                "warmup_s": config.warmup_s,
                "threads": config.concurrency,
                "lock_ttl_s": LOCK_TTL_S,
                "seed": config.seed,
                "node_args": config.node_args,
                "loop": "lock = Lock(client, name); lock.acquire(); lock.release()",
            },
            "runs": runs,
            "summary": summarise(runs),
        }


# ---------------------------------------------------------------------- the report


def format_report(document: dict[str, Any]) -> str:
    runs = document["runs"]
    summary = document["summary"]["by_threads"]
    header = (
        f"{'threads':>7} {'round':>5} {'mode':<12}{'acq/s':>8}{'acq p50':>9}{'acq p99':>9}"
        f"{'rel p50':>9}{'rel p99':>9}{'err':>5}{'elect':>6}{'client cpu':>11}"
    )
    lines = [header, "-" * len(header)]
    for r in runs:
        load = r["load"]
        lines.append(
            f"{r['threads']:>7} {r['round'] + 1:>5} {r['mode']:<12}{load['per_s']:>8,.1f}"
            f"{load['acquire_p50_ms']:>9.1f}{load['acquire_p99_ms']:>9.1f}"
            f"{load['release_p50_ms']:>9.1f}{load['release_p99_ms']:>9.1f}"
            f"{load['errors']:>5}{r['leader_changes']:>6}{r['client_cpu']:>11.2f}"
        )
    lines.append("")
    for threads, found in summary.items():
        for mode in MODES:
            m = found["modes"][mode]
            extra = ""
            if mode == "contended":
                extra = (
                    f"; exclusion: {m['overlaps']} overlaps, {m['tokens_not_increasing']} "
                    f"tokens not increasing"
                )
            lines.append(
                f"{threads:>3} threads, {mode:<11}: {spread(m['per_s'], ',.1f')} acquisitions/s"
                f" (median {num(m['median_per_s'], ',.1f')}); acquire p50/p99/p99.9 "
                f"{num(m['median_acquire_p50_ms'], '.1f')}/"
                f"{num(m['median_acquire_p99_ms'], '.1f')}/"
                f"{num(m.get('median_acquire_p999_ms'), '.1f')} ms, release p50/p99/p99.9 "
                f"{num(m['median_release_p50_ms'], '.1f')}/"
                f"{num(m['median_release_p99_ms'], '.1f')}/"
                f"{num(m.get('median_release_p999_ms'), '.1f')} ms (medians of the runs); errors "
                f"{m['errors']} (+{m['warmup_errors']} in warm-ups), leader changes "
                f"{m['leader_changes']}, client CPU {num(m['median_client_cpu'], '.2f')} "
                f"cores{extra}"
            )
        lines.append(
            f"{threads:>3} threads, contended/uncontended acquisitions/s, paired: "
            f"{num(found['contended_paired_ratio'], '.3f')}x "
            f"({spread(found['contended_paired_ratios'], '.3f')})"
        )
    first = [r["load"]["first_error"] for r in runs if r["load"]["first_error"]]
    if first:
        lines.append(f"first error: {first[0][:200]}")
    return "\n".join(lines)
