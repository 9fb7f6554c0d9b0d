"""One measured HTTP run against any target (raftkv or a baseline): with wrk, or with the
built-in generator when the plan says so or wrk is not installed; with the CPU every
member of the cluster used per request over the measured window when a ``CpuMeter`` is
given."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from .closed_loop import random_chooser
from .cpu import CpuMeter
from .http_load import Encoder, run_http_load
from .plan import Plan
from .stats import RunResult
from .workloads import Workload
from .wrk import run_wrk


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
    meter: CpuMeter | None = None,
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
        # The measured window is the second wrk's life: its start-up and connecting
        # fall inside it, and cost the servers next to nothing.
        if meter is not None:
            meter.begin()
        out = run_wrk(url, wrk_script, connections=concurrency, duration_s=plan.duration_s)
        if meter is not None:
            meter.end()
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
            cluster_cpu=meter.per_request(out.requests) if meter is not None else None,
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
        # The generator calls it the moment its warm-up ends; the window ends when the
        # last response is in, as the generator's own measured time does.
        on_recording=meter.begin if meter is not None else None,
    )
    if meter is not None:
        meter.end()
    cpu = (time.process_time() - started_cpu) / (plan.duration_s + plan.warmup_s)
    return RunResult.from_latencies(
        latencies,
        errors=errors,
        duration_s=measured,
        driver="python",
        generator_cpu=cpu,
        cluster_cpu=meter.per_request(len(latencies)) if meter is not None else None,
        **common,
    )
