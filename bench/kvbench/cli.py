"""The ``kvbench`` command: parse, run the plan, print and write the results."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import click
from click.core import ParameterSource

from .etcd import EtcdNotInstalledError, find_etcd
from .lease_bench import LeaseBenchConfig, run_lease_bench
from .lease_bench import format_report as format_lease_report
from .lock_bench import LockBenchConfig, run_lock_bench
from .lock_bench import format_report as format_lock_report
from .plan import Plan, Progress
from .report import cpu_table, machine, ratio_lines, ratios, table, write_json, write_plots
from .runner import run_plan
from .scenarios import run_targets
from .stats import RunResult
from .txn_bench import TxnBenchConfig, run_txn_bench
from .txn_bench import format_report as format_txn_report
from .watch_bench import WatchBenchConfig, format_report, run_watch_bench
from .watch_load import ID_DIGITS
from .workloads import WORKLOAD_HELP, WORKLOADS, parse_size
from .wrk import find_wrk

EXIT_FAILED = 1


def _split(values: tuple[str, ...]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


class _Bar:
    """One status line on stderr: which run, how far along, and how many are done."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.tty = sys.stderr.isatty()
        self._last_label = ""

    def tick(self, label: str, fraction: float) -> None:
        preload = "preload" in label
        if label != self._last_label:
            self._last_label = label
            if not self.tty:
                click.echo(f"[{self.done + 1}/{self.total}] {label}", err=True)
        if self.tty:
            width = 30
            filled = int(width * fraction)
            bar = "#" * filled + "." * (width - filled)
            click.echo(
                f"\r[{bar}] {fraction:4.0%} run {min(self.done + 1, self.total)}/{self.total} "
                f"{label[:60]:<60}",
                nl=False,
                err=True,
            )
        if fraction >= 1.0 and not preload:
            self.done += 1

    def close(self) -> None:
        if self.tty:
            click.echo("", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--nodes",
    type=click.IntRange(1, 7),
    default=3,
    show_default=True,
    help="Size of the local cluster kvbench starts (fsync on).",
)
@click.option(
    "--endpoints",
    multiple=True,
    help="Target a running cluster instead: its HTTP URLs (comma-separated).",
)
@click.option(
    "--native-endpoints",
    multiple=True,
    help="HOST:PORT of each node's native client port, in --endpoints order.",
)
@click.option(
    "--workload",
    "workloads",
    multiple=True,
    default=("write",),
    show_default=True,
    help=f"Comma-separated; any of {', '.join(WORKLOADS)} ({WORKLOAD_HELP}).",
)
@click.option(
    "--value-size",
    "value_sizes",
    multiple=True,
    default=("100",),
    show_default=True,
    help="Comma-separated sizes: 100, 1KiB, 16KiB...",
)
@click.option(
    "--concurrency",
    multiple=True,
    default=("64",),
    show_default=True,
    help="Comma-separated; several values make a sweep.",
)
@click.option(
    "--protocol",
    "protocols",
    multiple=True,
    default=("http",),
    show_default=True,
    help="http, native or both (comma-separated).",
)
@click.option(
    "--compare", multiple=True, help="Baselines run in the same invocation: etcd, pysyncobj."
)
@click.option(
    "--duration", type=float, default=10.0, show_default=True, help="Measured seconds per run."
)
@click.option(
    "--warmup",
    type=float,
    default=2.0,
    show_default=True,
    help="Unmeasured seconds before each run.",
)
@click.option("--keys", type=click.IntRange(1), default=100_000, show_default=True)
@click.option(
    "--driver",
    type=click.Choice(["auto", "wrk", "python"]),
    default="auto",
    show_default=True,
    help="HTTP load: wrk when installed (auto), or built in.",
)
@click.option(
    "--generator-processes",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Processes of the native-protocol generator.",
)
@click.option(
    "--depth",
    type=click.IntRange(1),
    default=16,
    show_default=True,
    help="Native protocol: requests in flight per connection.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--node-arg",
    "node_args",
    multiple=True,
    help="Extra kvnode argument for the local cluster (repeatable).",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("kvbench-results"),
    show_default=True,
    help="Directory for results.json and the PNG plots.",
)
@click.option("--plots/--no-plots", default=True, show_default=True)
@click.option(
    "--scenario",
    type=click.Choice(["sweep", "targets", "watch", "txn", "lease", "lock"]),
    default="sweep",
    show_default=True,
    help="sweep: the throughput runs; targets: preload --keys (use 1000000) "
    "100-byte values, then memory per Raft process, a snapshot under full "
    "write load, and a follower restart; watch: HTTP writes (POST, JSON) to the "
    "leader with and without watch streams open on a follower, alternating for "
    "--rounds rounds: throughput ratio, commit-to-watcher latency, events/s and "
    "memory per idle stream; txn: preload --keys, then plain HTTP writes (POST, "
    "JSON) and transactions of 2 compares + 2 puts (POST /txn) to the leader, "
    "alternating for --rounds rounds: requests/s, writes/s, latency, the txn/plain "
    "ratio and the transactions that succeeded; lease: preload --keys, grant --leases "
    "leases with a key each, then plain HTTP writes to the leader alone and with "
    "keep-alives of every lease each third of --lease-ttl and a trickle of expiring "
    "leases, alternating for --rounds rounds: throughput ratio, keep-alives/s, expiry "
    "lateness; lock: raftkv.client.Lock acquired and released in a loop by "
    "--concurrency threads (default 4; several values make a sweep), on one shared "
    "name and on a name each, alternating for --rounds rounds: acquisitions/s and "
    "acquire/release latency.",
)
@click.option(
    "--rounds",
    type=click.IntRange(1),
    default=2,
    show_default=True,
    help="watch, txn, lease and lock scenarios: rounds of one run of each side (without "
    "and with watchers; plain writes and transactions; writes without and with lease "
    "traffic; the lock uncontended and contended).",
)
@click.option(
    "--watch-prefixes",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="watch scenario: streams on distinct prefixes that partition the keys.",
)
@click.option(
    "--watch-all",
    type=click.IntRange(0),
    default=10,
    show_default=True,
    help="watch scenario: streams on the whole keyspace (prefix=).",
)
@click.option(
    "--leases",
    type=click.IntRange(1),
    default=10_000,
    show_default=True,
    help="lease scenario: live leases, each with one key, kept alive in the leases runs.",
)
@click.option(
    "--lease-ttl",
    type=click.FloatRange(1.0),
    default=30.0,
    show_default=True,
    help="lease scenario: their TTL (seconds); a keep-alive of each every third of it. A "
    "run (3 s start, warm-up, duration) must fit in half of it.",
)
@click.option(
    "--keepalive-mode",
    type=click.Choice(["stream", "request"]),
    default="stream",
    show_default=True,
    help="lease scenario: keep-alives over streaming POST /lease/keepalive requests (as "
    "a client holding many leases sends them), or one POST /lease/{id}/keepalive each.",
)
@click.option(
    "--keepalive-connections",
    type=click.IntRange(1, 256),
    default=4,
    show_default=True,
    help="lease scenario: connections the keep-alives start with (more are opened, up "
    "to 256, only while every one is busy).",
)
@click.option(
    "--expiry-rate",
    type=click.FloatRange(0.0),
    default=20.0,
    show_default=True,
    help="lease scenario: short leases granted per second in the leases runs, each with a "
    "key, never kept alive, to measure expiry lateness (0: none).",
)
@click.option(
    "--expiry-ttl",
    type=click.FloatRange(1.0),
    default=2.0,
    show_default=True,
    help="lease scenario: the TTL of those short leases (seconds).",
)
def main(
    nodes: int,
    endpoints: tuple[str, ...],
    native_endpoints: tuple[str, ...],
    workloads: tuple[str, ...],
    value_sizes: tuple[str, ...],
    concurrency: tuple[str, ...],
    protocols: tuple[str, ...],
    compare: tuple[str, ...],
    duration: float,
    warmup: float,
    keys: int,
    driver: str,
    generator_processes: int,
    depth: int,
    seed: int,
    node_args: tuple[str, ...],
    output: Path,
    plots: bool,
    scenario: str,
    rounds: int,
    watch_prefixes: int,
    watch_all: int,
    leases: int,
    lease_ttl: float,
    keepalive_connections: int,
    keepalive_mode: str,
    expiry_rate: float,
    expiry_ttl: float,
) -> None:
    """Measure raftkv: throughput and latency for each workload, value size and
    concurrency, against baselines started in the same invocation."""
    try:
        plan = Plan(
            workloads=_split(workloads),
            value_sizes=[parse_size(s) for s in _split(value_sizes)],
            concurrency=[int(c) for c in _split(concurrency)],
            protocols=_split(protocols),
            compare=_split(compare),
            nodes=nodes,
            duration_s=duration,
            warmup_s=warmup,
            keys=keys,
            driver=driver,
            generator_processes=generator_processes,
            native_depth=depth,
            seed=seed,
            endpoints=_split(endpoints),
            native_endpoints=_split(native_endpoints),
            node_args=list(node_args),
        )
        workload_list = plan.workload_list()  # validates the names
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    for protocol in plan.protocols:
        if protocol not in ("http", "native"):
            raise click.UsageError(f"unknown protocol {protocol!r}; http or native")
    http_only = sorted({w.name for w in workload_list if w.http_only})
    if http_only and "http" not in plan.protocols:
        raise click.UsageError(f"{', '.join(http_only)}: HTTP only; add --protocol http")
    for baseline in plan.compare:
        if baseline not in ("etcd", "pysyncobj"):
            raise click.UsageError(f"unknown baseline {baseline!r}; etcd or pysyncobj")
    if any(c < 1 for c in plan.concurrency):
        raise click.UsageError("concurrency must be at least 1")

    if plots and importlib.util.find_spec("matplotlib") is None:
        # Said now, not after the whole run.
        click.echo(
            "kvbench: no plots: matplotlib is not installed (pip install 'raftkv[bench]')",
            err=True,
        )
        plots = False
    if "pysyncobj" in plan.compare and importlib.util.find_spec("pysyncobj") is None:
        raise click.UsageError("--compare pysyncobj needs PySyncObj: pip install 'raftkv[bench]'")
    if "etcd" in plan.compare:
        try:
            find_etcd()
        except EtcdNotInstalledError as exc:
            raise click.UsageError(str(exc)) from None
    if plan.driver == "wrk" and find_wrk() is None:
        raise click.UsageError("--driver wrk: wrk is not installed (apt-get install wrk)")
    output.mkdir(parents=True, exist_ok=True)
    if scenario == "targets":
        _targets(plan, output)
        return
    if scenario == "watch":
        _watch(plan, output, rounds=rounds, prefixes=watch_prefixes, all_watchers=watch_all)
        return
    if scenario == "txn":
        _txn(plan, output, rounds=rounds)
        return
    if scenario == "lease":
        _lease(
            plan,
            output,
            rounds=rounds,
            leases=leases,
            lease_ttl=lease_ttl,
            keepalive_connections=keepalive_connections,
            keepalive_mode=keepalive_mode,
            expiry_rate=expiry_rate,
            expiry_ttl=expiry_ttl,
        )
        return
    if scenario == "lock":
        given = click.get_current_context().get_parameter_source("concurrency")
        threads = [4] if given == ParameterSource.DEFAULT else plan.concurrency
        _lock(plan, output, rounds=rounds, threads=threads)
        return
    bar = _Bar(plan.run_count())
    started = time.monotonic()
    try:
        results: list[RunResult] = run_plan(plan, Progress(bar.tick), output)
    except Exception as exc:  # a failed start or run: say what, keep the traceback out
        bar.close()
        click.echo(f"kvbench: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    bar.close()
    command = shlex.join(["kvbench", *sys.argv[1:]])
    click.echo(table(results))
    cpu = cpu_table(results)
    if cpu:
        click.echo("\n" + cpu)
    lines = ratio_lines(ratios(results))
    if lines:
        click.echo("\n" + lines)
    write_json(output / "results.json", results, command, asdict(plan))
    click.echo(f"\nresults: {output / 'results.json'} ({time.monotonic() - started:.0f} s)")
    if plots:
        for path in write_plots(output, results):
            click.echo(f"plot: {path}")


def _targets(plan: Plan, output: Path) -> None:
    if plan.endpoints:
        raise click.UsageError("--scenario targets starts its own cluster; drop --endpoints")
    # One election timeout: the shortest a follower waits before it campaigns.
    election_ms = 150.0
    for arg in plan.node_args:
        if arg.startswith("--election-ticks="):
            election_ms = 10.0 * int(arg.split("=", 1)[1])
    click.echo(f"targets: preloading {plan.keys} keys on {plan.nodes} nodes...", err=True)
    try:
        found = run_targets(
            nodes=plan.nodes,
            keys=plan.keys,
            concurrency=plan.concurrency[0],
            duration_s=plan.duration_s,
            node_args=plan.node_args,
            election_timeout_ms=election_ms,
        )
    except Exception as exc:
        click.echo(f"kvbench: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    document = [r.to_json() for r in found]
    path = output / "targets.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    click.echo(json.dumps(document, indent=2))
    click.echo(f"\nresults: {path}")


def _watch(plan: Plan, output: Path, *, rounds: int, prefixes: int, all_watchers: int) -> None:
    if plan.endpoints:
        raise click.UsageError("--scenario watch starts its own cluster; drop --endpoints")
    try:
        config = WatchBenchConfig(
            nodes=plan.nodes,
            rounds=rounds,
            duration_s=plan.duration_s,
            warmup_s=plan.warmup_s,
            concurrency=plan.concurrency[0],
            keys=plan.keys,
            value_size=plan.value_sizes[0],
            prefixes=prefixes,
            all_watchers=all_watchers,
            seed=plan.seed,
            node_args=plan.node_args,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if config.value_size < ID_DIGITS:
        raise click.UsageError(f"--scenario watch needs values of at least {ID_DIGITS} bytes")
    started = time.monotonic()
    try:
        document = run_watch_bench(config, output, say=lambda line: click.echo(line, err=True))
    except Exception as exc:
        click.echo(f"kvbench: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    document["command"] = shlex.join(["kvbench", *sys.argv[1:]])
    document["machine"] = machine()
    path = output / "watch.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    click.echo(format_report(document))
    click.echo(f"\nresults: {path} ({time.monotonic() - started:.0f} s)")


def _txn(plan: Plan, output: Path, *, rounds: int) -> None:
    if plan.endpoints:
        raise click.UsageError("--scenario txn starts its own cluster; drop --endpoints")
    try:
        config = TxnBenchConfig(
            nodes=plan.nodes,
            rounds=rounds,
            duration_s=plan.duration_s,
            warmup_s=plan.warmup_s,
            concurrency=plan.concurrency[0],
            keys=plan.keys,
            value_size=plan.value_sizes[0],
            seed=plan.seed,
            node_args=plan.node_args,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    started = time.monotonic()
    try:
        document = run_txn_bench(config, say=lambda line: click.echo(line, err=True))
    except Exception as exc:
        click.echo(f"kvbench: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    document["command"] = shlex.join(["kvbench", *sys.argv[1:]])
    document["machine"] = machine()
    path = output / "txn.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    click.echo(format_txn_report(document))
    click.echo(f"\nresults: {path} ({time.monotonic() - started:.0f} s)")


def _lease(
    plan: Plan,
    output: Path,
    *,
    rounds: int,
    leases: int,
    lease_ttl: float,
    keepalive_connections: int,
    keepalive_mode: str,
    expiry_rate: float,
    expiry_ttl: float,
) -> None:
    if plan.endpoints:
        raise click.UsageError("--scenario lease starts its own cluster; drop --endpoints")
    try:
        config = LeaseBenchConfig(
            nodes=plan.nodes,
            rounds=rounds,
            duration_s=plan.duration_s,
            warmup_s=plan.warmup_s,
            concurrency=plan.concurrency[0],
            keys=plan.keys,
            value_size=plan.value_sizes[0],
            leases=leases,
            lease_ttl=lease_ttl,
            keepalive_connections=keepalive_connections,
            keepalive_mode=keepalive_mode,
            expiry_rate=expiry_rate,
            expiry_ttl=expiry_ttl,
            seed=plan.seed,
            node_args=plan.node_args,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    started = time.monotonic()
    try:
        document = run_lease_bench(config, say=lambda line: click.echo(line, err=True))
    except Exception as exc:
        click.echo(f"kvbench: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    document["command"] = shlex.join(["kvbench", *sys.argv[1:]])
    document["machine"] = machine()
    path = output / "lease.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    click.echo(format_lease_report(document))
    click.echo(f"\nresults: {path} ({time.monotonic() - started:.0f} s)")


def _lock(plan: Plan, output: Path, *, rounds: int, threads: list[int]) -> None:
    if plan.endpoints:
        raise click.UsageError("--scenario lock starts its own cluster; drop --endpoints")
    try:
        config = LockBenchConfig(
            nodes=plan.nodes,
            rounds=rounds,
            duration_s=plan.duration_s,
            warmup_s=plan.warmup_s,
            concurrency=threads,
            seed=plan.seed,
            node_args=plan.node_args,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    started = time.monotonic()
    try:
        document = run_lock_bench(config, say=lambda line: click.echo(line, err=True))
    except Exception as exc:
        click.echo(f"kvbench: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    document["command"] = shlex.join(["kvbench", *sys.argv[1:]])
    document["machine"] = machine()
    path = output / "lock.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    click.echo(format_lock_report(document))
    click.echo(f"\nresults: {path} ({time.monotonic() - started:.0f} s)")
