"""The Raft state machine of one node.

Section numbers refer to the Raft paper (Ongaro & Ousterhout, 2014) and, where marked
"thesis", to Ongaro's dissertation (2014). The shape follows etcd's raft library: the
core never blocks and never does I/O; the driver feeds it ticks, messages and proposals,
and carries out the ``Ready`` it returns.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from raftkv.raft.config import RaftConfig
from raftkv.raft.log import RaftLog
from raftkv.raft.membership import Membership
from raftkv.raft.progress import Progress, ProgressState
from raftkv.raft.ready import (
    ForwardResult,
    HardState,
    InitialState,
    RandomSource,
    ReadState,
    Ready,
    Snapshot,
    SnapshotMeta,
    SnapshotReader,
)
from raftkv_ext.codec import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Propose,
    ProposeResponse,
    ReadIndex,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from raftkv_ext.entry import ENTRY_CONFIG, ENTRY_NOOP, ENTRY_NORMAL, Entry

if TYPE_CHECKING:
    from raftkv_ext.codec import RaftMessage


class Role(Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class NotLeaderError(Exception):
    """The request needs the leader; ``leader_id`` is the leader this node knows (0: none)."""

    def __init__(self, leader_id: int) -> None:
        super().__init__(f"not the leader (leader is {leader_id or 'unknown'})")
        self.leader_id = leader_id


class ProposalDroppedError(Exception):
    """The leader refused the proposal for now (transfer or membership change under way)."""


class CommittedEntryConflictError(Exception):
    """The leader sent an entry that disagrees with one this node has committed.

    Raft rules this out (§5.4 Leader Completeness), so it means a disk lost writes it had
    acknowledged, here or on the leader. Carrying on would let the replicas' states
    diverge silently; like etcd, the node stops instead.
    """

    def __init__(self, index: int, ours: int, theirs: int, leader: int) -> None:
        super().__init__(
            f"entry {index} is committed here with term {ours}, but leader {leader} sent "
            f"term {theirs}: a disk lost acknowledged writes, replicas would diverge"
        )
        self.index = index
        self.ours = ours
        self.theirs = theirs
        self.leader = leader


@dataclass(slots=True)
class _PendingRead:
    context: bytes
    index: int
    round: int
    requester: int


@dataclass(slots=True)
class _IncomingSnapshot:
    index: int
    term: int
    config: bytes
    total_size: int
    chunks: list[bytes]
    received: int


class RaftCore:
    """One Raft node's protocol state. Not thread-safe; the driver owns it."""

    def __init__(self, config: RaftConfig, rng: RandomSource, initial: InitialState) -> None:
        self.config = config
        self.id = config.node_id
        self._rng = rng
        self.term = initial.hard_state.term
        self.vote = initial.hard_state.vote
        self.log = RaftLog(initial.boundary_index, initial.boundary_term, initial.entries)
        self.role = Role.FOLLOWER
        self.leader_id = 0

        # Membership history: (index, membership) of the snapshot and of every config
        # entry after it. The latest one is in force, committed or not (§6).
        self._config_history: list[tuple[int, Membership]] = []
        snapshot = initial.snapshot
        base = 0
        if snapshot is not None:
            if snapshot.index < initial.boundary_index:
                raise ValueError("snapshot is older than the log boundary")
            self._config_history.append((snapshot.index, snapshot.membership))
            base = snapshot.index
            self.log.committed = max(self.log.committed, snapshot.index)
            self.log.handed_apply = max(self.log.handed_apply, snapshot.index)
        for entry in initial.entries:
            if entry.type == ENTRY_CONFIG and entry.index > base:
                self._config_history.append((entry.index, Membership.decode(entry.data)[0]))
        self._snapshot: SnapshotMeta | None = snapshot
        self._snapshot_reader: SnapshotReader | None = None

        self._hard_state = HardState(self.term, self.vote)
        self.progress: dict[int, Progress] = {}
        self._votes: dict[int, bool] = {}
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = 0
        self._reset_randomized_timeout()
        self._lead_transferee = 0
        self._pending_conf_index = 0
        self._noop_index = 0
        # ReadIndex (thesis §6.4): reads wait for a heartbeat round that a quorum acks.
        self._round = 0
        self._round_broadcast_pending = False
        self._reads: deque[_PendingRead] = deque()
        self._reads_awaiting_commit: list[tuple[bytes, int]] = []
        self._incoming: _IncomingSnapshot | None = None
        self._dirty: set[int] = set()
        self._commit_broadcast = False

        # Outputs accumulated for the next Ready.
        self._messages: list[RaftMessage] = []
        self._persisted_messages: list[RaftMessage] = []
        self._install: Snapshot | None = None
        self._read_states: list[ReadState] = []
        self._dropped_reads: list[bytes] = []
        self._forwarded: list[ForwardResult] = []

    # ------------------------------------------------------------------ queries

    @property
    def membership(self) -> Membership:
        return self._config_history[-1][1] if self._config_history else Membership()

    @property
    def last_config_index(self) -> int:
        """Index of the configuration in force (0 before any)."""
        return self._config_history[-1][0] if self._config_history else 0

    @property
    def committed(self) -> int:
        return self.log.committed

    @property
    def last_index(self) -> int:
        return self.log.last_index

    @property
    def snapshot_meta_latest(self) -> SnapshotMeta | None:
        return self._snapshot

    @property
    def lead_transferee(self) -> int:
        return self._lead_transferee

    @property
    def is_promotable(self) -> bool:
        """Whether this node may start elections.

        Voters may; learners and removed nodes may not. Thesis §4.2.2: a node that the
        latest configuration removes still campaigns while that configuration is not
        committed, since the old one may still need it (its own vote then counts only
        if it is in the latest configuration, which ``vote_result`` sees to).
        """
        if self.membership.is_voter(self.id):
            return True
        history = self._config_history
        if len(history) >= 2 and history[-1][0] > self.log.committed:
            return history[-2][1].is_voter(self.id)
        return False

    def membership_at(self, index: int) -> Membership:
        """The membership in force at ``index`` (the latest config at or before it)."""
        chosen = Membership()
        for config_index, membership in self._config_history:
            if config_index > index:
                break
            chosen = membership
        return chosen

    def best_transfer_target(self) -> int:
        """The voter, other than this node, whose log is the most up to date (0: none)."""
        best, best_match = 0, -1
        for peer in sorted(self.membership.voters):
            progress = self.progress.get(peer)
            if peer != self.id and progress is not None and progress.match > best_match:
                best, best_match = peer, progress.match
        return best

    # ------------------------------------------------------------------ inputs

    def tick(self) -> None:
        """Advance logical time by one tick."""
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def propose(self, commands: Sequence[bytes]) -> int:
        """Append client commands as one batch; returns the index of the first (§5.3)."""
        self._check_can_propose()
        first = self.log.last_index + 1
        term = self.term
        self._append_local(
            [
                Entry(index, term, ENTRY_NORMAL, command)
                for index, command in enumerate(commands, first)
            ]
        )
        return first

    def forward(self, batch_id: int, commands: list[bytes]) -> None:
        """Send commands to the leader; the answer comes back in ``Ready.forwarded``."""
        if self.role is Role.LEADER or self.leader_id == 0:
            raise NotLeaderError(self.leader_id)
        self._messages.append(Propose(self.id, self.leader_id, self.term, batch_id, commands))

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read point for ``context`` (thesis §6.4).

        The answer comes back in ``Ready.reads`` (or ``Ready.dropped_reads``).
        """
        if self.role is Role.LEADER:
            self._leader_read(context, self.id)
        elif self.leader_id:
            self._messages.append(ReadIndex(self.id, self.leader_id, self.term, context))
        else:
            self._dropped_reads.append(context)

    def change_membership(
        self, voters: Iterable[int], learners: Iterable[int] = (), context: bytes = b""
    ) -> int:
        """Propose a new configuration; returns the index of its config entry (§6).

        When the voters change, the cluster goes through the joint configuration
        C_old,new first; the leader appends C_new once the joint entry commits.
        """
        self._check_can_propose()
        if self._pending_conf_index > self.log.committed or self.membership.is_joint:
            raise ProposalDroppedError("a membership change is already in progress")
        new_voters = frozenset(voters)
        new_learners = frozenset(learners)
        if not new_voters:
            raise ValueError("a configuration needs at least one voter")
        if new_voters & new_learners:
            raise ValueError("a node cannot be both voter and learner")
        current = self.membership
        if new_voters == current.voters:
            target = Membership(new_voters, frozenset(), new_learners)
        else:
            target = Membership(new_voters, current.voters, new_learners)
        index = self.log.last_index + 1
        self._append_local([Entry(index, self.term, ENTRY_CONFIG, target.encode(context))])
        self._pending_conf_index = index
        return index

    def transfer_leadership(self, target: int) -> None:
        """Hand leadership to ``target`` (thesis §3.10): catch it up, then TimeoutNow."""
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader_id)
        if target == self.id:
            return
        if target not in self.membership.voters or target not in self.progress:
            raise ValueError(f"node {target} is not a voter")
        self._lead_transferee = target
        # The transfer must finish within one election timeout, or it is abandoned.
        self._election_elapsed = 0
        if self.progress[target].match == self.log.last_index:
            self._messages.append(TimeoutNow(self.id, target, self.term))
        else:
            self._dirty.add(target)

    def on_persisted(self, index: int, term: int) -> None:
        """The driver has made entries up to (index, term) durable."""
        if index > self.log.persisted and self.log.term(index) == term:
            self.log.persisted = index
            if self.role is Role.LEADER:
                self._maybe_commit()

    def snapshot_meta(self, index: int) -> SnapshotMeta:
        """Metadata for a snapshot the application takes at applied ``index``."""
        if index > self.log.handed_apply:
            raise ValueError(f"index {index} has not been applied")
        term = self.log.term(index)
        if term is None:
            raise ValueError(f"index {index} is compacted")
        return SnapshotMeta(index, term, self.membership_at(index))

    def snapshot_saved(self, meta: SnapshotMeta, reader: SnapshotReader) -> None:
        """A snapshot is durable and readable: it is the one sent to lagging followers."""
        if self._snapshot is None or meta.index >= self._snapshot.index:
            self._snapshot = meta
            self._snapshot_reader = reader

    def compact(self, index: int) -> None:
        """Forget log entries up to ``index``, which a saved snapshot must cover (§7)."""
        if self._snapshot is None or index > self._snapshot.index:
            raise ValueError("compaction beyond the latest saved snapshot")
        self.log.compact(index)

    def forget_progress(self, peer: int) -> None:
        """``peer`` lost its log (a rebuilt node): replicate to it from scratch."""
        progress = self.progress.get(peer)
        if progress is not None:
            progress.match = 0
            progress.become_probe()
            progress.next = self.log.last_index + 1
            self._dirty.add(peer)

    def report_unreachable(self, peer: int) -> None:
        """The transport could not deliver to ``peer``: stop streaming, probe again."""
        progress = self.progress.get(peer)
        if progress is not None and progress.state is ProgressState.REPLICATE:
            progress.become_probe()

    def step(self, message: RaftMessage) -> None:
        """Process one message from a peer."""
        if message.recipient != self.id:
            return
        if message.term > self.term:
            if not self._accept_higher_term(message):
                return
        elif message.term < self.term:
            self._answer_stale(message)
            return
        self._dispatch(message)

    # ------------------------------------------------------------------ output

    def has_ready(self) -> bool:
        # Asked at least twice per driver turn: term and vote are compared as they are,
        # not through a HardState built for each question.
        log = self.log
        hard_state = self._hard_state
        return bool(
            self._messages
            or self._persisted_messages
            or self._install
            or self._read_states
            or self._dropped_reads
            or self._forwarded
            or self._dirty
            or self._round_broadcast_pending
            or self._commit_broadcast
            or log.unstable_from <= log.last_index
            or log.committed > log.handed_apply
            or self.term != hard_state.term
            or self.vote != hard_state.vote
        )

    def ready(self) -> Ready:
        """Collect everything the driver must do now (see ``Ready`` for the order)."""
        self._flush()
        ready = Ready()
        if self.term != self._hard_state.term or self.vote != self._hard_state.vote:
            ready.hard_state = self._hard_state = HardState(self.term, self.vote)
        ready.snapshot, self._install = self._install, None
        ready.entries = self.log.take_unstable()
        ready.messages, self._messages = self._messages, []
        ready.persisted_messages, self._persisted_messages = self._persisted_messages, []
        ready.committed = self.log.take_committed()
        ready.reads, self._read_states = self._read_states, []
        ready.dropped_reads, self._dropped_reads = self._dropped_reads, []
        ready.forwarded, self._forwarded = self._forwarded, []
        return ready

    # ------------------------------------------------------------------ roles

    def _reset_randomized_timeout(self) -> None:
        # §5.2: a random timeout in [T, 2T) keeps split votes rare.
        ticks = self.config.election_ticks
        self._randomized_timeout = ticks + self._rng.randrange(0, ticks)

    def _reset_timers(self) -> None:
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_randomized_timeout()

    def _become_follower(self, term: int, leader: int) -> None:
        was_leader = self.role is Role.LEADER
        if term > self.term:
            self.term = term
            self.vote = 0
        self.role = Role.FOLLOWER
        self.leader_id = leader
        self._votes = {}
        self._lead_transferee = 0
        self._reset_timers()
        if was_leader:
            self._abandon_leader_state()

    def _abandon_leader_state(self) -> None:
        for read in self._reads:
            self._fail_read(read.context, read.requester)
        for context, requester in self._reads_awaiting_commit:
            self._fail_read(context, requester)
        self._reads.clear()
        self._reads_awaiting_commit = []
        self._round_broadcast_pending = False
        self._commit_broadcast = False
        self._dirty.clear()
        self.progress = {}

    def _campaign(self) -> None:
        if self.config.pre_vote:
            self._become_pre_candidate()
        else:
            self._become_candidate(transfer=False)

    def _become_pre_candidate(self) -> None:
        # Thesis §9.6: ask first whether an election could be won, without bumping the
        # term, so a node that was cut off cannot disrupt a healthy cluster on return.
        self.role = Role.PRE_CANDIDATE
        self.leader_id = 0
        self._votes = {self.id: True}
        self._reset_timers()
        if self.membership.vote_result(self._votes) is True:
            self._become_candidate(transfer=False)
            return
        for peer in sorted(self.membership.all_voters - {self.id}):
            self._messages.append(
                RequestVote(
                    self.id,
                    peer,
                    self.term + 1,
                    self.log.last_index,
                    self.log.last_term,
                    pre_vote=True,
                )
            )

    def _become_candidate(self, transfer: bool) -> None:
        # §5.2: increment the term, vote for self, ask everyone else.
        self.role = Role.CANDIDATE
        self.term += 1
        self.vote = self.id
        self.leader_id = 0
        self._votes = {self.id: True}
        self._reset_timers()
        if self.membership.vote_result(self._votes) is True:
            self._become_leader()
            return
        for peer in sorted(self.membership.all_voters - {self.id}):
            request = RequestVote(
                self.id,
                peer,
                self.term,
                self.log.last_index,
                self.log.last_term,
                transfer=transfer,
            )
            # The vote for itself must be durable before anyone hears of the candidacy.
            self._send_after_persist(request)

    def _become_leader(self) -> None:
        self.role = Role.LEADER
        self.leader_id = self.id
        self._votes = {}
        self._lead_transferee = 0
        self._reset_timers()
        self.progress = {}
        for peer in self.membership.members - {self.id}:
            self.progress[peer] = Progress(self.log.last_index + 1)
        # A config entry still uncommitted from an earlier term blocks new changes until
        # the no-op commits and settles it.
        self._pending_conf_index = self.log.last_index
        # §8: a new leader commits a no-op of its own term, which commits everything
        # before it and tells it the commit index it needs for ReadIndex.
        self._noop_index = self.log.last_index + 1
        self._append_local([Entry(self._noop_index, self.term, ENTRY_NOOP, b"")])

    # ------------------------------------------------------------------ ticks

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self.is_promotable and self._election_elapsed >= self._randomized_timeout:
            self._campaign()

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self.config.election_ticks:
            self._election_elapsed = 0
            if self.config.check_quorum:
                # Thesis §6.2: a leader that has not heard from a quorum for an election
                # timeout steps down, so clients stop waiting on a deposed leader.
                active = [self.id] + [p for p, pr in self.progress.items() if pr.recent_active]
                for progress in self.progress.values():
                    progress.recent_active = False
                if not self.membership.has_quorum(active):
                    self._become_follower(self.term, 0)
                    return
            self._lead_transferee = 0
        if self._heartbeat_elapsed >= self.config.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    # ------------------------------------------------------------------ message entry

    def _accept_higher_term(self, m: RaftMessage) -> bool:
        """§5.1: a higher term makes us a follower, with the exceptions of thesis §4.2.3."""
        if isinstance(m, RequestVote):
            in_lease = (
                self.config.check_quorum
                and self.leader_id != 0
                and self._election_elapsed < self.config.election_ticks
            )
            if in_lease and not m.transfer:
                # We heard from a live leader within the minimum election timeout: this
                # candidate is disruptive (it was cut off, or removed). Ignore it.
                return False
            if m.pre_vote:
                return True  # a pre-vote never changes our term
        if isinstance(m, RequestVoteResponse) and m.pre_vote and m.granted:
            return True  # granted pre-votes carry the term we would campaign in
        leader = m.sender if isinstance(m, AppendEntries | InstallSnapshot | TimeoutNow) else 0
        self._become_follower(m.term, leader)
        return True

    def _answer_stale(self, m: RaftMessage) -> None:
        if isinstance(m, AppendEntries):
            # A deposed leader that was cut off learns the newer term from our answer
            # and steps down; without it, pre-vote and check-quorum could leave it stuck.
            self._messages.append(
                AppendEntriesResponse(self.id, m.sender, self.term, False, m.prev_index)
            )
        elif isinstance(m, InstallSnapshot):
            # The same for a leader that is sending us a snapshot.
            self._messages.append(
                InstallSnapshotResponse(
                    self.id, m.sender, self.term, m.snap_index, 0, success=False
                )
            )
        elif isinstance(m, RequestVote) and m.pre_vote:
            self._messages.append(
                RequestVoteResponse(self.id, m.sender, self.term, False, pre_vote=True)
            )
        elif isinstance(m, ReadIndex):
            self._messages.append(
                ReadIndexResponse(self.id, m.sender, self.term, m.context, 0, False)
            )
        elif isinstance(m, Propose):
            self._messages.append(
                ProposeResponse(self.id, m.sender, self.term, m.batch_id, 0, False)
            )

    def _dispatch(self, m: RaftMessage) -> None:
        if isinstance(m, AppendEntries):
            self._receive_leader_contact(m.sender)
            self._handle_append(m)
        elif isinstance(m, AppendEntriesResponse):
            self._handle_append_response(m)
        elif isinstance(m, RequestVote):
            self._handle_vote_request(m)
        elif isinstance(m, RequestVoteResponse):
            self._handle_vote_response(m)
        elif isinstance(m, InstallSnapshot):
            self._receive_leader_contact(m.sender)
            self._handle_snapshot_chunk(m)
        elif isinstance(m, InstallSnapshotResponse):
            self._handle_snapshot_response(m)
        elif isinstance(m, TimeoutNow):
            if self.is_promotable and self.role is not Role.LEADER:
                # Thesis §3.10: the target campaigns at once, skipping pre-vote.
                self._become_candidate(transfer=True)
        elif isinstance(m, ReadIndex):
            if self.role is Role.LEADER:
                self._leader_read(m.context, m.sender)
            else:
                self._messages.append(
                    ReadIndexResponse(self.id, m.sender, self.term, m.context, 0, False)
                )
        elif isinstance(m, ReadIndexResponse):
            if m.success:
                self._read_states.append(ReadState(m.context, m.index))
            else:
                self._dropped_reads.append(m.context)
        elif isinstance(m, Propose):
            self._handle_forwarded_proposal(m)
        elif isinstance(m, ProposeResponse):
            self._forwarded.append(ForwardResult(m.batch_id, m.index, m.term, m.success))

    def _receive_leader_contact(self, leader: int) -> None:
        if self.role is Role.LEADER:
            raise AssertionError(f"two leaders in term {self.term}: {self.id} and {leader}")
        if self.role is not Role.FOLLOWER:
            self._become_follower(self.term, leader)
        self.leader_id = leader
        self._election_elapsed = 0

    # ------------------------------------------------------------------ elections

    def _handle_vote_request(self, m: RequestVote) -> None:
        can_vote = (
            self.vote == m.sender
            or (self.vote == 0 and self.leader_id == 0)
            or (m.pre_vote and m.term > self.term)
        )
        up_to_date = self.log.is_up_to_date(m.last_index, m.last_term)
        if self.config.faults.vote_without_log_check:
            up_to_date = True
        if can_vote and up_to_date:
            if m.pre_vote:
                self._messages.append(
                    RequestVoteResponse(self.id, m.sender, m.term, True, pre_vote=True)
                )
            else:
                self.vote = m.sender
                self._election_elapsed = 0
                self._send_after_persist(RequestVoteResponse(self.id, m.sender, self.term, True))
        else:
            self._messages.append(
                RequestVoteResponse(self.id, m.sender, self.term, False, pre_vote=m.pre_vote)
            )

    def _handle_vote_response(self, m: RequestVoteResponse) -> None:
        if m.pre_vote:
            if self.role is not Role.PRE_CANDIDATE or (m.granted and m.term != self.term + 1):
                return
        elif self.role is not Role.CANDIDATE:
            return
        self._votes[m.sender] = m.granted
        result = self.membership.vote_result(self._votes)
        if result is True:
            if self.role is Role.PRE_CANDIDATE:
                self._become_candidate(transfer=False)
            else:
                self._become_leader()
        elif result is False:
            self._become_follower(self.term, 0)

    # ------------------------------------------------------------------ replication

    def _handle_append(self, m: AppendEntries) -> None:
        log = self.log
        prev_index, prev_term, entries = m.prev_index, m.prev_term, m.entries
        if prev_index < log.committed:
            # The start of the message is committed here already, so it must match the
            # leader's log (§5.4 Leader Completeness); check from our commit point on.
            self._check_committed_prefix(m)
            entries = [e for e in entries if e.index > log.committed]
            prev_index = log.committed
            term = log.term(prev_index)
            assert term is not None
            prev_term = term
        if not log.matches(prev_index, prev_term):
            # §5.3 with the fast back-off: tell the leader where our log diverges.
            if prev_index > log.last_index:
                hint_index, hint_term = log.last_index + 1, 0
            else:
                hint_index = log.first_index_of_term(prev_index)
                hint_term = log.term(prev_index) or 0
            self._messages.append(
                AppendEntriesResponse(
                    self.id,
                    m.sender,
                    self.term,
                    False,
                    m.prev_index,
                    hint_index,
                    hint_term,
                    m.round,
                )
            )
            return
        last_new = prev_index + len(entries)
        conflict = log.find_conflict(entries)
        if conflict:
            self._truncate_and_append(entries[conflict - entries[0].index :])
        new_commit = min(m.commit, last_new)
        log.committed = max(log.committed, new_commit)
        response = AppendEntriesResponse(
            self.id, m.sender, self.term, True, max(last_new, log.committed), round=m.round
        )
        self._send_after_persist(response)

    def _check_committed_prefix(self, m: AppendEntries) -> None:
        log = self.log
        committed = log.committed
        ours = log.term(m.prev_index)
        if ours is not None and ours != m.prev_term:
            raise CommittedEntryConflictError(m.prev_index, ours, m.prev_term, m.sender)
        for entry in m.entries:
            if entry.index > committed:
                break
            ours = log.term(entry.index)
            if ours is not None and ours != entry.term:
                raise CommittedEntryConflictError(entry.index, ours, entry.term, m.sender)

    def _truncate_and_append(self, entries: Sequence[Entry]) -> None:
        first = entries[0].index
        self.log.truncate_and_append(entries)
        # A config entry takes effect when it enters the log and is undone when it
        # leaves it (§6).
        while self._config_history and self._config_history[-1][0] >= first:
            self._config_history.pop()
        self._record_configs(entries)

    def _append_local(self, entries: list[Entry]) -> None:
        self.log.append(entries)
        self._record_configs(entries)
        if self.role is Role.LEADER:
            self._dirty.update(self.progress)

    def _record_configs(self, entries: Sequence[Entry]) -> None:
        changed = False
        for entry in entries:
            if entry.type == ENTRY_CONFIG:
                self._config_history.append((entry.index, Membership.decode(entry.data)[0]))
                changed = True
        if changed and self.role is Role.LEADER:
            self._sync_progress_with_membership()

    def _sync_progress_with_membership(self) -> None:
        members = self.membership.members - {self.id}
        for peer in list(self.progress):
            if peer not in members:
                del self.progress[peer]
                self._dirty.discard(peer)
        for peer in members:
            if peer not in self.progress:
                self.progress[peer] = Progress(self.log.last_index + 1)
                self._dirty.add(peer)

    def _handle_append_response(self, m: AppendEntriesResponse) -> None:
        if self.role is not Role.LEADER:
            return
        progress = self.progress.get(m.sender)
        if progress is None:
            return
        progress.recent_active = True
        if m.round > progress.acked_round:
            progress.acked_round = m.round
            self._release_confirmed_reads()
        if not m.success:
            self._handle_reject(m.sender, progress, m)
            return
        if progress.update(m.index):
            if progress.state is ProgressState.PROBE:
                progress.become_replicate()
            self._maybe_commit()
            if m.sender == self._lead_transferee and progress.match == self.log.last_index:
                self._messages.append(TimeoutNow(self.id, m.sender, self.term))
            self._dirty.add(m.sender)
        elif progress.state is ProgressState.PROBE:
            # An answer to a heartbeat or a probe: the follower is reachable, probe again.
            progress.probe_sent = False
            if progress.match < self.log.last_index:
                self._dirty.add(m.sender)
        elif progress.is_paused(self.config.max_inflight_messages, self.config.max_inflight_bytes):
            # The follower answers but the window stays full: messages were lost.
            progress.free_first()
            self._dirty.add(m.sender)
        elif progress.match < self.log.last_index and not progress.nudged:
            # Entries were sent but not acknowledged: the acks (or the entries) may be
            # lost. An empty append at the end of what was sent makes the follower say
            # whether it has them; a gap makes it reject, and the leader probes.
            progress.nudged = True
            prev_term = self.log.term(progress.next - 1)
            if prev_term is not None:
                self._send_entries(
                    m.sender, progress, progress.next - 1, prev_term, self.log.committed, []
                )

    def _handle_reject(self, peer: int, progress: Progress, m: AppendEntriesResponse) -> None:
        if m.hint_term == 0 and m.hint_index <= progress.match:
            # The follower's log now ends before what it once acknowledged: its disk was
            # replaced (it rejoined after losing its data). Start over from its real end.
            progress.match = m.hint_index - 1
            progress.become_probe()
            self._dirty.add(peer)
            return
        if progress.state is ProgressState.REPLICATE and m.index <= progress.match:
            return  # answer to a message older than what we know matches
        if progress.state is ProgressState.PROBE and m.index != progress.next - 1:
            return  # answer to an older probe
        if progress.state is ProgressState.SNAPSHOT:
            return
        if m.hint_term == 0:
            candidate = m.hint_index
        else:
            # Skip the follower's whole conflicting term at once, or land just after our
            # own last entry of that term (§5.3, "the protocol can be optimized").
            ours = self.log.last_index_of_term(m.hint_term)
            candidate = ours + 1 if ours else m.hint_index
        next_index = max(progress.match + 1, min(candidate, m.index))
        progress.become_probe()
        progress.next = next_index
        self._dirty.add(peer)

    def _maybe_commit(self) -> None:
        values = {peer: pr.match for peer, pr in self.progress.items()}
        values[self.id] = self.log.persisted
        index = self.membership.committed_value(values)
        if index <= self.log.committed:
            return
        # §5.4.2 / Figure 8: only entries of the current term are committed by counting
        # replicas; earlier ones are committed indirectly.
        if self.log.term(index) != self.term and not self.config.faults.commit_earlier_terms:
            return
        self.log.committed = index
        self._commit_broadcast = True
        if self._reads_awaiting_commit and self._committed_in_term():
            waiting, self._reads_awaiting_commit = self._reads_awaiting_commit, []
            for context, requester in waiting:
                self._leader_read(context, requester)
        self._advance_membership()

    def _advance_membership(self) -> None:
        if self.role is not Role.LEADER or not self._config_history:
            return
        config_index, membership = self._config_history[-1]
        if config_index > self.log.committed:
            return
        if membership.is_joint:
            # §6: once C_old,new is committed, the leader moves on to C_new.
            target = Membership(membership.voters, frozenset(), membership.learners)
            index = self.log.last_index + 1
            self._pending_conf_index = index
            self._append_local([Entry(index, self.term, ENTRY_CONFIG, target.encode())])
        elif self.id not in membership.voters:
            # §6: a leader that is not part of C_new steps down once C_new commits. It
            # hands over at once to a voter that holds its whole log (thesis §3.10), so
            # the cluster need not wait out an election timeout.
            successor = self._up_to_date_voter(membership)
            self._become_follower(self.term, 0)
            if successor:
                self._messages.append(TimeoutNow(self.id, successor, self.term))

    def _up_to_date_voter(self, membership: Membership) -> int:
        for peer in sorted(membership.voters):
            progress = self.progress.get(peer)
            if progress is not None and progress.match == self.log.last_index:
                return peer
        return 0

    def _committed_in_term(self) -> bool:
        return self.log.term(self.log.committed) == self.term

    def _flush(self) -> None:
        if self.role is not Role.LEADER:
            self._dirty.clear()
            self._commit_broadcast = False
            self._round_broadcast_pending = False
            return
        if self._round_broadcast_pending:
            self._round_broadcast_pending = False
            self._broadcast_heartbeat()
        if self._commit_broadcast:
            self._commit_broadcast = False
            self._dirty.update(self.progress)
        # Followers that keep up are sent the same new entries: each run of entries is
        # cut out of the log (and its size summed) once per flush, not once per peer.
        slices: dict[int, tuple[list[Entry], int]] = {}
        for peer in sorted(self._dirty):
            progress = self.progress.get(peer)
            if progress is not None:
                self._send_append(peer, progress, slices)
        self._dirty.clear()

    def _send_append(
        self, peer: int, progress: Progress, slices: dict[int, tuple[list[Entry], int]]
    ) -> None:
        cfg = self.config
        log = self.log
        sent_any = False
        while not progress.is_paused(cfg.max_inflight_messages, cfg.max_inflight_bytes):
            prev_index = progress.next - 1
            prev_term = log.term(prev_index)
            if prev_term is None:
                self._start_snapshot(peer, progress)
                return
            if progress.state is ProgressState.REPLICATE and progress.next > log.last_index:
                if not sent_any and progress.commit_sent < log.committed:
                    # Nothing new to send, but the follower should learn the commit index.
                    self._send_entries(peer, progress, prev_index, prev_term, log.committed, [])
                return
            cut = slices.get(progress.next)
            if cut is None:
                cut = slices[progress.next] = log.slice_sized(
                    progress.next, log.last_index + 1, cfg.max_message_bytes
                )
            entries, size = cut
            self._send_entries(peer, progress, prev_index, prev_term, log.committed, entries)
            progress.sent(prev_index + len(entries), size)
            sent_any = True

    def _send_entries(
        self,
        peer: int,
        progress: Progress,
        prev_index: int,
        prev_term: int,
        commit: int,
        entries: list[Entry],
    ) -> None:
        progress.commit_sent = max(progress.commit_sent, commit)
        self._messages.append(
            AppendEntries(
                self.id, peer, self.term, prev_index, prev_term, commit, entries, self._round
            )
        )

    def _broadcast_heartbeat(self) -> None:
        for peer, progress in sorted(self.progress.items()):
            progress.nudged = False
            if progress.state is ProgressState.SNAPSHOT:
                self._send_snapshot_chunk(peer, progress)  # retransmit a lost chunk
                continue
            prev_term = self.log.term(progress.match)
            if prev_term is None:
                # What the follower matches is compacted here: probe it again (the last
                # probe may be lost), which falls through to a snapshot if need be.
                progress.become_probe()
                self._dirty.add(peer)
                continue
            # Anchor the heartbeat at what is known to match, so it never fails the
            # consistency check, and only promise a commit index the follower holds.
            commit = min(self.log.committed, progress.match)
            self._send_entries(peer, progress, progress.match, prev_term, commit, [])

    # ------------------------------------------------------------------ snapshots

    def _start_snapshot(self, peer: int, progress: Progress) -> None:
        if self._snapshot is None or self._snapshot_reader is None:
            raise AssertionError("log compacted without a saved snapshot")
        progress.become_snapshot(self._snapshot.index)
        self._send_snapshot_chunk(peer, progress)

    def _send_snapshot_chunk(self, peer: int, progress: Progress) -> None:
        meta, reader = self._snapshot, self._snapshot_reader
        if meta is None or reader is None:
            return
        if progress.snapshot_index != meta.index:
            progress.become_snapshot(meta.index)  # a newer snapshot replaced the old one
        offset = progress.snapshot_offset
        data = reader.read(offset, self.config.snapshot_chunk_bytes)
        done = offset + len(data) >= reader.size
        self._messages.append(
            InstallSnapshot(
                self.id,
                peer,
                self.term,
                meta.index,
                meta.term,
                meta.membership.encode(),
                offset,
                reader.size,
                data,
                done,
            )
        )

    def _handle_snapshot_chunk(self, m: InstallSnapshot) -> None:
        if m.snap_index <= self.log.committed:
            # Everything it covers is committed here already.
            self._messages.append(
                InstallSnapshotResponse(
                    self.id, m.sender, self.term, m.snap_index, m.total_size, True, done=True
                )
            )
            return
        incoming = self._incoming
        if m.offset == 0:
            incoming = _IncomingSnapshot(m.snap_index, m.snap_term, m.config, m.total_size, [], 0)
            self._incoming = incoming
        if incoming is None or (incoming.index, incoming.term) != (m.snap_index, m.snap_term):
            self._reply_snapshot(m, 0, success=False)
            return
        if m.offset != incoming.received:
            self._reply_snapshot(m, incoming.received, success=False)
            return
        incoming.chunks.append(m.data)
        incoming.received += len(m.data)
        if not m.done:
            self._reply_snapshot(m, incoming.received, success=True)
            return
        if incoming.received != incoming.total_size:
            self._incoming = None
            self._reply_snapshot(m, 0, success=False)
            return
        self._install_snapshot(incoming)
        self._send_after_persist(
            InstallSnapshotResponse(
                self.id, m.sender, self.term, m.snap_index, incoming.received, True, done=True
            )
        )

    def _reply_snapshot(self, m: InstallSnapshot, offset: int, success: bool) -> None:
        self._messages.append(
            InstallSnapshotResponse(self.id, m.sender, self.term, m.snap_index, offset, success)
        )

    def _install_snapshot(self, incoming: _IncomingSnapshot) -> None:
        """§7: keep a log suffix that follows the snapshot, else discard the log."""
        membership = Membership.decode(incoming.config)[0]
        meta = SnapshotMeta(incoming.index, incoming.term, membership)
        self._incoming = None
        self.log.restore(meta.index, meta.term)
        self._config_history = [(meta.index, membership)]
        self._record_configs(self.log.entries)
        self._snapshot = meta
        self._snapshot_reader = None  # the driver supplies one once the file is saved
        self._install = Snapshot(meta, b"".join(incoming.chunks))

    def _handle_snapshot_response(self, m: InstallSnapshotResponse) -> None:
        if self.role is not Role.LEADER:
            return
        progress = self.progress.get(m.sender)
        if progress is None:
            return
        progress.recent_active = True
        if m.done and m.success:
            progress.update(m.snap_index)
            if progress.state is ProgressState.SNAPSHOT:
                progress.become_probe()
            self._dirty.add(m.sender)
            return
        if progress.state is not ProgressState.SNAPSHOT or m.snap_index != progress.snapshot_index:
            return
        progress.snapshot_offset = m.offset
        self._send_snapshot_chunk(m.sender, progress)

    # ------------------------------------------------------------------ reads

    def _leader_read(self, context: bytes, requester: int) -> None:
        if not self._committed_in_term():
            # Thesis §6.4 step 1: until its no-op commits, the leader does not know the
            # commit index of its term.
            self._reads_awaiting_commit.append((context, requester))
            return
        if not self._round_broadcast_pending:
            self._round += 1
            self._round_broadcast_pending = True
        self._reads.append(_PendingRead(context, self.log.committed, self._round, requester))
        self._release_confirmed_reads()

    def _release_confirmed_reads(self) -> None:
        if not self._reads:
            return
        rounds = {peer: pr.acked_round for peer, pr in self.progress.items()}
        rounds[self.id] = self._round
        confirmed = self.membership.committed_value(rounds)
        while self._reads and self._reads[0].round <= confirmed:
            read = self._reads.popleft()
            if read.requester == self.id:
                self._read_states.append(ReadState(read.context, read.index))
            else:
                self._messages.append(
                    ReadIndexResponse(
                        self.id, read.requester, self.term, read.context, read.index, True
                    )
                )

    def _fail_read(self, context: bytes, requester: int) -> None:
        if requester == self.id:
            self._dropped_reads.append(context)
        else:
            self._messages.append(
                ReadIndexResponse(self.id, requester, self.term, context, 0, False)
            )

    # ------------------------------------------------------------------ helpers

    def _check_can_propose(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader_id)
        if self._lead_transferee:
            raise ProposalDroppedError("leadership transfer in progress")

    def _handle_forwarded_proposal(self, m: Propose) -> None:
        try:
            index = self.propose(m.commands)
        except (NotLeaderError, ProposalDroppedError):
            index = 0
        self._messages.append(
            ProposeResponse(self.id, m.sender, self.term, m.batch_id, index, index > 0)
        )

    def _send_after_persist(self, message: RaftMessage) -> None:
        if self.config.faults.ack_before_persist:
            self._messages.append(message)
        else:
            self._persisted_messages.append(message)
