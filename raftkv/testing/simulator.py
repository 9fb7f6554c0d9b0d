"""Deterministic simulation of whole raftkv clusters: cores, state machines, disks, network.

One seed fixes everything: latencies, losses, crashes, partitions, membership changes
and client operations all come from one ``random.Random(seed)``, and nothing reads the
wall clock, so a failing seed replays exactly (``python -m raftkv.testing.simulate
--seed N``).

After every step the safety checker verifies the five properties of Raft's Figure 3
(plus monotonic commit). At the end, faults heal and the cluster must elect a leader
within a bounded number of ticks, every member must converge to the same state hash,
and the clients' history must be linearizable.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from raftkv.kv import Delete, KVStateMachine, Put, Status, encode_command
from raftkv.kv.results import ApplyResult
from raftkv.raft.config import RaftConfig, UnsafeFaults
from raftkv.raft.core import NotLeaderError, ProposalDroppedError, RaftCore, Role
from raftkv.raft.membership import Membership
from raftkv.raft.ready import HardState, Ready, Snapshot
from raftkv.testing.history import History, Operation, OpKind
from raftkv.testing.history import Status as HistoryStatus
from raftkv.testing.linearizability import check
from raftkv.testing.safety import SafetyChecker, SafetyViolation
from raftkv.testing.sim_network import LinkFaults, Network
from raftkv.testing.sim_storage import MemoryStorage
from raftkv_ext.entry import ENTRY_CONFIG, ENTRY_NORMAL, Entry

if TYPE_CHECKING:
    from raftkv_ext.codec import RaftMessage

NEMESES = (
    "crash",
    "crash_leader",
    "restart_all",
    "partition",
    "one_way",
    "isolate_leader",
    "bridge",
    "lossy",
    "membership",
    "transfer",
)


class LivenessFailure(AssertionError):
    """After every fault healed, the cluster did not elect a leader or converge in time."""


class LinearizabilityFailure(AssertionError):
    """The clients' history has no valid linearization."""


@dataclass(frozen=True, slots=True)
class SimOptions:
    nodes: int = 3
    max_nodes: int = 5
    ticks: int = 600
    clients: int = 4
    keys: int = 3
    nemeses: tuple[str, ...] = NEMESES
    nemesis_interval: tuple[int, int] = (15, 60)
    snapshot_every: int = 30
    snapshot_retain: int = 8
    op_timeout: int = 80
    # Ticks a sync takes; acks wait for it, so longer syncs widen crash windows.
    disk_latency: tuple[int, int] = (0, 2)
    max_message_bytes: int = 2048
    converge_ticks: int = 1500
    wire_codec: bool = True
    check_linearizability: bool = True
    faults: UnsafeFaults = field(default_factory=UnsafeFaults)


@dataclass(slots=True)
class SimStats:
    ops: int = 0
    ok: int = 0
    failed: int = 0
    unknown: int = 0
    elections: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    committed: int = 0
    messages: int = 0
    dropped: int = 0
    snapshots_sent: int = 0
    final_members: tuple[int, ...] = ()


@dataclass(slots=True)
class SimResult:
    seed: int
    stats: SimStats
    history: History


class _BytesReader:
    """Serves a snapshot held in memory to the core, which sends it in chunks."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def size(self) -> int:
        return len(self._data)

    def read(self, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]


@dataclass(slots=True)
class _PendingSync:
    due: int
    messages: list[RaftMessage]
    last: tuple[int, int] | None
    snapshot: Snapshot | None


class SimNode:
    """One node: core, state machine and disk, wired as the real driver wires them."""

    def __init__(self, node_id: int, cluster: Cluster) -> None:
        self.id = node_id
        self.cluster = cluster
        self.storage = MemoryStorage()
        self.core: RaftCore | None = None
        self.sm = KVStateMachine()
        self._syncs: deque[_PendingSync] = deque()
        self._writes: dict[int, tuple[int, int]] = {}  # index -> (term, op id)
        self._batches: dict[int, int] = {}  # forwarded batch id -> op id
        self._reads: dict[bytes, int] = {}  # context -> op id
        self._read_waits: list[tuple[int, bytes]] = []
        self._last_snapshot = 0
        self._led_term = 0

    @property
    def alive(self) -> bool:
        return self.core is not None

    def has_state(self) -> bool:
        """Whether this node was ever part of the cluster (it has something on disk)."""
        state, _ = self.storage.initial_state()
        return bool(state.entries) or state.snapshot is not None or state.hard_state.term > 0

    def start(self) -> None:
        state, snapshot = self.storage.initial_state()
        self.sm = KVStateMachine()
        if snapshot is not None:
            self.sm.restore(snapshot.data)
        config = RaftConfig(
            node_id=self.id,
            election_ticks=10,
            heartbeat_ticks=2,
            max_inflight_messages=4,
            max_message_bytes=self.cluster.options.max_message_bytes,
            snapshot_chunk_bytes=512,
            faults=self.cluster.options.faults,
        )
        rng = random.Random(self.cluster.rng.getrandbits(64))
        self.core = RaftCore(config, rng, state)
        if snapshot is not None:
            self.core.snapshot_saved(snapshot.meta, _BytesReader(snapshot.data))
            self._last_snapshot = snapshot.meta.index
        self.cluster.checker.restarted(self.id)
        self._syncs.clear()

    def crash(self) -> None:
        self.storage.crash(self.cluster.rng)
        self.core = None
        self._syncs.clear()
        for _term, op_id in self._writes.values():
            self.cluster.resolve_unknown(op_id)
        for op_id in self._batches.values():
            self.cluster.resolve_unknown(op_id)
        for op_id in self._reads.values():
            self.cluster.resolve_failed(op_id)
        self._writes.clear()
        self._batches.clear()
        self._reads.clear()
        self._read_waits.clear()

    # -------------------------------------------------------------- client requests

    def submit_write(self, op_id: int, command: bytes) -> None:
        core = self._core()
        try:
            index = core.propose([command])
        except ProposalDroppedError:
            self.cluster.resolve_failed(op_id)
        except NotLeaderError as exc:
            if exc.leader_id:
                core.forward(op_id, [command])
                self._batches[op_id] = op_id
            else:
                self.cluster.resolve_failed(op_id)
        else:
            self._writes[index] = (core.term, op_id)
        self.process()

    def submit_read(self, op_id: int) -> None:
        context = op_id.to_bytes(8, "little")
        self._reads[context] = op_id
        self._core().read_index(context)
        self.process()

    # -------------------------------------------------------------- driver loop

    def _core(self) -> RaftCore:
        assert self.core is not None, f"node {self.id} is down"
        return self.core

    def step(self, message: RaftMessage) -> None:
        self._core().step(message)
        self.process()

    def tick(self) -> None:
        self._core().tick()
        self.process()

    def complete_syncs(self, now: int) -> None:
        while self.core is not None and self._syncs and self._syncs[0].due <= now:
            sync = self._syncs.popleft()
            self.storage.sync()
            for message in sync.messages:
                self.cluster.network.send(now, message)
            if sync.snapshot is not None:
                meta, data = sync.snapshot.meta, sync.snapshot.data
                self.core.snapshot_saved(meta, _BytesReader(data))
                self._last_snapshot = meta.index
            if sync.last is not None:
                self.core.on_persisted(*sync.last)
            self.process()

    def process(self) -> None:
        core = self.core
        if core is None:
            return
        cluster = self.cluster
        while core.has_ready():
            self._handle_ready(core, core.ready())
        if core.role is Role.LEADER and self._led_term != core.term:
            self._led_term = core.term
            cluster.stats.elections += 1
        cluster.checker.check(self.id, core)

    def _handle_ready(self, core: RaftCore, ready: Ready) -> None:
        cluster = self.cluster
        now = cluster.now
        cluster.checker.appended(self.id, core, ready.entries)
        for message in ready.messages:
            cluster.network.send(now, message)
        if ready.snapshot is not None:
            self.storage.write_snapshot(ready.snapshot)
            self.sm.restore(ready.snapshot.data)
            cluster.stats.snapshots_sent += 1
            for index in [i for i in self._writes if i <= ready.snapshot.meta.index]:
                cluster.resolve_unknown(self._writes.pop(index)[1])
        if ready.hard_state is not None:
            self.storage.write_hard_state(ready.hard_state)
        self.storage.write_entries(ready.entries)
        last = (ready.entries[-1].index, ready.entries[-1].term) if ready.entries else None
        if ready.hard_state or ready.entries or ready.snapshot or ready.persisted_messages:
            due = now + cluster.rng.randint(*cluster.options.disk_latency)
            if self._syncs:
                due = max(due, self._syncs[-1].due)
            self._syncs.append(_PendingSync(due, ready.persisted_messages, last, ready.snapshot))
        self._apply(ready.committed)
        for read in ready.reads:
            self._read_waits.append((read.index, read.context))
        for context in ready.dropped_reads:
            op_id = self._reads.pop(context, None)
            if op_id is not None:
                cluster.resolve_failed(op_id)
        for result in ready.forwarded:
            op_id = self._batches.pop(result.batch_id, None)
            if op_id is None:
                continue
            if result.success:
                self._writes[result.index] = (result.term, op_id)
            else:
                # A duplicate of the batch may still have been appended: unknown.
                cluster.resolve_unknown(op_id)
        self._serve_reads()
        self._maybe_snapshot(core)

    def _apply(self, entries: list[Entry]) -> None:
        if not entries:
            return
        self.cluster.checker.applied(self.id, entries)
        for entry in entries:
            result: ApplyResult | None = None
            if entry.type == ENTRY_NORMAL:
                result = self.sm.apply(entry.index, entry.data)
            else:
                self.sm.advance(entry.index)
            waiting = self._writes.pop(entry.index, None)
            if waiting is None:
                continue
            term, op_id = waiting
            if entry.term == term and result is not None:
                self.cluster.resolve_write(op_id, result)
            else:
                # Another entry won this index; ours may live on at another index
                # (a duplicated forward), so the outcome is unknown rather than failed.
                self.cluster.resolve_unknown(op_id)

    def _serve_reads(self) -> None:
        if not self._read_waits:
            return
        applied = self.sm.applied_index
        remaining = []
        for index, context in self._read_waits:
            if index > applied:
                remaining.append((index, context))
                continue
            op_id = self._reads.pop(context, None)
            if op_id is not None:
                self.cluster.resolve_read(op_id, self.sm)
        self._read_waits = remaining

    def _maybe_snapshot(self, core: RaftCore) -> None:
        applied = self.sm.applied_index
        if applied - self._last_snapshot < self.cluster.options.snapshot_every:
            return
        meta = core.snapshot_meta(applied)
        data = self.sm.snapshot()
        self.storage.save_snapshot_now(Snapshot(meta, data))
        core.snapshot_saved(meta, _BytesReader(data))
        self._last_snapshot = applied
        compact_to = max(core.log.boundary_index, applied - self.cluster.options.snapshot_retain)
        boundary_term = core.log.term(compact_to)
        assert boundary_term is not None
        core.compact(compact_to)
        self.storage.compact(compact_to, boundary_term)


@dataclass(slots=True)
class _Client:
    id: int
    session: int = 0  # the client id the state machine knows it by
    seq: int = 0
    op_id: int | None = None
    issued_at: int = 0
    next_at: int = 0
    known: dict[str, tuple[str | None, int]] = field(default_factory=dict)


@dataclass(slots=True)
class _Pending:
    client: _Client
    op: Operation


class Cluster:
    def __init__(self, seed: int, options: SimOptions) -> None:
        self.seed = seed
        self.options = options
        self.rng = random.Random(seed)
        self.now = 0
        self.network = Network(random.Random(self.rng.getrandbits(64)), options.wire_codec)
        self.checker = SafetyChecker()
        self.stats = SimStats()
        self.history = History()
        self.nodes = {i: SimNode(i, self) for i in range(1, options.max_nodes + 1)}
        self._pending: dict[int, _Pending] = {}
        self._clients = [_Client(i) for i in range(1, options.clients + 1)]
        self._events: list[tuple[int, int, Callable[[], None]]] = []
        self._event_seq = 0
        self._value_seq = 0
        self._session_seq = 0
        self._bootstrap()

    # -------------------------------------------------------------- setup

    def _bootstrap(self) -> None:
        voters = range(1, self.options.nodes + 1)
        config = Entry(1, 1, ENTRY_CONFIG, Membership.of(voters).encode())
        for node_id in voters:
            node = self.nodes[node_id]
            node.storage.bootstrap([config], HardState(term=1, vote=0))
            node.start()

    def alive_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.alive]

    def leader(self) -> SimNode | None:
        """The live leader of the highest term, if any."""
        best: SimNode | None = None
        for node in self.alive_nodes():
            core = node.core
            assert core is not None
            if core.role is Role.LEADER and (best is None or core.term > best._core().term):
                best = node
        return best

    # -------------------------------------------------------------- main loop

    def run(self) -> SimResult:
        options = self.options
        next_nemesis = self.rng.randint(*options.nemesis_interval)
        for self.now in range(options.ticks):
            if self.now >= next_nemesis and options.nemeses:
                self._nemesis()
                next_nemesis = self.now + self.rng.randint(*options.nemesis_interval)
            self._step_time(clients_active=True)
        self._heal_everything()
        self._converge()
        self.stats.messages = self.network.sent
        self.stats.dropped = self.network.dropped
        self.stats.committed = self.checker.committed_count
        if options.check_linearizability:
            verdict = check(self.history, timeout_s=120)
            if not verdict.ok:
                raise LinearizabilityFailure(verdict.describe())
        return SimResult(self.seed, self.stats, self.history)

    def _step_time(self, clients_active: bool) -> None:
        now = self.now
        while self._events and self._events[0][0] <= now:
            _, _, action = self._events.pop(0)
            action()
        for message in self.network.due(now):
            node = self.nodes.get(message.recipient)
            if node is not None and node.alive:
                node.step(message)
        for node in self.alive_nodes():
            node.complete_syncs(now)
        self._drive_clients(clients_active)
        for node in self.alive_nodes():
            node.tick()

    def _schedule(self, delay: int, action: Callable[[], None]) -> None:
        self._event_seq += 1
        self._events.append((self.now + delay, self._event_seq, action))
        self._events.sort(key=lambda event: (event[0], event[1]))

    # -------------------------------------------------------------- clients

    def _drive_clients(self, active: bool) -> None:
        for client in self._clients:
            if client.op_id is not None:
                if self.now - client.issued_at >= self.options.op_timeout:
                    self.resolve_unknown(client.op_id)
                continue
            if active and self.now >= client.next_at:
                self._issue(client)

    def _issue(self, client: _Client) -> None:
        nodes = self.alive_nodes()
        if not nodes:
            return
        leader = self.leader()
        node = leader if leader is not None and self.rng.random() < 0.6 else self.rng.choice(nodes)
        key = f"k{self.rng.randrange(self.options.keys)}"
        roll = self.rng.random()
        if roll < 0.4:
            op = Operation.get(key)
            op_id = self._invoke(client, op)
            node.submit_read(op_id)
            return
        if client.session == 0:
            # A new session: a fresh client id, numbered from seq 1 again.
            self._session_seq += 1
            client.session = self._session_seq
            client.seq = 0
        client.seq += 1
        # Sequential client: every earlier request was answered or abandoned for good.
        tag = {"client_id": client.session, "seq": client.seq, "first_incomplete": client.seq}
        self._value_seq += 1
        value = f"v{self._value_seq}"
        if roll < 0.7:
            op = Operation.put(key, value)
            command = encode_command(Put(key.encode(), value.encode(), None, **tag))
        elif roll < 0.9 and key in client.known:
            expected, revision = client.known[key]
            op = Operation.cas(key, expected, value)
            prev = revision if expected is not None else 0
            command = encode_command(Put(key.encode(), value.encode(), prev, **tag))
        else:
            op = Operation.delete(key)
            command = encode_command(Delete(key.encode(), None, **tag))
        op_id = self._invoke(client, op)
        node.submit_write(op_id, command)

    def _invoke(self, client: _Client, op: Operation) -> int:
        op_id = self.history.invoke(client.id, op)
        self._pending[op_id] = _Pending(client, op)
        client.op_id = op_id
        client.issued_at = self.now
        self.stats.ops += 1
        return op_id

    def _finish(self, op_id: int) -> _Pending | None:
        pending = self._pending.pop(op_id, None)
        if pending is None:
            return None  # already timed out or resolved
        pending.client.op_id = None
        pending.client.next_at = self.now + self.rng.randint(0, 3)
        return pending

    def resolve_write(self, op_id: int, result: ApplyResult) -> None:
        pending = self._finish(op_id)
        if pending is None:
            return
        op = pending.op
        if result.status == Status.BAD_COMMAND:
            raise SafetyViolation(f"write {op} answered {result.status.name}: {result.error}")
        if result.status == Status.STALE:
            # The state machine no longer knows this session (its first request was
            # lost): the command was not applied, and the client must start over.
            self.history.fail(op_id)
            self.stats.failed += 1
            pending.client.session = 0
            return
        status = {
            Status.OK: HistoryStatus.OK,
            Status.NOT_FOUND: HistoryStatus.NOT_FOUND,
            Status.CONFLICT: HistoryStatus.CONFLICT,
        }[result.status]
        self.history.complete(op_id, status)
        self.stats.ok += 1
        if result.status == Status.OK:
            written = op.value if op.kind is not OpKind.DELETE else None
            pending.client.known[op.key] = (written, result.revision)

    def resolve_read(self, op_id: int, sm: KVStateMachine) -> None:
        pending = self._finish(op_id)
        if pending is None:
            return
        key = pending.op.key
        stored = sm.get(key.encode())
        value = stored.value.decode() if stored is not None else None
        self.history.complete(op_id, value)
        self.stats.ok += 1
        pending.client.known[key] = (value, stored.mod_revision if stored else 0)

    def resolve_failed(self, op_id: int) -> None:
        if self._finish(op_id) is not None:
            self.history.fail(op_id)
            self.stats.failed += 1

    def resolve_unknown(self, op_id: int) -> None:
        pending = self._finish(op_id)
        if pending is None:
            return
        if pending.op.is_read:
            self.history.fail(op_id)  # a read has no effect: it simply did not happen
            self.stats.failed += 1
        else:
            self.history.unknown(op_id)
            self.stats.unknown += 1

    # -------------------------------------------------------------- faults

    def _count(self, fault: str) -> None:
        self.stats.faults[fault] = self.stats.faults.get(fault, 0) + 1

    def _nemesis(self) -> None:
        fault = self.rng.choice(self.options.nemeses)
        rng = self.rng
        alive = self.alive_nodes()
        leader = self.leader()
        if fault in ("crash", "crash_leader"):
            victim = leader if fault == "crash_leader" else (rng.choice(alive) if alive else None)
            if victim is None or len(alive) <= 1:
                return
            victim.crash()
            self._schedule(rng.randint(5, 60), victim.start)
        elif fault == "restart_all":
            for node in alive:
                node.crash()
            for node in alive:
                self._schedule(rng.randint(1, 20), node.start)
        elif fault == "partition":
            members = sorted(self.nodes)
            rng.shuffle(members)
            cut = rng.randint(1, len(members) - 1)
            self.network.partition([set(members[:cut]), set(members[cut:])])
            self._schedule(rng.randint(10, 120), self.network.heal)
        elif fault == "one_way":
            members = sorted(self.nodes)
            senders = set(rng.sample(members, rng.randint(1, 2)))
            self.network.block_one_way(senders, set(members) - senders)
            self._schedule(rng.randint(10, 120), self.network.heal)
        elif fault == "isolate_leader":
            if leader is None:
                return
            self.network.partition([{leader.id}, set(self.nodes) - {leader.id}])
            self._schedule(rng.randint(20, 120), self.network.heal)
        elif fault == "bridge":
            members = sorted(self.nodes)
            rng.shuffle(members)
            bridge, half = members[0], (len(members) - 1) // 2
            left, right = set(members[1 : 1 + half]), set(members[1 + half :])
            self.network.partition([left | {bridge}, right])
            self.network.blocked -= {(bridge, r) for r in right} | {(r, bridge) for r in right}
            self._schedule(rng.randint(20, 120), self.network.heal)
        elif fault == "lossy":
            self.network.faults = LinkFaults(
                drop=rng.uniform(0.0, 0.3),
                duplicate=rng.uniform(0.0, 0.2),
                min_latency=1,
                max_latency=rng.randint(2, 8),
            )
            self._schedule(rng.randint(20, 150), self.network.heal)
        elif fault == "membership":
            if leader is None or not self._change_membership(leader):
                return
        elif fault == "transfer":
            if leader is None:
                return
            core = leader._core()
            targets = sorted(core.membership.voters - {leader.id})
            if not targets:
                return
            core.transfer_leadership(rng.choice(targets))
            leader.process()
        self._count(fault)

    def _change_membership(self, leader: SimNode) -> bool:
        core = leader._core()
        current = core.membership
        rng = self.rng
        spare = sorted(set(self.nodes) - current.members)
        try:
            if current.learners:
                learner = min(current.learners)
                progress = core.progress.get(learner)
                if progress is None or progress.match < core.committed:
                    return False
                voters = set(current.voters) | {learner}
                # Sometimes replace a voter instead of growing (one joint change).
                if len(voters) > 3 and rng.random() < 0.5:
                    voters.discard(rng.choice(sorted(current.voters)))
                core.change_membership(voters, current.learners - {learner})
            elif spare and len(current.voters) < self.options.max_nodes and rng.random() < 0.6:
                newcomer = self.nodes[rng.choice(spare)]
                if not newcomer.alive:
                    newcomer.start()
                core.change_membership(current.voters, current.learners | {newcomer.id})
            elif len(current.voters) > 2:
                victim = rng.choice(sorted(current.voters))
                core.change_membership(current.voters - {victim}, current.learners)
            else:
                return False
        except ProposalDroppedError:
            return False
        leader.process()
        return True

    def _heal_everything(self) -> None:
        # Run every pending heal and restart now, then make sure nothing is left broken.
        events, self._events = self._events, []
        for _, _, action in events:
            action()
        self.network.heal()
        for node in self.nodes.values():
            if not node.alive and node.has_state():
                node.start()

    # -------------------------------------------------------------- convergence

    def _converge(self) -> None:
        """Faults are healed: a leader must appear and every member converge."""
        deadline = self.now + self.options.converge_ticks
        while True:
            self.now += 1
            if self.now > deadline:
                raise LivenessFailure(self._describe_state("did not converge after healing"))
            self._step_time(clients_active=False)
            if self._converged():
                self.stats.final_members = tuple(sorted(self._leader_core().membership.members))
                return

    def _leader_core(self) -> RaftCore:
        leader = self.leader()
        assert leader is not None
        return leader._core()

    def _converged(self) -> bool:
        if self._pending or self._events:
            return False
        leader = self.leader()
        if leader is None:
            return False
        core = leader._core()
        if core.committed != core.last_index or core.membership.is_joint:
            return False
        hashes = set()
        for member in core.membership.members:
            node = self.nodes[member]
            if not node.alive or node.sm.applied_index != core.committed:
                return False
            hashes.add(node.sm.state_hash())
        if len(hashes) != 1:
            raise SafetyViolation(f"replicas at the same index disagree: {hashes}")
        return True

    def _describe_state(self, reason: str) -> str:
        lines = [f"{reason} (seed {self.seed}, tick {self.now})"]
        for node in self.nodes.values():
            core = node.core
            if core is None:
                lines.append(f"  node {node.id}: down")
                continue
            lines.append(
                f"  node {node.id}: {core.role.value} term={core.term} leader={core.leader_id} "
                f"commit={core.committed} last={core.last_index} applied={node.sm.applied_index} "
                f"members=({core.membership})"
            )
            if core.role is Role.LEADER:
                lines.append(f"    progress: {core.progress} snapshot={core.snapshot_meta_latest}")
        return "\n".join(lines)


def run_simulation(seed: int, options: SimOptions | None = None) -> SimResult:
    """Run one seeded simulation; raises SafetyViolation, LivenessFailure or
    LinearizabilityFailure when a check fails."""
    return Cluster(seed, options or SimOptions()).run()
