"""kvbench's CPU accounting: /proc stat lines, which process plays which role, and the
arithmetic from CPU seconds to microseconds per request. No timing is asserted."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from raftkv.kvbench.cpu import (
    ETCD,
    HTTP,
    OTHER,
    RAFT,
    ClusterCpu,
    CpuMeter,
    Member,
    Proc,
    ProcStat,
    attribute,
    children,
    is_http_worker,
    parse_stat,
    raftkv_members,
    read_stat,
    take_sample,
)


def stat_line(pid: int, comm: str, ppid: int, utime: int, stime: int, cut: int, cst: int) -> str:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime priority nice ...
    return (
        f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 900 0 0 0 "
        f"{utime} {stime} {cut} {cst} 20 0 3 0 12345 1000000 500 18446744073709551615"
    )


def test_a_stat_line_gives_the_parent_and_the_cpu_in_seconds() -> None:
    line = stat_line(4242, "python3", 17, utime=250, stime=50, cut=30, cst=10)
    assert parse_stat(line, ticks_per_s=100) == ProcStat(ppid=17, own_s=3.0, reaped_s=0.4)


def test_a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() -> None:
    line = stat_line(7, "kv) (node 1", 1, utime=100, stime=0, cut=0, cst=0)
    assert parse_stat(line, ticks_per_s=100) == ProcStat(ppid=1, own_s=1.0, reaped_s=0.0)


def test_the_stat_of_a_live_process_and_of_none() -> None:
    mine = read_stat(os.getpid())
    assert mine is not None and mine.ppid == os.getppid() and mine.own_s >= 0
    # Beyond the kernel's largest pid (pid_max is at most 2**22): never a process.
    assert read_stat(2**22 + 1) is None


def test_http_workers_are_told_from_other_children_by_their_command_line() -> None:
    worker = [b"/usr/bin/python3", b"-P", b"-m", b"raftkv.http.worker", b"--fd", b"5", b""]
    raft = [b"/usr/bin/python3", b"-P", b"-m", b"raftkv.cli.kvnode", b"--node-id", b"1", b""]
    assert is_http_worker(worker)
    # A forked snapshot writer carries its parent's command line.
    assert not is_http_worker(raft)
    assert not is_http_worker([b"python", b"-c", b"import raftkv.http.worker"])


def proc(member: str, role: str, ppid: int, own: float, reaped: float = 0.0) -> Proc:
    return Proc(member, role, ProcStat(ppid, own, reaped))


def test_cpu_is_attributed_to_each_member_and_role_over_the_window() -> None:
    before = {
        10: proc("1", RAFT, 1, 5.0),
        11: proc("1", HTTP, 10, 20.0),
        20: proc("2", RAFT, 1, 3.0),
    }
    after = {
        10: proc("1", RAFT, 1, 5.5),
        11: proc("1", HTTP, 10, 22.0),
        12: proc("1", HTTP, 10, 0.25),  # a worker started in the window counts from zero
        20: proc("2", RAFT, 1, 3.5),
    }
    assert attribute(before, after) == {"1": {RAFT: 0.5, HTTP: 2.25}, "2": {RAFT: 0.5}}


def test_a_child_reaped_in_the_window_counts_only_its_time_in_the_window() -> None:
    # A snapshot writer alive at the start (0.25 s used by then) exits and is reaped:
    # its parent's reaped time rises by the child's whole life, 1.0 s.
    before = {10: proc("1", RAFT, 1, 5.0, reaped=2.0), 13: proc("1", OTHER, 10, 0.25)}
    after = {10: proc("1", RAFT, 1, 5.5, reaped=3.0)}
    assert attribute(before, after) == {"1": {RAFT: 0.5, OTHER: 0.75}}


def test_a_child_born_and_reaped_in_the_window_counts_through_its_parent() -> None:
    before = {10: proc("1", RAFT, 1, 5.0, reaped=2.0)}
    after = {10: proc("1", RAFT, 1, 5.5, reaped=2.5)}
    assert attribute(before, after) == {"1": {RAFT: 0.5, OTHER: 0.5}}


def test_a_reused_pid_is_a_new_process() -> None:
    before = {30: proc("1", HTTP, 10, 9.0), 10: proc("1", RAFT, 1, 1.0)}
    after = {30: proc("2", RAFT, 1, 0.5), 10: proc("1", RAFT, 1, 1.0)}
    assert attribute(before, after) == {"1": {RAFT: 0.0}, "2": {RAFT: 0.5}}


def cluster_cpu(requests: int = 1000) -> ClusterCpu:
    return ClusterCpu(
        system="raftkv",
        leader="2",
        members=["1", "2", "3"],
        window_s=4.0,
        requests=requests,
        seconds={
            "1": {RAFT: 0.025, HTTP: 0.001},
            "2": {RAFT: 0.040, HTTP: 0.150, OTHER: 0.004},
            "3": {RAFT: 0.030},
        },
    )


def test_cpu_seconds_become_microseconds_per_request() -> None:
    cpu = cluster_cpu()
    assert cpu.followers == ["1", "3"]
    assert cpu.us("2", HTTP) == pytest.approx(150.0)
    assert cpu.us("2", RAFT) == pytest.approx(40.0)
    assert cpu.us("2") == pytest.approx(194.0)
    assert cpu.us("3", HTTP) == 0.0
    assert cpu.total_us == pytest.approx(194.0 + 26.0 + 30.0)
    assert cluster_cpu(requests=0).total_us == 0.0  # nothing completed: no division by zero
    doc = cpu.to_json()["us_per_request"]
    assert doc["leader_http"] == 150.0 and doc["leader_raft"] == 40.0
    assert doc["followers_raft"] == [25.0, 30.0] and doc["followers_http"] == [1.0, 0.0]
    assert doc["leader"] == 194.0 and doc["followers"] == [26.0, 30.0]
    assert doc["other"] == 4.0 and doc["total"] == 250.0
    members = cpu.to_json()["members_us_per_request"]
    assert members["2"] == {"leader": True, RAFT: 40.0, HTTP: 150.0, OTHER: 4.0, "total": 194.0}


def test_etcd_reports_member_totals_only() -> None:
    cpu = ClusterCpu("etcd", "m1", ["m1", "m2", "m3"], 4.0, 2000, {"m1": {ETCD: 0.5}})
    doc = cpu.to_json()
    assert doc["us_per_request"] == {"leader": 250.0, "followers": [0.0, 0.0], "total": 250.0}
    assert doc["members_us_per_request"]["m1"] == {
        "leader": True,
        ETCD: 250.0,
        OTHER: 0.0,
        "total": 250.0,
    }


def test_members_of_a_raftkv_cluster_in_node_order() -> None:
    assert raftkv_members({3: 300, 1: 100}) == [Member("1", 100, RAFT), Member("3", 300, RAFT)]


@pytest.fixture
def process_tree(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in for a raftkv node: a parent with one child whose command line is an
    HTTP worker's and one that is not."""
    script = tmp_path / "tree.py"
    script.write_text(
        "import subprocess, sys, time\n"
        "sleep = [sys.executable, '-c', 'import time; time.sleep(60)']\n"
        "kids = [subprocess.Popen(sleep + ['raftkv.http.worker']), subprocess.Popen(sleep)]\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.monotonic() + 30
        while len(children(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield parent
    finally:
        kids = children(parent.pid)
        parent.kill()
        parent.wait()
        for kid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(kid, signal.SIGKILL)


def test_a_sample_finds_every_process_of_a_member_with_its_role(
    process_tree: subprocess.Popen[bytes],
) -> None:
    kids = children(process_tree.pid)
    assert len(kids) == 2
    sample = take_sample([Member("1", process_tree.pid, RAFT)])
    assert set(sample) == {process_tree.pid, *kids}
    assert sample[process_tree.pid].role == RAFT
    assert sorted(sample[k].role for k in kids) == [HTTP, OTHER]
    assert all(p.member == "1" and p.stat.own_s >= 0 for p in sample.values())


def test_a_meter_measures_the_window_between_begin_and_end(
    process_tree: subprocess.Popen[bytes],
) -> None:
    meter = CpuMeter("raftkv", [Member("1", process_tree.pid, RAFT)], leader="1")
    assert meter.per_request(10) is None  # never began
    meter.begin()
    meter.end()
    cpu = meter.per_request(10)
    assert cpu is not None and cpu.requests == 10 and cpu.leader == "1"
    assert set(cpu.seconds) == {"1"} and cpu.window_s >= 0
    assert all(s >= 0 for s in cpu.seconds["1"].values())
    with pytest.raises(ValueError, match="leader"):
        CpuMeter("raftkv", [Member("1", process_tree.pid, RAFT)], leader="2")
