"""Same-run speed comparison of two builds of raftkv with kvbench.

Each build is a virtualenv with raftkv installed; every run invokes that venv's own
``kvbench`` (so each build starts its own ``kvnode`` cluster and drives it with its own
load generator), one run per workload, the builds alternating (before then after in odd
rounds, after then before in even ones) so that drift on the machine hits both alike. It
prints each build's median throughput and p99 over the rounds and the after/before
throughput ratio per workload, and writes everything to ``compare.json``:

    python bench/compare_builds.py --before OLD_VENV --after NEW_VENV \\
        --rounds 3 --duration 8 --warmup 2

kvbench's HTTP writes are ``PUT /kv/{key}`` with a raw body. The form the README and
docs/api.md teach, ``POST /kv/{key}`` with ``{"value": ...}``, takes another path
through the worker, so it is measured too ("http write-json"): wrk, when installed,
against each build's own ``kvnode dev`` cluster of three nodes.

Only the standard library is used here, so a broken build cannot break the script.
Exit status: 0 when every ratio is at least ``--min-ratio``, 1 when one is below, 2 when
a kvbench run failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BUILDS = ("before", "after")
# (protocol, kvbench workload): writes and linearizable reads, over HTTP and native.
CASES = (("http", "write"), ("http", "read"), ("native", "write"), ("native", "read"))
JSON_WRITE = ("http", "write-json")
# POST /kv/bench/<random key of 100,000> with a 100-byte value in a JSON body.
_WRK_JSON_WRITE_LUA = """
local value = string.rep("x", 100)
local body = '{"value": "' .. value .. '"}'
local headers = {["Content-Type"] = "application/json"}
math.randomseed(os.time())
request = function()
  local key = string.format("bench/k%06d", math.random(0, 99999))
  return wrk.format("POST", "/kv/" .. key, headers, body)
end
"""
_DEV_HTTP_PORT, _DEV_RPC_PORT = 18301, 19301


class RunFailedError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Sample:
    """One kvbench run of one build."""

    build: str
    protocol: str
    workload: str
    round: int
    throughput: float
    p99_ms: float
    errors: int
    leader_changes: int
    driver: str
    generator_cpu: float


def summarise(samples: list[Sample], min_ratio: float) -> list[dict[str, Any]]:
    """Per workload: each build's median throughput and p99, and after/before."""
    rows = []
    for protocol, workload in [*CASES, JSON_WRITE]:
        row: dict[str, Any] = {"protocol": protocol, "workload": workload}
        for build in BUILDS:
            mine = [
                s
                for s in samples
                if (s.build, s.protocol, s.workload) == (build, protocol, workload)
            ]
            row[build] = {
                "runs": len(mine),
                "throughput": statistics.median([s.throughput for s in mine]) if mine else None,
                "p99_ms": statistics.median([s.p99_ms for s in mine]) if mine else None,
                "errors": sum(s.errors for s in mine),
                "leader_changes": sum(s.leader_changes for s in mine),
            }
        if not row["before"]["runs"] and not row["after"]["runs"]:
            continue
        before, after = row["before"]["throughput"], row["after"]["throughput"]
        row["ratio"] = after / before if before and after is not None else None
        # The two runs of one round ran back to back, so their ratio is the one least
        # moved by the machine's drift; the geometric mean of those ratios is given too.
        by_round = {
            (s.round, s.build): s.throughput
            for s in samples
            if (s.protocol, s.workload) == (protocol, workload)
        }
        pairs = [
            by_round[(r, "after")] / by_round[(r, "before")]
            for r, build in by_round
            if build == "before" and by_round[(r, "before")] and (r, "after") in by_round
        ]
        row["paired_ratio"] = statistics.geometric_mean(pairs) if pairs else None
        row["ok"] = row["ratio"] is not None and row["ratio"] >= min_ratio
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], min_ratio: float) -> str:
    def num(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    header = (
        f"{'workload':<14}{'runs':>5}{'before ops/s':>14}{'after ops/s':>13}{'after/before':>14}"
        f"{'paired':>8}{'p99 before':>12}{'p99 after':>11}{'errors':>8}{'elect':>7}  verdict"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        b, a = row["before"], row["after"]
        lines.append(
            f"{row['protocol'] + ' ' + row['workload']:<14}"
            f"{min(b['runs'], a['runs']):>5}"
            f"{num(b['throughput'], ',.0f'):>14}{num(a['throughput'], ',.0f'):>13}"
            f"{num(row['ratio'], '.3f') + 'x':>14}"
            f"{num(row.get('paired_ratio'), '.3f') + 'x':>8}"
            f"{num(b['p99_ms'], '.1f') + ' ms':>12}{num(a['p99_ms'], '.1f') + ' ms':>11}"
            f"{str(b['errors']) + '/' + str(a['errors']):>8}"
            f"{str(b['leader_changes']) + '/' + str(a['leader_changes']):>7}"
            f"  {'ok' if row['ok'] else 'BELOW'} (>= {min_ratio})"
        )
    lines.append(
        "medians over the rounds; paired: geometric mean of each round's after/before; "
        "errors and elect(ions): before/after, summed"
    )
    return "\n".join(lines)


def kvbench_command(
    venv: Path, protocol: str, workload: str, args: argparse.Namespace, output: Path
) -> list[str]:
    return [
        str(venv / "bin" / "kvbench"),
        *("--nodes", str(args.nodes), "--protocol", protocol, "--workload", workload),
        *("--concurrency", str(args.concurrency), "--value-size", "100"),
        *("--duration", str(args.duration), "--warmup", str(args.warmup)),
        *("--driver", args.driver, "--no-plots", "--output", str(output)),
        *(f"--node-arg={arg}" for arg in args.node_arg),
    ]


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """Interrupt kvbench (it stops its cluster on the way out), then kill what is left
    of its process group (its kvnode processes)."""
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_kvbench(command: list[str], run_dir: Path, timeout_s: float) -> dict[str, Any]:
    """Run one kvbench in its own process group; return its one result."""
    run_dir.mkdir(parents=True)
    log_path = run_dir / "kvbench.log"
    with open(log_path, "wb") as log:
        log.write((shlex.join(command) + "\n").encode())
        log.flush()
        process = subprocess.Popen(
            command,
            cwd=run_dir,  # nothing imported from, or written into, the caller's directory
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop_group(process)
            code = None
        except BaseException:
            _stop_group(process)
            raise
    results_path = run_dir / "results.json"
    if code != 0 or not results_path.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        why = "timed out" if code is None else f"exited {code}"
        raise RunFailedError(f"kvbench {why} (log: {log_path}):\n{tail}")
    results: list[dict[str, Any]] = json.loads(results_path.read_text())["results"]
    if len(results) != 1:
        raise RunFailedError(f"expected one result in {results_path}, found {len(results)}")
    return results[0]


def _wait_for_leader(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(f"{url}/cluster/status", timeout=2) as answer,
        ):
            if json.loads(answer.read()).get("leader"):
                return
        time.sleep(0.2)
    raise RunFailedError(f"no leader at {url} within {timeout_s:.0f} s")


def _wrk_figures(text: str) -> tuple[float, float, int]:
    """Requests per second, p99 in ms and non-2xx answers from ``wrk --latency``."""
    throughput, p99_ms, errors = 0.0, 0.0, 0
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    for line in text.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            throughput = float(words[1])
        elif len(words) == 2 and words[0] == "99%":
            number = words[1].rstrip("usm")
            p99_ms = float(number) * units[words[1][len(number) :]]
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            errors += int(words[-1])
        elif line.strip().startswith("Socket errors:"):
            errors += sum(int(words[i + 1].rstrip(",")) for i in range(2, len(words) - 1, 2))
    return throughput, p99_ms, errors


def run_json_writes(venv: Path, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """``POST /kv/{key}`` with a JSON body through wrk against the build's ``kvnode dev``."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RunFailedError("the write-json case needs wrk")
    run_dir.mkdir(parents=True)
    script = run_dir / "post_json.lua"
    script.write_text(_WRK_JSON_WRITE_LUA)
    log_path = run_dir / "kvnode.log"
    url = f"http://127.0.0.1:{_DEV_HTTP_PORT}"
    command = [
        str(venv / "bin" / "kvnode"),
        *("dev", "--nodes", str(args.nodes), "--dir", str(run_dir / "cluster")),
        *("--http-port", str(_DEV_HTTP_PORT), "--rpc-port", str(_DEV_RPC_PORT)),
        *("--client-port", "0"),
    ]
    with open(log_path, "wb") as log:
        cluster = subprocess.Popen(
            command,
            cwd=run_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_for_leader(url, 60)
            base = [wrk, "-t1", f"-c{args.concurrency}", "-s", str(script), "--latency"]
            subprocess.run(
                [*base, f"-d{max(1, round(args.warmup))}s", url],
                capture_output=True,
                check=True,
                timeout=600,
            )
            measured = subprocess.run(
                [*base, f"-d{max(1, round(args.duration))}s", url],
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            )
        except subprocess.CalledProcessError as exc:
            raise RunFailedError(f"wrk failed: {exc.stderr}") from None
        finally:
            _stop_group(cluster)
    (run_dir / "wrk.txt").write_text(measured.stdout)
    throughput, p99_ms, errors = _wrk_figures(measured.stdout)
    return {
        "throughput": throughput,
        "p99_ms": p99_ms,
        "errors": errors,
        "leader_changes": 0,
        "driver": "wrk",
        "generator_cpu": 0.0,
    }


def build_info(venv: Path) -> dict[str, str]:
    """Where the build's raftkv is imported from (a check that each venv runs its own)."""
    kvbench = venv / "bin" / "kvbench"
    if not kvbench.exists():
        raise SystemExit(f"compare_builds: no {kvbench}: is {venv} a venv with raftkv?")
    found = subprocess.run(
        [str(venv / "bin" / "python"), "-P", "-c", "import raftkv; print(raftkv.__file__)"],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
        check=False,
    )
    where = found.stdout.strip() if found.returncode == 0 else f"import failed: {found.stderr}"
    return {"venv": str(venv), "raftkv": where}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="venv of the old build")
    parser.add_argument("--after", type=Path, required=True, help="venv of the new build")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="measured s per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured s per run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument(
        "--driver",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="HTTP load generator for both builds; auto: wrk when installed, else python",
    )
    parser.add_argument(
        "--node-arg", action="append", default=[], help="extra kvnode flag: --node-arg=--flag=value"
    )
    parser.add_argument(
        "--cases",
        help="comma-separated subset, e.g. native-read,http-write-json (default: all)",
    )
    parser.add_argument("--min-ratio", type=float, default=0.97)
    parser.add_argument(
        "--output", type=Path, help="directory for compare.json and every run's files"
    )
    args = parser.parse_args(argv)
    if args.driver == "auto":
        # Decided once here and passed to both builds, so both use the same generator.
        args.driver = "wrk" if shutil.which("wrk") else "python"
    args.before, args.after = args.before.absolute(), args.after.absolute()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = (args.output or Path(tempfile.mkdtemp(prefix="compare-builds-"))).absolute()
    output.mkdir(parents=True, exist_ok=True)
    venvs = {"before": args.before, "after": args.after}
    document: dict[str, Any] = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "builds": {build: build_info(venv) for build, venv in venvs.items()},
        "samples": [],
    }
    for build, info in document["builds"].items():
        print(f"{build}: {info['venv']} (raftkv from {info['raftkv']})", file=sys.stderr)
    print(f"HTTP driver: {args.driver}; output: {output}", file=sys.stderr)
    samples: list[Sample] = []
    cases = [*CASES, JSON_WRITE] if args.driver == "wrk" else list(CASES)
    if args.cases:
        wanted = set(args.cases.split(","))
        cases = [case for case in cases if "-".join(case) in wanted]
    total = args.rounds * len(cases) * len(BUILDS)
    timeout_s = 600 + 2 * (args.duration + args.warmup)
    status = 0
    try:
        for round_ in range(1, args.rounds + 1):
            for protocol, workload in cases:
                # Before then after in odd rounds, after then before in even ones, so a
                # steady drift of the machine favours neither build.
                order = BUILDS if round_ % 2 else tuple(reversed(BUILDS))
                for build in order:
                    label = f"round {round_} {protocol} {workload} {build}"
                    print(f"[{len(samples) + 1}/{total}] {label}", file=sys.stderr, flush=True)
                    run_dir = output / f"r{round_}-{protocol}-{workload}-{build}"
                    started = time.monotonic()
                    if (protocol, workload) == JSON_WRITE:
                        result = run_json_writes(venvs[build], args, run_dir)
                    else:
                        command = kvbench_command(venvs[build], protocol, workload, args, run_dir)
                        result = run_kvbench(command, run_dir, timeout_s)
                    expected = args.driver if protocol == "http" else "native"
                    if result["driver"] != expected:
                        raise RunFailedError(f"{label}: driver {result['driver']!r}")
                    sample = Sample(
                        build=build,
                        protocol=protocol,
                        workload=workload,
                        round=round_,
                        throughput=float(result["throughput"]),
                        p99_ms=float(result["p99_ms"]),
                        errors=int(result["errors"]),
                        leader_changes=int(result["leader_changes"]),
                        driver=result["driver"],
                        generator_cpu=float(result["generator_cpu"]),
                    )
                    samples.append(sample)
                    document["samples"].append(asdict(sample))
                    print(
                        f"    {sample.throughput:,.0f}/s p99 {sample.p99_ms:.1f} ms, errors "
                        f"{sample.errors}, elections {sample.leader_changes} "
                        f"({time.monotonic() - started:.0f} s)",
                        file=sys.stderr,
                        flush=True,
                    )
    except RunFailedError as exc:
        print(f"compare_builds: {exc}", file=sys.stderr)
        document["failed"] = str(exc)
        status = 2
    rows = summarise(samples, args.min_ratio)
    document["summary"] = rows
    (output / "compare.json").write_text(json.dumps(document, indent=2) + "\n")
    if rows:
        print(format_table(rows, args.min_ratio))
    print(f"\nresults: {output / 'compare.json'}")
    if status == 0 and not all(row["ok"] for row in rows):
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
