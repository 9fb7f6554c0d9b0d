"""The lease benchmark (``kvbench --scenario lease``): "10,000 live leases with
keep-alives every TTL/3 while writes run: write throughput within 15% of no leases;
expiry lateness p99 stated", on one fresh local cluster (fsync on) in one invocation.

**Setup** (not measured): every key is written once (``--keys``, ``--value-size``, over
the native protocol); then ``--leases`` leases of ``--lease-ttl`` seconds are granted
(``POST /lease``) and one key is attached to each (``POST /kv/lease/kNNNNNN`` with
``"lease"``).

**Rounds**: runs of the two sides alternate, the order turning every round (plain,
leases, leases, plain, ...) so that drift on the machine hits both sides alike. Both
sides send the same writes, from the same generator (``lease_load.py``, a process of its
own): the transaction benchmark's plain writes (``POST /kv/{key}``, JSON) at
``--concurrency`` connections to the leader.

- **plain**: the writes alone. The leases exist (they are live, with their keys) but
  nothing renews them.
- **leases**: the writes, plus a keep-alive of every lease once per third of its TTL
  (``POST /lease/{id}/keepalive``, evenly spread, on a pool of connections of its own
  that starts with ``--keepalive-connections`` and grows only when all are busy), plus a
  trickle of short leases that nothing keeps alive (``--expiry-rate`` a second, TTL
  ``--expiry-ttl``, each with a key) whose expiry lateness is measured on a watch stream
  (``GET /watch?prefix=``) on the leader: delete event arrival - (grant send + TTL).
  Before and after the run every node's ``raftkv_lease_expiry_lateness_seconds``
  histogram is scraped (only the leader observes it: the sum of the nodes' changes
  counts each expiry of the run once, even across a leader change); its quantiles are
  estimated from the buckets.

The ratio leases/plain of write throughput is given of the medians and as the geometric
mean of each round's pair, as the other same-invocation scenarios do; the issue asks for
at least 0.85.

**Keeping the setup's leases alive across the plain runs.** A plain run must not renew
them (that is the difference being measured), and must not see them expire either (an
expiry deletes 10,000 keys: a burst of writes the plain side would pay for). Granting
them again for every run would put 20,000 writes of setup between the runs and a
different lease table on each side. Instead, before *every* run, on both sides alike,
one unmeasured keep-alive of every lease is sent as fast as 64 connections allow (the
"refresh"), and the runs are kept short against the TTL: the generator's start, the
warm-up and the measured run must fit in half of ``--lease-ttl`` (3 + 2 + 10 s of 30 s
by default), which leaves the other half for the refreshes and the waits for every node
to catch up on either side of the run. A lease found gone at any refresh (or at the last
one, after the last run), or a keep-alive answered 404 during a leases run, fails the
benchmark instead of being counted quietly; the longest time a lease can have gone
unrenewed around a plain run is reported against the TTL. What still happens on both
sides is the leader's checkpoint of leases nothing renewed for 5 s (docs/api.md: at most
1,000 per 5 s, one log entry), part of what live leases cost.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import math
import multiprocessing
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from . import rounds
from .lease_load import (
    LEASE_KEY_PREFIX,
    SETUP_CONNECTIONS,
    SIDES,
    LeaseLoadResult,
    LeaseLoadSpec,
    RefreshSpec,
    SetupSpec,
    expiry_prefix,
    grant_leases,
    refresh_leases,
    run_load,
)
from .rounds import geometric_mean, median, num, paired_ratios, sleep_until, spread
from .scenarios import preload, wait_applied
from .stats import percentile
from .target import RaftkvCluster
from .txn_bench import run_summary as write_summary
from .watch_bench import CpuSnapshot, node_processes

GOAL_THROUGHPUT_RATIO = 0.85
LATENESS_METRIC = "raftkv_lease_expiry_lateness_seconds"
# Time for the generator's process to open its connections and the watch stream.
_GENERATOR_START_S = 3.0
_MIN_TTL_S = 1.0

Say = Callable[[str], None]


@dataclass(slots=True)
class LeaseBenchConfig:
    nodes: int = 3
    rounds: int = 2
    duration_s: float = 10.0
    warmup_s: float = 2.0
    concurrency: int = 64
    keys: int = 100_000
    value_size: int = 100
    leases: int = 10_000
    lease_ttl: float = 30.0
    keepalive_connections: int = 4
    keepalive_mode: str = "stream"
    expiry_rate: float = 20.0
    expiry_ttl: float = 2.0
    seed: int = 1
    node_args: list[str] = field(default_factory=list)
    keepalive_cap: int = 256
    drain_s: float = 10.0

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.leases < 1 or self.keys < 1:
            raise ValueError("need at least one round, one lease and one key")
        if self.concurrency < 1 or self.value_size < 1 or self.duration_s <= 0:
            raise ValueError("concurrency, value size and duration must be positive")
        if self.lease_ttl < _MIN_TTL_S or self.expiry_ttl < _MIN_TTL_S:
            raise ValueError(f"lease TTLs are at least {_MIN_TTL_S:g} s (docs/api.md)")
        if self.expiry_rate < 0:
            raise ValueError("--expiry-rate cannot be negative")
        if not 1 <= self.keepalive_connections <= self.keepalive_cap:
            raise ValueError(f"keep-alive connections: 1 to {self.keepalive_cap}")
        run_s = _GENERATOR_START_S + self.warmup_s + self.duration_s
        if run_s > self.lease_ttl / 2:
            raise ValueError(
                f"a run ({_GENERATOR_START_S:g} s start + {self.warmup_s:g} s warm-up + "
                f"{self.duration_s:g} s) must fit in half of --lease-ttl "
                f"({self.lease_ttl:g} s), or the leases could expire around a plain run "
                f"(no keep-alives): raise --lease-ttl to at least {2 * run_s:g}"
            )

    @property
    def keepalive_interval_s(self) -> float:
        return self.lease_ttl / 3

    @property
    def keepalive_target_per_s(self) -> float:
        return self.leases / self.keepalive_interval_s


def order_of(round_number: int) -> tuple[str, str]:
    """plain, leases in even rounds; leases, plain in odd ones."""
    return rounds.order_of(round_number, "plain", "leases")


# ---------------------------------------------------------------------- the histogram

_SAMPLE = re.compile(
    rf"^{LATENESS_METRIC}_(bucket|count|sum)(?:\{{([^}}]*)\}})? ([0-9.eE+-]+|NaN)$", re.MULTILINE
)
_LE = re.compile(r'le="([^"]+)"')


def parse_histogram(text: str) -> dict[str, Any]:
    """The lateness histogram of a ``/metrics`` text: cumulative ``buckets`` as
    ``[le, count]`` (le as written, "+Inf" last), ``count`` and ``sum``."""
    buckets: list[list[Any]] = []
    found: dict[str, Any] = {"buckets": buckets, "count": 0.0, "sum": 0.0}
    for kind, labels, value in _SAMPLE.findall(text):
        if kind == "bucket":
            le = _LE.search(labels or "")
            if le is not None:
                buckets.append([le.group(1), float(value)])
        else:
            found[kind] = float(value)
    buckets.sort(key=lambda b: float(b[0]))
    return found


def histogram_delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """What was observed between two scrapes of one histogram."""
    earlier = {le: n for le, n in before.get("buckets", [])}
    return {
        "buckets": [[le, n - earlier.get(le, 0.0)] for le, n in after.get("buckets", [])],
        "count": after.get("count", 0.0) - before.get("count", 0.0),
        "sum": after.get("sum", 0.0) - before.get("sum", 0.0),
    }


def histogram_sum(histograms: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, float] = {}
    for h in histograms:
        for le, n in h["buckets"]:
            total[le] = total.get(le, 0.0) + n
    return {
        "buckets": sorted(([le, n] for le, n in total.items()), key=lambda b: float(b[0])),
        "count": sum(h["count"] for h in histograms),
        "sum": sum(h["sum"] for h in histograms),
    }


def histogram_quantile(q: float, buckets: list[list[Any]]) -> float | None:
    """The ``q`` quantile (0..1) estimated from cumulative buckets as Prometheus's
    ``histogram_quantile`` does: linear within the bucket the rank falls in (from 0 for
    the first); in the +Inf bucket, the highest finite bound. None without observations."""
    if not buckets:
        return None
    total = float(buckets[-1][1])
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le, cumulative in buckets:
        upper, count = float(le), float(cumulative)
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def histogram_summary(h: dict[str, Any]) -> dict[str, Any]:
    """Count, exact mean (sum / count), and p50/p99 estimated from the buckets (ms)."""
    count = round(h["count"])

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    p99 = histogram_quantile(0.99, h["buckets"])
    # The bound of the bucket the p99 falls in: the estimate is no more exact than that.
    bound = next((le for le, n in h["buckets"] if count and n >= 0.99 * h["buckets"][-1][1]), None)
    return {
        "count": count,
        "sum": h["sum"],
        "mean_ms": ms(h["sum"] / h["count"]) if h["count"] else None,
        "p50_ms_estimate": ms(histogram_quantile(0.5, h["buckets"])),
        "p99_ms_estimate": ms(p99),
        "p99_bucket_le": bound,
        "buckets": h["buckets"],
    }


def scrape_histogram(url: str) -> dict[str, Any]:
    text = httpx.get(f"{url}/metrics", timeout=10.0).text
    found = parse_histogram(text)
    if not found["buckets"]:
        raise RuntimeError(f"{url}/metrics has no {LATENESS_METRIC} histogram")
    return found


def scrape_histograms(urls: list[str]) -> dict[str, dict[str, Any]]:
    """Every node's histogram: only a leader observes, so the sum of the nodes' changes
    over a run counts each expiry once even if the leadership moved."""
    return {url: scrape_histogram(url) for url in urls}


def histograms_delta(
    after: dict[str, dict[str, Any]], before: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    empty: dict[str, Any] = {"buckets": [], "count": 0.0, "sum": 0.0}
    return histogram_sum(
        [histogram_delta(found, before.get(url, empty)) for url, found in after.items()]
    )


# ---------------------------------------------------------------------- one run


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def lateness_summary(seconds: list[float]) -> dict[str, Any]:
    ordered = sorted(seconds)
    if not ordered:
        return {"count": 0}
    return {
        "count": len(ordered),
        "min_ms": _ms(ordered[0]),
        "p50_ms": _ms(percentile(ordered, 50)),
        "p99_ms": _ms(percentile(ordered, 99)),
        "max_ms": _ms(ordered[-1]),
    }


def load_summary(result: LeaseLoadResult) -> dict[str, Any]:
    """The figures of one run: the writes, and for ``leases`` the keep-alives and the
    expiring leases."""
    start, end = result.window
    seconds = end - start
    found: dict[str, Any] = {"writes": write_summary(result.writes)}
    ka = result.keepalive
    if ka is not None:
        latencies = sorted(ka.latencies)
        lags = sorted(ka.lags)
        per_s = ka.ok_in_window / seconds if seconds > 0 else 0.0
        found["keepalive"] = {
            "target_per_s": ka.target_per_s,
            "per_s": round(per_s, 1),
            "share_of_target": round(per_s / ka.target_per_s, 3) if ka.target_per_s else None,
            "scheduled": ka.scheduled,
            "ok": ka.ok,
            "gone": ka.gone,
            "errors": ka.errors,
            "first_error": ka.first_error,
            "first_gone": ka.first_gone,
            "p50_ms": _ms(percentile(latencies, 50)),
            "p99_ms": _ms(percentile(latencies, 99)),
            "max_ms": _ms(latencies[-1] if latencies else 0.0),
            "lag_p99_ms": _ms(percentile(lags, 99)),
            "lag_max_ms": _ms(lags[-1] if lags else 0.0),
            "peak_connections": ka.peak_connections,
            "connections_lost": ka.connections_lost,
        }
    ex = result.expiry
    if ex is not None:
        found["expiry"] = {
            "rate": ex.rate,
            "ttl_s": ex.ttl,
            "granted": ex.granted,
            "written": ex.written,
            "errors": ex.errors,
            "first_error": ex.first_error,
            "missing": ex.missing,
            "early": ex.early,
            "duplicate_deletes": ex.duplicate_deletes,
            "resyncs": ex.resyncs,
            "watch_error": ex.watch_error,
            "drain_s": ex.drain_s,
            "lateness": lateness_summary(list(ex.lateness)),
            "lateness_from_ack": lateness_summary(list(ex.lateness_from_ack)),
            # Every measured sample (a few hundred): the summary merges the runs.
            "lateness_ms": [round(s * 1000, 2) for s in ex.lateness],
            "lateness_from_ack_ms": [round(s * 1000, 2) for s in ex.lateness_from_ack],
        }
    return found


class _Bench:
    def __init__(self, cluster: RaftkvCluster, config: LeaseBenchConfig, say: Say) -> None:
        self.cluster = cluster
        self.config = config
        self.say = say
        # spawn, not fork: this process holds threads (the cluster's log readers).
        self.generator = concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn")
        )
        self.runs = 0
        self.ids: list[int] = []
        self.refreshes: list[dict[str, Any]] = []

    def _leader(self) -> tuple[int, str, int]:
        local = self.cluster.local
        assert local is not None, "the lease benchmark needs a cluster kvbench started"
        leader = self.cluster.leader_id()
        url = local.url(leader)
        return leader, url, int(url.rsplit(":", 1)[1])

    def setup(self) -> dict[str, Any]:
        config = self.config
        _, _, port = self._leader()
        spec = SetupSpec("127.0.0.1", port, config.leases, config.lease_ttl, config.value_size)
        done = self.generator.submit(grant_leases, spec).result()
        if done.errors or len(done.ids) != config.leases:
            raise RuntimeError(
                f"lease setup: {len(done.ids)} of {config.leases} leases granted with their "
                f"key, {done.errors} errors (first: {done.first_error})"
            )
        self.ids = done.ids
        wait_applied(self.cluster)
        return {
            "leases": len(done.ids),
            "ttl_s": config.lease_ttl,
            "seconds": round(done.seconds, 1),
            "per_s": round(len(done.ids) / done.seconds) if done.seconds > 0 else None,
        }

    def refresh(self, before: str) -> dict[str, Any]:
        """One keep-alive of every lease, unmeasured; fails if any lease is gone."""
        _, _, port = self._leader()
        began = time.monotonic()
        done = self.generator.submit(
            refresh_leases, RefreshSpec("127.0.0.1", port, self.ids, SETUP_CONNECTIONS)
        ).result()
        ended = time.monotonic()
        if done.gone:
            raise RuntimeError(
                f"lease: {done.gone} of {len(self.ids)} leases were gone (keep-alive 404) at "
                f"the refresh {before} (ids {done.gone_ids[:10]}...): they expired between "
                f"runs; raise --lease-ttl ({self.config.lease_ttl:g} s)"
            )
        if done.errors:
            raise RuntimeError(
                f"lease: {done.errors} keep-alives of the refresh {before} failed "
                f"(first: {done.first_error})"
            )
        wait_applied(self.cluster)
        found = {
            "before": before,
            "started": began,
            "ended": ended,
            "seconds": round(ended - began, 2),
            "leases": done.ok,
        }
        self.refreshes.append(found)
        return found

    def run(self, side: str, round_number: int) -> dict[str, Any]:
        config = self.config
        self.runs += 1
        leader, _, port = self._leader()
        processes = node_processes(self.cluster)
        term_before = self.cluster.term()
        start_at = time.monotonic() + _GENERATOR_START_S
        spec = LeaseLoadSpec(
            side=side,
            host="127.0.0.1",
            port=port,
            connections=config.concurrency,
            duration_s=config.duration_s,
            warmup_s=config.warmup_s,
            keys=config.keys,
            value_size=config.value_size,
            seed=config.seed * 1000 + self.runs,
            start_at=start_at,
            lease_ids=self.ids if side == "leases" else [],
            lease_ttl=config.lease_ttl,
            keepalive_connections=config.keepalive_connections,
            keepalive_cap=config.keepalive_cap,
            keepalive_mode=config.keepalive_mode,
            expiry_rate=config.expiry_rate,
            expiry_ttl=config.expiry_ttl,
            expiry_prefix=expiry_prefix(self.runs),
            drain_s=config.drain_s,
        )
        urls = self.cluster.urls()
        histograms_before = scrape_histograms(urls) if side == "leases" else None
        future = self.generator.submit(run_load, spec)
        pids = [pid for p in processes.values() for pid in p.all]
        sleep_until(start_at + config.warmup_s)
        began, before = time.monotonic(), CpuSnapshot.take(pids)
        sleep_until(start_at + config.warmup_s + config.duration_s)
        ended, after = time.monotonic(), CpuSnapshot.take(pids)
        result = future.result()
        load = load_summary(result)
        late = result.window[0] - (start_at + config.warmup_s)
        if late > 0.1:
            self.say(f"lease: the generator started {late:.2f} s late; CPU window is off by that")
        writes = load["writes"]["requests"]
        used = after.since(before)
        cluster_cpu = sum(used.cpu.values())
        seconds = max(ended - began, 1e-9)
        found: dict[str, Any] = {
            "side": side,
            "round": round_number,
            "leader": leader,
            **load,
            "generator_cpu": round(result.cpu_s / (config.duration_s + config.warmup_s), 3),
            "generator_loop_lag_max_ms": result.loop_lag_max_ms,
            "cpu": {
                "cluster": round(cluster_cpu / seconds, 3),
                "machine_busy": round(used.machine_busy / seconds, 3),
                "cluster_ms_per_write": round(cluster_cpu * 1000 / writes, 4) if writes else 0.0,
            },
            "leader_changes": max(0, self.cluster.term() - term_before),
        }
        if histograms_before is not None:
            found["server_lateness"] = histogram_summary(
                histograms_delta(scrape_histograms(urls), histograms_before)
            )
        ka = found.get("keepalive")
        if ka is not None and ka["gone"]:
            raise RuntimeError(
                f"lease: {ka['gone']} keep-alives answered 404 in round {round_number + 1} "
                f"(first: {ka['first_gone']}): a lease of the setup expired while it was "
                f"being kept alive every {config.keepalive_interval_s:g} s"
            )
        expiry = found.get("expiry")
        if expiry is not None and expiry["watch_error"]:
            raise RuntimeError(f"lease: the expiry watch failed: {expiry['watch_error']}")
        return found

    def close(self) -> None:
        self.generator.shutdown(wait=True)


def unrenewed_gaps(refreshes: list[dict[str, Any]]) -> list[float]:
    """For each run, the longest a lease can have gone without a keep-alive around it:
    from the start of the refresh before it to the end of the refresh after it."""
    return [
        round(after["ended"] - before["started"], 2)
        for before, after in itertools.pairwise(refreshes)
    ]


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per side, the leases/plain ratios, the keep-alives and the lateness."""
    sides: dict[str, dict[str, Any]] = {}
    for side in SIDES:
        mine = [r for r in runs if r["side"] == side]
        writes = [r["writes"] for r in mine]
        sides[side] = {
            "runs": len(mine),
            "throughput": [w["throughput"] for w in writes],
            "median_throughput": median([w["throughput"] for w in writes]),
            "median_p50_ms": median([w["p50_ms"] for w in writes]),
            "median_p99_ms": median([w["p99_ms"] for w in writes]),
            "median_p999_ms": median([w["p999_ms"] for w in writes]),
            "errors": sum(w["errors"] for w in writes),
            "warmup_errors": sum(w["warmup_errors"] for w in writes),
            "leader_changes": sum(r["leader_changes"] for r in mine),
            "median_cluster_cpu_ms_per_write": median(
                [r["cpu"]["cluster_ms_per_write"] for r in mine]
            ),
        }
    plain, leases = sides["plain"]["median_throughput"], sides["leases"]["median_throughput"]
    pairs = paired_ratios(runs, lambda r: float(r["writes"]["throughput"]), "leases", "plain")
    paired = geometric_mean(pairs)
    keepalives = [r["keepalive"] for r in runs if "keepalive" in r]
    expiries = [r["expiry"] for r in runs if "expiry" in r]
    lateness = [s / 1000 for e in expiries for s in e["lateness_ms"]]
    from_ack = [s / 1000 for e in expiries for s in e["lateness_from_ack_ms"]]
    server = [r["server_lateness"] for r in runs if "server_lateness" in r]
    return {
        "sides": sides,
        "throughput_ratio": leases / plain if plain and leases is not None else None,
        "paired_ratio": paired,
        "paired_ratios": pairs,
        "goal": {
            "throughput_within_15_percent": {
                "wanted": f">= {GOAL_THROUGHPUT_RATIO}",
                "met": paired is not None and paired >= GOAL_THROUGHPUT_RATIO,
            }
        },
        "keepalive": {
            "target_per_s": keepalives[0]["target_per_s"] if keepalives else None,
            "per_s": [k["per_s"] for k in keepalives],
            "median_p50_ms": median([k["p50_ms"] for k in keepalives]),
            "median_p99_ms": median([k["p99_ms"] for k in keepalives]),
            "lag_max_ms": max((k["lag_max_ms"] for k in keepalives), default=None),
            "peak_connections": max((k["peak_connections"] for k in keepalives), default=None),
            "gone": sum(k["gone"] for k in keepalives),
            "errors": sum(k["errors"] for k in keepalives),
        },
        "expiry": {
            "lateness": lateness_summary(lateness),
            "lateness_from_ack": lateness_summary(from_ack),
            "written": sum(e["written"] for e in expiries),
            "missing": sum(e["missing"] for e in expiries),
            "early": sum(e["early"] for e in expiries),
            "errors": sum(e["errors"] for e in expiries),
            "resyncs": sum(e["resyncs"] for e in expiries),
        },
        "server_lateness": histogram_summary(histogram_sum(server)) if server else None,
    }


def run_lease_bench(config: LeaseBenchConfig, say: Say | None = None) -> dict[str, Any]:
    """The whole benchmark on a fresh cluster; returns the results document."""
    tell = say or (lambda _: None)
    with RaftkvCluster(nodes=config.nodes, extra_args=config.node_args) as cluster:
        tell(f"lease: preloading {config.keys} keys on {config.nodes} nodes...")
        loaded = preload(cluster, config.keys, config.value_size)
        bench = _Bench(cluster, config, tell)
        runs: list[dict[str, Any]] = []
        try:
            tell(f"lease: granting {config.leases} leases of {config.lease_ttl:g} s with a key...")
            setup = bench.setup()
            for round_number in range(config.rounds):
                for side in order_of(round_number):
                    label = f"round {round_number + 1}/{config.rounds}, {side}"
                    bench.refresh(f"before {label}")
                    tell(f"lease: {label}")
                    runs.append(bench.run(side, round_number))
                    # The next refresh and run start with every node caught up.
                    wait_applied(cluster)
            final = bench.refresh("after the last run")
        finally:
            bench.close()
        gaps = unrenewed_gaps(bench.refreshes)
        for run, gap in zip(runs, gaps, strict=False):
            run["longest_unrenewed_s"] = gap
        return {
            "config": {
                "nodes": config.nodes,
                "rounds": config.rounds,
                "duration_s": config.duration_s,
                "warmup_s": config.warmup_s,
                "concurrency": config.concurrency,
                "keys": config.keys,
                "value_size": config.value_size,
                "leases": config.leases,
                "lease_ttl_s": config.lease_ttl,
                "keepalive_interval_s": config.keepalive_interval_s,
                "keepalive_target_per_s": round(config.keepalive_target_per_s, 1),
                "keepalive_connections": config.keepalive_connections,
                "keepalive_mode": config.keepalive_mode,
                "keepalive_connections_cap": config.keepalive_cap,
                "expiry_rate": config.expiry_rate,
                "expiry_ttl_s": config.expiry_ttl,
                "seed": config.seed,
                "node_args": config.node_args,
                "write_request": "POST /kv/{key} {value}",
                "keepalive_request": "POST /lease/{id}/keepalive",
                "lease_keys": f"{LEASE_KEY_PREFIX}kNNNNNN, one per lease",
                "expiry_watch": "GET /watch?prefix=expiry/RUN/ on the leader",
            },
            "preload": loaded,
            "setup": setup,
            "refreshes": [
                {k: v for k, v in r.items() if k not in ("started", "ended")}
                for r in bench.refreshes
            ],
            "leases_alive_at_end": final["leases"],
            "runs": runs,
            "summary": summarise(runs),
        }


# ---------------------------------------------------------------------- the report


def format_report(document: dict[str, Any]) -> str:
    runs = document["runs"]
    summary = document["summary"]
    config = document["config"]
    header = (
        f"{'round':>5} {'side':<7}{'writes/s':>10}{'p50 ms':>8}{'p99 ms':>8}{'p99.9':>8}{'err':>5}"
        f"{'elect':>6}{'ka/s':>8}{'ka p99':>8}{'ka late':>8}{'exp p50':>8}{'exp p99':>8}"
        f"{'exp max':>8}{'cpu ms/w':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in runs:
        w = r["writes"]
        ka = r.get("keepalive", {})
        late = r.get("expiry", {}).get("lateness", {})
        lines.append(
            f"{r['round'] + 1:>5} {r['side']:<7}{w['throughput']:>10,.0f}{w['p50_ms']:>8.1f}"
            f"{w['p99_ms']:>8.1f}{w['p999_ms']:>8.1f}{w['errors']:>5}{r['leader_changes']:>6}"
            f"{num(ka.get('per_s')):>8}{num(ka.get('p99_ms'), '.1f'):>8}"
            f"{num(ka.get('lag_max_ms'), '.0f'):>8}{num(late.get('p50_ms'), '.1f'):>8}"
            f"{num(late.get('p99_ms'), '.1f'):>8}{num(late.get('max_ms'), '.1f'):>8}"
            f"{r['cpu']['cluster_ms_per_write']:>9.3f}"
        )
    sides = summary["sides"]
    plain, leases = sides["plain"], sides["leases"]
    goal = summary["goal"]["throughput_within_15_percent"]
    ka = summary["keepalive"]
    expiry = summary["expiry"]
    late = expiry["lateness"]
    from_ack = expiry["lateness_from_ack"]
    early = " (A STORE BUG: expired before its TTL)" if expiry["early"] else ""
    lines += [
        "",
        f"writes/s plain {spread(plain['throughput'], ',.0f')}, with leases "
        f"{spread(leases['throughput'], ',.0f')}: leases/plain ratio of medians "
        f"{num(summary['throughput_ratio'], '.3f')}x, paired "
        f"{num(summary['paired_ratio'], '.3f')}x ({spread(summary['paired_ratios'], '.3f')}); "
        f"goal {goal['wanted']}: {'met' if goal['met'] else 'MISSED'}",
    ]
    for name, side in (("plain", plain), ("leases", leases)):
        lines.append(
            f"{name:<6} write p50/p99/p99.9 {num(side['median_p50_ms'], '.1f')}/"
            f"{num(side['median_p99_ms'], '.1f')}/{num(side['median_p999_ms'], '.1f')} ms "
            f"(medians of the runs), errors {side['errors']} (+{side['warmup_errors']} in "
            f"warm-ups), leader changes {side['leader_changes']}, cluster CPU "
            f"{num(side['median_cluster_cpu_ms_per_write'], '.3f')} ms per write"
        )
    lines += [
        f"keep-alives: {config['leases']:,} leases every {config['keepalive_interval_s']:g} s "
        f"= {num(ka['target_per_s'], ',.1f')}/s wanted, {spread(ka['per_s'], ',.0f')}/s "
        f"achieved; latency p50/p99 {num(ka['median_p50_ms'], '.1f')}/"
        f"{num(ka['median_p99_ms'], '.1f')} ms (medians), sent at most "
        f"{num(ka['lag_max_ms'], ',.0f')} ms behind schedule on at most "
        f"{num(ka['peak_connections'], 'd')} connections; 404 (lease gone): {ka['gone']}, "
        f"other errors: {ka['errors']}",
        f"expiry lateness, client-observed (delete event on a watch minus grant send + "
        f"{config['expiry_ttl_s']:g} s TTL), {late['count']} leases: p50 "
        f"{num(late.get('p50_ms'), '.1f')} ms, p99 {num(late.get('p99_ms'), '.1f')} ms, max "
        f"{num(late.get('max_ms'), '.1f')} ms; from the grant's acknowledgement + TTL "
        f"instead (the lease's deadline lies between the two): p50 "
        f"{num(from_ack.get('p50_ms'), '.1f')} ms, p99 {num(from_ack.get('p99_ms'), '.1f')} "
        f"ms, max {num(from_ack.get('max_ms'), '.1f')} ms; deletes missing {expiry['missing']}, "
        f"early {expiry['early']}{early}, errors {expiry['errors']}",
    ]
    server = summary["server_lateness"]
    if server is not None:
        lines.append(
            f"expiry lateness, server-side {LATENESS_METRIC} (the leader's deadline to "
            f"its apply of the expiry; every node's change summed) over the leases runs: "
            f"{server['count']} expiries, mean {num(server['mean_ms'], '.1f')} ms; p50 ~"
            f"{num(server['p50_ms_estimate'], '.1f')} ms, p99 ~"
            f"{num(server['p99_ms_estimate'], '.1f')} ms (estimated from the buckets, "
            f"linear within one as histogram_quantile does; p99 in the bucket le="
            f"{server['p99_bucket_le']} s)"
        )
    gaps = [r["longest_unrenewed_s"] for r in runs if r["side"] == "plain"]
    lines.append(
        f"setup leases alive at the end: {document['leases_alive_at_end']:,} of "
        f"{config['leases']:,}; a lease went unrenewed around a plain run at most "
        f"{num(max(gaps, default=None), '.1f')} s of its {config['lease_ttl_s']:g} s TTL "
        f"(from the start of the refresh before the run to the end of the one after)"
    )
    lines.append(
        f"generator CPU {spread([r['generator_cpu'] for r in runs], '.2f')} cores, its loop "
        f"late by at most {spread([r['generator_loop_lag_max_ms'] for r in runs], '.0f')} ms"
    )
    first = [r["writes"]["first_error"] for r in runs if r["writes"]["first_error"]]
    for part in ("keepalive", "expiry"):
        first += [r[part]["first_error"] for r in runs if r.get(part, {}).get("first_error")]
    if first:
        lines.append(f"first error: {first[0][:200]}")
    return "\n".join(lines)
