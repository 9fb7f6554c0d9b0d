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

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from raftkv.kv import KVStateMachine
from raftkv.node.driver import Driver, DriverSettings
from raftkv.node.node_config import NodeAddress
from raftkv.node.node_snapshot import (
    addresses_in_log,
    decode_addresses,
    decode_node_snapshot,
    encode_addresses,
    encode_node_snapshot,
)
from raftkv.node.snapshot_record import SnapshotRecord
from raftkv.raft.config import RaftConfig, UnsafeFaults
from raftkv.raft.core import RaftCore, Role
from raftkv.raft.membership import Membership
from raftkv.raft.ready import HardState, Ready, Snapshot, SnapshotMeta
from raftkv.testing.history import History, Operation, OpKind
from raftkv.testing.history import Status as HistoryStatus
from raftkv.testing.linearizability import check
from raftkv.testing.safety import SafetyChecker, SafetyViolation
from raftkv.testing.sim_leases import LeaseSettings, LeaseWorkload
from raftkv.testing.sim_network import LinkFaults, Network
from raftkv.testing.sim_storage import MemoryStorage, memory_snapshot_record
from raftkv.wire.protocol import Flag, Op, ReplyStatus, decode_key_value
from raftkv_ext.codec import ClientReply, ClientRequest
from raftkv_ext.entry import ENTRY_CONFIG, Entry

if TYPE_CHECKING:
    from raftkv_ext.codec import RaftMessage

# The driver's log lines would drown a campaign's output; its warnings still show.
_LOGGER = logging.getLogger("raftkv.simulator")

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


ELECTION_TICKS = 10
"""Every simulated core's ``election_ticks``."""


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
    lease_checkpoint_ticks: float = 25.0
    # Lease clients alongside the others, and the lease checks (sim_leases.py).
    leases: bool = False
    lease_clients: int = 2
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


def sim_address(node_id: int) -> NodeAddress:
    """A made-up address for the configuration entries (nothing listens there)."""
    return NodeAddress(node_id, f"127.0.0.1:{8000 + node_id}", f"127.0.0.1:{9000 + node_id}")


class SimNode:
    """One node: the production driver (raftkv/node/driver.py) around a core, with a
    state machine, a simulated disk and the simulated network as its host."""

    def __init__(self, node_id: int, cluster: Cluster) -> None:
        self.id = node_id
        self.cluster = cluster
        self.storage = MemoryStorage()
        self.driver: Driver | None = None
        self.sm = cluster.new_state_machine()
        self._addresses: dict[int, NodeAddress] = {}
        self._sync_due: int | None = None
        # What the running sync covers: the writes made before it began.
        self._sync_mark = 0
        self._snapshot_due: tuple[int, SnapshotMeta, bytes] | None = None
        # Requests this incarnation was given and has not answered: op id -> is a read.
        self._in_flight: dict[int, bool] = {}
        self._led_term = 0

    @property
    def core(self) -> RaftCore | None:
        return self.driver.core if self.driver is not None else None

    @property
    def alive(self) -> bool:
        return self.driver is not None

    def has_state(self) -> bool:
        """Whether this node was ever part of the cluster (it has something on disk)."""
        state, _ = self.storage.initial_state()
        return bool(state.entries) or state.snapshot is not None or state.hard_state.term > 0

    def start(self) -> None:
        state, snapshot = self.storage.initial_state()
        self.sm = self.cluster.new_state_machine()
        addresses: dict[int, NodeAddress] = {}
        latest: SnapshotRecord | None = None
        if snapshot is not None:
            addresses, machine_state = decode_node_snapshot(snapshot.data)
            self.sm.restore(machine_state)
            latest = memory_snapshot_record(snapshot)
        self._addresses = addresses_in_log(state.entries, state.boundary_index, addresses)
        options = self.cluster.options
        config = RaftConfig(
            node_id=self.id,
            election_ticks=ELECTION_TICKS,
            heartbeat_ticks=2,
            max_inflight_messages=4,
            max_message_bytes=options.max_message_bytes,
            snapshot_chunk_bytes=512,
            faults=options.faults,
        )
        rng = random.Random(self.cluster.rng.getrandbits(64))
        core = RaftCore(config, rng, state)
        settings = DriverSettings(
            node_id=self.id,
            # The driver answers before the simulated client gives up on its own.
            request_timeout_s=float(options.op_timeout - 1),
            snapshot_entries=options.snapshot_every,
            snapshot_log_ratio=0.0,
            snapshot_retain=options.snapshot_retain,
            # Like every write here, the hard state is durable once synced.
            hard_state_durable_at_once=False,
            # One tick is one of the driver's seconds here: leases count in ticks.
            election_timeout_s=2.0 * config.election_ticks,
            lease_checkpoint_interval_s=options.lease_checkpoint_ticks,
        )
        self.driver = Driver(
            core,
            self.sm,
            self,
            settings,
            random.Random(self.cluster.rng.getrandbits(64)),
            latest_snapshot=latest,
            observer=self._observe,
            logger=_LOGGER,
        )
        self._sync_due = None
        self._snapshot_due = None
        self.cluster.checker.restarted(self.id)

    def start_if_down(self) -> None:
        """A restart scheduled at a crash. The node may be up again by then (the
        membership nemesis starts a spare node it adds), and starting it a second time
        would orphan the requests its running incarnation holds, which then look
        unanswered (seed 100808 with --leases did exactly that)."""
        if not self.alive:
            self.start()

    def crash(self) -> None:
        self.storage.crash(self.cluster.rng)
        self.driver = None
        self._sync_due = None
        self._snapshot_due = None
        in_flight, self._in_flight = self._in_flight, {}
        for op_id, is_read in in_flight.items():
            if is_read:
                self.cluster.resolve_failed(op_id)
            else:
                self.cluster.resolve_unknown(op_id)

    # -------------------------------------------------------------- requests

    def submit(self, op_id: int, request: ClientRequest, is_read: bool) -> None:
        """A client's (or the nemesis's, with op id 0) request, answered through the
        driver exactly as kvnode answers its workers."""
        driver = self._driver()
        if op_id:
            self._in_flight[op_id] = is_read

        def answered(reply: ClientReply) -> None:
            if not op_id:
                return  # the nemesis does not wait for its operator requests
            if self._in_flight.pop(op_id, None) is None:
                raise SafetyViolation(f"node {self.id} answered request {op_id} twice")
            self.cluster.resolve_reply(op_id, request, reply)

        driver.submit(request, answered, float(self.cluster.now))
        self.process()

    def holds(self, op_id: int) -> bool:
        """Whether this incarnation was given ``op_id`` and has not answered it."""
        return op_id in self._in_flight

    # -------------------------------------------------------------- driver loop

    def _driver(self) -> Driver:
        assert self.driver is not None, f"node {self.id} is down"
        return self.driver

    def _core(self) -> RaftCore:
        return self._driver().core

    def step(self, message: RaftMessage) -> None:
        self._driver().step([message])
        self.process()

    def tick(self) -> None:
        self._driver().tick(float(self.cluster.now))
        self.process()

    def complete_disk_work(self, now: int) -> None:
        """Finish the sync and the snapshot whose time has come."""
        if self.driver is not None and self._sync_due is not None and self._sync_due <= now:
            self._sync_due = None
            self.storage.sync(self._sync_mark)
            self.driver.synced()
            self.process()
        if self.driver is not None and self._snapshot_due is not None:
            due, meta, data = self._snapshot_due
            if due <= now:
                self._snapshot_due = None
                snapshot = Snapshot(meta, data)
                self.storage.save_snapshot_now(snapshot)
                self.driver.snapshot_taken(memory_snapshot_record(snapshot))
                self.process()

    def process(self) -> None:
        driver = self.driver
        if driver is None:
            return
        driver.process(float(self.cluster.now))
        core = driver.core
        if core.role is Role.LEADER and self._led_term != core.term:
            self._led_term = core.term
            self.cluster.stats.elections += 1
        self.cluster.checker.check(self.id, core)

    def _observe(self, ready: Ready) -> None:
        cluster = self.cluster
        core = self._core()
        cluster.checker.appended(self.id, core, ready.entries)
        if ready.committed:
            cluster.checker.applied(self.id, ready.committed)
        if ready.snapshot is not None:
            cluster.stats.snapshots_sent += 1

    # -------------------------------------------------------------- DriverHost

    @property
    def addresses(self) -> Mapping[int, NodeAddress]:
        return self._addresses

    @property
    def cluster_id(self) -> int:
        return 1

    def send(self, messages: list[RaftMessage]) -> None:
        network, now = self.cluster.network, self.cluster.now
        for message in messages:
            network.send(now, message)

    def save_hard_state(self, state: HardState) -> None:
        self.storage.write_hard_state(state)

    def append(self, entries: list[Entry]) -> None:
        self.storage.write_entries(entries)

    def start_sync(self) -> None:
        cluster = self.cluster
        self._sync_mark = self.storage.mark()
        self._sync_due = cluster.now + cluster.rng.randint(*cluster.options.disk_latency)

    def install_snapshot(self, snapshot: Snapshot) -> SnapshotRecord:
        # Saved and synced before the core hears of it, as kvnode does.
        self.storage.write_snapshot(snapshot)
        self.storage.sync()
        addresses, machine_state = decode_node_snapshot(snapshot.data)
        self.sm.restore(machine_state)
        if addresses:
            self._addresses = addresses
        return memory_snapshot_record(snapshot)

    def start_snapshot(self, meta: SnapshotMeta) -> None:
        # Serialized now, as kvnode's forked child sees the state at the fork; written
        # and adopted a little later, as the child and the file check take time.
        data = encode_node_snapshot(self._addresses, self.sm.snapshot())
        cluster = self.cluster
        due = cluster.now + cluster.rng.randint(*cluster.options.disk_latency)
        self._snapshot_due = (due, meta, data)

    def compact_log(self, index: int, term: int) -> None:
        self.storage.compact(index, term)

    def config_applied(self, entry: Entry, membership: Membership, context: bytes) -> None:
        if context:
            self._addresses = decode_addresses(context)

    def joined(self) -> None:
        pass  # a simulated node never joins with a wiped disk

    def leader_changed(self, leader_id: int, term: int) -> None:
        pass  # elections are counted from the roles seen (process)

    def apply_timed(self, seconds: float) -> None:
        pass  # virtual time: nothing to measure


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
        self.leases: LeaseWorkload | None = None
        if options.leases:
            settings = LeaseSettings(
                clients=options.lease_clients,
                op_timeout=options.op_timeout,
                election_timeout=2 * ELECTION_TICKS,  # the drivers' election_timeout_s
            )
            self.leases = LeaseWorkload(self, settings)
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
        addresses = encode_addresses({i: sim_address(i) for i in voters})
        config = Entry(1, 1, ENTRY_CONFIG, Membership.of(voters).encode(addresses))
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
        if self.leases is not None:
            self.leases.finish()
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
            node.complete_disk_work(now)
        self._drive_clients(clients_active)
        if self.leases is not None:
            self.leases.drive(clients_active)
        for node in self.alive_nodes():
            node.tick()

    def idle_tick(self) -> None:
        """One more tick, without faults and without new client requests."""
        self.now += 1
        self._step_time(clients_active=False)

    def new_state_machine(self) -> KVStateMachine:
        """A node's state machine (one the lease checks watch, when they run)."""
        if self.leases is not None:
            return self.leases.new_state_machine()
        return KVStateMachine()

    def _schedule(self, delay: int, action: Callable[[], None]) -> None:
        self._event_seq += 1
        self._events.append((self.now + delay, self._event_seq, action))
        self._events.sort(key=lambda event: (event[0], event[1]))

    # -------------------------------------------------------------- clients

    def _drive_clients(self, active: bool) -> None:
        for client in self._clients:
            if client.op_id is not None:
                if self.now - client.issued_at >= self.options.op_timeout:
                    self.check_answered(client.op_id)
                    self.resolve_unknown(client.op_id)
                continue
            if active and self.now >= client.next_at:
                self._issue(client)

    def check_answered(self, op_id: int) -> None:
        """The driver answers every request by its deadline, a tick before the client
        gives up: one still waiting in a live node was lost by the driver."""
        for node in self.alive_nodes():
            if node.holds(op_id):
                raise LivenessFailure(
                    self._describe_state(f"node {node.id} never answered request {op_id}")
                )

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
            node.submit(op_id, ClientRequest(op_id, Op.GET, key.encode()), is_read=True)
            return
        if client.session == 0:
            # A new session: a fresh client id, numbered from seq 1 again.
            self._session_seq += 1
            client.session = self._session_seq
            client.seq = 0
        client.seq += 1
        self._value_seq += 1
        value = f"v{self._value_seq}"
        op_code, prev, flags = Op.PUT, 0, 0
        if roll < 0.7:
            op = Operation.put(key, value)
        elif roll < 0.9 and key in client.known:
            expected, revision = client.known[key]
            op = Operation.cas(key, expected, value)
            prev, flags = (revision if expected is not None else 0), Flag.HAS_PREV_REVISION
        else:
            op = Operation.delete(key)
            op_code = Op.DELETE
        op_id = self._invoke(client, op)
        # Sequential client: every earlier request was answered or abandoned for good.
        request = ClientRequest(
            op_id,
            op_code,
            key.encode(),
            value.encode() if op_code == Op.PUT else b"",
            prev_revision=prev,
            flags=flags,
            client_id=client.session,
            seq=client.seq,
            first_incomplete=client.seq,
        )
        node.submit(op_id, request, is_read=False)

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

    def resolve_reply(self, op_id: int, request: ClientRequest, reply: ClientReply) -> None:
        """A node answered: what the answer means for the history is what it means for
        a client of kvnode."""
        if self.leases is not None and self.leases.owns(op_id):
            self.leases.resolve(op_id, reply)
            return
        status = reply.status
        if status == ReplyStatus.TIMEOUT:
            self.resolve_unknown(op_id)
        elif status in (ReplyStatus.UNAVAILABLE, ReplyStatus.NOT_LEADER):
            self.resolve_failed(op_id)
        elif request.op == Op.GET:
            self._resolve_read(op_id, request, reply)
        else:
            self._resolve_write(op_id, reply)

    def _resolve_write(self, op_id: int, reply: ClientReply) -> None:
        pending = self._finish(op_id)
        if pending is None:
            return
        op = pending.op
        status = ReplyStatus(reply.status)
        if status == ReplyStatus.STALE_SESSION:
            # The state machine no longer knows this session (its first request was
            # lost): the command was not applied, and the client must start over.
            self.history.fail(op_id)
            self.stats.failed += 1
            pending.client.session = 0
            return
        outcome = {
            ReplyStatus.OK: HistoryStatus.OK,
            ReplyStatus.NOT_FOUND: HistoryStatus.NOT_FOUND,
            ReplyStatus.CONFLICT: HistoryStatus.CONFLICT,
        }.get(status)
        if outcome is None:
            raise SafetyViolation(f"write {op} answered {status.name}: {reply.body!r}")
        self.history.complete(op_id, outcome)
        self.stats.ok += 1
        if status == ReplyStatus.OK:
            written = op.value if op.kind is not OpKind.DELETE else None
            pending.client.known[op.key] = (written, reply.revision)

    def _resolve_read(self, op_id: int, request: ClientRequest, reply: ClientReply) -> None:
        pending = self._finish(op_id)
        if pending is None:
            return
        if reply.status == ReplyStatus.OK:
            stored = decode_key_value(request.key, reply.body)
            value: str | None = stored.value.decode()
            revision = stored.mod_revision
        elif reply.status == ReplyStatus.NOT_FOUND:
            value, revision = None, 0
        else:
            raise SafetyViolation(f"read answered {ReplyStatus(reply.status).name}")
        self.history.complete(op_id, value)
        self.stats.ok += 1
        pending.client.known[pending.op.key] = (value, revision)

    def resolve_failed(self, op_id: int) -> None:
        if self.leases is not None and self.leases.owns(op_id):
            self.leases.resolve(op_id, None)
            return
        if self._finish(op_id) is not None:
            self.history.fail(op_id)
            self.stats.failed += 1

    def resolve_unknown(self, op_id: int) -> None:
        if self.leases is not None and self.leases.owns(op_id):
            self.leases.resolve(op_id, None)
            return
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
            self._schedule(rng.randint(5, 60), victim.start_if_down)
        elif fault == "restart_all":
            for node in alive:
                node.crash()
            for node in alive:
                self._schedule(rng.randint(1, 20), node.start_if_down)
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
            targets = sorted(leader._core().membership.voters - {leader.id})
            if not targets:
                return
            target = rng.choice(targets)
            leader.submit(0, ClientRequest(0, Op.TRANSFER_LEADER, limit=target), is_read=False)
        self._count(fault)

    def _change_membership(self, leader: SimNode) -> bool:
        """Add a learner, remove a voter or a learner, as an operator would (``kvctl
        members``): the driver's operator actions carry it out, and promote a caught-up
        learner to voter by themselves."""
        current = leader._core().membership
        rng = self.rng
        if current.is_joint:
            return False  # a change is under way; the driver finishes it
        if current.learners:
            if rng.random() < 0.7:
                return False  # give the learner time to catch up and be promoted
            # A learner that does not catch up (it crashed, say) is taken out again.
            learner = rng.choice(sorted(current.learners))
            leader.submit(0, ClientRequest(0, Op.MEMBER_REMOVE, limit=learner), is_read=False)
            return True
        spare = sorted(set(self.nodes) - current.members)
        if spare and len(current.voters) < self.options.max_nodes and rng.random() < 0.6:
            newcomer = self.nodes[rng.choice(spare)]
            if not newcomer.alive:
                newcomer.start()
            spec = sim_address(newcomer.id).to_json() | {"id": newcomer.id}
            request = ClientRequest(0, Op.MEMBER_ADD, value=orjson.dumps(spec))
        elif len(current.voters) > 2:
            victim = rng.choice(sorted(current.voters))
            request = ClientRequest(0, Op.MEMBER_REMOVE, limit=victim)
        else:
            return False
        leader.submit(0, request, is_read=False)
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
