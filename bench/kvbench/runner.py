"""The execution of a benchmark plan: raftkv (HTTP and/or native protocol), then the same
HTTP runs against each baseline, all in one invocation so that ratios compare like with
like."""

from __future__ import annotations

from pathlib import Path

from .closed_loop import sequential_chooser
from .compare_etcd import run_etcd
from .compare_pysyncobj import run_pysyncobj
from .cpu import CpuMeter, raftkv_members
from .http_load import encode_raftkv, encode_raftkv_raw, run_http_load
from .http_run import http_run, url_host_port
from .native_load import preload_native, run_native_load
from .plan import Plan, Progress
from .stats import RunResult
from .target import RaftkvCluster
from .workloads import Workload
from .wrk import raftkv_wrk_script


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
                if protocol != "http" and workload.http_only:
                    continue
                for concurrency in plan.concurrency:
                    label = f"raftkv-{protocol} {workload.label} c={concurrency}"
                    term_before = cluster.term()
                    meter = raftkv_meter(cluster)
                    with progress.run(label, plan.duration_s + plan.warmup_s):
                        if protocol == "http":
                            result = http_run(
                                target="raftkv-http",
                                url=cluster.leader_url(),
                                workload=workload,
                                concurrency=concurrency,
                                plan=plan,
                                wrk_script=raftkv_wrk_script(workload, plan.seed),
                                encode=encode_raftkv_raw if workload.raw_put else encode_raftkv,
                                nodes=cluster.size,
                                meter=meter,
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
                                on_recording=meter.begin if meter is not None else None,
                            )
                            if meter is not None:
                                meter.end()
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
                                cluster_cpu=(
                                    meter.per_request(len(latencies)) if meter is not None else None
                                ),
                            )
                    result.leader_changes = max(0, cluster.term() - term_before)
                    results.append(result)


def raftkv_meter(cluster: RaftkvCluster) -> CpuMeter | None:
    """A meter of every process of every node, with the node that leads now; None for a
    cluster kvbench did not start (its processes may be on other machines)."""
    pids = cluster.raft_pids()
    leader = cluster.leader_id()
    if leader not in pids:
        return None
    return CpuMeter("raftkv", raftkv_members(pids), leader=str(leader))


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
            run_etcd(plan, progress, results, work_dir)
        elif baseline == "pysyncobj":
            run_pysyncobj(plan, progress, results)
        else:
            raise ValueError(f"unknown baseline {baseline!r}; one of etcd, pysyncobj")
    return results
