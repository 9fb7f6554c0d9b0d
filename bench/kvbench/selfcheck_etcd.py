"""Check the etcd baseline end to end on this machine: start a 3-member etcd cluster on
loopback, send it kvbench's workload with wrk (writes, then linearizable reads, then
serializable reads, a few seconds each), check what landed in etcd, print each result.

    python -m raftkv.kvbench.selfcheck_etcd [--seconds 3] [--connections 16]

Needs etcd and wrk. Exits 0 when every phase answered only 2xx and the keys and values
found in etcd are the ones the script meant to write, 1 when not, 2 when a tool is
missing. The load is deliberately small: this checks that the pieces fit, it measures
nothing worth quoting.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .etcd import (
    RANGE_PATH,
    EtcdCluster,
    EtcdNotInstalledError,
    etcd_wrk_script,
    post_json,
)
from .key_space import DEFAULT_KEYS, bench_value, raftkv_key

RESULT_MARK = "KVBENCH_RESULT "

# (name, read_fraction, serializable)
PHASES = [
    ("writes", 0.0, False),
    ("linearizable reads", 1.0, False),
    ("serializable reads", 1.0, True),
]


def run_wrk(wrk: str, url: str, script: str, *, seconds: int, connections: int) -> dict[str, Any]:
    """One wrk run with ``script``; the fields of its ``KVBENCH_RESULT`` line."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as handle:
        handle.write(script)
        handle.flush()
        command = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "-s", handle.name, url]
        done = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=seconds + 60
        )
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            parsed: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
            return parsed
    raise RuntimeError(
        f"wrk exited {done.returncode} without a result line:\n{done.stdout}\n{done.stderr}"
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def check_written(url: str, *, keys: int, value_size: int) -> list[str]:
    """What is wrong with the keys under ``k`` in etcd (nothing: an empty list)."""
    problems = []
    # All of kvbench's keys start with "k": [k, l) is exactly that prefix.
    prefix = {"key": _b64(b"k"), "range_end": _b64(b"l")}
    count = int(post_json(url, RANGE_PATH, json.dumps({**prefix, "count_only": True}).encode())
                .get("count", 0))  # fmt: skip
    if count == 0:
        problems.append("no key was written")
    sample = post_json(url, RANGE_PATH, json.dumps({**prefix, "limit": 50}).encode())
    names = {raftkv_key(i) for i in range(keys)}
    for kv in sample.get("kvs", []):
        key = base64.b64decode(kv["key"]).decode("ascii", "replace")
        value = base64.b64decode(kv.get("value", ""))
        if key not in names:
            problems.append(f"unexpected key {key!r}")
        if value != bench_value(value_size):
            problems.append(f"key {key!r}: value of {len(value)} bytes is not the bench value")
    print(f"etcd holds {count} kvbench keys; {len(sample.get('kvs', []))} sampled")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=3, help="length of each phase")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--keys", type=int, default=DEFAULT_KEYS)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--etcd-binary", default=None)
    parser.add_argument("--wrk-binary", default="wrk")
    args = parser.parse_args(argv)

    wrk = shutil.which(args.wrk_binary)
    if wrk is None:
        print("wrk is not installed (Debian/Ubuntu: apt-get install wrk)", file=sys.stderr)
        return 2
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="kvbench-etcd-") as tmp:
        try:
            cluster = EtcdCluster(Path(tmp), binary=args.etcd_binary)
        except EtcdNotInstalledError as exc:
            print(exc, file=sys.stderr)
            return 2
        with cluster:
            leader = cluster.leader_url()
            print(f"etcd ({cluster.binary}): {cluster.size} members {cluster.client_urls()}")
            print(f"leader {leader}, raft term {cluster.raft_term()}")
            for seed, (name, read_fraction, serializable) in enumerate(PHASES):
                script = etcd_wrk_script(
                    keys=args.keys,
                    value_size=args.value_size,
                    read_fraction=read_fraction,
                    serializable=serializable,
                    seed=seed,
                )
                result = run_wrk(
                    wrk, leader, script, seconds=args.seconds, connections=args.connections
                )
                rate = result["ok"] / (result["duration_us"] / 1e6)
                print(f"{name}: {rate:,.0f}/s ok, p50 {result['p50_us']} us, "
                      f"p99 {result['p99_us']} us")  # fmt: skip
                print(f"  {json.dumps(result)}")
                if result["ok"] == 0 or result["errors"] != 0:
                    problems.append(f"{name}: {result['ok']} ok, {result['errors']} errors")
                if name == "writes":
                    problems += check_written(leader, keys=args.keys, value_size=args.value_size)
            print(f"leader changes during the check: {cluster.leader_changes_since_start()}")
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    print("selfcheck: " + ("FAILED" if problems else "ok"))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
