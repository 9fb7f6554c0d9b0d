"""A small deterministic test bed for ``RaftCore``: cores, in-memory disks, a message queue.

Nothing here runs concurrently or reads a clock. Messages wait in ``Cluster.queue`` until a
test delivers them; time moves only when a test ticks nodes. Every node is driven by the
production driver (raftkv/node/driver.py) with a ``Store`` for a disk: it sends
``messages`` at once, writes the hard state and entries, only after the sync sends
``persisted_messages`` and reports ``on_persisted``, and applies what is committed.

A node can be told to hold its disk writes (``Node.hold_persist``) so that tests can look
at the window between "handed to the disk" and "durable"; a crash loses whatever is held.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from raftkv.kv import KVStateMachine
from raftkv.node.driver import Driver, DriverSettings
from raftkv.node.node_config import NodeAddress
from raftkv.node.snapshot_record import SnapshotRecord
from raftkv.raft import (
    ForwardResult,
    HardState,
    InitialState,
    Membership,
    RaftConfig,
    RaftCore,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)
from raftkv.testing.sim_storage import MemorySnapshotReader, memory_snapshot_record
from raftkv_ext import codec
from raftkv_ext.entry import ENTRY_CONFIG, ENTRY_NORMAL, Entry

if TYPE_CHECKING:
    from raftkv_ext.codec import RaftMessage

ELECTION_TICKS = 10
HEARTBEAT_TICKS = 2

DropRule = Callable[["RaftMessage"], bool]
M = TypeVar("M")


def bootstrap_entry(voters: Iterable[int], learners: Iterable[int] = ()) -> Entry:
    """The first log entry of a new cluster: its initial configuration."""
    return Entry(1, 1, ENTRY_CONFIG, Membership.of(voters, learners).encode())


def of_type(messages: Iterable[Any], kind: type[M], **fields: int) -> list[M]:
    """The messages of class ``kind`` whose attributes equal ``fields`` (e.g. sender=1)."""
    return [
        m
        for m in messages
        if isinstance(m, kind) and all(getattr(m, k) == v for k, v in fields.items())
    ]


@dataclass
class Store:
    """What one node has made durable: hard state, latest snapshot and the log after it."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    boundary_index: int = 0
    boundary_term: int = 0
    entries: list[Entry] = field(default_factory=list)

    @property
    def last_index(self) -> int:
        return self.boundary_index + len(self.entries)

    def append(self, entries: Sequence[Entry]) -> None:
        first = entries[0].index
        assert self.boundary_index < first <= self.last_index + 1, (
            f"write at {first} leaves a gap after {self.last_index}"
        )
        # A write that starts inside the stored log replaces the conflicting suffix.
        del self.entries[first - self.boundary_index - 1 :]
        self.entries.extend(entries)

    def install(self, snapshot: Snapshot) -> None:
        meta = snapshot.meta
        self.snapshot = snapshot
        position = meta.index - self.boundary_index - 1
        if 0 <= position < len(self.entries) and self.entries[position].term == meta.term:
            # §7: the log continues past the snapshot consistently; keep what follows.
            self.entries = self.entries[position + 1 :]
        else:
            self.entries = []
        self.boundary_index, self.boundary_term = meta.index, meta.term

    def compact(self, index: int) -> None:
        keep_from = index - self.boundary_index
        self.boundary_term = self.entries[keep_from - 1].term
        self.entries = self.entries[keep_from:]
        self.boundary_index = index

    def initial_state(self) -> InitialState:
        return InitialState(
            hard_state=self.hard_state,
            snapshot=self.snapshot.meta if self.snapshot else None,
            boundary_index=self.boundary_index,
            boundary_term=self.boundary_term,
            entries=list(self.entries),
        )


class Node:
    """One core and the production driver around it; this object is the driver's host,
    with ``store`` for its disk. It also records what each Ready carried, for tests."""

    def __init__(self, cluster: Cluster, node_id: int, config: RaftConfig, store: Store) -> None:
        self.cluster = cluster
        self.id = node_id
        self.config = config
        self.store = store
        self.driver: Driver | None = None
        self.incarnation = 0
        self.hold_persist = False
        # Written but not yet durable: a sync makes it durable, a crash loses it.
        self._unsynced_hard_state: HardState | None = None
        self._unsynced_entries: list[Sequence[Entry]] = []
        self._sync_held = False
        # What the state machine saw since the last (re)start.
        self.loaded_snapshot: Snapshot | None = None
        self.applied: list[Entry] = []
        self.reads: list[ReadState] = []
        self.dropped_reads: list[bytes] = []
        self.forwarded: list[ForwardResult] = []
        self.readys: list[Ready] = []

    # ------------------------------------------------------------ life cycle

    @property
    def core(self) -> RaftCore | None:
        return self.driver.core if self.driver is not None else None

    @property
    def up(self) -> bool:
        return self.driver is not None

    def start(self) -> None:
        self.incarnation += 1
        # A fresh seed per incarnation, so a restarted node draws new timeouts.
        rng = random.Random(f"{self.cluster.seed}/{self.id}/{self.incarnation}")
        core = RaftCore(self.config, rng, self.store.initial_state())
        self.loaded_snapshot = self.store.snapshot
        latest = None
        if self.store.snapshot is not None:
            latest = memory_snapshot_record(self.store.snapshot)
        self.driver = Driver(
            core,
            KVStateMachine(),
            self,
            # Snapshots here are taken by the tests themselves (take_snapshot).
            DriverSettings(
                node_id=self.id,
                request_timeout_s=5.0,
                snapshot_entries=1 << 62,
                snapshot_log_ratio=0.0,
                snapshot_retain=0,
                # Held by hold_persist like the entries: durable only once synced.
                hard_state_durable_at_once=False,
                promote_learners=False,
            ),
            random.Random(f"{self.cluster.seed}/{self.id}/{self.incarnation}/driver"),
            latest_snapshot=latest,
            observer=self._record_ready,
        )
        self.applied, self.reads, self.dropped_reads, self.forwarded = [], [], [], []
        self.readys = []
        self._forget_unsynced()
        self.process()

    def crash(self) -> None:
        """Power loss: the core is gone, and so are unsynced writes. What the state
        machine applied stays readable (for assertions) until the node restarts."""
        self.driver = None
        self._forget_unsynced()

    def _forget_unsynced(self) -> None:
        self._unsynced_hard_state = None
        self._unsynced_entries = []
        self._sync_held = False

    # ------------------------------------------------------------ driving

    @property
    def raft(self) -> RaftCore:
        assert self.driver is not None, f"node {self.id} is down"
        return self.driver.core

    @property
    def applied_index(self) -> int:
        if self.applied:
            return self.applied[-1].index
        return self.loaded_snapshot.meta.index if self.loaded_snapshot else 0

    def process(self) -> None:
        """The driver's turn: it carries out Readys until the core has nothing to say."""
        assert self.driver is not None, f"node {self.id} is down"
        self.driver.process()

    def _record_ready(self, ready: Ready) -> None:
        self.readys.append(ready)
        # The state machine side needs nothing durable locally: what is committed is
        # durable on a quorum already.
        if ready.snapshot is not None:
            self.loaded_snapshot = ready.snapshot
            self.applied = []
        self.applied.extend(ready.committed)
        self.reads.extend(ready.reads)
        self.dropped_reads.extend(ready.dropped_reads)
        self.forwarded.extend(ready.forwarded)

    def flush(self) -> None:
        """Complete the sync held back by ``hold_persist`` (an fsync returning)."""
        if self._sync_held:
            self._sync_held = False
            self._complete_sync()
        self.process()

    def _complete_sync(self) -> None:
        if self._unsynced_hard_state is not None:
            self.store.hard_state = self._unsynced_hard_state
        for entries in self._unsynced_entries:
            self.store.append(entries)
        self._unsynced_hard_state = None
        self._unsynced_entries = []
        assert self.driver is not None
        self.driver.synced()

    def take_snapshot(self, data: bytes, compact: bool = True) -> SnapshotMeta:
        """Snapshot the state machine at its applied index and (by default) compact the log."""
        core = self.raft
        meta = core.snapshot_meta(self.applied_index)
        self.store.snapshot = Snapshot(meta, data)
        core.snapshot_saved(meta, MemorySnapshotReader(data))
        if compact:
            core.compact(meta.index)
            self.store.compact(meta.index)
        return meta

    # ------------------------------------------------------------ the driver's host

    @property
    def addresses(self) -> Mapping[int, NodeAddress]:
        return {}

    @property
    def cluster_id(self) -> int:
        return 1

    def send(self, messages: list[RaftMessage]) -> None:
        for message in messages:
            self.cluster.send(message)

    def save_hard_state(self, state: HardState) -> None:
        self._unsynced_hard_state = state

    def append(self, entries: list[Entry]) -> None:
        self._unsynced_entries.append(list(entries))

    def start_sync(self) -> None:
        if self.hold_persist:
            self._sync_held = True
        else:
            self._complete_sync()

    def install_snapshot(self, snapshot: Snapshot) -> SnapshotRecord:
        self.store.install(snapshot)
        return memory_snapshot_record(snapshot)

    def start_snapshot(self, meta: SnapshotMeta) -> None:
        raise AssertionError("the harness takes snapshots only through take_snapshot")

    def compact_log(self, index: int, term: int) -> None:
        self.store.compact(index)

    def config_applied(self, entry: Entry, membership: Membership, context: bytes) -> None:
        pass

    def joined(self) -> None:
        pass

    def leader_changed(self, leader_id: int, term: int) -> None:
        pass

    def apply_timed(self, seconds: float) -> None:
        pass


class Cluster:
    """Nodes joined by a manual network: nothing moves until a test delivers or ticks."""

    def __init__(
        self,
        voters: Sequence[int] = (1, 2, 3),
        learners: Sequence[int] = (),
        spares: Sequence[int] = (),
        seed: int = 0,
        wire: bool = True,
        **config: Any,
    ) -> None:
        """``spares`` start with an empty disk and join only through a membership change.

        ``config`` overrides RaftConfig fields for every node. With ``wire`` every message
        goes through the codec, as it would between processes.
        """
        self.seed = seed
        self.wire = wire
        self.queue: list[RaftMessage] = []
        self.sent: list[RaftMessage] = []
        self.dropped: list[RaftMessage] = []
        self.cut: set[tuple[int, int]] = set()
        settings: dict[str, Any] = {
            "election_ticks": ELECTION_TICKS,
            "heartbeat_ticks": HEARTBEAT_TICKS,
        }
        settings.update(config)
        first = bootstrap_entry(voters, learners)
        self.nodes: dict[int, Node] = {}
        for node_id in [*voters, *learners, *spares]:
            store = Store()
            if node_id not in spares:
                store = Store(hard_state=HardState(term=1), entries=[first])
            node_config = RaftConfig(node_id=node_id, **settings)
            self.nodes[node_id] = Node(self, node_id, node_config, store)
        for node in self.nodes.values():
            node.start()

    # ------------------------------------------------------------ access

    def __getitem__(self, node_id: int) -> RaftCore:
        return self.nodes[node_id].raft

    def up_ids(self) -> list[int]:
        return [n for n, node in self.nodes.items() if node.up]

    def leaders(self) -> list[int]:
        return [n for n in self.up_ids() if self[n].role is Role.LEADER]

    def leader(self) -> int:
        """The one live leader of the highest term."""
        leaders = self.leaders()
        assert leaders, "no leader"
        return max(leaders, key=lambda n: self[n].term)

    def propose(self, node_id: int, *commands: bytes) -> int:
        """Propose ``commands`` on ``node_id`` and hand its Ready to the driver (no delivery)."""
        index = self[node_id].propose(list(commands))
        self.nodes[node_id].process()
        return index

    def read_index(self, node_id: int, context: bytes) -> None:
        self[node_id].read_index(context)
        self.nodes[node_id].process()

    # ------------------------------------------------------------ network

    def send(self, message: RaftMessage) -> None:
        if self.wire:
            decoded = codec.decode(codec.encode(message))
            assert decoded == message, f"codec changed {message!r}"
        self.sent.append(message)
        self.queue.append(message)

    def deliver(self, drop: DropRule | None = None) -> int:
        """Deliver the messages in flight now (not those sent in reply); returns how many.

        A message is lost when its recipient is down, its link is cut, or ``drop`` says so.
        """
        batch, self.queue = self.queue, []
        delivered = 0
        for message in batch:
            node = self.nodes.get(message.recipient)
            lost = (
                node is None
                or not node.up
                or (message.sender, message.recipient) in self.cut
                or (drop is not None and drop(message))
            )
            if lost or node is None:
                self.dropped.append(message)
                continue
            node.raft.step(message)
            node.process()
            delivered += 1
        return delivered

    def stabilize(self, drop: DropRule | None = None, max_rounds: int = 200) -> None:
        """Deliver until no message is in flight."""
        for _ in range(max_rounds):
            if not self.queue:
                return
            self.deliver(drop)
        raise AssertionError(f"messages still in flight after {max_rounds} rounds")

    def inject(self, message: RaftMessage) -> list[RaftMessage]:
        """Hand a made-up message to its recipient; returns what it sent in reply, which is
        taken off the network (the test plays the other side)."""
        start = len(self.sent)
        node = self.nodes[message.recipient]
        node.raft.step(message)
        node.process()
        replies = self.sent[start:]
        self.queue = [m for m in self.queue if all(m is not r for r in replies)]
        return replies

    def isolate(self, node_id: int) -> None:
        """Cut every link to and from ``node_id``."""
        for other in self.nodes:
            if other != node_id:
                self.cut.update({(node_id, other), (other, node_id)})

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut every link between different groups."""
        sets = [set(g) for g in groups]
        for a in sets:
            for b in sets:
                if a is not b:
                    self.cut.update((x, y) for x in a for y in b)

    def heal(self) -> None:
        self.cut.clear()

    # ------------------------------------------------------------ time

    def tick(
        self,
        ids: Iterable[int] | None = None,
        times: int = 1,
        deliver: bool = True,
        drop: DropRule | None = None,
    ) -> None:
        """Tick the given live nodes (all by default), delivering until quiet after each tick."""
        chosen = list(ids) if ids is not None else self.up_ids()
        for _ in range(times):
            for node_id in chosen:
                node = self.nodes[node_id]
                if node.up:
                    node.raft.tick()
                    node.process()
            if deliver:
                self.stabilize(drop)

    def campaign(self, node_id: int) -> None:
        """Tick only ``node_id`` until its election timer fires; deliver nothing."""
        node = self.nodes[node_id]
        for _ in range(2 * node.config.election_ticks):
            node.raft.tick()
            node.process()
            if node.raft.role is not Role.FOLLOWER:
                return
        raise AssertionError(f"node {node_id} never started an election")

    def elect(self, node_id: int, drop: DropRule | None = None) -> RaftCore:
        """Make ``node_id`` campaign, deliver until quiet, and insist that it won."""
        self.campaign(node_id)
        self.stabilize(drop)
        core = self[node_id]
        assert core.role is Role.LEADER, f"node {node_id} did not win: {core.role}"
        return core

    def wait_for_leader(self, ids: Iterable[int] | None = None, max_ticks: int = 300) -> int:
        """Tick the given nodes until one of them leads; returns its id."""
        chosen = list(ids) if ids is not None else self.up_ids()
        for _ in range(max_ticks):
            leaders = [n for n in chosen if self.nodes[n].up and self[n].role is Role.LEADER]
            if leaders:
                return max(leaders, key=lambda n: self[n].term)
            self.tick(chosen)
        raise AssertionError(f"no leader among {chosen} after {max_ticks} ticks")

    # ------------------------------------------------------------ faults

    def crash(self, node_id: int) -> None:
        self.nodes[node_id].crash()

    def rewrite_disk(self, node_id: int, terms: Sequence[int], term: int, vote: int = 0) -> None:
        """Restart ``node_id`` from a disk holding the bootstrap entry then one entry per
        item of ``terms`` (entry i + 2 has term ``terms[i]``), at the given term and vote.
        """
        node = self.nodes[node_id]
        first = node.store.entries[0] if node.store.entries else bootstrap_entry(self.nodes)
        node.store = Store(
            hard_state=HardState(term, vote),
            entries=[first] + [Entry(i + 2, t, ENTRY_NORMAL, b"disk") for i, t in enumerate(terms)],
        )
        self.restart(node_id)

    def restart(self, node_id: int) -> None:
        """Start a crashed node again from what its disk holds."""
        node = self.nodes[node_id]
        if node.up:
            node.crash()
        node.start()
