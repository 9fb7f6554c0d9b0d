"""The lease benchmark: the requests it sends, the keep-alive schedule, the expiry
watch's reader, the histogram arithmetic, the summary, and (end to end, small) that
``kvbench --scenario lease`` runs against a real 3-node cluster and writes sane figures.
No figure is held to a speed."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from raftkv.kvbench.lease_bench import (
    LeaseBenchConfig,
    histogram_delta,
    histogram_quantile,
    histogram_sum,
    histogram_summary,
    order_of,
    parse_histogram,
    summarise,
    unrenewed_gaps,
)
from raftkv.kvbench.lease_load import (
    ExpiryStats,
    _Watch,
    expiry_prefix,
    grant_request,
    keepalive_request,
    keepalive_schedule,
    lease_key,
    put_request,
)


def test_keys_and_requests_are_the_documented_ones() -> None:
    assert lease_key(42) == "lease/k000042" and expiry_prefix(3) == "expiry/0003/"
    with pytest.raises(ValueError):
        lease_key(-1)
    host = b"127.0.0.1:8001"
    keepalive = keepalive_request(17, host)
    assert keepalive.startswith(b"POST /lease/17/keepalive HTTP/1.1\r\n")
    assert b"Content-Length: 0\r\n\r\n" in keepalive and keepalive.endswith(b"\r\n\r\n")
    grant = grant_request(2.0, host)
    assert grant.startswith(b"POST /lease HTTP/1.1\r\n")
    assert orjson.loads(grant.split(b"\r\n\r\n", 1)[1]) == {"ttl": 2.0}
    put = put_request("expiry/0001/00000005", "vvv", 9, host)
    assert put.startswith(b"POST /kv/expiry/0001/00000005 HTTP/1.1\r\n")
    assert orjson.loads(put.split(b"\r\n\r\n", 1)[1]) == {"value": "vvv", "lease": 9}


def test_every_lease_is_kept_alive_once_per_interval_evenly_spread() -> None:
    ids = [5, 6, 7, 8]
    schedule = list(keepalive_schedule(ids, 2.0, start=100.0, until=106.0))
    # Every 0.5 s one lease, in turn: each one every 2 s, three times in 6 s.
    assert [lease for lease, _ in schedule] == ids * 3
    dues = [due for _, due in schedule]
    assert dues[0] == 100.0 and all(
        b - a == pytest.approx(0.5) for a, b in itertools.pairwise(dues)
    )
    assert Counter(lease for lease, _ in schedule) == dict.fromkeys(ids, 3)
    assert list(keepalive_schedule([], 2.0, 0.0, 10.0)) == []


class _Transport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_the_expiry_watch_notes_the_first_delete_of_each_key() -> None:
    async def scenario() -> tuple[_Watch, ExpiryStats, _Transport]:
        stats = ExpiryStats(rate=10.0, ttl=2.0)
        watch = _Watch(b"GET /watch?prefix=expiry%2F0001%2F HTTP/1.1\r\n\r\n", stats)
        transport = _Transport()
        watch.connection_made(cast(asyncio.Transport, transport))
        lines = [
            b'{"kind":"start","revision":7}\n',
            b'{"kind":"events","revision":8,"events":[{"type":"put","key":"expiry/0001/a",'
            b'"value":"v","revision":8}]}\n',
            b'{"kind":"events","revision":9,"events":[{"type":"delete","key":"expiry/0001/a",'
            b'"revision":9},{"type":"delete","key":"expiry/0001/b","revision":9}]}\n',
            b'{"kind":"events","revision":10,"events":[{"type":"delete",'
            b'"key":"expiry/0001/a","revision":10}]}\n',
            b'{"kind":"resync","revision":11,"items":[],"done":true}\n',
        ]
        response = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + b"".join(_chunk(line) for line in lines)
        )
        for cut in range(0, len(response), 29):  # reads split anywhere
            watch.data_received(response[cut : cut + 29])
        return watch, stats, transport

    watch, stats, transport = asyncio.run(scenario())
    assert transport.written.startswith(b"GET /watch?prefix=expiry%2F0001%2F ")
    assert watch.started.done() and watch.started.exception() is None
    assert set(watch.deleted) == {"expiry/0001/a", "expiry/0001/b"}
    assert (stats.deletes, stats.duplicate_deletes, stats.resyncs) == (3, 1, 1)
    assert stats.watch_error == ""


def test_a_refused_watch_is_an_error_with_its_answer() -> None:
    async def scenario() -> tuple[_Watch, ExpiryStats]:
        stats = ExpiryStats(rate=10.0, ttl=2.0)
        watch = _Watch(b"GET /watch?prefix=x HTTP/1.1\r\n\r\n", stats)
        watch.connection_made(cast(asyncio.Transport, _Transport()))
        body = b'{"error":"too many"}'
        watch.data_received(
            b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        return watch, stats

    watch, stats = asyncio.run(scenario())
    assert stats.watch_error.startswith("watch: 429") and "too many" in stats.watch_error
    assert isinstance(watch.started.exception(), RuntimeError)


_METRICS = """\
# HELP raftkv_lease_expiry_lateness_seconds On the leader: ...
# TYPE raftkv_lease_expiry_lateness_seconds histogram
raftkv_lease_expiry_lateness_seconds_bucket{le="0.005"} 0.0
raftkv_lease_expiry_lateness_seconds_bucket{le="0.01"} 50.0
raftkv_lease_expiry_lateness_seconds_bucket{le="0.025"} 90.0
raftkv_lease_expiry_lateness_seconds_bucket{le="0.05"} 100.0
raftkv_lease_expiry_lateness_seconds_bucket{le="+Inf"} 100.0
raftkv_lease_expiry_lateness_seconds_count 100.0
raftkv_lease_expiry_lateness_seconds_sum 1.2
raftkv_lease_expiries_total 100.0
"""


def test_the_histogram_is_read_and_its_quantiles_estimated_as_prometheus_does() -> None:
    found = parse_histogram(_METRICS)
    assert [le for le, _ in found["buckets"]] == ["0.005", "0.01", "0.025", "0.05", "+Inf"]
    assert (found["count"], found["sum"]) == (100.0, 1.2)
    buckets = found["buckets"]
    # Rank 50 is the top of the (0.005, 0.01] bucket; rank 99 is 9/10 into (0.025, 0.05].
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.025 + 0.025 * 0.9)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.005 + 0.005 * 0.5)
    # In the +Inf bucket: the highest finite bound.
    assert histogram_quantile(0.99, [["0.1", 1.0], ["+Inf", 10.0]]) == 0.1
    assert histogram_quantile(0.5, [["0.1", 0.0], ["+Inf", 0.0]]) is None
    assert histogram_quantile(0.5, []) is None
    summary = histogram_summary(found)
    assert summary["count"] == 100 and summary["mean_ms"] == 12.0
    assert summary["p50_ms_estimate"] == 10.0 and summary["p99_ms_estimate"] == 47.5
    assert summary["p99_bucket_le"] == "0.05"
    assert parse_histogram("raftkv_leases 3\n")["buckets"] == []


def test_a_run_counts_what_changed_on_every_node() -> None:
    before = parse_histogram(_METRICS)
    after = {
        "buckets": [[le, n + (5.0 if le != "0.005" else 0.0)] for le, n in before["buckets"]],
        "count": 105.0,
        "sum": 1.25,
    }
    delta = histogram_delta(after, before)
    assert delta["count"] == 5.0 and delta["sum"] == pytest.approx(0.05)
    assert dict((le, n) for le, n in delta["buckets"])["0.01"] == 5.0
    other = {"buckets": [["0.005", 1.0], ["+Inf", 1.0]], "count": 1.0, "sum": 0.001}
    total = histogram_sum([delta, other])
    assert total["count"] == 6.0 and dict((le, n) for le, n in total["buckets"])["+Inf"] == 6.0
    assert [le for le, _ in total["buckets"]][-1] == "+Inf"


def test_a_run_must_fit_in_half_the_ttl() -> None:
    LeaseBenchConfig()  # the defaults: 3 + 2 + 10 s of 30 s
    with pytest.raises(ValueError, match="half of --lease-ttl"):
        LeaseBenchConfig(duration_s=20.0)
    with pytest.raises(ValueError):
        LeaseBenchConfig(expiry_ttl=0.5)
    config = LeaseBenchConfig(leases=10_000, lease_ttl=30.0)
    assert config.keepalive_interval_s == 10.0 and config.keepalive_target_per_s == 1000.0
    refreshes = [{"started": 0.0, "ended": 3.0}, {"started": 20.0, "ended": 24.0}]
    assert unrenewed_gaps(refreshes) == [24.0]


def _run(side: str, round_number: int, throughput: float) -> dict[str, Any]:
    writes = {
        "throughput": throughput, "p50_ms": 1.0, "p99_ms": 2.0, "p999_ms": 3.0,
        "errors": 0, "warmup_errors": 0,
    }  # fmt: skip
    run: dict[str, Any] = {
        "side": side,
        "round": round_number,
        "writes": writes,
        "leader_changes": 0,
        "cpu": {"cluster_ms_per_write": 1.0},
    }
    if side == "leases":
        run["keepalive"] = {
            "target_per_s": 1000.0, "per_s": 990.0, "p50_ms": 5.0, "p99_ms": 9.0,
            "lag_max_ms": 3.0, "peak_connections": 6, "gone": 0, "errors": 0,
        }  # fmt: skip
        run["expiry"] = {
            "lateness_ms": [float(round_number + 1)] * 10, "written": 10, "missing": 0,
            "lateness_from_ack_ms": [-1.0] * 10,
            "early": 0, "errors": 0, "resyncs": 0,
        }  # fmt: skip
        run["server_lateness"] = histogram_summary(parse_histogram(_METRICS))
    return run


def test_the_summary_pairs_each_round_and_merges_the_lateness() -> None:
    assert [order_of(n) for n in range(3)] == [
        ("plain", "leases"), ("leases", "plain"), ("plain", "leases")
    ]  # fmt: skip
    runs = [
        _run("plain", 0, 1000.0),
        _run("leases", 0, 900.0),
        _run("leases", 1, 400.0),
        _run("plain", 1, 500.0),
    ]
    summary = summarise(runs)
    assert summary["paired_ratios"] == [pytest.approx(0.9), pytest.approx(0.8)]
    assert summary["paired_ratio"] == pytest.approx(math.sqrt(0.72))
    assert summary["throughput_ratio"] == pytest.approx(650 / 750)
    assert summary["goal"]["throughput_within_15_percent"]["met"] is False
    assert summary["keepalive"]["per_s"] == [990.0, 990.0]
    late = summary["expiry"]["lateness"]
    assert late["count"] == 20 and late["p50_ms"] == 1.0 and late["max_ms"] == 2.0
    assert summary["expiry"]["lateness_from_ack"]["max_ms"] == -1.0
    server = summary["server_lateness"]
    assert server["count"] == 200 and server["mean_ms"] == 12.0


def test_the_lease_scenario_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable, "-P", "-m", "raftkv.kvbench",
            "--scenario", "lease",
            "--rounds", "1",
            "--keys", "200",
            "--leases", "60",
            "--lease-ttl", "10",
            "--expiry-rate", "10",
            "--expiry-ttl", "1",
            "--concurrency", "4",
            "--duration", "1",
            "--warmup", "0.5",
            "--output", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads((out / "lease.json").read_text())
    assert document["command"].startswith("kvbench --scenario lease")
    assert document["config"]["leases"] == 60 and document["setup"]["leases"] == 60
    assert document["leases_alive_at_end"] == 60
    assert len(document["refreshes"]) == 3 and all(r["leases"] == 60 for r in document["refreshes"])
    runs = document["runs"]
    assert [(r["side"], r["round"]) for r in runs] == [("plain", 0), ("leases", 0)]
    for run in runs:
        writes = run["writes"]
        assert writes["requests"] > 0 and writes["throughput"] > 0, run
        assert writes["errors"] == 0 and writes["warmup_errors"] == 0, run
        assert 0 < writes["p50_ms"] <= writes["p99_ms"] <= writes["max_ms"], run
        assert run["cpu"]["cluster"] > 0 and isinstance(run["leader_changes"], int)
        assert 0 < run["longest_unrenewed_s"] < 10
    plain, leases = runs
    assert "keepalive" not in plain and "expiry" not in plain
    keepalive = leases["keepalive"]
    assert keepalive["target_per_s"] == 18.0  # 60 leases every 10/3 s
    assert keepalive["ok"] > 0 and keepalive["per_s"] > 0
    assert keepalive["gone"] == 0 and keepalive["errors"] == 0
    # The default streaming mode opens exactly --keepalive-connections streams.
    assert document["config"]["keepalive_mode"] == "stream"
    assert keepalive["peak_connections"] == document["config"]["keepalive_connections"] == 4
    assert keepalive["p50_ms"] <= keepalive["p99_ms"] and keepalive["lag_max_ms"] >= 0
    expiry = leases["expiry"]
    assert expiry["written"] > 0 and expiry["errors"] == 0 and expiry["watch_error"] == ""
    # Every key written had its delete delivered, none before its TTL had passed.
    assert expiry["missing"] == 0 and expiry["early"] == 0
    late, from_ack = expiry["lateness"], expiry["lateness_from_ack"]
    assert late["count"] > 0 and 0 <= late["min_ms"] <= late["p50_ms"] <= late["max_ms"]
    # The acknowledgement comes after the send: lateness from it is never the larger.
    assert from_ack["count"] == late["count"] and from_ack["max_ms"] <= late["max_ms"]
    server = leases["server_lateness"]
    # The store timed each expiring lease (and expired no lease of the setup).
    assert server["count"] == expiry["written"] and server["mean_ms"] >= 0
    summary = document["summary"]
    assert summary["paired_ratio"] > 0 and summary["throughput_ratio"] > 0
    assert summary["keepalive"]["gone"] == 0
    assert "expiry lateness, client-observed" in done.stdout
