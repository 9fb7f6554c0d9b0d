"""Drive HTTP load with wrk (a C load generator, so the generator is not what limits
the measurement): the Lua script for raftkv's API, the run, and parsing the one
``KVBENCH_RESULT`` line the script's ``done()`` prints."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from .key_space import KEY_FORMAT, WRK_DONE_LUA, bench_value, json_put_body, lua_string
from .workloads import Workload

RESULT_MARK = "KVBENCH_RESULT "


class WrkError(RuntimeError):
    pass


def find_wrk() -> str | None:
    return shutil.which("wrk")


def raftkv_wrk_script(workload: Workload, seed: int) -> str:
    """A wrk script issuing ``workload`` against raftkv's HTTP API: GET
    (``?consistency=stale`` for stale reads) of random keys, and writes of the
    documented form, ``POST /kv/{key}`` with ``{"value": "..."}`` (the body
    ``json_put_body`` makes, byte for byte), or ``PUT`` of the raw value for a
    ``raw_put`` workload."""
    suffix = "?consistency=stale" if workload.stale else ""
    value = bench_value(workload.value_size)
    if workload.raw_put:
        method, content_type, body = "PUT", "application/octet-stream", value
    else:
        method, content_type, body = "POST", "application/json", json_put_body(value)
    return f"""
local seed = {seed}
local keys = {workload.keys}
local read_fraction = {workload.read_fraction!r}
local write_method = {lua_string(method)}
local write_body = {lua_string(body.decode("ascii"))}
local write_headers = {{["Content-Type"] = {lua_string(content_type)}}}
local key_format = "{KEY_FORMAT}"

function init(args)
  -- kvbench_id is set per thread by setup() in the reporting code: threads draw
  -- different keys.
  math.randomseed(seed + (kvbench_id or 0))
end

request = function()
  local key = string.format(key_format, math.random(0, keys - 1))
  if read_fraction > 0 and math.random() < read_fraction then
    return wrk.format("GET", "/kv/" .. key .. "{suffix}")
  end
  return wrk.format(write_method, "/kv/" .. key, write_headers, write_body)
end
{WRK_DONE_LUA}
"""


@dataclass(slots=True)
class WrkOutput:
    requests: int
    duration_s: float
    errors: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    cpu_cores: float
    raw: dict[str, Any]


def parse_wrk_output(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith(RESULT_MARK):
            parsed: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
            return parsed
    raise WrkError(f"wrk printed no {RESULT_MARK.strip()} line:\n{stdout[-2000:]}")


def run_wrk(
    url: str,
    script: str,
    *,
    connections: int,
    duration_s: float,
    threads: int = 1,
    timeout_s: float = 10.0,
) -> WrkOutput:
    """Run wrk against ``url`` with ``script``; successful requests only count."""
    binary = find_wrk()
    if binary is None:
        raise WrkError("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
        path = handle.name
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        completed = subprocess.run(
            [
                binary,
                f"-t{threads}",
                f"-c{max(connections, threads)}",
                f"-d{max(1, round(duration_s))}s",
                f"--timeout={max(1, round(timeout_s))}s",
                "-s",
                path,
                url,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=duration_s + timeout_s + 60,
        )
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        os.unlink(path)
    if completed.returncode != 0:
        raise WrkError(f"wrk exited {completed.returncode}: {completed.stderr.strip()}")
    raw = parse_wrk_output(completed.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return WrkOutput(
        requests=int(raw["ok"]),
        duration_s=raw["duration_us"] / 1e6,
        errors=int(raw["errors"]),
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        p999_ms=raw["p999_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        cpu_cores=cpu / wall if wall > 0 else 0.0,
        raw=raw,
    )
