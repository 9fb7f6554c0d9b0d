"""Leases in the cluster simulation (raftkv/testing/simulator.py, ``SimOptions.leases``).

Some simulated clients run a lease workload alongside the others and the nemeses: each
grants a lease (its own id, a TTL of a few election timeouts), attaches a key to it,
keeps it alive every third of its TTL for a while, then stops and starts another. Every
time is virtual (the cluster's ticks, which are the drivers' seconds), and every choice
comes from the cluster's one ``random.Random``, so a failing seed replays exactly.

What is checked, per lease (docs/architecture.md, "Leases"; raftkv/node/lease_clock.py):

Safety
    An Expire takes effect (on whichever node applies it first) no earlier than
    ``send + TTL`` for every grant or keep-alive of that lease acknowledged OK, where
    ``send`` is when the client sent it: whatever the leader changes, crashes and
    partitions, an acknowledged renewal gives the client its whole TTL. Checked when
    the Expire is applied and again when an acknowledgement arrives (a lagging node may
    answer after the leader already expired the lease). Its key must be gone with it.

Liveness
    Once the faults heal at the end of the run and the cluster converged, a lease
    nothing keeps alive any more expires within a bound (``expiry_bound``). A node
    times a lease from the moment it applies the lease's last renewal, or restarts or
    installs a snapshot holding it (its deadline is then at most a TTL away), and adds
    one election timeout each time it becomes leader; a checkpoint only ever moves a
    follower's deadline earlier. Only a node that applied the last renewal can expire
    the lease (an Expire names the renewal it saw). So the leader's deadline is at most
    the TTL plus one election timeout per leadership won since that renewal was first
    applied, after the last time any node applied a renewal of the lease or loaded it;
    the Expire then takes ``LIVENESS_SLACK_TICKS`` at most, or that long after the
    convergence when the deadline passed before it. The checks observe those times
    from the state machines (which apply the log and load snapshots), not from the
    lease clocks they check.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from raftkv.kv import KVStateMachine
from raftkv.kv.commands import (
    OP_LEASE,
    CommandDecodeError,
    LeaseExpire,
    LeaseGrant,
    LeaseKeepAlive,
    decode_lease_body,
    decode_raw,
)
from raftkv.kv.results import ApplyResult, Status
from raftkv.testing.safety import SafetyViolation
from raftkv.wire.protocol import LEASE_GRANT_FIELDS, Flag, Op, ReplyStatus
from raftkv_ext.codec import ClientReply, ClientRequest

__all__ = [
    "LEASE_KEY_PREFIX",
    "LEASE_OP_BASE",
    "LIVENESS_SLACK_TICKS",
    "LeaseExpiredEarly",
    "LeaseNotExpired",
    "LeaseRecord",
    "LeaseViolation",
    "LeaseWatchingStateMachine",
    "LeaseWorkload",
]

LEASE_OP_BASE = 1 << 48
"""Lease requests are numbered from here, apart from the history's operation ids."""
LEASE_ID_BASE = 1_000_000
"""Leases are granted with ids of their own from here (not the state machine's choice),
so that a grant whose outcome is unknown still names the lease it may have created."""
LEASE_KEY_PREFIX = b"lease/"
"""Keys attached to leases; the history's clients never write under it."""

LIVENESS_SLACK_TICKS = 40
"""What an expiry may take beyond the leader's deadline (or, once the cluster converged
after the faults, beyond that moment), see ``expiry_bound``: a tick before a restarted
node first times what it loaded, the tick at which the leader notices the deadline, its
Expire's commit and apply (a disk sync of 0-2 ticks on either side and network latency
of 1-2 ticks each way), and one election without faults, should one still happen
(``2 * election_ticks`` = 20 ticks at most, plus the votes' round trip)."""
_LEADERLESS_TICKS = 200
"""After convergence, elections without faults take a few dozen ticks at most."""


class LeaseViolation(AssertionError):
    """A lease check failed (the message names the lease and the times)."""


class LeaseExpiredEarly(LeaseViolation, SafetyViolation):
    """An Expire took effect before an acknowledged renewal's TTL had run out."""


class LeaseNotExpired(LeaseViolation):
    """After the faults healed, a lease nothing kept alive outlived its bound."""


class LeaseNode(Protocol):
    """What the workload needs of a simulated node (simulator.SimNode)."""

    @property
    def sm(self) -> KVStateMachine: ...

    def submit(self, op_id: int, request: ClientRequest, is_read: bool) -> None: ...


class _Stats(Protocol):
    @property
    def elections(self) -> int:
        """Leaderships won so far, over all nodes (each adds an election timeout)."""
        ...


class LeaseCluster(Protocol):
    """What the workload needs of the simulated cluster (simulator.Cluster)."""

    @property
    def now(self) -> int: ...

    @property
    def rng(self) -> random.Random: ...

    @property
    def stats(self) -> _Stats: ...

    def alive_nodes(self) -> Sequence[LeaseNode]: ...

    def leader(self) -> LeaseNode | None: ...

    def check_answered(self, op_id: int) -> None:
        """Fail if a live node still holds ``op_id`` when its client gives up."""
        ...

    def idle_tick(self) -> None:
        """One more tick without faults and without new requests."""
        ...


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    clients: int
    op_timeout: int
    election_timeout: int
    """The drivers' ``election_timeout_s``: one tick is one of their seconds."""
    ttl: tuple[int, int] = (40, 80)
    """TTLs in ticks: a few election timeouts."""
    keep_alives: tuple[int, int] = (0, 6)
    """How many keep-alives a client sends before it lets a lease expire."""


@dataclass(slots=True)
class LeaseRecord:
    """One lease as its client and the checks know it (times are ticks)."""

    id: int
    ttl: int
    key: bytes
    client: int
    acked_send: int | None = None
    """The latest send time of a grant or keep-alive acknowledged OK."""
    acked: int = 0
    last_send: int = 0
    """The latest send time of any grant or keep-alive (answered or not)."""
    renewal_index: int = 0
    """The log index of its latest grant or keep-alive applied (on any node)."""
    renewal_applied_at: int = 0
    """When a node first applied that one."""
    elections_at_renewal: int = 0
    """Leaderships won (cluster-wide) by then."""
    last_timed: int = 0
    """The latest time any node applied a grant or keep-alive of it, or loaded it from a
    snapshot: no node's deadline for it is more than a TTL (plus election timeouts) on
    from this."""
    ended_at: int | None = None
    """When an Expire of it was first applied, on any node."""
    ended_index: int = 0

    def describe(self) -> str:
        return (
            f"lease {self.id} (ttl {self.ttl}, key {self.key.decode()}): last acknowledged "
            f"renewal sent at {self.acked_send}, last renewal sent at {self.last_send}, "
            f"last renewal (index {self.renewal_index}) first applied at "
            f"{self.renewal_applied_at}, last timed at {self.last_timed}, "
            f"expired at {self.ended_at} (index {self.ended_index})"
        )


@dataclass(slots=True)
class _Op:
    op_id: int
    kind: int
    lease: LeaseRecord
    sent_at: int
    client: _LeaseClient


@dataclass(slots=True)
class _LeaseClient:
    id: int
    session: int = 0
    seq: int = 0
    op: _Op | None = None
    next_at: int = 0
    lease: LeaseRecord | None = None
    attached: bool = False
    keep_alives_left: int = 0


@dataclass(slots=True)
class LeaseSummary:
    granted: int = 0
    attached: int = 0
    kept_alive: int = 0
    expired: int = 0
    not_found: int = 0
    failed: int = 0
    leases: list[LeaseRecord] = field(default_factory=list)


class LeaseWatchingStateMachine(KVStateMachine):
    """The state machine, telling the workload when a lease is renewed, loaded from a
    snapshot or expired."""

    __slots__ = ("_workload",)

    def __init__(self, workload: LeaseWorkload) -> None:
        super().__init__()
        self._workload = workload

    def apply(self, index: int, data: bytes) -> ApplyResult:
        result = super().apply(index, data)
        # The opcode is the command header's second byte. An answer remembered for a
        # retried command carries the index of its first application: not applied now.
        if (
            result.status != Status.OK
            or result.entry_index != index
            or len(data) < 2
            or data[1] != OP_LEASE
        ):
            return result
        try:
            command = decode_lease_body(decode_raw(data)[4])
        except CommandDecodeError:
            return result
        if isinstance(command, LeaseExpire):
            self._workload.expired(command.lease_id, index, self)
        elif isinstance(command, LeaseGrant | LeaseKeepAlive) and result.lease is not None:
            self._workload.renewed(result.lease.id, index)
        return result

    def restore(self, data: bytes) -> None:
        super().restore(data)
        self._workload.loaded(self.leases.ids())


class LeaseWorkload:
    """The lease clients and the checks (module docstring)."""

    def __init__(self, cluster: LeaseCluster, settings: LeaseSettings) -> None:
        self.cluster = cluster
        self.settings = settings
        self.summary = LeaseSummary()
        self._clients = [_LeaseClient(i) for i in range(1, settings.clients + 1)]
        self._ops: dict[int, _Op] = {}
        self._leases: dict[int, LeaseRecord] = {}
        self._op_seq = 0
        self._session_seq = 0
        self.converged_at: int | None = None

    # -------------------------------------------------------------- hooks

    def new_state_machine(self) -> KVStateMachine:
        return LeaseWatchingStateMachine(self)

    def owns(self, op_id: int) -> bool:
        return op_id >= LEASE_OP_BASE

    def renewed(self, lease_id: int, index: int) -> None:
        """A node applied a grant or keep-alive of ``lease_id`` at ``index``."""
        lease = self._leases.get(lease_id)
        if lease is None:
            return
        now = self.cluster.now
        lease.last_timed = now
        if index > lease.renewal_index:
            lease.renewal_index = index
            lease.renewal_applied_at = now
            lease.elections_at_renewal = self.cluster.stats.elections

    def loaded(self, lease_ids: Iterable[int]) -> None:
        """A node loaded a state holding these leases (a restart or a snapshot)."""
        now = self.cluster.now
        for lease_id in lease_ids:
            lease = self._leases.get(lease_id)
            if lease is not None:
                lease.last_timed = now

    def expired(self, lease_id: int, index: int, sm: KVStateMachine) -> None:
        """A node applied an Expire that ended ``lease_id`` at ``index``."""
        lease = self._leases.get(lease_id)
        if lease is None:
            return  # not one of ours
        if sm.get(lease.key) is not None:
            raise LeaseViolation(f"{lease.describe()}: its key outlived it (index {index})")
        if lease.ended_at is None:
            lease.ended_at = self.cluster.now
            lease.ended_index = index
            self.summary.expired += 1
        self._check_early(lease)

    def _check_early(self, lease: LeaseRecord) -> None:
        if lease.ended_at is None or lease.acked_send is None:
            return
        if lease.ended_at < lease.acked_send + lease.ttl:
            raise LeaseExpiredEarly(
                f"{lease.describe()}: expired {lease.acked_send + lease.ttl - lease.ended_at} "
                f"ticks before the TTL of a renewal acknowledged OK ran out"
            )

    # -------------------------------------------------------------- clients

    def drive(self, active: bool) -> None:
        """Once per tick: time out what waited too long; when ``active``, send."""
        now = self.cluster.now
        for client in self._clients:
            op = client.op
            if op is not None:
                if now - op.sent_at >= self.settings.op_timeout:
                    self.cluster.check_answered(op.op_id)
                    # A late answer is still taken (``resolve``), but the client moves on.
                    client.op = None
                    client.next_at = now
                continue
            if active and now >= client.next_at:
                self._act(client)

    def _act(self, client: _LeaseClient) -> None:
        if not self.cluster.alive_nodes():
            client.next_at = self.cluster.now + 1
            return
        lease = client.lease
        rng = self.cluster.rng
        if lease is None:
            ttl = rng.randint(*self.settings.ttl)
            lease_id = LEASE_ID_BASE + len(self._leases)
            lease = LeaseRecord(lease_id, ttl, LEASE_KEY_PREFIX + b"%d" % lease_id, client.id)
            self._leases[lease_id] = lease
            self.summary.leases.append(lease)
            client.lease = lease
            client.attached = False
            client.keep_alives_left = rng.randint(*self.settings.keep_alives)
            value = LEASE_GRANT_FIELDS.pack(lease_id, ttl * 1000)
            self._send(client, lease, Op.LEASE_GRANT, value=value)
        elif not client.attached:
            value = LEASE_GRANT_FIELDS.pack(lease.id, 0) + b"v%d" % client.seq
            self._send(client, lease, Op.PUT, key=lease.key, value=value, flags=Flag.LEASED)
        elif client.keep_alives_left > 0:
            client.keep_alives_left -= 1
            self._send(client, lease, Op.LEASE_KEEP_ALIVE, limit=lease.id)
        else:
            self._stop(client)

    def _stop(self, client: _LeaseClient) -> None:
        """Let the client's lease expire and start another a little later."""
        client.lease = None
        client.next_at = self.cluster.now + self.cluster.rng.randint(0, 10)

    def _send(
        self,
        client: _LeaseClient,
        lease: LeaseRecord,
        op: int,
        *,
        key: bytes = b"",
        value: bytes = b"",
        limit: int = 0,
        flags: int = 0,
    ) -> None:
        cluster = self.cluster
        nodes = cluster.alive_nodes()
        leader = cluster.leader()
        rng = cluster.rng
        node = leader if leader is not None and rng.random() < 0.6 else rng.choice(nodes)
        if client.session == 0:
            self._session_seq += 1
            client.session = (1 << 40) + self._session_seq  # apart from the history's
            client.seq = 0
        client.seq += 1
        self._op_seq += 1
        op_id = LEASE_OP_BASE + self._op_seq
        now = cluster.now
        pending = _Op(op_id, op, lease, now, client)
        self._ops[op_id] = pending
        client.op = pending
        if op in (Op.LEASE_GRANT, Op.LEASE_KEEP_ALIVE):
            lease.last_send = now
        request = ClientRequest(
            op_id,
            op,
            key,
            value,
            client_id=client.session,
            seq=client.seq,
            prev_revision=0,
            limit=limit,
            flags=flags,
            first_incomplete=client.seq,
        )
        node.submit(op_id, request, is_read=False)

    def resolve(self, op_id: int, reply: ClientReply | None) -> None:
        """A node answered ``op_id`` (None: it crashed, the outcome is unknown)."""
        op = self._ops.pop(op_id, None)
        if op is None:
            return
        client, lease = op.client, op.lease
        status = None if reply is None else ReplyStatus(reply.status)
        body = b"" if reply is None else reply.body
        renewal = op.kind in (Op.LEASE_GRANT, Op.LEASE_KEEP_ALIVE)
        summary = self.summary
        if status == ReplyStatus.OK and renewal:
            answer = orjson.loads(body)
            if answer["lease"] != lease.id or answer["ttl_ms"] != lease.ttl * 1000:
                raise LeaseViolation(f"{lease.describe()}: answered {answer}")
            if lease.acked_send is None or op.sent_at > lease.acked_send:
                lease.acked_send = op.sent_at
            lease.acked += 1
            if op.kind == Op.LEASE_GRANT:
                summary.granted += 1
            else:
                summary.kept_alive += 1
            self._check_early(lease)
        elif status == ReplyStatus.OK:
            summary.attached += 1
        elif status == ReplyStatus.NOT_FOUND and op.kind != Op.LEASE_GRANT:
            summary.not_found += 1  # the lease had expired (or was never granted)
        elif status in (None, ReplyStatus.UNAVAILABLE, ReplyStatus.NOT_LEADER):
            summary.failed += 1
        elif status in (ReplyStatus.TIMEOUT, ReplyStatus.STALE_SESSION):
            # Unknown outcome, or not applied: a request given up on already.
            summary.failed += 1
        else:
            raise LeaseViolation(
                f"{lease.describe()}: {Op(op.kind).name} answered {status.name}: {body!r}"
            )
        if client.op is not op:
            return  # the client gave up on it already
        client.op = None
        if status == ReplyStatus.STALE_SESSION:
            client.session = 0  # its first request was lost: start a new session
        now = self.cluster.now
        if op.kind == Op.LEASE_GRANT:
            if status == ReplyStatus.OK:
                client.next_at = now
            else:
                self._stop(client)  # maybe granted, maybe not: left to expire
        elif op.kind == Op.PUT:
            client.attached = True  # tried once: the lease's key is best effort
            client.next_at = op.sent_at + lease.ttl // 3
        elif status == ReplyStatus.NOT_FOUND:
            self._stop(client)  # expired already (its keep-alives came too late)
        else:
            client.next_at = op.sent_at + lease.ttl // 3

    # -------------------------------------------------------------- the end

    def expiry_bound(self, lease: LeaseRecord) -> int:
        """The tick by which ``lease``, kept alive no more, must have expired once the
        cluster converged after the faults (module docstring)."""
        assert self.converged_at is not None
        elections = self.cluster.stats.elections - lease.elections_at_renewal
        deadline = lease.last_timed + lease.ttl + elections * self.settings.election_timeout
        return max(deadline, self.converged_at) + LIVENESS_SLACK_TICKS

    def finish(self) -> None:
        """After the cluster converged: run on, without faults or new requests, until
        every lease ended or is known never to have been granted; fail any lease that
        outlives its bound."""
        cluster = self.cluster
        self.converged_at = cluster.now
        leaderless = 0
        while True:
            waiting = any(client.op is not None for client in self._clients)
            leader = cluster.leader()
            if leader is None:
                # An election: nothing is known to be live or not until it ends.
                leaderless += 1
                if leaderless > _LEADERLESS_TICKS:
                    raise LeaseNotExpired(f"no leader for {leaderless} ticks at {cluster.now}")
                cluster.idle_tick()
                continue
            leaderless = 0
            # A node taken out of the cluster keeps what it had: the leader's state is
            # the one that counts.
            live = [
                lease
                for lease in self._leases.values()
                if lease.ended_at is None and lease.id in leader.sm.leases
            ]
            now = cluster.now
            for lease in live:
                bound = self.expiry_bound(lease)
                if now > bound:
                    elections = cluster.stats.elections - lease.elections_at_renewal
                    raise LeaseNotExpired(
                        f"{lease.describe()}: still live at tick {now}, after its bound "
                        f"{bound} (converged at {self.converged_at}, {elections} "
                        "leaderships won since its last renewal was first applied)"
                    )
            if not live and not waiting:
                return
            cluster.idle_tick()
