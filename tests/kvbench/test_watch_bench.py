"""The watch benchmark: its key partition, the watchers' line reader, the arithmetic on
deliveries, and (end to end, small) that ``kvbench --scenario watch`` runs against a
real 3-node cluster and writes sane figures. No figure is held to a speed."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from array import array
from pathlib import Path
from typing import cast

import pytest
from raftkv.kvbench.watch_bench import (
    Sample,
    WatchBenchConfig,
    latency_summary,
    match_deliveries,
    sample_summary,
    scan_logs,
    snapshot_intervals,
    snapshot_slices,
    summarise,
)
from raftkv.kvbench.watch_load import ID_DIGITS, WriteLog, id_value, watch_key, watch_prefix
from raftkv.kvbench.watch_streams import Deliveries, _Pool, _Stream


def test_the_prefixes_partition_the_keys() -> None:
    prefixes = [watch_prefix(p, 1000) for p in range(1000)]
    assert prefixes[0] == "w/000/" and prefixes[42] == "w/042/" and prefixes[-1] == "w/999/"
    for i in (0, 1, 999, 1000, 54_321, 99_999):
        key = watch_key(i, 1000)
        assert [p for p in prefixes if key.startswith(p)] == [watch_prefix(i % 1000, 1000)]
    assert watch_key(42, 1000) == "w/042/k000042"
    # With ten prefixes the numbers are one digit wide: still none a prefix of another.
    assert [watch_prefix(p, 10) for p in (0, 9)] == ["w/0/", "w/9/"]
    with pytest.raises(ValueError):
        watch_key(-1, 10)


def test_a_value_carries_its_write_id() -> None:
    value = id_value(1234, 100)
    assert len(value) == 100 and value.startswith(b"000000001234v")
    assert id_value(7, ID_DIGITS) == b"000000000007"
    with pytest.raises(ValueError):
        id_value(1, ID_DIGITS - 1)
    with pytest.raises(ValueError):
        id_value(10**ID_DIGITS, 100)


def test_the_cluster_gets_room_for_every_stream_unless_told_otherwise() -> None:
    assert "--max-connections=4096" in WatchBenchConfig().cluster_args()
    mine = WatchBenchConfig(node_args=["--max-connections=5000"]).cluster_args()
    assert mine == ["--max-connections=5000"]
    many = WatchBenchConfig(prefixes=5000, all_watchers=10).cluster_args()
    assert "--watch-max-per-client=5010" in many
    assert any(a.startswith("--max-connections=") and int(a.split("=")[1]) > 5010 for a in many)
    with pytest.raises(ValueError):
        WatchBenchConfig(keys=10, prefixes=100)


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


def test_the_stream_reader_splits_chunks_into_lines_and_notes_each_write() -> None:
    async def scenario() -> tuple[_Pool, _Transport]:
        pool = _Pool()
        stream = _Stream(pool, 3, b"GET /watch?prefix=w/3/ HTTP/1.1\r\n\r\n", total=1)
        transport = _Transport()
        stream.connection_made(cast(asyncio.Transport, transport))
        events = (
            b'{"kind":"events","revision":9,"events":[{"type":"put","key":"w/3/k1",'
            b'"value":"000000000005vvv","revision":8},{"type":"put","key":"w/3/k2",'
            b'"value":"000000000006vvv","revision":9}]}\n'
        )
        body = (
            _chunk(b'{"kind":"start","revision":7}\n')
            + _chunk(events[:50])
            + _chunk(events[50:] + b'{"kind":"progress","revision":12}\n')
            # A line whose fields come in another order is read in full.
            + _chunk(b'{"revision":13,"kind":"resync","items":[],"done":true}\n')
        )
        response = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + body
        )
        for cut in range(0, len(response), 37):  # reads split anywhere
            stream.data_received(response[cut : cut + 37])
        return pool, transport

    pool, transport = asyncio.run(scenario())
    assert transport.written.startswith(b"GET /watch?prefix=w/3/ ")
    out = pool.out
    assert pool.started == 1 and pool.start_revisions == [7] and pool.all_started.done()
    assert list(out.ids) == [5, 6] and list(out.stream) == [3, 3]
    assert out.lines == 4 and out.progress == 1 and out.resyncs == 1
    assert out.out_of_order == 0 and out.unparsed == 0


def test_a_refused_stream_is_a_failure_with_its_answer() -> None:
    async def scenario() -> _Pool:
        pool = _Pool()
        stream = _Stream(pool, 0, b"GET /watch?prefix= HTTP/1.1\r\n\r\n", total=1)
        stream.connection_made(cast(asyncio.Transport, _Transport()))
        body = b'{"error":"too many"}'
        stream.data_received(
            b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        return pool

    pool = asyncio.run(scenario())
    assert pool.failed == 1 and pool.started == 0
    assert pool.first_failure.startswith("429") and "too many" in pool.first_failure


def _log(acked: list[float], keys: list[int], window: tuple[float, float]) -> WriteLog:
    return WriteLog(
        first_id=100,
        sent=array("d", [t - 0.010 if not math.isnan(t) else 0.0 for t in acked]),
        acked=array("d", acked),
        key=array("l", keys),
        window=window,
    )


def test_deliveries_are_matched_to_their_writes_and_checked() -> None:
    # Two prefixes, one whole-keyspace stream (index 2). Write 100 (key 0, prefix 0)
    # reaches both of its streams; write 101 (key 1, prefix 1) arrives at prefix 0's
    # stream by mistake and never at the whole-keyspace one; write 102 failed.
    log = _log([10.0, 10.5, math.nan], [0, 1, 1], (9.0, 11.0))
    deliveries = Deliveries(
        ids=array("q", [100, 100, 101]),
        times=array("d", [10.002, 9.999, 10.52]),
        stream=array("l", [0, 2, 0]),
    )
    found = match_deliveries(log, deliveries, prefixes=2, all_watchers=1)
    assert found["deliveries"] == 3
    assert found["misrouted"] == 1
    # 101 missed its prefix stream and the whole-keyspace one; 100 reached both.
    assert found["missing"] == 2 and found["duplicates"] == 0
    assert found["events_per_s"] == 1.5
    assert found["from_ack"]["count"] == 3
    assert found["from_ack"]["min_ms"] == pytest.approx(-1.0)
    assert found["from_ack"]["max_ms"] == pytest.approx(20.0)
    assert found["from_send"]["min_ms"] == pytest.approx(9.0)
    assert len(found["timeline"]) == 4


def test_latencies_may_be_negative_and_an_empty_list_is_only_counted() -> None:
    summary = latency_summary([-0.002, 0.001, 0.003, 0.004])
    assert summary["min_ms"] == -2.0 and summary["max_ms"] == 4.0
    assert summary["negative_share"] == 0.25
    assert latency_summary([]) == {"count": 0}


def test_samples_are_laid_on_the_slices_of_the_timeline() -> None:
    samples = [
        Sample(1.1, 3, (0.0, 0.0, 1.0)),
        Sample(1.7, 9, (0.2, 0.001, 1.0)),  # 200 ms waited in the slice from 1.5 s
        Sample(2.6, 1, (0.2, 0.002, 1.1)),
    ]
    found = sample_summary(samples, (1.0, 3.0))
    assert found["max_entries"] == 9 and found["median_entries"] == 3
    assert found["timeline_max_entries"] == [3, 9, 0, 1]
    assert found["timeline_runqueue_wait_ms"] == {
        "watched_raft": [0.0, 200.0, 0.0, 0.0],
        "watched_workers": [0.0, 1.0, 0.0, 1.0],
        "leader_raft": [0.0, 0.0, 0.0, 100.0],
    }


def _run(side: str, round_number: int, throughput: float, p99: float = 5.0) -> dict[str, object]:
    run: dict[str, object] = {
        "side": side,
        "round": round_number,
        "leader_changes": 0,
        "writes": {
            "throughput": throughput,
            "p50_ms": 1.0,
            "p99_ms": 2.0,
            "p999_ms": 4.0 * (round_number + 1),
            "errors": 0,
        },
    }
    if side == "watch":
        run["watch"] = {
            "from_ack": {"p50_ms": 1.0, "p99_ms": p99, "p999_ms": p99 * 2},
            "from_send": {"p99_ms": p99 + 3},
            "events_per_s": 1000.0,
        }
        run["memory"] = {"bytes_per_stream": 15_000 if round_number == 0 else 100}
    return run


def test_the_summary_pairs_each_round_and_judges_the_goals() -> None:
    runs = [
        _run("base", 0, 1000.0),
        _run("watch", 0, 900.0),
        _run("watch", 1, 800.0, p99=60.0),
        _run("base", 1, 1000.0),
    ]
    summary = summarise(runs)  # type: ignore[arg-type]
    assert summary["throughput_ratio"] == pytest.approx(0.85)
    assert summary["paired_ratios"] == [pytest.approx(0.9), pytest.approx(0.8)]
    assert summary["paired_ratio"] == pytest.approx(math.sqrt(0.72))
    goals = summary["goals"]
    assert goals["throughput_within_15_percent"]["met"] is False  # 0.849 paired
    assert goals["commit_to_watcher_p99"]["met"] is False  # 60 ms in round 2
    # The first opening on a fresh worker counts; later ones reuse freed memory.
    assert goals["memory_per_idle_stream"]["met"] is True
    assert summary["bytes_per_stream"] == [15_000, 100]
    assert summary["sides"]["base"]["median_p999_ms"] == 6.0  # of 4 and 8
    assert summary["watch_from_ack_p999_ms"] == [10.0, 120.0]


def test_log_warnings_are_grouped_with_their_numbers_blanked(tmp_path: Path) -> None:
    log = tmp_path / "node-1.log"
    log.write_text(
        "2026-12-07 16:31:26,363 INFO node1 raftkv.node: started\n"
        "2026-12-07 16:31:26,372 WARNING node1 raftkv.node: event loop blocked for 101 ms\n"
        "2026-12-07 16:31:27,372 WARNING node1 raftkv.node: event loop blocked for 87 ms\n"
        "2026-12-07 16:31:28,000 ERROR node1 raftkv.http: watch stream failed\n"
        "Traceback (most recent call last):\n"
    )
    found = scan_logs([log, tmp_path / "missing.log"])
    assert found["counts"] == {"WARNING": 2, "ERROR": 1}
    assert found["tracebacks"] == 1
    assert found["distinct"][0]["count"] == 2
    assert "blocked for 101 ms" in found["distinct"][0]["example"]


def test_snapshots_in_the_logs_are_laid_on_the_timeline(tmp_path: Path) -> None:
    log = tmp_path / "node-2.log"
    log.write_text(
        "2026-12-07 17:41:45,825 INFO node2 raftkv.node: snapshot at index 60110 "
        "(6565306 bytes) in 458 ms; on the loop: fork 10.5 ms, log compaction 2.0 ms\n"
        "2026-12-07 17:41:46,000 INFO node2 raftkv.node: started\n"
    )
    [(start, end, node)] = snapshot_intervals([log])
    assert node == "node2" and end - start == pytest.approx(0.458)
    run = {"window_wallclock": end - 1.2, "watch": {"timeline": [[0, 0, 0, 0]] * 4}}
    # The snapshot ran from 0.742 s to 1.2 s into the window: slices 1 and 2.
    assert snapshot_slices(run, [(start, end, node)]) == [1, 2]
    assert snapshot_slices({"watch": {"timeline": []}}, [(start, end, node)]) == []


def test_the_watch_scenario_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable, "-P", "-m", "raftkv.kvbench",
            "--scenario", "watch",
            "--watch-prefixes", "20",
            "--watch-all", "2",
            "--rounds", "1",
            "--keys", "200",
            "--concurrency", "4",
            "--duration", "1",
            "--warmup", "0.3",
            "--output", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads((out / "watch.json").read_text())
    assert document["command"].startswith("kvbench --scenario watch")
    assert "--max-connections=4096" in document["config"]["node_args"]
    runs = document["runs"]
    assert [(r["side"], r["round"]) for r in runs] == [("base", 0), ("watch", 0)]
    for run in runs:
        assert run["writes"]["writes"] > 0 and run["writes"]["throughput"] > 0, run
        assert run["writes"]["errors"] == 0, run
        assert run["leader"] != run["watched_node"]
        assert set(run["cpu"]["cores"]) >= {"machine_busy", "leader_workers", "watched_raft"}
        assert run["samples"]["samples"] > 0
    watched = runs[1]
    watch = watched["watch"]
    assert watch["deliveries"] > 0 and watch["events_per_s"] > 0
    # Every acknowledged write reached its prefix's stream and both whole-keyspace ones.
    assert watch["missing"] == 0 and watch["misrouted"] == 0 and watch["duplicates"] == 0
    assert watch["unparsed"] == 0 and watch["closed_by_server"] == 0
    latency = watch["from_ack"]
    assert latency["count"] > 0
    assert latency["min_ms"] <= latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert watch["from_send"]["min_ms"] > 0  # an event cannot arrive before its write left
    memory = watched["memory"]
    assert memory["streams"] == 22 and isinstance(memory["bytes_per_stream"], int)
    assert set(memory["rss_before"]) >= {"raft", "worker0"}
    summary = document["summary"]
    assert summary["paired_ratio"] > 0
    assert all(isinstance(goal["met"], bool) for goal in summary["goals"].values())
    assert {p.name for p in (out / "logs").iterdir()} == {"node-1.log", "node-2.log", "node-3.log"}
    assert isinstance(watch["snapshot_slices"], list) and watched["window_wallclock"] > 0
    assert "events delivered per second" in done.stdout
