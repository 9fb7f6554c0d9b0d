"""Chaos runs: real `kvnode` processes under faults, with a linearizability check.

Every peer link runs through a fault proxy (partitions, one-way and bridge partitions,
latency, reset connections); nemeses also kill nodes (the leader too), pause them with
SIGSTOP, kill the whole cluster, change membership, tear the tail of a log and corrupt
an older record (the node must refuse to start, then `kvnode repair` brings it back).
Concurrent clients run a register workload (get, put, compare-and-set and delete on a
few keys, rotated so histories stay small enough to check) and a set workload (unique
writes, all read back at the end). At the end faults heal and the run checks:

* the register history is linearizable (timed-out writes count as "may have happened");
* every acknowledged set write is present, and nothing appears that was never written;
* every member converges to the same state hash.

With ``--watch`` (``ChaosOptions.watchers``) a watch workload runs as well
(``raftkv.testing.watch_workload``): writers on a few prefixes and watchers of a prefix
and of the whole keyspace that follow them across the faults, resuming from node to
node; at the end every watcher's stream is checked against the committed history
(``raftkv.testing.watch_check``).

With ``--bank``, ``--lock`` and ``--lease`` (``ChaosOptions.bank``, ``.lock``, ``.lease``)
more workloads run alongside, each with its own check: transfers whose total must never
change (``raftkv.testing.bank_workload``), holders of one distributed lock writing to a
fenced register that no superseded holder may get a write into
(``raftkv.testing.lock_workload``), and keys on leases that must vanish neither before
their TTL nor long after their keep-alives stopped (``raftkv.testing.lease_workload``).

    python -m raftkv.testing.chaos --time 60 --seed 7
    python -m raftkv.testing.chaos --time 3600 --nemeses partition,kill,pause
    python -m raftkv.testing.chaos --time 120 --watch
    python -m raftkv.testing.chaos --time 120 --lock --lease

A failing run keeps its directory (history, report, every node's log and data).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from raftkv.testing.bank_workload import BankOptions, BankWorkload
from raftkv.testing.cluster import LocalCluster, wait_until
from raftkv.testing.history import History, Operation, Status
from raftkv.testing.lease_workload import CHECKPOINT_INTERVAL_S, LeaseOptions, LeaseWorkload
from raftkv.testing.linearizability import check
from raftkv.testing.lock_workload import LockOptions, LockWorkload
from raftkv.testing.watch_check import check_watches
from raftkv.testing.watch_workload import WatchWorkload, WorkloadOptions
from raftkv.wire.protocol import MAX_LIST_LIMIT
from raftkv_ext.entry import ENTRY_NORMAL, Entry
from raftkv_ext.segment_log import RECORD_HEADER_BYTES, SegmentLog

NEMESES = (
    "partition",
    "one_way",
    "isolate_leader",
    "bridge",
    "latency",
    "reset",
    "kill",
    "kill_leader",
    "pause",
    "kill_all",
    "membership",
    "torn_tail",
    "corrupt",
)

_NETWORK_NEMESES = frozenset(
    {"partition", "one_way", "isolate_leader", "bridge", "latency", "reset"}
)


def tear_an_unsynced_write(log_dir: Path, rng: random.Random) -> None:
    """Leave the log in ``log_dir`` (its node stopped) as a crash in the middle of an
    append leaves it: the record being written is cut short.

    That record must be one the node never synced. Cutting into the last record already
    there would take away a write the node may have synced and acknowledged; no crash
    does that, and Raft does not survive it: a node that forgets an entry it counted
    towards a commit can later lead without it (a chaos run once did exactly that and
    the replicas diverged). So the harness writes one more record, never synced or
    acknowledged, as the interrupted append would have, and tears that one.
    """
    log = SegmentLog(str(log_dir))
    try:
        last = log.last_index
        term = log.term(last) if last else 0
        entry = Entry(last + 1, term, ENTRY_NORMAL, rng.randbytes(rng.randint(16, 200)))
        log.append([entry])
    finally:
        log.close()
    segment = max(log_dir.glob("*.seg"))
    size = segment.stat().st_size
    record = RECORD_HEADER_BYTES + entry.wire_size
    with segment.open("r+b") as handle:
        handle.truncate(size - rng.randint(1, record - 1))


@dataclass(frozen=True, slots=True)
class ChaosOptions:
    duration_s: float = 60.0
    seed: int = 0
    nodes: int = 3
    clients: int = 8
    set_clients: int = 2
    keys: int = 3
    nemeses: tuple[str, ...] = NEMESES
    calm_s: tuple[float, float] = (0.5, 2.0)
    fault_s: tuple[float, float] = (1.0, 5.0)
    op_timeout_s: float = 2.5
    request_timeout_s: float = 1.5
    key_rotation_s: float = 10.0
    snapshot_entries: int = 300
    # The watch workload (off with no watchers): raw NDJSON watchers, watchers through
    # the HTTP client, long pollers, their writers, and a watcher started late from
    # revision 1.
    watchers: int = 0
    client_watchers: int = 0
    long_pollers: int = 0
    watch_writers: int = 2
    late_watcher_at: float | None = None
    watch_history: int | None = None
    """``kvnode --watch-history`` (None: the node's default)."""
    # The bank workload (off when None): transfers between accounts by transactions,
    # whose total every read must see unchanged.
    bank: BankOptions | None = None
    # The lock workload (off when None): holders of one Lock writing to a fenced
    # register; no write of a superseded holder may be accepted.
    lock: LockOptions | None = None
    # The lease workload (off when None): keys on leases kept alive for a while, that
    # must vanish neither before their TTL nor long after their keep-alives stopped.
    # The nodes then run with --lease-checkpoint-interval CHECKPOINT_INTERVAL_S, which
    # its bound counts on.
    lease: LeaseOptions | None = None


@dataclass(slots=True)
class ChaosReport:
    seed: int
    duration_s: float
    nemeses: list[str]
    operations: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    availability_calm: float = 0.0
    availability_faulted: float = 0.0
    set_acked: int = 0
    set_lost: list[str] = field(default_factory=list)
    set_phantom: list[str] = field(default_factory=list)
    linearizable: bool = False
    linearizability_detail: str = ""
    converged: bool = False
    state_hash: str = ""
    watch: dict[str, Any] = field(default_factory=dict)
    watch_detail: str = ""
    bank: dict[str, Any] = field(default_factory=dict)
    lock: dict[str, Any] = field(default_factory=dict)
    lease: dict[str, Any] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return not self.anomalies

    def summary(self) -> str:
        ops = self.operations
        lines = [
            f"chaos run seed {self.seed}, {self.duration_s:.0f}s, "
            f"nemeses: {', '.join(self.nemeses)}",
            f"  operations: {ops.get('total', 0)} ({ops.get('ok', 0)} ok, "
            f"{ops.get('failed', 0)} failed, {ops.get('unknown', 0)} unknown outcome)",
            "  faults: " + ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())),
            f"  availability: {self.availability_calm:.1%} of operations succeeded between "
            f"faults, {self.availability_faulted:.1%} during faults",
            f"  set workload: {self.set_acked} acknowledged writes, {len(self.set_lost)} lost, "
            f"{len(self.set_phantom)} phantom",
            f"  linearizable: {self.linearizable}; converged: {self.converged}",
        ]
        if self.watch_detail:
            lines.append("  " + self.watch_detail.replace("\n", "\n  "))
        if self.bank:
            lines.append(
                f"  bank: transfers {self.bank['transfers']}, {self.bank['reads']} reads, "
                f"{len(self.bank['violations'])} violations"
            )
        if self.lock:
            lock = self.lock
            lines.append(
                f"  lock: {lock['acquisitions']} acquisitions by {lock['holders']} holders "
                f"({lock['acquired_stale']} returned too late to use), "
                f"{lock['writes_accepted']} fenced writes accepted, "
                f"{lock['writes_refused']} refused, {lock['lost']} locks lost, "
                f"{lock['release_failed']} releases failed, acquire failures "
                f"{lock['acquire_failures']}; {lock['violation_count']} violations"
            )
        if self.lease:
            lease = self.lease
            lines.append(
                f"  lease: {lease['leases']} leases ({lease['after_heal']} after the heal), "
                f"puts {lease['puts']}, keep-alives {lease['keepalives']}, "
                f"{lease['reads']} reads; {lease['keys_seen_gone']} of "
                f"{lease['keys_checked']} keys seen gone, {lease['gone_after_s']} s after "
                f"their TTL; {lease['early']} early, {lease['lingering']} lingering, "
                f"{lease['unverified']} unverified"
            )
        if self.anomalies:
            lines.append("  ANOMALIES:")
            lines.extend(f"    - {a}" for a in self.anomalies)
        else:
            lines.append("  anomalies: none")
        return "\n".join(lines)


class _Faults:
    """Which faults are active, so each operation knows whether it ran under one."""

    def __init__(self) -> None:
        self._active = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            self._active += 1

    def leave(self) -> None:
        with self._lock:
            self._active -= 1

    @property
    def active(self) -> bool:
        return self._active > 0


class ChaosRun:
    def __init__(self, options: ChaosOptions, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.rng = random.Random(options.seed)
        self.history = History()
        self.faults = _Faults()
        self.fault_counts: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.calm = Counter[str]()
        self.faulted = Counter[str]()
        self.revisions: dict[str, int] = {}
        self.set_acked: set[str] = set()
        self.set_maybe: set[str] = set()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._started = 0.0
        self.damage_anomalies: list[str] = []
        # What the nemeses did and when (nemeses.log): which node, which file.
        self.nemesis_log: list[str] = []
        # Nodes whose `kvnode repair` has not finished, and the file that was damaged:
        # a repair killed before it moved the damage aside must run again.
        self._repairing: dict[int, Path] = {}
        extra = [
            "--request-timeout",
            str(options.request_timeout_s),
            "--snapshot-entries",
            str(options.snapshot_entries),
            # Count entries only: chaos wants snapshots (and their installs) often.
            "--snapshot-log-ratio",
            "0",
        ]
        if options.watch_history is not None:
            extra += ["--watch-history", str(options.watch_history)]
        if options.lease is not None:
            extra += ["--lease-checkpoint-interval", str(CHECKPOINT_INTERVAL_S)]
        self.cluster = LocalCluster(workdir, options.nodes, extra_args=extra, proxied=True)
        self.watch: WatchWorkload | None = None
        if options.watchers or options.client_watchers or options.long_pollers:
            self.watch = WatchWorkload(
                self.cluster,
                WorkloadOptions(
                    watchers=options.watchers,
                    client_watchers=options.client_watchers,
                    long_pollers=options.long_pollers,
                    writers=options.watch_writers,
                    late_watcher_at=options.late_watcher_at,
                    op_timeout_s=options.op_timeout_s,
                    seed=options.seed,
                ),
                self._pick_node,
            )

        # ------------------------------------------------------------------ run

        self.bank: BankWorkload | None = None
        if options.bank is not None:
            self.bank = BankWorkload(self.cluster, options.bank, self._pick_node)
        endpoints = [self.cluster.url(n) for n in sorted(self.cluster.nodes)]
        self.lock: LockWorkload | None = None
        if options.lock is not None:
            self.lock = LockWorkload(endpoints, options.lock)
        self.lease: LeaseWorkload | None = None
        if options.lease is not None:
            self.lease = LeaseWorkload(endpoints, options.lease)
        self._healed_at = 0.0

    def run(self) -> ChaosReport:
        options = self.options
        report = ChaosReport(options.seed, options.duration_s, list(options.nemeses))
        report.workdir = str(self.workdir)
        cluster = self.cluster
        cluster.start()
        try:
            self._started = time.monotonic()
            if self.watch is not None:
                self.watch.start()
            if self.bank is not None:
                self.bank.start()
            if self.lock is not None:
                self.lock.start()
            if self.lease is not None:
                self.lease.start()
            workers = [
                threading.Thread(target=self._register_client, args=(c,), daemon=True)
                for c in range(1, options.clients + 1)
            ] + [
                threading.Thread(target=self._set_client, args=(c,), daemon=True)
                for c in range(1, options.set_clients + 1)
            ]
            for worker in workers:
                worker.start()
            self._nemesis_loop(self._started + options.duration_s)
            self._stop.set()
            for worker in workers:
                worker.join(timeout=options.op_timeout_s * 3)
            if self.watch is not None:
                self.watch.stop_writers(timeout=options.op_timeout_s * 3)
            if self.bank is not None:
                self.bank.stop(timeout=options.op_timeout_s * 3)
            if self.lock is not None:
                self.lock.stop(timeout=options.op_timeout_s * 3)
            if self.lease is not None:
                # Its observers go on through the heal and after it.
                self.lease.stop_clients(timeout=options.op_timeout_s * 3)
            self._heal_all()
            self._healed_at = time.monotonic()
            self._check(report)
        except Exception as exc:
            report.anomalies.append(f"the run itself failed: {type(exc).__name__}: {exc}")
        finally:
            self._stop.set()
            if self.watch is not None:
                self.watch.abort()
            if self.lock is not None:
                self.lock.abort()
            if self.lease is not None:
                self.lease.abort()
            cluster.stop()
        self._record(report)
        return report

    # ------------------------------------------------------------------ clients

    def _pick_node(self, rng: random.Random) -> int | None:
        running = [n for n, node in self.cluster.nodes.items() if node.running]
        return rng.choice(running) if running else None

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1
            (self.faulted if self.faults.active else self.calm)[outcome] += 1

    def _register_client(self, client_id: int) -> None:
        options = self.options
        rng = random.Random(self.options.seed * 1000 + client_id)
        http = httpx.Client(timeout=options.op_timeout_s)
        known: dict[str, str | None] = {}
        serial = 0
        while not self._stop.is_set():
            node_id = self._pick_node(rng)
            if node_id is None:
                time.sleep(0.1)
                continue
            epoch = int((time.monotonic() - self._started) / options.key_rotation_s)
            key = f"r{epoch}-{rng.randrange(options.keys)}"
            url = f"{self.cluster.url(node_id)}/kv/{key}"
            roll = rng.random()
            serial += 1
            value = f"c{client_id}-{serial}"
            if roll < 0.45:
                self._do_get(http, client_id, key, url, known)
            elif roll < 0.75 or key not in known:
                op = Operation.put(key, value)
                self._do_write(http, client_id, op, "PUT", url, value, None, known)
            elif roll < 0.92:
                expected = known[key]
                revision = 0 if expected is None else self.revisions.get(expected)
                if revision is None:
                    continue
                op = Operation.cas(key, expected, value)
                self._do_write(http, client_id, op, "PUT", url, value, revision, known)
            else:
                op = Operation.delete(key)
                self._do_write(http, client_id, op, "DELETE", url, None, None, known)
        http.close()

    def _do_get(
        self,
        http: httpx.Client,
        client_id: int,
        key: str,
        url: str,
        known: dict[str, str | None],
    ) -> None:
        op_id = self.history.invoke(client_id, Operation.get(key), at=time.monotonic())
        try:
            response = http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError:
            self.history.fail(op_id, at=time.monotonic())  # a read has no effect
            self._count("failed")
            return
        now = time.monotonic()
        if response.status_code == 200:
            document = response.json()
            value = document["value"]
            with self._lock:
                self.revisions[value] = document["mod_revision"]
            known[key] = value
            self.history.complete(op_id, value, at=now)
            self._count("ok")
        elif response.status_code == 404:
            known[key] = None
            self.history.complete(op_id, None, at=now)
            self._count("ok")
        else:
            self.history.fail(op_id, at=now)
            self._count("failed")

    def _do_write(
        self,
        http: httpx.Client,
        client_id: int,
        op: Operation,
        method: str,
        url: str,
        value: str | None,
        prev_revision: int | None,
        known: dict[str, str | None],
    ) -> None:
        op_id = self.history.invoke(client_id, op, at=time.monotonic())
        params = {"prev_revision": str(prev_revision)} if prev_revision is not None else {}
        try:
            response = http.request(
                method, url, content=value.encode() if value is not None else None, params=params
            )
        except httpx.ConnectError:
            self.history.fail(op_id, at=time.monotonic())  # never reached a node
            self._count("failed")
            return
        except httpx.HTTPError:
            self.history.unknown(op_id)
            self._count("unknown")
            return
        now = time.monotonic()
        status = response.status_code
        key = op.key
        if status == 200:
            if value is not None:
                with self._lock:
                    self.revisions[value] = response.json()["revision"]
            known[key] = value
            self.history.complete(op_id, Status.OK, at=now)
            self._count("ok")
        elif status == 404 and method == "DELETE":
            known[key] = None
            self.history.complete(op_id, Status.NOT_FOUND, at=now)
            self._count("ok")
        elif status == 409 and prev_revision is None and method == "PUT":
            # A plain put cannot conflict: the store answered it with another command's
            # result. That is a bug to report, not a reason for this client to stop.
            with self._lock:
                self.damage_anomalies.append(
                    f"a plain put of {key!r} was answered 409: {response.text[:200]}"
                )
            self.history.unknown(op_id)
            self._count("unknown")
        elif status == 409:
            self.history.complete(op_id, Status.CONFLICT, at=now)
            self._count("ok")
        elif status == 503 and "was not applied" in response.text:
            self.history.fail(op_id, at=now)
            self._count("failed")
        else:
            self.history.unknown(op_id)
            self._count("unknown")

    def _list_set_keys(self, leader: int) -> set[str]:
        """Every key of the set workload, listed in slices of at most MAX_LIST_LIMIT
        keys (``s/{client}/{first 3 digits of the serial}``): one listing of a client's
        prefix stops at the limit, and a long run writes more than that."""
        cluster = self.cluster
        written = self.set_acked | self.set_maybe
        listing: set[str] = set()
        for client_id in range(1, self.options.set_clients + 1):
            slices = {key[: len(f"s/{client_id}/") + 3] for key in written}
            for prefix in sorted(s for s in slices if s.startswith(f"s/{client_id}/")):
                response = cluster.client.get(
                    f"{cluster.url(leader)}/kv",
                    params={"prefix": prefix, "limit": MAX_LIST_LIMIT},
                    timeout=30,
                )
                answer = response.json()
                if answer.get("more"):
                    raise AssertionError(f"more than {MAX_LIST_LIMIT} keys under {prefix}")
                listing |= {item["key"] for item in answer["items"]}
        return listing

    def _set_client(self, client_id: int) -> None:
        rng = random.Random(self.options.seed * 7919 + client_id)
        http = httpx.Client(timeout=self.options.op_timeout_s)
        serial = 0
        while not self._stop.is_set():
            node_id = self._pick_node(rng)
            if node_id is None:
                time.sleep(0.1)
                continue
            serial += 1
            key = f"s/{client_id}/{serial:07d}"
            try:
                response = http.put(f"{self.cluster.url(node_id)}/kv/{key}", content=b"x")
            except httpx.ConnectError:
                self._count("failed")
                continue
            except httpx.HTTPError:
                with self._lock:
                    self.set_maybe.add(key)
                self._count("unknown")
                continue
            with self._lock:
                if response.status_code == 200:
                    self.set_acked.add(key)
                    self._count("ok")
                elif response.status_code == 503 and "was not applied" in response.text:
                    self._count("failed")
                else:
                    self.set_maybe.add(key)
                    self._count("unknown")
        http.close()

    # ------------------------------------------------------------------ nemeses

    def _nemesis_loop(self, deadline: float) -> None:
        options = self.options
        while time.monotonic() < deadline:
            time.sleep(self.rng.uniform(*options.calm_s))
            if time.monotonic() >= deadline:
                break
            if not options.nemeses:
                continue  # a run without faults still lasts its duration
            fault = self.rng.choice(options.nemeses)
            duration = self.rng.uniform(*options.fault_s)
            self._note(f"{fault} ({duration:.1f}s)")
            # Process faults (kills, pauses, membership changes, damaged logs) often
            # happen on a degraded network too: slow links with jitter, and connections
            # reset halfway through.
            network = [n for n in options.nemeses if n in _NETWORK_NEMESES]
            overlay = fault not in _NETWORK_NEMESES and network and self.rng.random() < 0.4
            self.faults.enter()
            try:
                if overlay:
                    self.cluster.proxy.set_latency_all(
                        self.rng.uniform(0.005, 0.05), self.rng.uniform(0.0, 0.03)
                    )
                    self.fault_counts["latency"] += 1
                injected = self._inject(fault, duration)
                self._note(f"{fault} {'done' if injected else 'skipped'}")
                if injected:
                    self.fault_counts[fault] += 1
            finally:
                if overlay:
                    self.cluster.proxy.heal()
                self.faults.leave()

    def _note(self, what: str) -> None:
        with self._lock:
            self.nemesis_log.append(f"{time.monotonic() - self._started:9.3f} {what}")

    def _leader(self) -> int | None:
        try:
            return self.cluster.wait_ready(timeout=5)
        except TimeoutError:
            return None

    def _inject(self, fault: str, duration: float) -> bool:
        cluster = self.cluster
        proxy = cluster.proxy
        rng = self.rng
        members = sorted(n for n, node in cluster.nodes.items() if node.running)
        if len(members) < 2:
            return False
        if fault == "partition":
            rng.shuffle(members)
            cut = rng.randint(1, len(members) - 1)
            proxy.partition([set(members[:cut]), set(members[cut:])])
        elif fault == "one_way":
            senders = set(rng.sample(members, rng.randint(1, len(members) - 1)))
            proxy.one_way(senders, set(members) - senders)
        elif fault == "isolate_leader":
            leader = self._leader()
            if leader is None:
                return False
            proxy.isolate(leader)
        elif fault == "bridge":
            if len(members) < 3:
                return False
            rng.shuffle(members)
            half = (len(members) - 1) // 2
            proxy.bridge(set(members[1 : 1 + half]), members[0], set(members[1 + half :]))
        elif fault == "latency":
            proxy.set_latency_all(rng.uniform(0.01, 0.2), rng.uniform(0.0, 0.1))
        elif fault == "reset":
            proxy.reset()
            return True
        elif fault in ("kill", "kill_leader"):
            victim = self._leader() if fault == "kill_leader" else rng.choice(members)
            if victim is None:
                return False
            self._note(f"  kill node {victim}")
            cluster.kill(victim)
            time.sleep(duration)
            self._restart(victim)
            return True
        elif fault == "pause":
            victim = rng.choice(members)
            self._note(f"  pause node {victim}")
            cluster.pause(victim)
            time.sleep(rng.uniform(1.0, 10.0) if duration > 3 else duration)
            cluster.resume(victim)
            return True
        elif fault == "kill_all":
            self._note(f"  kill nodes {members}")
            for node_id in members:
                cluster.kill(node_id)
            time.sleep(rng.uniform(0.2, 1.5))
            for node_id in members:
                self._restart(node_id)
            return True
        elif fault == "membership":
            return self._fully_healthy() and self._replace_a_node(members)
        elif fault == "torn_tail":
            return self._damage_a_log(rng.choice(members), torn=True)
        elif fault == "corrupt":
            return self._fully_healthy() and self._damage_a_log(rng.choice(members), torn=False)
        else:
            raise ValueError(f"unknown nemesis {fault!r}")
        time.sleep(duration)
        proxy.heal()
        return True

    def _fully_healthy(self) -> bool:
        """Whether every node runs as a voter with its data: only then may a nemesis
        take one node's disk away. Raft survives losing a minority of disks; a second
        disk lost while the first is still being rebuilt would be a majority."""
        cluster = self.cluster
        if not all(node.running for node in cluster.nodes.values()):
            return False
        if any((node.data_dir / "joining").exists() for node in cluster.nodes.values()):
            return False
        leader = self._leader()
        if leader is None:
            return False
        try:
            nodes = cluster.client.get(f"{cluster.url(leader)}/cluster/nodes", timeout=5)
            listed = nodes.json()["nodes"]
        except (httpx.HTTPError, ValueError, KeyError):
            return False
        return sorted(n["id"] for n in listed if n["membership"] == "voter") == sorted(
            cluster.nodes
        )

    def _replace_a_node(self, members: list[int]) -> bool:
        """Remove a node, wipe it, and bring it back under its id (a replaced disk)."""
        cluster = self.cluster
        leader = self._leader()
        if leader is None:
            return False
        victim = self.rng.choice([n for n in members if n != leader] or members)
        self._note(f"  replace node {victim} (leader {leader})")
        try:
            removed = cluster.client.delete(
                f"{cluster.url(leader)}/cluster/members/{victim}", timeout=20
            )
        except httpx.HTTPError:
            return False
        if removed.status_code != 200:
            return False
        cluster.kill(victim)
        cluster.proxy.reset()  # and drop every connection while the membership changes
        shutil.rmtree(cluster.nodes[victim].data_dir, ignore_errors=True)
        via = next((n for n in members if n != victim and cluster.nodes[n].running), None)
        if via is None:
            return False
        cluster.rejoin(victim, join_via=via)
        return True

    def _damage_a_log(self, victim: int, *, torn: bool) -> bool:
        cluster = self.cluster
        node = cluster.nodes[victim]
        self._note(f"  kill node {victim} to damage its log ({'torn' if torn else 'corrupt'})")
        cluster.kill(victim)
        segments = sorted((node.data_dir / "log").glob("*.seg"))
        if not segments:
            cluster.start_node(victim)
            return False
        if torn:
            tear_an_unsynced_write(node.data_dir / "log", self.rng)
            cluster.start_node(victim)
            return True
        # A flipped bit in an older record: the node must refuse to start, naming the
        # file and offset, and `kvnode repair` brings it back from its peers.
        first = segments[0]
        data = bytearray(first.read_bytes())
        if len(data) < 200:
            cluster.start_node(victim)
            return False
        data[100] ^= 0x40
        first.write_bytes(bytes(data))
        self._note(f"  flipped a bit of {first.name}; start node {victim}")
        cluster.start_node(victim)
        process = node.process
        assert process is not None
        try:
            code: int | None = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            code = None
        if code != 3 or str(first) not in node.log_text():
            self.damage_anomalies.append(
                f"node {victim} with a corrupted {first.name} did not refuse to start "
                f"naming the file (exit {code})"
            )
            if process.poll() is None:
                return True
        self._repairing[victim] = first
        self._restart(victim)
        return True

    def _restart(self, node_id: int) -> None:
        """Start a stopped node: with `kvnode repair` while a repair of it has not
        finished (it was killed before it moved the damaged data aside, or while it
        was joining again), as an operator would run it again."""
        cluster = self.cluster
        node = cluster.nodes[node_id]
        damaged = self._repairing.get(node_id)
        if damaged is not None and (
            damaged.exists() or not node.data_dir.exists() or (node.data_dir / "joining").exists()
        ):
            self._note(f"  kvnode repair of node {node_id}")
            node.extra_args = ["repair"]
            cluster.start_node(node_id)
            node.extra_args = []
            return
        self._repairing.pop(node_id, None)
        cluster.start_node(node_id)

    # ------------------------------------------------------------------ the end

    def _heal_all(self) -> None:
        cluster = self.cluster
        cluster.proxy.heal()
        for node_id, node in cluster.nodes.items():
            if node.process is not None and node.process.poll() is None:
                cluster.resume(node_id)
        for node_id, node in cluster.nodes.items():
            if not node.running and (node.data_dir.exists() or node_id in self._repairing):
                node.extra_args = []
                self._restart(node_id)
        cluster.wait_ready(timeout=60)

    def _member_ids(self) -> list[int]:
        leader = self.cluster.wait_ready(timeout=30)
        nodes = self.cluster.client.get(f"{self.cluster.url(leader)}/cluster/nodes").json()
        return sorted(n["id"] for n in nodes["nodes"])

    def _check(self, report: ChaosReport) -> None:
        cluster = self.cluster
        report.anomalies.extend(self.damage_anomalies)
        members = self._member_ids()
        for node_id in members:
            if not cluster.nodes[node_id].running:
                report.anomalies.append(f"member {node_id} is not running after healing")

        # Convergence: every member at the same applied index with the same state hash.
        hashes: set[tuple[str, int]] = set()

        def converged() -> bool:
            hashes.clear()
            for node_id in members:
                try:
                    status = cluster.client.get(
                        f"{cluster.url(node_id)}/cluster/status",
                        params={"hash": "true"},
                        timeout=10,
                    ).json()
                except httpx.HTTPError:
                    return False
                hashes.add((status["stateHash"], status["stateHashIndex"]))
            return len(hashes) == 1

        try:
            wait_until(converged, timeout=60, interval=0.5, what="every member's state hash")
            report.converged = True
            report.state_hash = next(iter(hashes))[0]
        except TimeoutError:
            report.anomalies.append(f"members did not converge: {sorted(hashes)}")

        # The set workload: everything acknowledged is there, nothing unknown appeared.
        leader = cluster.wait_ready(timeout=30)
        listing = self._list_set_keys(leader)
        report.set_acked = len(self.set_acked)
        report.set_lost = sorted(self.set_acked - listing)
        report.set_phantom = sorted(listing - self.set_acked - self.set_maybe)
        if report.set_lost:
            report.anomalies.append(f"{len(report.set_lost)} acknowledged writes lost")
        if report.set_phantom:
            report.anomalies.append(f"{len(report.set_phantom)} writes appeared unasked")

        verdict = check(self.history, timeout_s=120)
        report.linearizable = verdict.ok
        if not verdict.ok:
            report.linearizability_detail = verdict.describe()
            what = "timed out" if verdict.unknown else "not linearizable"
            report.anomalies.append(f"register history {what}: key {verdict.key}")

        if self.watch is not None:
            self._check_watch(report, members)
        if self.bank is not None:
            self._check_bank(report)
        if self.lock is not None:
            self._check_lock(report)
        if self.lease is not None:
            self._check_lease(report)

        report.operations = {
            "total": sum(self.outcomes.values()),
            "ok": self.outcomes["ok"],
            "failed": self.outcomes["failed"],
            "unknown": self.outcomes["unknown"],
        }
        report.faults = dict(self.fault_counts)
        report.availability_calm = _ratio(self.calm)
        report.availability_faulted = _ratio(self.faulted)

    def _check_watch(self, report: ChaosReport, members: list[int]) -> None:
        """Watchers complete through the final revision, every member's replay, and the
        check of every stream against the committed history."""
        assert self.watch is not None
        running = [n for n in members if self.cluster.nodes[n].running]
        result = self.watch.finish(running)
        (self.workdir / "watch.json").write_text(result.case.to_json())
        verdict = check_watches(result.case)
        report.watch = {
            "writes": result.writes,
            "final_revision": result.final_revision,
            "watchers": verdict.watchers,
            "streams": verdict.connections,
            "events": verdict.events,
            "events_checked": verdict.events_checked,
            "events_unverified": verdict.events_unverified,
            "resyncs": verdict.resyncs,
            "images_checked": verdict.images_checked,
            "committed_changes": verdict.reference_changes,
            "covered_revisions": verdict.covered_revisions,
            "cross_checked_revisions": verdict.cross_checked_revisions,
            "violations": verdict.counts(),
            "late_watcher_resynced": result.late_watcher_resynced,
        }
        writes = result.writes
        report.watch_detail = (
            f"watch writes: {writes['total']} ({writes['ok']} ok, {writes['failed']} failed, "
            f"{writes['unknown']} unknown outcome)\n{verdict.summary()}"
        )
        if not verdict.ok:
            report.anomalies.append(
                f"watch: {len(verdict.violations)} violations {verdict.counts()} "
                "(watch.json; replay with raftkv.testing.watch_check)"
            )
        report.anomalies.extend(f"watch: {problem}" for problem in result.problems)

    def _check_bank(self, report: ChaosReport) -> None:
        assert self.bank is not None
        result = self.bank.finish()
        report.bank = {
            "transfers": result.transfers,
            "reads": len(result.reads),
            "final": result.final.balances if result.final is not None else None,
            "violations": result.violations[:20],
        }
        if not result.ok:
            report.anomalies.append(
                f"bank: {len(result.violations)} reads with a wrong total or accounts; "
                f"first: {result.violations[0]}"
            )

    def _check_lock(self, report: ChaosReport) -> None:
        assert self.lock is not None
        result = self.lock.finish()
        (self.workdir / "lock.json").write_text(result.to_json())
        report.lock = {
            **result.counts(),
            "violation_count": len(result.violations),
            "violations": result.violations[:20],
        }
        if not result.ok:
            report.anomalies.append(
                f"lock: {len(result.violations)} violations (lock.json); "
                f"first: {result.violations[0]}"
            )

    def _check_lease(self, report: ChaosReport) -> None:
        assert self.lease is not None
        result = self.lease.finish(self._healed_at)
        (self.workdir / "lease.json").write_text(result.to_json())
        verdict = result.verdict
        report.lease = {
            **result.counts(),
            "violation_count": len(verdict.violations),
            "violations": verdict.violations[:20],
            "unverified_keys": verdict.unverified[:20],
        }
        if verdict.early:
            report.anomalies.append(
                f"lease: {len(verdict.early)} keys vanished before their TTL (lease.json); "
                f"first: {verdict.early[0]}"
            )
        if verdict.lingering:
            report.anomalies.append(
                f"lease: {len(verdict.lingering)} keys outlived their bound (lease.json); "
                f"first: {verdict.lingering[0]}"
            )
        if verdict.unverified:
            report.anomalies.append(
                f"lease: {len(verdict.unverified)} keys never seen gone: the final reads "
                f"failed; first: {verdict.unverified[0]}"
            )

    def _record(self, report: ChaosReport) -> None:
        (self.workdir / "history.json").write_text(self.history.to_json())
        (self.workdir / "nemeses.log").write_text("".join(f"{n}\n" for n in self.nemesis_log))
        document = asdict(report)
        (self.workdir / "report.json").write_text(json.dumps(document, indent=1))


def _ratio(counts: Counter[str]) -> float:
    total = sum(counts.values())
    return counts["ok"] / total if total else 1.0


def run_chaos(options: ChaosOptions, workdir: Path | None = None) -> ChaosReport:
    """One chaos run in ``workdir`` (a new temporary directory by default)."""
    base = workdir or Path(tempfile.mkdtemp(prefix=f"raftkv-chaos-{options.seed}-"))
    base.mkdir(parents=True, exist_ok=True)
    return ChaosRun(options, base).run()


def run_campaign(options: ChaosOptions, run_length: float, base: Path | None, keep: bool) -> int:
    """Consecutive runs adding up to ``options.duration_s``; one summary at the end."""
    root = base or Path(tempfile.mkdtemp(prefix="raftkv-chaos-campaign-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    reports: list[ChaosReport] = []
    run = 0
    while time.monotonic() - started < options.duration_s:
        length = min(run_length, options.duration_s - (time.monotonic() - started))
        if length < 5:
            break
        seed = options.seed + run
        bank, lock, lease = options.bank, options.lock, options.lease
        report = run_chaos(
            replace(
                options,
                duration_s=length,
                seed=seed,
                bank=None if bank is None else replace(bank, seed=seed),
                lock=None if lock is None else replace(lock, seed=seed),
                lease=None if lease is None else replace(lease, seed=seed),
            ),
            root / f"run-{run:03d}-seed-{seed}",
        )
        reports.append(report)
        status = "ok" if report.ok else "ANOMALIES: " + "; ".join(report.anomalies)
        watched = (
            f" watch: {report.watch['events_checked']} events checked, "
            f"{report.watch['resyncs']} resyncs"
            if report.watch
            else ""
        )
        if report.bank:
            watched += (
                f" bank: {report.bank['transfers']['ok']} transfers, "
                f"{report.bank['reads']} reads checked"
            )
        if report.lock:
            watched += (
                f" lock: {report.lock['acquisitions']} acquisitions, "
                f"{report.lock['writes_accepted']} fenced writes"
            )
        if report.lease:
            watched += (
                f" lease: {report.lease['keys_seen_gone']}/{report.lease['keys_checked']} "
                "keys seen gone in bounds"
            )
        print(
            f"run {run} (seed {seed}, {length:.0f}s): {report.operations}{watched} {status}",
            flush=True,
        )
        if report.ok and not keep:
            shutil.rmtree(report.workdir, ignore_errors=True)
        run += 1
    totals: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    for report in reports:
        totals.update(report.operations)
        faults.update(report.faults)
    failed = [r for r in reports if not r.ok]
    summary = {
        "runs": len(reports),
        "seconds": round(time.monotonic() - started),
        "operations": dict(totals),
        "faults": dict(faults),
        "set_acknowledged": sum(r.set_acked for r in reports),
        "set_lost": sum(len(r.set_lost) for r in reports),
        "failed_runs": [r.workdir for r in failed],
        "availability_calm": sum(r.availability_calm for r in reports) / max(1, len(reports)),
        "availability_faulted": sum(r.availability_faulted for r in reports) / max(1, len(reports)),
    }
    if any(r.watch for r in reports):
        watch: Counter[str] = Counter()
        violations: Counter[str] = Counter()
        for report in reports:
            for name, value in report.watch.items():
                if (
                    name != "final_revision"
                    and isinstance(value, int)
                    and not isinstance(value, bool)
                ):
                    watch[name] += value
            watch.update({f"writes_{k}": v for k, v in report.watch.get("writes", {}).items()})
            violations.update(report.watch.get("violations", {}))
        summary["watch"] = {**watch, "violations": dict(violations)}
    for name in ("lock", "lease"):
        # The counts of the lock and lease workloads, added up over the runs.
        totals_of: Counter[str] = Counter()
        for report in reports:
            counts: dict[str, Any] = getattr(report, name)
            totals_of.update(
                {
                    k: v
                    for k, v in counts.items()
                    if isinstance(v, int) and not isinstance(v, bool) and k != "holders"
                }
            )
        if totals_of:
            summary[name] = dict(totals_of)
    (root / "campaign.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m raftkv.testing.chaos", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--time", type=float, default=60.0, help="seconds of faults and load")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault schedule")
    parser.add_argument("--nodes", type=int, default=3, help="cluster size")
    parser.add_argument("--clients", type=int, default=8, help="register-workload clients")
    parser.add_argument(
        "--nemeses", default=",".join(NEMESES), help=f"comma-separated subset of {NEMESES}"
    )
    parser.add_argument(
        "--run-length",
        type=float,
        default=None,
        help="split a long campaign into runs of this many seconds, each on a fresh "
        "cluster with the next seed (default: one run of --time)",
    )
    parser.add_argument("--dir", type=Path, help="where to keep the run (default: a temp dir)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's directory even when it passes"
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="also run the watch workload: writers on a few prefixes, watchers of a prefix "
        "and of every key following them across the faults (6 raw NDJSON watchers, one "
        "through the HTTP client, one by long polls, one started late from revision 1), "
        "checked against the committed history at the end",
    )
    parser.add_argument(
        "--watchers", type=int, default=6, help="raw NDJSON watchers with --watch (default 6)"
    )
    parser.add_argument(
        "--client-watchers",
        type=int,
        default=1,
        help="watchers through the HTTP client's watch() with --watch (default 1)",
    )
    parser.add_argument(
        "--long-pollers",
        type=int,
        default=1,
        help="watchers by long polls (GET /watch?wait=) with --watch (default 1)",
    )
    parser.add_argument(
        "--bank",
        action="store_true",
        help="also run the bank workload: 3 transferers move money between 5 accounts "
        "with transactions while 2 readers check that the total never changes",
    )
    parser.add_argument(
        "--lock",
        action="store_true",
        help="also run the lock workload: 3 holders take turns with one distributed lock "
        "(ttl 2 s) and write to a fenced register while they certainly hold it; no write "
        "of a holder that was superseded may be accepted",
    )
    parser.add_argument(
        "--lease",
        action="store_true",
        help="also run the lease workload: 3 clients put keys on leases (ttl 1.5-3 s) kept "
        "alive for a while, and 2 observers check that each key vanishes neither before "
        "its TTL nor past a bound once its keep-alives stopped and the faults healed "
        f"(the nodes get --lease-checkpoint-interval {CHECKPOINT_INTERVAL_S:g})",
    )
    parser.add_argument(
        "--watch-history",
        type=int,
        default=None,
        help="kvnode --watch-history for every node (default: the node's own default)",
    )
    args = parser.parse_args(argv)
    nemeses = tuple(n for n in args.nemeses.split(",") if n)
    unknown = set(nemeses) - set(NEMESES)
    if unknown:
        parser.error(f"unknown nemeses: {', '.join(sorted(unknown))}")
    run_length = args.run_length if args.run_length is not None else args.time
    options = ChaosOptions(
        duration_s=args.time,
        seed=args.seed,
        nodes=args.nodes,
        clients=args.clients,
        nemeses=nemeses,
        watchers=args.watchers if args.watch else 0,
        client_watchers=args.client_watchers if args.watch else 0,
        long_pollers=args.long_pollers if args.watch else 0,
        late_watcher_at=min(run_length, args.time) / 3 if args.watch else None,
        watch_history=args.watch_history,
        bank=BankOptions(seed=args.seed) if args.bank else None,
        lock=LockOptions(seed=args.seed) if args.lock else None,
        lease=LeaseOptions(seed=args.seed) if args.lease else None,
    )
    if args.run_length is not None and args.run_length < args.time:
        return run_campaign(options, args.run_length, args.dir, keep=args.keep)
    report = run_chaos(options, args.dir)
    print(report.summary())
    if report.ok:
        if not args.keep and args.dir is None:
            shutil.rmtree(report.workdir, ignore_errors=True)
        return 0
    print(
        f"\nthe run is kept in {report.workdir}: report.json, history.json (replay the "
        "check with raftkv.testing.linearizability.check(History.from_json(...))), "
        "watch.json with --watch (raftkv.testing.watch_check.check_watches("
        "WatchCase.from_json(...))), lock.json with --lock, lease.json with --lease, "
        "and node-N.log and node-N/ for each node"
    )
    if report.linearizability_detail:
        print(report.linearizability_detail)
    return 1


if __name__ == "__main__":
    sys.exit(main())
