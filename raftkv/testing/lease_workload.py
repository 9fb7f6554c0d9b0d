"""The lease workload: keys attached to leases that clients keep alive for a while and
then let go, and observers that check each key vanished neither too early nor too late.

*Clients* (each its own ``Client`` over every node) grant a lease with a TTL of 1.5 to
3 s, put one key ``lease/C/N`` with it, keep it alive every third of the TTL for a
random number of renewals, then stop and start the next one. Every keep-alive is
recorded with the time its call started (its request was sent then, or later by the
client's own retries) and ended, and its outcome: acknowledged, refused with 404 (the
lease is gone), certainly not applied, or unknown. *Observers* list the prefix with
linearizable reads, over and over, recording when each read was sent and answered and
which keys it saw. After the final heal a few more leases run on the calm cluster, and
the observers go on until every key is gone.

What the store promises (docs/api.md, "Leases"; raftkv/node/lease_clock.py): a key
never expires before its TTL has passed since the client *sent* the last write or
keep-alive that was acknowledged; with a stable leader it expires within the TTL plus
the time to commit the expiry; each leader change adds at most one election timeout
plus, if the new leader had restarted, one ``--lease-checkpoint-interval``. The check
(``check_leases``):

(a) **never early.** A lease is protected until ``P = max(send of its grant, sends of its
    acknowledged keep-alives) + TTL``. A linearizable read that was *sent* after the
    key's put was acknowledged is ordered after the put, so when it finds the key absent
    the key was deleted at some moment between the put and the read's *response*
    (received at ``p``); the latest that moment can be is ``p``. So ``p < P`` proves the
    key vanished early; ``p >= P`` proves nothing wrong (the deletion may have come
    just before ``p``). Using the read's send time instead would accuse a deletion that
    happened legitimately while the read was in flight. A keep-alive or put answered
    404 (the lease is gone) is judged the same way, at the time its answer arrived.
(b) **never late, once the faults are healed.** The latest moment a keep-alive may have
    renewed the lease is the end of the last call that was not certainly refused (an
    unanswered one may still have been applied; a node that restarts while faults last
    times the lease from its replay of the log, with up to a TTL left). So the key must
    be gone by ``G = max(that moment, heal time) + TTL + LINGER_BOUND_S``. A read that
    was *sent* after ``G`` and still finds the key proves it lingered: it existed at
    some moment after the read was sent. A key seen again after a read had found it
    absent came back, which is also reported.

``LINGER_BOUND_S`` is what the docs allow after the heal, plus slack: one election
timeout (``ELECTION_TIMEOUT_S``, 0.3 s: 2 x 15 ticks x 10 ms) for the leader change the
heal may cause, one checkpoint interval (``CHECKPOINT_INTERVAL_S``: the chaos harness
runs the nodes with ``--lease-checkpoint-interval 1`` when this workload is on) should
the new leader have restarted, and ``SLACK_S`` for the elections after restarts, the
commit of the expiry and the observers' polling: 0.3 + 1 + 3.7 = 5 s.

Two bugs can be put in on purpose, to show the check can fail: ``phantom_keepalive``
(client 0 records one more acknowledged keep-alive for its first lease that it never
sent, as a client that counts a failed renewal as done would: the key vanishes before
the time the history says it is protected) and ``zombie_keepalive`` (client 1 records
that it stopped keeping its first lease alive but goes on doing so in secret: the key
lingers past the bound). Both can be on in one run.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from raftkv.client.http_client import Client
from raftkv.wire.errors import NotFoundError, RaftkvError, UnavailableError

__all__ = [
    "CHECKPOINT_INTERVAL_S",
    "ELECTION_TIMEOUT_S",
    "LINGER_BOUND_S",
    "PREFIX",
    "SLACK_S",
    "KeepAlive",
    "LeaseOptions",
    "LeaseRecord",
    "LeaseResult",
    "LeaseVerdict",
    "LeaseWorkload",
    "PrefixRead",
    "check_leases",
]

PREFIX = "lease/"

ELECTION_TIMEOUT_S = 0.3
"""The nodes' election timeout: 2 x --election-ticks 15 x --tick-ms 10 (node_config)."""
CHECKPOINT_INTERVAL_S = 1.0
"""The --lease-checkpoint-interval the chaos harness gives the nodes with this workload."""
SLACK_S = 3.7
"""Elections after the heal's restarts, committing the expiry, the observers' polling."""
LINGER_BOUND_S = ELECTION_TIMEOUT_S + CHECKPOINT_INTERVAL_S + SLACK_S
"""How long past ``max(last renewal, heal) + TTL`` a key may still be seen (5 s)."""

_EPSILON_S = 0.001
"""TTLs have millisecond precision."""
_LIST_LIMIT = 10_000

OK = "ok"
NOT_FOUND = "not_found"
FAILED = "failed"
"""Certainly not applied."""
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class LeaseOptions:
    clients: int = 3
    observers: int = 2
    ttl_s: tuple[float, float] = (1.5, 3.0)
    renewals: tuple[int, int] = (0, 4)
    op_timeout_s: float = 1.0
    """Each HTTP attempt."""
    retry_for_s: float = 2.0
    """How long a client retries a request (a 503, a timeout) before giving up."""
    poll_s: float = 0.05
    """Between an observer's reads."""
    tail_leases: int = 3
    """Leases run after the final heal, on a calm cluster."""
    seed: int = 0
    phantom_keepalive: bool = False
    """Injected bug (client 0): a keep-alive recorded as acknowledged, never sent."""
    zombie_keepalive: bool = False
    """Injected bug (client 1): keep-alives sent in secret after the recorded stop."""


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """One keep-alive call: started (its request sent) at ``sent``, returned at
    ``ended``, with ``outcome`` ok, not_found, failed (certainly not applied) or
    unknown."""

    sent: float
    ended: float
    outcome: str


@dataclass(slots=True)
class LeaseRecord:
    """One lease and its key, as its client saw them."""

    key: str
    lease_id: int
    ttl: float
    granted_sent: float
    granted_at: float
    put_sent: float = 0.0
    put_ended: float = 0.0
    put_outcome: str = UNKNOWN
    keepalives: list[KeepAlive] = field(default_factory=list)
    after_heal: bool = False

    def protected_until(self) -> float:
        """The store may not delete the key before this (``P`` in the docstring)."""
        sends = [self.granted_sent, *(k.sent for k in self.keepalives if k.outcome == OK)]
        return max(sends) + self.ttl

    def last_renewal(self) -> float:
        """The latest moment a call may have (re)started the lease's TTL."""
        ends = [self.granted_at]
        ends += [k.ended for k in self.keepalives if k.outcome in (OK, UNKNOWN)]
        return max(ends)

    def last_activity(self) -> float:
        return max([self.granted_at, self.put_ended, *(k.ended for k in self.keepalives)])


@dataclass(frozen=True, slots=True)
class PrefixRead:
    """A linearizable listing of the prefix: sent, answered, the keys it held."""

    sent: float
    received: float
    keys: frozenset[str]


@dataclass(slots=True)
class LeaseVerdict:
    early: list[str] = field(default_factory=list)
    lingering: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    keys_checked: int = 0
    """Keys whose put was acknowledged or may have been applied."""
    keys_seen_gone: int = 0
    """Of those, the ones a read sent after their last renewal found gone."""
    gone_after: list[float] = field(default_factory=list)
    """For each key seen gone: seconds from ``P`` to the answer of the first read that
    found it absent (an upper bound on how late it expired)."""

    @property
    def violations(self) -> list[str]:
        return self.early + self.lingering

    @property
    def ok(self) -> bool:
        return not self.violations and not self.unverified


def check_leases(
    records: Sequence[LeaseRecord],
    reads: Sequence[PrefixRead],
    healed_at: float,
    *,
    bound: float = LINGER_BOUND_S,
    started: float = 0.0,
) -> LeaseVerdict:
    """The check of the module's docstring. ``reads`` in any order; ``started`` is
    subtracted from the times in the messages."""
    verdict = LeaseVerdict()
    ordered = sorted(reads, key=lambda r: r.sent)

    def t(at: float) -> str:
        return f"{at - started:.3f}s"

    for record in records:
        key = record.key
        protected = record.protected_until()
        # (a) a 404 for the lease before it could have expired.
        refusals = [(k.ended, "a keep-alive") for k in record.keepalives if k.outcome == NOT_FOUND]
        if record.put_outcome == NOT_FOUND:
            refusals.append((record.put_ended, "the put"))
        for answered, what in refusals:
            if answered < protected - _EPSILON_S:
                verdict.early.append(
                    f"{key} (lease {record.lease_id}, ttl {record.ttl:g}s): {what} was "
                    f"answered 404 at {t(answered)}, before {t(protected)} "
                    f"(last acknowledged send + ttl)"
                )
        if record.put_outcome not in (OK, UNKNOWN):
            continue
        verdict.keys_checked += 1
        # (a) the first read ordered after the put that found the key gone.
        first_absent: PrefixRead | None = None
        if record.put_outcome == OK:
            # The earliest answer among them is the strongest evidence.
            first_absent = min(
                (r for r in ordered if r.sent > record.put_ended and key not in r.keys),
                key=lambda r: r.received,
                default=None,
            )
            if first_absent is not None:
                if first_absent.received < protected - _EPSILON_S:
                    verdict.early.append(
                        f"{key} (lease {record.lease_id}, ttl {record.ttl:g}s) vanished "
                        f"early: a read sent at {t(first_absent.sent)} and answered at "
                        f"{t(first_absent.received)} found it gone, before {t(protected)} "
                        f"(last acknowledged send + ttl)"
                    )
                else:
                    verdict.gone_after.append(first_absent.received - protected)
        # (b) seen after the bound, or again after it was gone.
        gone_by = max(record.last_renewal(), healed_at) + record.ttl + bound
        lingered = next((r for r in ordered if r.sent > gone_by and key in r.keys), None)
        if lingered is not None:
            verdict.lingering.append(
                f"{key} (lease {record.lease_id}, ttl {record.ttl:g}s) lingered: a read "
                f"sent at {t(lingered.sent)} still found it, after {t(gone_by)} "
                f"(max(last renewal, heal {t(healed_at)}) + ttl + {bound:g}s)"
            )
        if first_absent is not None:
            back = next(
                (r for r in ordered if r.sent > first_absent.received and key in r.keys), None
            )
            if back is not None:
                verdict.lingering.append(
                    f"{key} (lease {record.lease_id}) came back: gone in the read answered "
                    f"at {t(first_absent.received)}, there in the read sent at {t(back.sent)}"
                )
        stopped = record.last_activity()
        if any(r.sent > stopped and key not in r.keys for r in ordered):
            verdict.keys_seen_gone += 1
        elif lingered is None:
            verdict.unverified.append(
                f"{key} (lease {record.lease_id}): no read sent after {t(stopped)} showed it gone"
            )
    return verdict


@dataclass(slots=True)
class LeaseResult:
    records: list[LeaseRecord]
    reads: list[PrefixRead]
    healed_at: float
    started: float
    failures: dict[str, int]
    verdict: LeaseVerdict

    @property
    def ok(self) -> bool:
        return self.verdict.ok

    def counts(self) -> dict[str, object]:
        puts = Counter(r.put_outcome for r in self.records)
        keepalives = Counter(k.outcome for r in self.records for k in r.keepalives)
        verdict = self.verdict
        gone = sorted(verdict.gone_after)
        return {
            "leases": len(self.records),
            "after_heal": sum(1 for r in self.records if r.after_heal),
            "puts": dict(puts),
            "keepalives": dict(keepalives),
            "reads": len(self.reads),
            "keys_checked": verdict.keys_checked,
            "keys_seen_gone": verdict.keys_seen_gone,
            "gone_after_s": (
                {
                    "min": round(gone[0], 3),
                    "median": round(gone[len(gone) // 2], 3),
                    "max": round(gone[-1], 3),
                }
                if gone
                else {}
            ),
            "early": len(verdict.early),
            "lingering": len(verdict.lingering),
            "unverified": len(verdict.unverified),
            "failures": dict(self.failures),
        }

    def to_json(self) -> str:
        """The history, for replaying the check (``check_leases``)."""
        return json.dumps(
            {
                "started": self.started,
                "healed_at": self.healed_at,
                "records": [asdict(r) for r in self.records],
                "reads": [
                    {"sent": r.sent, "received": r.received, "keys": sorted(r.keys)}
                    for r in self.reads
                ],
                "early": self.verdict.early,
                "lingering": self.verdict.lingering,
                "unverified": self.verdict.unverified,
            },
            indent=1,
        )


class LeaseWorkload:
    """The clients and observers, each with its own client over ``endpoints``."""

    def __init__(self, endpoints: Sequence[str], options: LeaseOptions) -> None:
        self.endpoints = list(endpoints)
        self.options = options
        self._stop_clients = threading.Event()
        self._stop_observers = threading.Event()
        self._lock = threading.Lock()
        self._clients: list[threading.Thread] = []
        self._observers: list[threading.Thread] = []
        self._zombies: list[threading.Thread] = []
        self._http: list[Client] = []
        self.started = 0.0
        self.records: list[LeaseRecord] = []
        self.reads: list[PrefixRead] = []
        self.failures: Counter[str] = Counter()

    # -- running -------------------------------------------------------------------------

    def start(self) -> None:
        self.started = time.monotonic()
        options = self.options
        for n in range(options.observers):
            self._observers.append(self._spawn(self._observer, f"lease-observer-{n}"))
        for n in range(options.clients):
            self._clients.append(self._spawn(self._client_loop, f"lease-client-{n}", n))

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        return thread

    def stop_clients(self, timeout: float) -> None:
        """Stop granting and renewing (the observers go on)."""
        self._stop_clients.set()
        for thread in self._clients:
            thread.join(timeout=timeout)

    def abort(self) -> None:
        self._stop_clients.set()
        self._stop_observers.set()

    def _client(self) -> Client:
        options = self.options
        client = Client(self.endpoints, timeout=options.op_timeout_s, retry_for=options.retry_for_s)
        with self._lock:
            self._http.append(client)
        return client

    def _fail(self, what: str) -> None:
        with self._lock:
            self.failures[what] += 1

    def _observer(self) -> None:
        client = self._client()
        previous: frozenset[str] = frozenset()
        while not self._stop_observers.is_set():
            sent = time.monotonic()
            try:
                items = client.list(PREFIX, limit=_LIST_LIMIT)
            except RaftkvError:
                self._fail("read")
                time.sleep(self.options.poll_s)
                continue
            received = time.monotonic()
            if len(items) >= _LIST_LIMIT:
                self._fail("read_truncated")
                continue
            keys = frozenset(kv.key for kv in items)
            if keys == previous:
                keys = previous  # one set shared by reads that saw the same keys
            previous = keys
            with self._lock:
                self.reads.append(PrefixRead(sent, received, keys))
            time.sleep(self.options.poll_s)

    def _client_loop(self, number: int) -> None:
        client = self._client()
        rng = random.Random(f"{self.options.seed}-lease-{number}")
        serial = 0
        while not self._stop_clients.is_set():
            serial += 1
            try:
                self._one_lease(client, rng, f"{PREFIX}{number}/{serial:05d}", number, serial)
            except Exception as exc:  # pragma: no cover - a workload bug, not the store's
                self._fail(f"error: {type(exc).__name__}")
                time.sleep(0.1)

    def _one_lease(
        self,
        client: Client,
        rng: random.Random,
        key: str,
        number: int,
        serial: int,
        *,
        stop: threading.Event | None = None,
        after_heal: bool = False,
    ) -> None:
        options = self.options
        stopping = stop if stop is not None else self._stop_clients
        ttl = round(rng.uniform(*options.ttl_s), 3)
        renewals = rng.randint(*options.renewals)
        sent = time.monotonic()
        try:
            grant = client.lease_grant(ttl)
        except RaftkvError:
            self._fail("grant")
            time.sleep(rng.uniform(0.05, 0.2))
            return
        record = LeaseRecord(key, grant.id, grant.ttl, sent, time.monotonic())
        record.after_heal = after_heal
        record.put_sent = time.monotonic()
        try:
            client.put(key, b"x", lease=grant.id)
            outcome = OK
        except NotFoundError:
            outcome = NOT_FOUND
        except UnavailableError as exc:
            outcome = UNKNOWN if exc.may_have_applied else FAILED
        except RaftkvError:
            outcome = UNKNOWN
        record.put_ended = time.monotonic()
        record.put_outcome = outcome
        with self._lock:
            self.records.append(record)
        if outcome not in (OK, UNKNOWN):
            return
        next_at = sent
        for _ in range(renewals):
            next_at += record.ttl / 3
            if stopping.wait(max(0.0, next_at - time.monotonic())):
                break
            keepalive = self._keep_alive(client, grant.id)
            with self._lock:
                record.keepalives.append(keepalive)
            if keepalive.outcome == NOT_FOUND:
                break
            if keepalive.outcome == OK:
                next_at = keepalive.sent
        first = serial == 1 and not after_heal
        if first and number == 0 and options.phantom_keepalive:
            # The bug: at the next renewal's time, a keep-alive counted as acknowledged
            # although it was never sent.
            stopping.wait(max(0.0, next_at + record.ttl / 3 - time.monotonic()))
            now = time.monotonic()
            with self._lock:
                record.keepalives.append(KeepAlive(now, now, OK))
        if first and number == 1 and options.zombie_keepalive:
            # The bug: the renewals go on, unrecorded, until the observers stop.
            self._zombies.append(self._spawn(self._zombie, "lease-zombie", client, record))

    def _keep_alive(self, client: Client, lease_id: int) -> KeepAlive:
        sent = time.monotonic()
        try:
            client.lease_keep_alive(lease_id)
            outcome = OK
        except NotFoundError:
            outcome = NOT_FOUND
        except UnavailableError as exc:
            outcome = UNKNOWN if exc.may_have_applied else FAILED
        except RaftkvError:
            outcome = UNKNOWN
        return KeepAlive(sent, time.monotonic(), outcome)

    def _zombie(self, client: Client, record: LeaseRecord) -> None:
        while not self._stop_observers.wait(record.ttl / 3):
            with contextlib.suppress(RaftkvError):
                client.lease_keep_alive(record.lease_id)

    # -- the end -------------------------------------------------------------------------

    def finish(self, healed_at: float | None = None, timeout: float = 60.0) -> LeaseResult:
        """After the heal (``healed_at``, default now): a few leases on the calm cluster,
        then reads until every key is gone (or past its bound), then the check."""
        if healed_at is None:
            healed_at = time.monotonic()
        self._stop_clients.set()
        for thread in self._clients:
            thread.join(timeout=timeout)
        options = self.options
        tail = [
            self._spawn(
                self._tail_lease, f"lease-tail-{n}", n, random.Random(f"{options.seed}-tail-{n}")
            )
            for n in range(options.tail_leases)
        ]
        for thread in tail:
            thread.join(timeout=timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._pending(healed_at):
            time.sleep(0.2)
        self._stop_observers.set()
        for thread in [*self._observers, *self._zombies]:
            thread.join(timeout=options.op_timeout_s * 3)
        with self._lock:
            records = list(self.records)
            reads = list(self.reads)
            failures = dict(self.failures)
            clients = list(self._http)
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()
        verdict = check_leases(records, reads, healed_at, started=self.started)
        return LeaseResult(records, reads, healed_at, self.started, failures, verdict)

    def _tail_lease(self, number: int, rng: random.Random) -> None:
        client = self._client()
        key = f"{PREFIX}tail/{number}"
        try:
            self._one_lease(client, rng, key, -1, number, stop=threading.Event(), after_heal=True)
        except Exception as exc:  # pragma: no cover - a workload bug, not the store's
            self._fail(f"error: {type(exc).__name__}")

    def _pending(self, healed_at: float) -> bool:
        """Whether some key is neither seen gone since its last activity nor past its
        bound yet (by the latest read)."""
        with self._lock:
            records = list(self.records)
            last = self.reads[-1] if self.reads else None
        if last is None:
            return True
        for record in records:
            if record.put_outcome not in (OK, UNKNOWN):
                continue
            gone_by = max(record.last_renewal(), healed_at) + record.ttl + LINGER_BOUND_S
            if last.sent > gone_by + 0.5:
                continue
            if last.sent > record.last_activity() and record.key not in last.keys:
                continue
            return True
        return False
