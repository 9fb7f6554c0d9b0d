"""The etcd baseline: the same workloads, through etcd's JSON gateway, on a 3-member
etcd started on loopback in the same invocation (fsync on, as ours), with the CPU of
each member per request. etcd has one form of write, its gateway's put: a workload only
raftkv's HTTP API has (``write-raw``) is run as the workload it stands for, once."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .closed_loop import Request, sequential_chooser
from .cpu import ETCD, CpuMeter, Member
from .etcd import EtcdCluster, etcd_wrk_script, put_body, range_body
from .http_load import run_http_load
from .http_run import http_run, url_host_port
from .plan import Plan, Progress
from .stats import RunResult
from .workloads import Workload, baseline_workload


def encode_etcd(request: Request, host: bytes, stale: bool) -> bytes:
    if request.read:
        path, body = b"/v3/kv/range", range_body(request.key, serializable=stale)
    else:
        path, body = b"/v3/kv/put", put_body(request.key, request.value)
    return (
        b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (path, host, len(body), body)
    )


def run_etcd(
    plan: Plan, progress: Progress, results: list[RunResult], work_dir: Path | None
) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="kvbench-etcd-", dir=work_dir) as base,
        EtcdCluster(Path(base), size=3) as etcd,
    ):
        for workload in etcd_workloads(plan):
            url = etcd.leader_url()
            if workload.reads:
                with progress.run(f"etcd preload {workload.keys} keys", 20):
                    host, port = url_host_port(url)
                    _, errors, _ = run_http_load(
                        host,
                        port,
                        sequential_chooser(0, workload.keys, workload.value_size),
                        connections=64,
                        duration_s=3600.0,
                        encode=encode_etcd,
                    )
                    if errors:
                        raise RuntimeError(f"etcd preload failed {errors} times")
            for concurrency in plan.concurrency:
                term_before = etcd.raft_term()
                label = f"etcd {workload.label} c={concurrency}"
                url = etcd.leader_url()
                with progress.run(label, plan.duration_s + plan.warmup_s):
                    result = http_run(
                        target="etcd",
                        url=url,
                        workload=workload,
                        concurrency=concurrency,
                        plan=plan,
                        wrk_script=etcd_wrk_script(
                            keys=workload.keys,
                            value_size=workload.value_size,
                            read_fraction=workload.read_fraction,
                            serializable=workload.stale,
                            seed=plan.seed,
                        ),
                        encode=encode_etcd,
                        nodes=3,
                        meter=etcd_meter(etcd, url),
                    )
                result.leader_changes = max(0, etcd.raft_term() - term_before)
                results.append(result)


def etcd_workloads(plan: Plan) -> list[Workload]:
    """The plan's workloads as etcd runs them: each HTTP-only one replaced by the one it
    stands for, each only once."""
    found: list[Workload] = []
    for workload in plan.workload_list():
        mapped = Workload(baseline_workload(workload.name), workload.value_size, workload.keys)
        if mapped not in found:
            found.append(mapped)
    return found


def etcd_meter(etcd: EtcdCluster, leader_url: str) -> CpuMeter | None:
    """A meter of every member, with the one that leads now (None should a member have
    died: then there is no cluster to measure)."""
    pids = etcd.member_pids()
    leader = etcd.member_name(leader_url)
    if leader not in pids or len(pids) < etcd.size:
        return None
    return CpuMeter("etcd", [Member(name, pid, ETCD) for name, pid in pids.items()], leader)
