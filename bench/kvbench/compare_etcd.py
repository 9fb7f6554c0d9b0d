"""The etcd baseline: the same workloads, through etcd's JSON gateway, on a 3-member
etcd started on loopback in the same invocation (fsync on, as ours)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .closed_loop import Request, sequential_chooser
from .etcd import EtcdCluster, etcd_wrk_script, put_body, range_body
from .http_load import run_http_load
from .http_run import http_run, url_host_port
from .plan import Plan, Progress
from .stats import RunResult


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
        for workload in plan.workload_list():
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
                with progress.run(label, plan.duration_s + plan.warmup_s):
                    result = http_run(
                        target="etcd",
                        url=etcd.leader_url(),
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
                    )
                result.leader_changes = max(0, etcd.raft_term() - term_before)
                results.append(result)
