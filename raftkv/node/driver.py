"""The driver: the one place that turns the consensus core's Readys into effects and
keeps track of the client requests waiting on them (docs/architecture.md, "The driver").

It does no I/O. Disks, sockets, threads and clocks belong to its host, which it reaches
through ``DriverHost``: ``kvnode``'s Raft process (node.py) with real files and
sockets, the simulator (raftkv/testing/simulator.py) with simulated ones, and the core's
test harness with a list for a disk. All three therefore run the same order of
operations, which is where the subtle bugs live: what is persisted before which message
leaves, that forwarded writes are registered before the entries that answer them are
applied, that reads are served only once the apply index reaches their read index.

Only the driver calls into the core. Requests arrive with ``submit`` and wait in the
request tracker; operator actions (membership changes, leadership transfer, snapshots)
are queued and carried out in the driver's own turn, ``process``, which the host calls
once per event-loop turn (or per simulated step) after feeding it ticks, messages and
requests.
"""

from __future__ import annotations

import logging
import random
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from raftkv.kv import AuthChange, Delete, DeletePrefix, Put, encode_command
from raftkv.kv.commands import (
    OP_LEASE,
    CommandDecodeError,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseKeepAliveMany,
    LeaseRevoke,
    decode_lease_body,
    decode_raw,
    encode_plain_put,
    encode_txn_command,
)
from raftkv.kv.leases import LeaseTable
from raftkv.kv.results import ApplyResult, KeyValue
from raftkv.node.lease_clock import LeaseClock, LeaseClockSettings
from raftkv.node.node_config import NodeAddress
from raftkv.node.operator_actions import OPERATOR_OPS, OperatorActions
from raftkv.node.request_tracker import RequestTracker
from raftkv.node.requests import PendingRequest, ReplyFn, reply_for_result
from raftkv.node.snapshot_record import SnapshotRecord
from raftkv.raft.core import NotLeaderError, ProposalDroppedError, RaftCore, Role
from raftkv.raft.membership import Membership
from raftkv.raft.ready import HardState, Ready, Snapshot, SnapshotMeta
from raftkv.wire.errors import WRITE_NOT_APPLIED, WRITE_OUTCOME_UNKNOWN
from raftkv.wire.protocol import (
    KEY_LEASE,
    LEASE_GRANT_FIELDS,
    LIST_FETCH_MAX,
    Flag,
    Op,
    ReplyStatus,
    encode_key_value,
    encode_key_values,
    encode_lease_info,
    encode_lease_list,
)
from raftkv_ext.codec import ClientReply, ClientRequest, RequestVote

if TYPE_CHECKING:
    from raftkv_ext.codec import RaftMessage
from raftkv_ext.entry import ENTRY_CONFIG, ENTRY_NORMAL, Entry

__all__ = [
    "KV_WRITE_OPS",
    "Driver",
    "DriverHost",
    "DriverSettings",
    "SnapshotRecord",
    "StateMachine",
]

_U64 = struct.Struct("<Q")

KV_WRITE_OPS = frozenset(
    {
        Op.PUT,
        Op.DELETE,
        Op.DELETE_PREFIX,
        Op.AUTH_CHANGE,
        Op.TXN,
        Op.LEASE_GRANT,
        Op.LEASE_REVOKE,
        Op.LEASE_KEEP_ALIVE,
        Op.LEASE_KEEP_ALIVES,
    }
)
_KV_READ_OPS = frozenset({Op.GET, Op.LIST, Op.READ_INDEX, Op.LEASE_INFO, Op.LEASE_LIST})
_NOT_APPLIED = f"leadership changed; {WRITE_NOT_APPLIED}"


class StateMachine(Protocol):
    """What the driver needs of the state machine (raftkv.kv.KVStateMachine)."""

    @property
    def applied_index(self) -> int: ...

    def apply(self, index: int, command: bytes) -> ApplyResult: ...

    def advance(self, index: int) -> None: ...

    def get(self, key: bytes) -> KeyValue | None: ...

    def range(self, prefix: bytes, limit: int) -> list[KeyValue]: ...

    @property
    def leases(self) -> LeaseTable: ...


class DriverHost(Protocol):
    """The effects the driver asks for. Each call returns once the effect is under way;
    those that complete later report back through the driver's methods."""

    @property
    def addresses(self) -> Mapping[int, NodeAddress]:
        """Every member's addresses, as the newest configuration has them."""
        ...

    @property
    def cluster_id(self) -> int: ...

    def send(self, messages: list[RaftMessage]) -> None: ...

    def save_hard_state(self, state: HardState) -> None:
        """Write term and vote; durable at the latest when the next sync completes."""
        ...

    def append(self, entries: list[Entry]) -> None:
        """Write entries, replacing any stored suffix from the first one's index on;
        durable at the latest when the next sync completes."""
        ...

    def start_sync(self) -> None:
        """Make everything written so far durable; call ``Driver.synced`` when done. The
        driver starts one sync at a time."""
        ...

    def install_snapshot(self, snapshot: Snapshot) -> SnapshotRecord:
        """A snapshot from the leader: store it durably, restart the log behind it and
        load it into the state machine (the host knows its file format)."""
        ...

    def start_snapshot(self, meta: SnapshotMeta) -> None:
        """Write a snapshot of the state machine as it is now (applied up to
        ``meta.index``); call ``Driver.snapshot_taken`` or ``snapshot_failed`` later."""
        ...

    def compact_log(self, index: int, term: int) -> None:
        """Drop the stored log up to ``index`` (whose term is ``term``)."""
        ...

    def config_applied(self, entry: Entry, membership: Membership, context: bytes) -> None:
        """A configuration entry was applied: update addresses and peers."""
        ...

    def joined(self) -> None:
        """A joining node became a voter with the whole log: it may vote again."""
        ...

    def leader_changed(self, leader_id: int, term: int) -> None: ...

    def apply_timed(self, seconds: float) -> None:
        """How long one batch of committed entries took to apply (for metrics)."""
        ...


@dataclass(frozen=True, slots=True)
class DriverSettings:
    """The host's settings for its driver (kvnode's come from NodeConfig, which holds
    the defaults)."""

    node_id: int
    request_timeout_s: float
    snapshot_entries: int
    # The next snapshot waits until the commands applied since the last one reach this
    # share of its size (see Driver._maybe_snapshot).
    snapshot_log_ratio: float
    snapshot_retain: int
    # Whether save_hard_state is durable when it returns (kvnode renames an fsynced
    # file); if not, a Ready that changes only the hard state needs a sync of its own.
    hard_state_durable_at_once: bool
    # The leader turns caught-up learners into voters (operator_actions.py); the core's
    # own tests switch it off to study learners as the core alone treats them.
    promote_learners: bool = True
    # The longest election timeout, in the host's seconds: a new leader adds it to every
    # lease's deadline (lease_clock.py).
    election_timeout_s: float = 0.3
    lease_checkpoint_interval_s: float = 5.0


class Driver:
    def __init__(
        self,
        core: RaftCore,
        state_machine: StateMachine,
        host: DriverHost,
        settings: DriverSettings,
        rng: random.Random,
        *,
        joining: bool = False,
        latest_snapshot: SnapshotRecord | None = None,
        clock: Callable[[], float] = lambda: 0.0,
        observer: Callable[[Ready], None] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        """``clock`` times apply batches for metrics only; nothing the driver decides
        depends on it. ``observer`` sees every Ready before it is carried out (the
        simulator's safety checks, the test harness's records)."""
        self.core = core
        self.sm = state_machine
        self.host = host
        self.settings = settings
        self.logger = logger or logging.getLogger("raftkv.node")
        self.requests = RequestTracker(rng)
        self.operations = OperatorActions(core, self, self.logger)
        self.joining = joining
        self._clock = clock
        self._observer = observer
        self._now = 0.0
        self._operator_queue: list[PendingRequest] = []
        # _removed's memory: the configuration it last looked at, and whether that one
        # leaves this node out.
        self._membership_seen: Membership | None = None
        self._left_membership = False

        # Durability: groups of (messages, last entry) waiting for the next sync, and
        # the groups the sync under way will release. Every write that needs a sync
        # queues a group in _unsynced, so while no sync runs everything written is
        # durable, and while _unsynced is empty the running sync covers every write.
        self._unsynced: list[tuple[list[RaftMessage], tuple[int, int] | None]] = []
        self._syncing: list[tuple[list[RaftMessage], tuple[int, int] | None]] = []
        self._sync_running = False

        # Snapshots: the newest one, and the bytes of commands applied since it began,
        # which with its size decide when the next one is due.
        self.latest_snapshot = latest_snapshot
        if latest_snapshot is not None:
            # The core sends this snapshot to followers that are too far behind.
            core.snapshot_saved(latest_snapshot.meta, latest_snapshot.reader)
        self._last_snapshot_index = latest_snapshot.meta.index if latest_snapshot else 0
        self._snapshot_bytes = latest_snapshot.size if latest_snapshot else 0
        self._applied_bytes = 0
        self._bytes_at_snapshot = 0
        self._snapshot_running = False
        self._force_snapshot = False

        self._role_seen = Role.FOLLOWER
        self._term_seen = 0
        self._leader_seen = 0
        self.leader_changes = 0

        self.lease_clock = LeaseClock(
            LeaseClockSettings(
                election_timeout_s=settings.election_timeout_s,
                checkpoint_interval_s=settings.lease_checkpoint_interval_s,
                expire_retry_s=max(2 * settings.election_timeout_s, 0.1),
            )
        )
        # Deadlines count from the host's clock, which the driver first learns at its
        # first tick or turn: the leases restored at start are timed from then.
        self._lease_clock_started = False
        self.leases_expired = 0

    # ------------------------------------------------------------------ inputs

    def tick(self, now: float) -> None:
        """One tick of the core's clock; ``now`` (seconds, monotonic) ends requests
        whose deadline has passed."""
        self._now = now
        self.core.tick()
        self.requests.expire(now)
        self._lease_duties(now)

    def step(self, messages: list[RaftMessage]) -> None:
        """Messages from peers. Raises CommittedEntryConflictError when a leader
        contradicts a committed entry: the host must stop."""
        core = self.core
        joining = self.joining
        for message in messages:
            if joining and isinstance(message, RequestVote):
                # A joining node may have voted in this term before its data was lost;
                # it stays out of elections until it is a voter again (_apply_config).
                continue
            core.step(message)

    def report_unreachable(self, peer: int) -> None:
        self.core.report_unreachable(peer)

    def submit(self, request: ClientRequest, reply_fn: ReplyFn, now: float) -> None:
        """A client or operator request, answered through ``reply_fn`` exactly once. It
        takes effect at the next ``process``."""
        self._now = now
        op = request.op
        timeout_ms = request.timeout_ms
        timeout_s = timeout_ms / 1000 if timeout_ms else self.settings.request_timeout_s
        is_write = op in KV_WRITE_OPS
        pending = PendingRequest(request, reply_fn, now + timeout_s, is_write)
        if self._removed():
            pending.fail(ReplyStatus.UNAVAILABLE, "this node is no longer a member of the cluster")
            return
        # Writes first: every write of every client passes here.
        if is_write:
            try:
                command = command_for(request)
            except ValueError as exc:
                pending.fail(ReplyStatus.BAD_REQUEST, str(exc))
                return
            self.requests.queue_write(command, pending)
        elif op in _KV_READ_OPS:
            if request.flags & Flag.STALE_READ:
                self._serve_read(pending)
                return
            self.requests.queue_read(pending)
        elif op in OPERATOR_OPS:
            self._operator_queue.append(pending)
        else:
            pending.fail(ReplyStatus.BAD_REQUEST, f"unknown operation {op}")

    def request_snapshot(self) -> None:
        """Take a snapshot at the next ``process`` rather than at the threshold."""
        self._force_snapshot = True

    def synced(self) -> None:
        """The sync the driver asked for last is done: what it covered is durable."""
        groups, self._syncing = self._syncing, []
        self._sync_running = False
        core = self.core
        for messages, last in groups:
            if messages:
                self.host.send(messages)
            if last is not None:
                core.on_persisted(*last)
        self._start_sync()

    def snapshot_outdated(self, meta: SnapshotMeta) -> bool:
        """Whether a snapshot at ``meta`` is no newer than the one the driver has (the
        leader's overtook a local one while it was being written)."""
        return meta.index <= self._last_snapshot_index

    def snapshot_taken(self, record: SnapshotRecord) -> None:
        """The snapshot begun by ``start_snapshot`` is written and checked: adopt it and
        compact the log behind it."""
        self._snapshot_running = False
        meta = record.meta
        if self.snapshot_outdated(meta):
            return
        core = self.core
        core.snapshot_saved(meta, record.reader)
        self._last_snapshot_index = meta.index
        self.latest_snapshot = record
        self._snapshot_bytes = record.size
        compact_to = max(core.log.boundary_index, meta.index - self.settings.snapshot_retain)
        boundary_term = core.log.term(compact_to)
        if boundary_term is not None and compact_to > core.log.boundary_index:
            core.compact(compact_to)
            self.host.compact_log(compact_to, boundary_term)

    def snapshot_failed(self) -> None:
        """The snapshot begun last failed: the next one is due as if it never began."""
        self._snapshot_running = False
        self._applied_bytes += self._bytes_at_snapshot

    def fail_all(self, message: str) -> None:
        """The node is stopping: answer everything still waiting."""
        self.requests.fail_all(message)
        for pending in self._operator_queue:
            pending.fail(ReplyStatus.UNAVAILABLE, message)
        self._operator_queue = []
        self.operations.fail_all(message)

    # ------------------------------------------------------------------ views

    @property
    def addresses(self) -> Mapping[int, NodeAddress]:
        return self.host.addresses

    @property
    def cluster_id(self) -> int:
        return self.host.cluster_id

    @property
    def applied_index(self) -> int:
        return self.sm.applied_index

    @property
    def now(self) -> float:
        return self._now

    def pending_writes(self) -> int:
        return self.requests.pending_writes()

    # ------------------------------------------------------------------ the turn

    def process(self, now: float | None = None) -> None:
        """The driver's turn: submit what arrived, carry out every Ready, then the
        periodic duties (role and leader tracking, learner promotion, snapshots,
        operator actions). Storage errors raised by the host propagate to it. ``now``
        (the host's monotonic seconds) times what this turn applies to leases."""
        if now is not None:
            self._now = now
        if not self._lease_clock_started:
            self._lease_clock_started = True
            self.lease_clock.load(self.sm.leases.all_timers(), self._now)
        core = self.core
        self._start_operator_actions()
        self._submit_batches(core)
        while core.has_ready():
            self._handle_ready(core, core.ready())
        self._track_role(core)
        self._track_leader(core)
        if self.settings.promote_learners:
            self.operations.promote_caught_up_learners()
        self._maybe_snapshot(core)
        while core.has_ready():
            self._handle_ready(core, core.ready())
        self.operations.poll(self._now)
        if self._force_snapshot:
            # An operator's snapshot request asked for one just now: start it in this
            # turn rather than at the next tick.
            self._maybe_snapshot(core)

    def _start_operator_actions(self) -> None:
        if not self._operator_queue:
            return
        queued, self._operator_queue = self._operator_queue, []
        for pending in queued:
            if not pending.done:
                self.operations.start(pending, self._now)

    def _removed(self) -> bool:
        """Whether a committed configuration has taken this node out of the cluster."""
        core = self.core
        membership = core.membership
        # Asked for every request: whether the configuration names this node is worked
        # out once per configuration, not once per request.
        if membership is not self._membership_seen:
            self._membership_seen = membership
            members = membership.members
            self._left_membership = bool(members) and self.settings.node_id not in members
        return self._left_membership and core.committed >= core.last_config_index

    def _submit_batches(self, core: RaftCore) -> None:
        requests = self.requests
        if requests.proposals:
            proposals = requests.take_proposals()
            if proposals:
                self._propose(core, proposals)
        if requests.read_batch:
            reads = requests.take_reads()
            if reads:
                if core.leader_id == 0:
                    requests.no_leader.extend(reads)
                else:
                    core.read_index(requests.read_asked(reads))

    def _propose(self, core: RaftCore, proposals: list[tuple[bytes, PendingRequest]]) -> None:
        commands = [command for command, _ in proposals]
        try:
            first = core.propose(commands)
        except NotLeaderError as exc:
            if not exc.leader_id:
                self.requests.no_leader.extend(pending for _, pending in proposals)
                return
            core.forward(self.requests.forwarded(exc.leader_id, proposals), commands)
            return
        except ProposalDroppedError as exc:
            for _, pending in proposals:
                pending.fail(ReplyStatus.UNAVAILABLE, f"{exc}; {WRITE_NOT_APPLIED}")
            return
        self.requests.proposed(first, core.term, proposals)

    def _track_role(self, core: RaftCore) -> None:
        """One log line when this node starts an election, wins one or steps down."""
        role, term = core.role, core.term
        if role is self._role_seen and term == self._term_seen:
            return
        previous = self._role_seen
        self._role_seen, self._term_seen = role, term
        clock = self.lease_clock
        if role is Role.LEADER and not clock.leading:
            clock.became_leader(self._now)
        elif role is not Role.LEADER and clock.leading:
            clock.stepped_down()
        if previous is Role.LEADER and role is not Role.LEADER:
            self.logger.info("term %d: stepped down, now %s", term, role.value)
        if role is Role.CANDIDATE:
            self.logger.info("term %d: starting an election", term)
        elif role is Role.LEADER and previous is not Role.LEADER:
            self.logger.info("term %d: won the election", term)
        elif role is Role.PRE_CANDIDATE and previous is not Role.PRE_CANDIDATE:
            # A node cut off from the others pre-votes every election timeout without
            # ever changing the term: worth a line only when asked for detail.
            self.logger.debug("term %d: asking for pre-votes", term)

    def _track_leader(self, core: RaftCore) -> None:
        requests = self.requests
        if core.leader_id != self._leader_seen:
            self._leader_seen = core.leader_id
            requests.abandon_forwards(core.leader_id)
            self.leader_changes += 1
            if core.leader_id:
                self.logger.info("term %d: leader is node %d", core.term, core.leader_id)
            else:
                self.logger.info("term %d: no leader", core.term)
            self.host.leader_changed(core.leader_id, core.term)
        if core.leader_id and requests.no_leader:
            for pending in requests.take_no_leader():
                if pending.is_write:
                    requests.proposals.append((command_for(pending.request), pending))
                else:
                    requests.read_batch.append(pending)
            # Submitted now, in this turn, rather than waiting for the next event.
            self._submit_batches(core)

    def _handle_ready(self, core: RaftCore, ready: Ready) -> None:
        if self._observer is not None:
            self._observer(ready)
        host = self.host
        if ready.messages:
            host.send(ready.messages)
        if ready.snapshot is not None:
            self._install_snapshot(core, ready.snapshot)
        if ready.hard_state is not None:
            host.save_hard_state(ready.hard_state)
        last: tuple[int, int] | None = None
        if ready.entries:
            host.append(ready.entries)
            last = (ready.entries[-1].index, ready.entries[-1].term)
        hard_state_unsynced = (
            ready.hard_state is not None and not self.settings.hard_state_durable_at_once
        )
        if last is not None or hard_state_unsynced:
            self._unsynced.append((ready.persisted_messages, last))
            self._start_sync()
        elif ready.persisted_messages:
            self._send_once_durable(ready.persisted_messages)
        # The leader's answers to forwarded batches say at which indexes the waiting
        # writes sit; they must be registered before this Ready's committed entries are
        # applied, which may already include them (the commit can arrive in the same
        # turn as the answer), or those writes would never be answered.
        for result in ready.forwarded:
            self.requests.forward_answered(result, self.sm.applied_index)
        if ready.committed:
            self._apply(ready.committed)
        for read in ready.reads:
            self.requests.read_confirmed(read.context, read.index)
        for context in ready.dropped_reads:
            self.requests.read_dropped(context)
        for pending in self.requests.take_servable_reads(self.sm.applied_index):
            self._serve_read(pending)

    def _send_once_durable(self, messages: list[RaftMessage]) -> None:
        """Messages of a Ready that wrote nothing needing a sync: an append that added no
        entries (a heartbeat, a commit index), a vote whose hard state is durable at once,
        an installed snapshot (the host stores it durably). They promise only what earlier
        Readys wrote (an empty append acknowledges its prev_index, which an earlier Ready
        may have appended), so they leave once everything written before them is
        durable, and after the messages of earlier Readys (per-peer order), but they
        never cost a sync of their own: on a follower under load, every commit index
        the leader sends would otherwise double its fsyncs."""
        if not self._unsynced:
            if not self._sync_running:
                # Every write so far is durable (each write queues a group, and a
                # group is only off the queue while its sync runs): nothing to wait for.
                self.host.send(messages)
                return
            # Nothing was written since the running sync began (that would have queued
            # a group), so that sync covers all these messages promise: they leave
            # with it, after the groups it already releases.
            self._syncing.append((messages, None))
            return
        # Writes are waiting for the next sync; it is due anyway, and covers them.
        self._unsynced.append((messages, None))

    def _start_sync(self) -> None:
        if self._sync_running or not self._unsynced:
            return
        self._syncing, self._unsynced = self._unsynced, []
        self._sync_running = True
        self.host.start_sync()

    # ------------------------------------------------------------------ applying

    def _apply(self, entries: list[Entry]) -> None:
        started = self._clock()
        sm = self.sm
        requests = self.requests
        # The writes waiting for their entries, by index (RequestTracker.write_at without
        # a call per entry). A follower's is empty unless its own clients wrote through
        # it, and then it skips the look-up.
        writes = requests.writes
        applied_bytes = 0
        for entry in entries:
            if entry.type == ENTRY_NORMAL:
                data = entry.data
                applied_bytes += len(data)
                result = sm.apply(entry.index, data)
                if writes:
                    waiting = writes.pop(entry.index, None)
                    if waiting is not None:
                        self._answer_write(entry, result, *waiting)
                continue
            sm.advance(entry.index)
            waiting = requests.write_at(entry.index)
            if waiting is not None:
                waiting[1].fail(ReplyStatus.UNAVAILABLE, _NOT_APPLIED)
            if entry.type == ENTRY_CONFIG:
                self._apply_config(entry)
        self._applied_bytes += applied_bytes
        leases = sm.leases
        if leases.has_timer_events:
            self.lease_clock.observe(leases.take_timer_events(), self._now)
        self.host.apply_timed(self._clock() - started)

    def _answer_write(
        self, entry: Entry, result: ApplyResult, term: int, pending: PendingRequest
    ) -> None:
        if term == entry.term and entry.data == pending.command:
            pending.answer(reply_for_result(pending.request.request_id, entry.term, result))
        elif term == entry.term:
            # Not the entry this write was told it would be: never answer a write with
            # another command's result. (Answers meant for a previous incarnation of
            # this node once did exactly that.)
            self.logger.warning(
                "entry %d is not the write registered there; its outcome is unknown",
                entry.index,
            )
            pending.fail(ReplyStatus.TIMEOUT, WRITE_OUTCOME_UNKNOWN)
        else:
            pending.fail(ReplyStatus.UNAVAILABLE, _NOT_APPLIED)

    def _apply_config(self, entry: Entry) -> None:
        membership, context = Membership.decode(entry.data)
        self.host.config_applied(entry, membership, context)
        self.logger.info("membership at index %d: %s", entry.index, membership)
        node_id = self.settings.node_id
        if self.joining and node_id in membership.voters and not membership.is_joint:
            self.joining = False
            self.host.joined()
            self.logger.info("caught up and promoted: taking part in elections again")

    def _serve_read(self, pending: PendingRequest) -> None:
        request = pending.request
        if request.op in (Op.LEASE_INFO, Op.LEASE_LIST) or request.flags & Flag.WITH_LEASE:
            now = self._now
            pending.answer(
                lease_read_reply(self.sm, self.lease_clock, request, self.core.term, now)
            )
            return
        pending.answer(read_reply(self.sm, request, self.core.term))

    # ------------------------------------------------------------------ leases

    def _lease_duties(self, now: float) -> None:
        """The leader's: propose an Expire for each lease run out, and checkpoint the
        time left of leases nothing has recorded for a while."""
        clock = self.lease_clock
        if not clock.leading or not self._lease_clock_started:
            return
        leases = self.sm.leases
        commands: list[bytes] = []
        for lease_id in clock.due(now):
            lease = leases.get(lease_id)
            if lease is not None:
                commands.append(encode_command(LeaseExpire(lease_id, lease.renewed_index)))
        checkpoint = clock.to_checkpoint(now)
        if checkpoint:
            # Not the leases an entry not yet applied here names: see below.
            named = self._leases_named_unapplied()
            checkpoint = [item for item in checkpoint if item[0] not in named]
        if checkpoint:
            commands.append(encode_command(LeaseCheckpoint(tuple(checkpoint))))
        if not commands:
            return
        try:
            self.core.propose(commands)
        except (NotLeaderError, ProposalDroppedError) as exc:
            # Proposed again at a later tick if this node still leads then.
            self.logger.debug("lease expiries or checkpoint not proposed: %s", exc)
            return
        self.leases_expired += len(commands) - (1 if checkpoint else 0)

    def _leases_named_unapplied(self) -> set[int]:
        """The leases that an entry of this leader's log past its applied index names.

        A checkpoint measures time left from what this leader has applied, yet lands in
        the log after every entry it holds. A keep-alive among those would be applied
        first everywhere, and the checkpoint's older, shorter time after it: a follower
        keeps the earlier deadline, and as the next leader would expire the lease before
        the keep-alive's TTL ran out. (A grant, revoke or expire in between could
        likewise make the checkpoint apply to a lease of the same id granted anew.)
        """
        first = self.sm.applied_index + 1
        log = self.core.log
        named: set[int] = set()
        if first > log.last_index:
            return named
        for entry in log.slice(first, log.last_index + 1, 1 << 62):
            data = entry.data
            # The opcode is the command header's second byte.
            if entry.type != ENTRY_NORMAL or len(data) < 2 or data[1] != OP_LEASE:
                continue
            try:
                command = decode_lease_body(decode_raw(data)[4])
            except CommandDecodeError:
                continue  # the state machine refuses it: it changes nothing
            if isinstance(command, LeaseKeepAliveMany):
                named.update(command.lease_ids)
            elif not isinstance(command, LeaseCheckpoint):
                named.add(command.lease_id)
        return named

    # ------------------------------------------------------------------ snapshots

    def _install_snapshot(self, core: RaftCore, snapshot: Snapshot) -> None:
        """A snapshot from the leader: the host stores and loads it."""
        record = self.host.install_snapshot(snapshot)
        self._last_snapshot_index = record.meta.index
        self.latest_snapshot = record
        self._snapshot_bytes = record.size
        self._applied_bytes = 0
        core.snapshot_saved(record.meta, record.reader)
        self.requests.fail_writes_through(record.meta.index)
        # The state was replaced: time its leases afresh from what it recorded.
        self.sm.leases.take_timer_events()
        self.lease_clock.load(self.sm.leases.all_timers(), self._now)
        if self.lease_clock.leading:
            self.lease_clock.became_leader(self._now)

    def _maybe_snapshot(self, core: RaftCore) -> None:
        """Start a snapshot once ``snapshot_entries`` entries were applied since the last
        one and the commands applied since then reach ``snapshot_log_ratio`` of its size
        (so a large state is not rewritten for a few small writes), or when asked."""
        applied = self.sm.applied_index
        settings = self.settings
        due = (
            applied - self._last_snapshot_index >= settings.snapshot_entries
            and self._applied_bytes >= settings.snapshot_log_ratio * self._snapshot_bytes
        )
        forced = self._force_snapshot and applied > self._last_snapshot_index
        if self._snapshot_running or not (due or forced):
            return
        self._force_snapshot = False
        meta = core.snapshot_meta(applied)
        # Counted afresh from here; given back if this snapshot fails, so the next one is
        # not put off by a whole ratio of the state.
        self._bytes_at_snapshot = self._applied_bytes
        self._applied_bytes = 0
        self._snapshot_running = True
        self.host.start_snapshot(meta)


def lease_read_reply(
    sm: StateMachine, clock: LeaseClock, request: ClientRequest, term: int, now: float
) -> ClientReply:
    """The answer to LEASE_INFO, LEASE_LIST or a GET with Flag.WITH_LEASE: times left
    come from ``clock`` at ``now``."""
    leases = sm.leases
    index = sm.applied_index
    if request.op == Op.LEASE_LIST:
        items = [
            (lease_id, leases.ttl_of(lease_id), clock.remaining_ms(lease_id, now))
            for lease_id in leases.ids()
        ]
        body = encode_lease_list(items)
        return ClientReply(request.request_id, ReplyStatus.OK, index, term, 0, body)
    if request.op == Op.LEASE_INFO:
        lease = leases.get(request.limit)
        if lease is None:
            body = f"lease {request.limit} not found".encode()
            return ClientReply(request.request_id, ReplyStatus.NOT_FOUND, index, term, 0, body)
        keys = sorted(lease.keys)
        most = max(0, request.prev_revision)
        remaining = clock.remaining_ms(lease.id, now)
        body = encode_lease_info(lease.id, lease.ttl_ms, remaining, keys[:most], len(keys) > most)
        return ClientReply(request.request_id, ReplyStatus.OK, index, term, 0, body)
    # Every HTTP GET comes this way: the body is built once, lease fields first.
    stored = sm.get(request.key)
    if stored is None:
        return read_reply(sm, request, term)  # its NOT_FOUND
    lease_id = leases.lease_of(request.key)
    remaining = clock.remaining_ms(lease_id, now) if lease_id else 0
    body = encode_key_value(stored, KEY_LEASE.pack(lease_id, remaining))
    return ClientReply(request.request_id, ReplyStatus.OK, index, term, stored.mod_revision, body)


def read_reply(sm: StateMachine, request: ClientRequest, term: int) -> ClientReply:
    """The answer to a GET or LIST from the state machine as it is now."""
    index = sm.applied_index
    if request.op == Op.READ_INDEX:
        return ClientReply(request.request_id, ReplyStatus.OK, index, term)
    if request.op == Op.GET:
        stored = sm.get(request.key)
        if stored is None:
            return ClientReply(
                request.request_id, ReplyStatus.NOT_FOUND, index, term, 0, b"key not found"
            )
        return ClientReply(
            request.request_id,
            ReplyStatus.OK,
            index,
            term,
            stored.mod_revision,
            encode_key_value(stored),
        )
    # One key more than any client may ask for: that key tells a front end there are more.
    limit = min(request.limit or LIST_FETCH_MAX, LIST_FETCH_MAX)
    items = sm.range(request.key, limit)
    return ClientReply(request.request_id, ReplyStatus.OK, index, term, 0, encode_key_values(items))


def command_for(request: ClientRequest) -> bytes:
    """The state-machine command a client write stands for, tagged with its session so
    that a retried write is applied once."""
    op = request.op
    if op == Op.PUT and not request.flags & Flag.LEASED:
        # Most writes: encoded without a Put built and checked field by field; a request
        # encode_command would refuse goes on below, to get its error message.
        prev = request.prev_revision if request.flags & Flag.HAS_PREV_REVISION else None
        encoded = encode_plain_put(
            request.key,
            request.value,
            prev,
            request.client_id,
            request.seq,
            request.first_incomplete,
        )
        if encoded is not None:
            return encoded
    tag = {
        "client_id": request.client_id,
        "seq": request.seq,
        "first_incomplete": request.first_incomplete,
    }
    prev = request.prev_revision if request.flags & Flag.HAS_PREV_REVISION else None
    if op == Op.PUT:
        if request.flags & Flag.LEASED:
            value = request.value
            if len(value) < LEASE_GRANT_FIELDS.size:
                raise ValueError("a leased PUT's value is shorter than its lease fields")
            lease, ttl_ms = LEASE_GRANT_FIELDS.unpack_from(value)
            rest = value[LEASE_GRANT_FIELDS.size :]
            return encode_command(Put(request.key, rest, prev, lease=lease, ttl_ms=ttl_ms, **tag))
        return encode_command(Put(request.key, request.value, prev, **tag))
    if op == Op.LEASE_GRANT:
        if len(request.value) != LEASE_GRANT_FIELDS.size:
            raise ValueError("a lease grant's value must be its id and TTL")
        lease_id, ttl_ms = LEASE_GRANT_FIELDS.unpack(request.value)
        return encode_command(LeaseGrant(lease_id, ttl_ms, **tag))
    if op == Op.LEASE_REVOKE:
        return encode_command(LeaseRevoke(request.limit, **tag))
    if op == Op.LEASE_KEEP_ALIVE:
        return encode_command(LeaseKeepAlive(request.limit, **tag))
    if op == Op.LEASE_KEEP_ALIVES:
        # Untagged: renewing twice is harmless, and a batch has no single answer to keep.
        if len(request.value) % 8:
            raise ValueError("a keep-alive batch's value must be whole u64 lease ids")
        ids = sorted({lease_id for (lease_id,) in _U64.iter_unpack(request.value)})
        return encode_command(LeaseKeepAliveMany(tuple(ids)))
    if op == Op.DELETE:
        return encode_command(Delete(request.key, prev, **tag))
    if op == Op.AUTH_CHANGE:
        return encode_command(AuthChange(request.value, **tag))
    if op == Op.TXN:
        # Checked by decoding: only a valid body reaches the log.
        return encode_txn_command(request.value, **tag)
    return encode_command(DeletePrefix(request.key, **tag))
