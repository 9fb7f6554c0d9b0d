"""A benchmark plan and its execution: every combination of workload, value size and
concurrency against raftkv (HTTP and/or native protocol), and the same HTTP runs against
each baseline, all in one invocation so that ratios compare like with like."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .closed_loop import random_chooser, sequential_chooser
from .http_load import Encoder, encode_raftkv, run_http_load
from .native_load import preload_native, run_native_load
from .stats import RunResult
from .target import RaftkvCluster
from .workloads import Workload
from .wrk import find_wrk, raftkv_wrk_script, run_wrk


@dataclass(slots=True)
class Plan:
    workloads: list[str] = field(default_factory=lambda: ["write"])
    value_sizes: list[int] = field(default_factory=lambda: [100])
    concurrency: list[int] = field(default_factory=lambda: [64])
    protocols: list[str] = field(default_factory=lambda: ["http"])
    compare: list[str] = field(default_factory=list)
    nodes: int = 3
    duration_s: float = 10.0
    warmup_s: float = 2.0
    keys: int = 100_000
    driver: str = "auto"  # wrk when installed, else the built-in generator
    generator_processes: int = 1
    native_depth: int = 16
    seed: int = 1
    endpoints: list[str] = field(default_factory=list)
    native_endpoints: list[str] = field(default_factory=list)
    node_args: list[str] = field(default_factory=list)

    def workload_list(self) -> list[Workload]:
        return [
            Workload(name, size, self.keys) for size in self.value_sizes for name in self.workloads
        ]

    def run_count(self) -> int:
        per_target = len(self.workloads) * len(self.value_sizes) * len(self.concurrency)
        http_targets = self.protocols.count("http") + len([c for c in self.compare if c == "etcd"])
        native = self.protocols.count("native")
        return per_target * (http_targets + native) + self.compare.count("pysyncobj") * len(
            self.concurrency
        )

    def http_driver(self) -> str:
        if self.driver == "auto":
            return "wrk" if find_wrk() else "python"
        return self.driver


class Progress:
    """Calls ``tick(label, fraction)`` about every half second while a run is going."""

    def __init__(self, tick: Callable[[str, float], None] | None = None) -> None:
        self._tick = tick

    @contextmanager
    def run(self, label: str, seconds: float) -> Iterator[None]:
        if self._tick is None:
            yield
            return
        tick = self._tick
        stop = threading.Event()
        started = time.monotonic()

        def loop() -> None:
            while not stop.wait(0.5):
                # Below 1.0 until the run really ends: 1.0 marks it done.
                tick(label, min(0.99, (time.monotonic() - started) / max(seconds, 0.1)))

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            tick(label, 1.0)


def url_host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    return parts.hostname, parts.port


def http_run(
    *,
    target: str,
    url: str,
    workload: Workload,
    concurrency: int,
    plan: Plan,
    wrk_script: str,
    encode: Encoder,
    nodes: int,
) -> RunResult:
    driver = plan.http_driver()
    common = {
        "target": target,
        "workload": workload.name,
        "value_size": workload.value_size,
        "concurrency": concurrency,
        "nodes": nodes,
    }
    if driver == "wrk":
        # wrk's own warm-up is a short run whose numbers are dropped.
        if plan.warmup_s > 0:
            run_wrk(url, wrk_script, connections=concurrency, duration_s=plan.warmup_s)
        out = run_wrk(url, wrk_script, connections=concurrency, duration_s=plan.duration_s)
        return RunResult(
            duration_s=out.duration_s,
            requests=out.requests,
            errors=out.errors,
            p50_ms=out.p50_ms,
            p99_ms=out.p99_ms,
            p999_ms=out.p999_ms,
            max_ms=out.max_ms,
            driver="wrk",
            generator_cpu=out.cpu_cores,
            **common,  # type: ignore[arg-type]
        )
    host, port = url_host_port(url)
    started_cpu = time.process_time()
    latencies, errors, measured = run_http_load(
        host,
        port,
        random_chooser(workload, plan.seed),
        connections=concurrency,
        duration_s=plan.duration_s,
        warmup_s=plan.warmup_s,
        stale=workload.stale,
        encode=encode,
    )
    cpu = (time.process_time() - started_cpu) / (plan.duration_s + plan.warmup_s)
    return RunResult.from_latencies(
        latencies,
        errors=errors,
        duration_s=measured,
        driver="python",
        generator_cpu=cpu,
        **common,
    )


def run_raftkv(plan: Plan, progress: Progress, results: list[RunResult]) -> None:
    with RaftkvCluster(
        nodes=plan.nodes,
        endpoints=plan.endpoints or None,
        native_endpoints=plan.native_endpoints or None,
        extra_args=plan.node_args,
    ) as cluster:
        for workload in plan.workload_list():
            if workload.reads:
                with progress.run(f"raftkv preload {workload.keys} keys", 20):
                    preload_raftkv(cluster, workload)
            for protocol in plan.protocols:
                for concurrency in plan.concurrency:
                    label = f"raftkv-{protocol} {workload.label} c={concurrency}"
                    term_before = cluster.term()
                    with progress.run(label, plan.duration_s + plan.warmup_s):
                        if protocol == "http":
                            result = http_run(
                                target="raftkv-http",
                                url=cluster.leader_url(),
                                workload=workload,
                                concurrency=concurrency,
                                plan=plan,
                                wrk_script=raftkv_wrk_script(workload, plan.seed),
                                encode=encode_raftkv,
                                nodes=cluster.size,
                            )
                        else:
                            host, port = cluster.native_addr()
                            latencies, errors, measured, cpu = run_native_load(
                                host,
                                port,
                                workload,
                                concurrency=concurrency,
                                duration_s=plan.duration_s,
                                warmup_s=plan.warmup_s,
                                processes=plan.generator_processes,
                                depth=plan.native_depth,
                                seed=plan.seed,
                            )
                            result = RunResult.from_latencies(
                                latencies,
                                errors=errors,
                                duration_s=measured,
                                target="raftkv-native",
                                workload=workload.name,
                                value_size=workload.value_size,
                                concurrency=concurrency,
                                nodes=cluster.size,
                                driver="native",
                                generator_cpu=cpu,
                            )
                    result.leader_changes = max(0, cluster.term() - term_before)
                    results.append(result)


def preload_raftkv(cluster: RaftkvCluster, workload: Workload) -> None:
    """Write every key once so that reads find them (a read of a missing key measures
    the not-found path, not a read)."""
    try:
        host, port = cluster.native_addr()
    except RuntimeError:
        host, port = url_host_port(cluster.leader_url())
        _, errors, _ = run_http_load(
            host,
            port,
            sequential_chooser(0, workload.keys, workload.value_size),
            connections=64,
            duration_s=3600.0,
        )
    else:
        errors, _ = preload_native(host, port, workload)
    if errors:
        raise RuntimeError(f"preload of {workload.keys} keys failed {errors} times")


def run_plan(
    plan: Plan, progress: Progress | None = None, work_dir: Path | None = None
) -> list[RunResult]:
    """Run everything the plan asks for; raftkv first, then each baseline."""
    progress = progress or Progress()
    results: list[RunResult] = []
    if plan.protocols:
        run_raftkv(plan, progress, results)
    for baseline in plan.compare:
        if baseline == "etcd":
            from .compare_etcd import run_etcd

            run_etcd(plan, progress, results, work_dir)
        elif baseline == "pysyncobj":
            from .compare_pysyncobj import run_pysyncobj

            run_pysyncobj(plan, progress, results)
        else:
            raise ValueError(f"unknown baseline {baseline!r}; one of etcd, pysyncobj")
    return results
