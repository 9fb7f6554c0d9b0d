"""The lock workload: holders of one distributed lock (raftkv.client.lock) writing to a
fenced register, and a check that no superseded holder's write got through.

Several *holders*, each with its own ``Client`` over every node, repeatedly acquire the
same ``Lock`` (a TTL of about 2 s) and, while ``time.monotonic() < lock.valid_until``
and the lock is not ``lost``, write to a **fenced register**: an in-process object that
accepts a write only with a token at least the highest it has accepted, and records
every attempt (token, holder, time, accepted or not). Each acquisition is recorded when
``acquire`` returns (token, holder, time, and whether the lock was still certainly held
then), and so is each release and each loss.

The check (``check_lock``):

(a) no accepted write from a superseded holder: a write accepted with token ``t`` at
    register time ``w`` is a violation if an acquisition with a token ``t' > t``
    returned before ``w``. The fence alone does not prevent it: the register accepts
    the stale token as long as the new holder has not written yet. Only the lock's
    promise does: a holder writes only before ``valid_until``, when its lease is
    certainly alive, so its key is still in the queue and nobody behind it can be
    first.
(b) the tokens of successive acquisitions strictly increase, in the order in which
    ``acquire`` returned. Only acquisitions that returned with the lock still certainly
    held count: an ``acquire`` whose answer was delayed past its lease's lifetime
    returns a token the holder can see is no longer good (``valid_until`` has passed),
    and a later holder may have returned before it.
(c) the run made progress: at least ``min_acquisitions`` good acquisitions.

Writes the register refused are counted, not violations: they are a holder the fence
stopped (one that stalled between checking ``valid_until`` and writing, say).

``zombie_holder`` is a bug put in on purpose, to show the check can fail: holder 0
stops keeping its lease alive as soon as it has the lock (as a paused process would)
and goes on writing for longer than the TTL, ignoring ``valid_until`` and ``lost``.
The next holder gets the lock once the lease expires, and the zombie's writes between
that moment and the new holder's first write are accepted by the fence.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from raftkv.client.http_client import Client
from raftkv.client.lock import (
    DEFAULT_LOCK_PREFIX,
    Contender,
    Lock,
    LockLostError,
    LockTimeoutError,
)
from raftkv.wire.errors import RaftkvError

__all__ = [
    "Acquisition",
    "FencedRegister",
    "LockEnd",
    "LockOptions",
    "LockResult",
    "LockWorkload",
    "RegisterWrite",
    "check_lock",
]


@dataclass(frozen=True, slots=True)
class LockOptions:
    holders: int = 3
    ttl_s: float = 2.0
    hold_s: tuple[float, float] = (0.1, 0.6)
    """How long a holder keeps the lock (unless it loses it first)."""
    setup_s: tuple[float, float] = (0.01, 0.05)
    """Between acquiring and the first write (a holder getting ready)."""
    write_every_s: tuple[float, float] = (0.005, 0.03)
    acquire_timeout_s: float = 10.0
    op_timeout_s: float = 1.0
    """Each HTTP attempt of a holder's client."""
    retry_for_s: float = 3.0
    """How long a holder's client retries a request before giving up."""
    min_acquisitions: int = 5
    name: str = "chaos"
    seed: int = 0
    zombie_holder: bool = False
    """The injected bug: holder 0 stops its keeper once it holds the lock and writes on
    past its TTL, ignoring ``valid_until`` and ``lost``."""


@dataclass(frozen=True, slots=True)
class Acquisition:
    """``acquire`` returned ``token`` to ``holder`` at ``at`` (``time.monotonic()``);
    ``valid``: the lock was still certainly held then (``at < valid_until``)."""

    token: int
    holder: int
    at: float
    valid_until: float

    @property
    def valid(self) -> bool:
        return self.at < self.valid_until


@dataclass(frozen=True, slots=True)
class RegisterWrite:
    """One write attempt, as the register saw it."""

    token: int
    holder: int
    at: float
    accepted: bool


@dataclass(frozen=True, slots=True)
class LockEnd:
    """How a holding ended: ``released``, ``release_failed`` (the lease then expires by
    itself), ``lost`` (the keeper gave the lease up), ``abandoned`` (the zombie)."""

    token: int
    holder: int
    at: float
    how: str
    detail: str = ""


class FencedRegister:
    """Accepts a write only with a token at least the highest accepted so far; records
    every attempt."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.highest = 0
        self.writes: list[RegisterWrite] = []

    def write(self, token: int, holder: int) -> bool:
        with self._lock:
            at = self._clock()
            accepted = token >= self.highest
            if accepted:
                self.highest = token
            self.writes.append(RegisterWrite(token, holder, at, accepted))
            return accepted

    def snapshot(self) -> list[RegisterWrite]:
        with self._lock:
            return list(self.writes)


def _describe(started: float, at: float) -> str:
    return f"{at - started:.4f}s"


def check_lock(
    acquisitions: Sequence[Acquisition],
    writes: Sequence[RegisterWrite],
    min_acquisitions: int,
    started: float = 0.0,
    limit: int = 20,
) -> list[str]:
    """What is wrong with a lock history (see the module's docstring): accepted writes
    from superseded holders, writes with a token the writer never acquired, tokens out
    of order, too little progress. ``started``: subtracted from times in the messages.
    At most ``limit`` messages of each kind, then a count of the rest."""
    violations: list[str] = []
    by_time = sorted(acquisitions, key=lambda a: a.at)
    times = [a.at for a in by_time]
    # The highest token acquired up to and including each acquisition, by time.
    highest: list[int] = []
    top = 0
    for a in by_time:
        top = max(top, a.token)
        highest.append(top)
    acquired_by = {(a.token, a.holder): a.at for a in acquisitions}

    # (a) accepted writes after a later token was acquired.
    superseded: list[str] = []
    for write in writes:
        if not write.accepted:
            continue
        before = bisect.bisect_left(times, write.at)  # acquisitions strictly before
        if before and highest[before - 1] > write.token:
            newer = next(a for a in by_time[:before] if a.token > write.token)
            superseded.append(
                f"holder {write.holder}'s write with token {write.token} was accepted at "
                f"{_describe(started, write.at)}, after holder {newer.holder} had acquired "
                f"token {newer.token} at {_describe(started, newer.at)}"
            )
        owned = acquired_by.get((write.token, write.holder))
        if owned is None or owned > write.at:
            superseded.append(
                f"holder {write.holder} wrote with token {write.token} at "
                f"{_describe(started, write.at)} without having acquired it"
            )
    violations += _capped("superseded writes accepted", superseded, limit)

    # (b) tokens strictly increase in the order acquire returned them.
    disorder: list[str] = []
    previous: Acquisition | None = None
    for a in by_time:
        if not a.valid:
            continue
        if previous is not None and a.token <= previous.token:
            disorder.append(
                f"holder {a.holder} acquired token {a.token} at {_describe(started, a.at)}, "
                f"not above token {previous.token} that holder {previous.holder} acquired "
                f"at {_describe(started, previous.at)}"
            )
        previous = a
    violations += _capped("acquisitions out of order", disorder, limit)

    # (c) progress.
    good = sum(1 for a in acquisitions if a.valid)
    if good < min_acquisitions:
        violations.append(
            f"only {good} acquisitions returned with the lock held, fewer than "
            f"{min_acquisitions}: the run proves little"
        )
    return violations


def _capped(what: str, messages: list[str], limit: int) -> list[str]:
    if len(messages) <= limit:
        return messages
    return [*messages[:limit], f"... and {len(messages) - limit} more {what}"]


@dataclass(slots=True)
class LockResult:
    acquisitions: list[Acquisition]
    writes: list[RegisterWrite]
    ends: list[LockEnd]
    failures: dict[str, int]
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def counts(self) -> dict[str, object]:
        ends = Counter(e.how for e in self.ends)
        return {
            "acquisitions": len(self.acquisitions),
            "acquired_stale": sum(1 for a in self.acquisitions if not a.valid),
            "holders": len({a.holder for a in self.acquisitions}),
            "writes_accepted": sum(1 for w in self.writes if w.accepted),
            "writes_refused": sum(1 for w in self.writes if not w.accepted),
            "released": ends["released"],
            "release_failed": ends["release_failed"],
            "lost": ends["lost"],
            "abandoned": ends["abandoned"],
            "acquire_failures": dict(self.failures),
        }

    def to_json(self) -> str:
        """The history, for replaying the check (``check_lock``)."""
        return json.dumps(
            {
                "acquisitions": [asdict(a) for a in self.acquisitions],
                "writes": [asdict(w) for w in self.writes],
                "ends": [asdict(e) for e in self.ends],
                "failures": self.failures,
                "violations": self.violations,
            },
            indent=1,
        )


class LockWorkload:
    """The holders, each with its own client over ``endpoints``."""

    def __init__(self, endpoints: Sequence[str], options: LockOptions) -> None:
        self.endpoints = list(endpoints)
        self.options = options
        self.register = FencedRegister()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._clients: list[Client] = []
        self.started = 0.0
        self.acquisitions: list[Acquisition] = []
        self.ends: list[LockEnd] = []
        self.failures: Counter[str] = Counter()

    # -- running -------------------------------------------------------------------------

    def start(self) -> None:
        self.started = time.monotonic()
        for holder in range(self.options.holders):
            rng = random.Random(f"{self.options.seed}-lock-{holder}")
            thread = threading.Thread(
                target=self._holder, args=(holder, rng), name=f"lock-holder-{holder}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float) -> None:
        """Stop the holders (each releases what it holds) and wait up to ``timeout``
        seconds for each."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout)

    def abort(self) -> None:
        self._stop.set()

    def _client(self) -> Client:
        options = self.options
        client = Client(self.endpoints, timeout=options.op_timeout_s, retry_for=options.retry_for_s)
        with self._lock:
            self._clients.append(client)
        return client

    def _record_end(self, token: int, holder: int, how: str, detail: str = "") -> None:
        with self._lock:
            self.ends.append(LockEnd(token, holder, time.monotonic(), how, detail))

    def _fail(self, what: str) -> None:
        with self._lock:
            self.failures[what] += 1

    def _holder(self, holder: int, rng: random.Random) -> None:
        client = self._client()
        while not self._stop.is_set():
            try:
                if self.options.zombie_holder and holder == 0:
                    self._hold_as_zombie(client, holder, rng)
                else:
                    self._hold_once(client, holder, rng)
            except Exception as exc:  # pragma: no cover - a workload bug, not the store's
                self._fail(f"error: {type(exc).__name__}")
                time.sleep(0.1)

    def _hold_once(self, client: Client, holder: int, rng: random.Random) -> None:
        options = self.options
        token_box = [0]

        def on_lost(reason: str) -> None:
            self._record_end(token_box[0], holder, "lost", reason)

        lock = Lock(client, options.name, ttl=options.ttl_s, on_lost=on_lost)
        try:
            token = lock.acquire(timeout=options.acquire_timeout_s)
        except LockTimeoutError:
            self._fail("timeout")
            return
        except LockLostError:
            self._fail("lost_while_waiting")
            return
        except RaftkvError as exc:
            self._fail(type(exc).__name__)
            time.sleep(rng.uniform(0.05, 0.2))
            return
        at = time.monotonic()
        token_box[0] = token
        with self._lock:
            self.acquisitions.append(Acquisition(token, holder, at, lock.valid_until))
        hold_until = at + rng.uniform(*options.hold_s)
        time.sleep(rng.uniform(*options.setup_s))
        while not self._stop.is_set() and time.monotonic() < hold_until:
            # The check right before the write: the lock is certainly held until
            # valid_until (the keeper's safety margin covers the gap to the write).
            if lock.lost or time.monotonic() >= lock.valid_until:
                break
            self.register.write(token, holder)
            time.sleep(rng.uniform(*options.write_every_s))
        try:
            lock.release()
        except RaftkvError as exc:
            self._record_end(token, holder, "release_failed", str(exc)[:200])
        else:
            self._record_end(token, holder, "released")
        time.sleep(rng.uniform(0.0, 0.05))

    def _hold_as_zombie(self, client: Client, holder: int, rng: random.Random) -> None:
        """The injected bug: a holder that stops keeping its lease alive (paused, as far
        as the store can tell) and writes on past the TTL regardless."""
        options = self.options
        contender = Contender(client, DEFAULT_LOCK_PREFIX, options.name, options.ttl_s)
        try:
            contender.join(b"", None)
            contender.wait_turn(options.acquire_timeout_s)
        except RaftkvError:
            self._fail("zombie_acquire")
            with contextlib.suppress(RaftkvError):
                contender.leave()
            time.sleep(0.1)
            return
        keeper = contender.keeper
        assert keeper is not None
        token = contender.revision
        with self._lock:
            self.acquisitions.append(
                Acquisition(token, holder, time.monotonic(), keeper.valid_until)
            )
        keeper.stop()  # "paused": no more keep-alives
        until = time.monotonic() + options.ttl_s + 2.0
        while not self._stop.is_set() and time.monotonic() < until:
            self.register.write(token, holder)
            time.sleep(0.002)
        self._record_end(token, holder, "abandoned")
        with contextlib.suppress(RaftkvError):
            contender.leave()
        time.sleep(rng.uniform(0.2, 0.5))

    # -- the end -------------------------------------------------------------------------

    def finish(self) -> LockResult:
        """The check of everything recorded (call after ``stop``)."""
        with self._lock:
            acquisitions = list(self.acquisitions)
            ends = list(self.ends)
            failures = dict(self.failures)
            clients = list(self._clients)
        writes = self.register.snapshot()
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()
        result = LockResult(acquisitions, writes, ends, failures)
        result.violations = check_lock(
            acquisitions, writes, self.options.min_acquisitions, started=self.started
        )
        return result
