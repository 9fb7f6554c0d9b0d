"""The PySyncObj baseline for the replication path: how many commands a 3-member PySyncObj
cluster on loopback commits per second, measured the way raftkv's native path is.

Each member is a process (multiprocessing, spawn) holding a ``pysyncobj.batteries.ReplDict``,
PySyncObj's own replicated dict, whose ``set(key, value)`` is a ``@replicated`` method. The
member that is leader submits ``set`` commands asynchronously with callbacks, keeping
``outstanding`` commands in flight: each callback submits the next command. After a
warm-up, it counts the commands that commit during ``duration_s`` seconds and the latency
of each, from submission to its callback.

The configuration is PySyncObj's default, spelled out in ``SYNCOBJ_CONF``: batching on,
the journal in memory and snapshots ("full dumps") in memory, so no disk write and no
fsync anywhere, unlike raftkv and etcd, which fsync every batch.

    python -m raftkv.kvbench.pysyncobj_baseline --seconds 10
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import math
import multiprocessing
import random
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import ModuleType
from typing import Any

from .key_space import DEFAULT_KEYS, bench_value, raftkv_key
from .stats import percentile as nearest_rank

INSTALL_HINT = "PySyncObj is not installed: pip install 'raftkv[bench]'"

# Passed to pysyncobj.SyncObjConf. These are PySyncObj's defaults, written out so that the
# configuration measured is on record and an upgrade that changes a default changes
# nothing here.
SYNCOBJ_CONF: dict[str, Any] = {
    # AppendEntries carry every command queued since the last send (the default).
    "appendEntriesUseBatch": True,
    # No journal file: the log lives in memory, nothing is written or fsynced.
    "journalFile": None,
    # Log compaction snapshots ("full dumps") are kept in memory too.
    "fullDumpFile": None,
    "dynamicMembershipChange": False,
}


class PySyncObjNotInstalledError(RuntimeError):
    pass


class PySyncObjBaselineError(RuntimeError):
    """The baseline could not run (no leader, a member died...)."""


def load_pysyncobj() -> ModuleType:
    """The pysyncobj module, or ``PySyncObjNotInstalledError`` saying how to install it."""
    try:
        return importlib.import_module("pysyncobj")
    except ImportError as exc:
        raise PySyncObjNotInstalledError(INSTALL_HINT) from exc


@dataclass(frozen=True, slots=True)
class PySyncObjResult:
    committed: int  # commands whose commit callback ran inside the measured window
    duration_s: float  # length of that window
    throughput: float  # committed / duration_s
    p50_ms: float  # latency percentiles, submission to commit callback (NaN if nothing)
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    errors: int  # callbacks with a failure reason inside the window
    leader_changes: int  # terms begun during the window
    outstanding: int
    nodes: int
    version: str  # of PySyncObj


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100] of ascending ``sorted_values``; NaN if empty."""
    return nearest_rank(sorted_values, q) if sorted_values else math.nan


# -- a member process ----------------------------------------------------------------------


class _Load:
    """Closed-loop submission on the leader: every commit callback (run on PySyncObj's
    tick thread) submits the next command, so ``outstanding`` stay in flight."""

    def __init__(self, store: Any, spec: dict[str, Any]) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._rng = random.Random(spec["seed"])
        self._keys = [raftkv_key(i) for i in range(spec["keys"])]
        self._value = bench_value(spec["value_size"])
        self._counting = False
        self._stopping = False
        self.in_flight = 0
        self.committed = 0
        self.errors = 0
        self.latencies: list[float] = []

    def submit(self) -> None:
        with self._lock:
            if self._stopping:
                return
            key = self._keys[self._rng.randrange(len(self._keys))]
            self.in_flight += 1
        # Outside the lock: set() only queues the command, but were the queue full it
        # would call the callback right here, which takes the lock.
        started = time.perf_counter()
        self._store.set(key, self._value, callback=partial(self._finished, started))

    def _finished(self, started: float, _result: object, error: int) -> None:
        now = time.perf_counter()
        with self._lock:
            self.in_flight -= 1
            if self._counting:
                if error == 0:
                    self.committed += 1
                    self.latencies.append(now - started)
                else:
                    self.errors += 1
        self.submit()

    def start_window(self) -> float:
        # Counting starts and the clock is read under the lock, so every callback counted
        # falls inside the window and none inside it is missed.
        with self._lock:
            self._counting = True
            return time.perf_counter()

    def end_window(self) -> float:
        with self._lock:
            self._counting = False
            self._stopping = True
            return time.perf_counter()


def _run_load(node: Any, store: Any, spec: dict[str, Any]) -> dict[str, Any]:
    load = _Load(store, spec)
    for _ in range(spec["outstanding"]):
        load.submit()
    time.sleep(spec["warmup_s"])
    term_before = int(node.raftCurrentTerm)
    started = load.start_window()
    time.sleep(spec["duration_s"])
    ended = load.end_window()
    term_after = int(node.raftCurrentTerm)
    # Let the commands still in flight finish, so members stop with nothing pending.
    deadline = time.monotonic() + 5.0
    while load.in_flight > 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    latencies = sorted(load.latencies)
    return {
        "committed": load.committed,
        "errors": load.errors,
        "duration_s": ended - started,
        "leader_changes": term_after - term_before,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p90_ms": percentile(latencies, 90) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "p999_ms": percentile(latencies, 99.9) * 1000,
        "max_ms": latencies[-1] * 1000 if latencies else math.nan,
    }


def _status(node: Any) -> dict[str, Any]:
    # Single attributes rather than getStatus(), which iterates dicts the tick thread
    # may be changing at that moment.
    leader = node._getLeader()
    return {
        "self": str(node.selfNode),
        "leader": None if leader is None else str(leader),
        "ready": bool(node.isReady()),
        "term": int(node.raftCurrentTerm),
    }


def _member_main(index: int, addresses: list[str], conn: Connection) -> None:
    """A member process: serve the parent's requests until told to stop."""
    node: Any = None
    try:
        pysyncobj = load_pysyncobj()
        store = importlib.import_module("pysyncobj.batteries").ReplDict()
        partners = [a for i, a in enumerate(addresses) if i != index]
        conf = pysyncobj.SyncObjConf(**SYNCOBJ_CONF)
        node = pysyncobj.SyncObj(addresses[index], partners, conf=conf, consumers=[store])
        while True:
            request, payload = conn.recv()
            if request == "status":
                conn.send(("status", _status(node)))
            elif request == "run":
                conn.send(("result", _run_load(node, store, payload)))
            else:
                return
    except EOFError:
        return  # the parent is gone
    except Exception:
        conn.send(("error", traceback.format_exc()))
    finally:
        if node is not None:
            node.destroy()


# -- the parent ----------------------------------------------------------------------------


@dataclass
class _Member:
    index: int
    process: BaseProcess
    conn: Connection


def _ask(member: _Member, request: str, payload: Any, timeout: float) -> Any:
    try:
        member.conn.send((request, payload))
        if not member.conn.poll(timeout):
            raise PySyncObjBaselineError(
                f"member {member.index + 1} did not answer {request!r} within {timeout:.0f}s"
            )
        kind, answer = member.conn.recv()
    except (EOFError, OSError) as exc:
        raise PySyncObjBaselineError(
            f"member {member.index + 1} is gone (exit code {member.process.exitcode})"
        ) from exc
    if kind == "error":
        raise PySyncObjBaselineError(f"member {member.index + 1} failed:\n{answer}")
    return answer


def _wait_for_leader(members: list[_Member], timeout: float) -> _Member:
    """The member every member names leader, once it has applied its log."""
    deadline = time.monotonic() + timeout
    seen: list[Any] = []
    while time.monotonic() < deadline:
        seen = [_ask(m, "status", None, timeout=5.0) for m in members]
        leaders = {s["leader"] for s in seen}
        if len(leaders) == 1 and None not in leaders:
            for member, status in zip(members, seen, strict=True):
                if status["self"] == status["leader"] and status["ready"]:
                    return member
        time.sleep(0.1)
    raise PySyncObjBaselineError(f"no agreed leader after {timeout}s: {seen}")


def _stop(members: list[_Member]) -> None:
    for member in members:
        with contextlib.suppress(OSError):  # a member already gone needs no telling
            member.conn.send(("stop", None))
    for member in members:
        member.process.join(timeout=5.0)
        if member.process.is_alive():
            member.process.terminate()
            member.process.join(timeout=5.0)
        if member.process.is_alive():
            member.process.kill()
            member.process.join()
        member.conn.close()


def run_pysyncobj_baseline(
    *,
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    outstanding: int = 1000,
    keys: int = DEFAULT_KEYS,
    value_size: int = 100,
    nodes: int = 3,
    seed: int = 0,
    startup_timeout_s: float = 30.0,
) -> PySyncObjResult:
    """Start ``nodes`` PySyncObj members on loopback, drive ``set`` commands through the
    leader for ``warmup_s`` + ``duration_s`` seconds, stop the members, return the
    figures of the measured window."""
    pysyncobj = load_pysyncobj()  # fail here, not in three child processes
    if duration_s <= 0 or warmup_s < 0:
        raise ValueError("duration_s must be positive and warmup_s not negative")
    # PySyncObj's command queue holds 100,000 commands by default; a full queue fails
    # commands instead of measuring anything.
    if not 1 <= outstanding <= 50_000:
        raise ValueError(f"outstanding must be within 1..50000, not {outstanding}")
    if keys < 1 or value_size < 0 or nodes < 1:
        raise ValueError("keys and nodes must be positive, value_size not negative")

    from raftkv.testing.cluster import free_ports

    addresses = [f"127.0.0.1:{port}" for port in free_ports(nodes)]
    # spawn, not fork: a fork would copy the caller's threads and state (an event loop,
    # a test runner) into members that must start clean.
    context = multiprocessing.get_context("spawn")
    members: list[_Member] = []
    spec = {
        "warmup_s": warmup_s,
        "duration_s": duration_s,
        "outstanding": outstanding,
        "keys": keys,
        "value_size": value_size,
        "seed": seed,
    }
    try:
        for index in range(nodes):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_member_main,
                args=(index, addresses, child_end),
                name=f"pysyncobj-member-{index + 1}",
                daemon=True,
            )
            process.start()
            child_end.close()
            members.append(_Member(index, process, parent_end))
        leader = _wait_for_leader(members, startup_timeout_s)
        raw = _ask(leader, "run", spec, timeout=warmup_s + duration_s + 60.0)
    finally:
        _stop(members)
    committed = int(raw["committed"])
    duration = float(raw["duration_s"])
    return PySyncObjResult(
        committed=committed,
        duration_s=duration,
        throughput=committed / duration,
        p50_ms=raw["p50_ms"],
        p90_ms=raw["p90_ms"],
        p99_ms=raw["p99_ms"],
        p999_ms=raw["p999_ms"],
        max_ms=raw["max_ms"],
        errors=int(raw["errors"]),
        leader_changes=int(raw["leader_changes"]),
        outstanding=outstanding,
        nodes=nodes,
        version=_version(pysyncobj),
    )


def _version(pysyncobj: ModuleType) -> str:
    try:
        return str(importlib.import_module("pysyncobj.version").VERSION)
    except (ImportError, AttributeError):
        return str(getattr(pysyncobj, "__version__", "unknown"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--outstanding", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=DEFAULT_KEYS)
    parser.add_argument("--value-size", type=int, default=100)
    args = parser.parse_args(argv)
    result = run_pysyncobj_baseline(
        duration_s=args.seconds,
        warmup_s=args.warmup,
        outstanding=args.outstanding,
        keys=args.keys,
        value_size=args.value_size,
    )
    print(json.dumps(dataclasses.asdict(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
