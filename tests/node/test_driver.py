"""The driver on its own, with a host that records what it is asked to do: operator
requests wait for the driver's turn, forced snapshots start in that turn, an overtaken
snapshot is recognised, reads and writes are answered once applied.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from raftkv.kv import KVStateMachine
from raftkv.node.driver import Driver, DriverSettings
from raftkv.node.node_config import NodeAddress
from raftkv.node.node_snapshot import encode_addresses
from raftkv.node.snapshot_record import SnapshotRecord
from raftkv.raft.config import RaftConfig
from raftkv.raft.core import RaftCore, Role
from raftkv.raft.membership import Membership
from raftkv.raft.ready import HardState, InitialState, Snapshot, SnapshotMeta
from raftkv.testing.sim_storage import MemorySnapshotReader
from raftkv.wire.protocol import Op, ReplyStatus
from raftkv_ext.codec import ClientReply, ClientRequest
from raftkv_ext.entry import ENTRY_CONFIG, Entry

if TYPE_CHECKING:
    from raftkv_ext.codec import RaftMessage


ME = NodeAddress(1, "127.0.0.1:8001", "127.0.0.1:9001")


@dataclass
class RecordingHost:
    """A DriverHost whose disk syncs at once, and that notes every effect."""

    driver: Driver | None = None
    hard_states: list[HardState] = field(default_factory=list)
    appended: list[Entry] = field(default_factory=list)
    sent: list[RaftMessage] = field(default_factory=list)
    snapshots_started: list[SnapshotMeta] = field(default_factory=list)
    compacted: list[int] = field(default_factory=list)

    @property
    def addresses(self) -> Mapping[int, NodeAddress]:
        return {1: ME}

    @property
    def cluster_id(self) -> int:
        return 7

    def send(self, messages: list[RaftMessage]) -> None:
        self.sent.extend(messages)

    def save_hard_state(self, state: HardState) -> None:
        self.hard_states.append(state)

    def append(self, entries: list[Entry]) -> None:
        self.appended.extend(entries)

    def start_sync(self) -> None:
        assert self.driver is not None
        self.driver.synced()

    def install_snapshot(self, snapshot: Snapshot) -> SnapshotRecord:
        raise AssertionError("a single node is never sent a snapshot")

    def start_snapshot(self, meta: SnapshotMeta) -> None:
        self.snapshots_started.append(meta)

    def compact_log(self, index: int, term: int) -> None:
        self.compacted.append(index)

    def config_applied(self, entry: Entry, membership: Membership, context: bytes) -> None:
        pass

    def joined(self) -> None:
        pass

    def leader_changed(self, leader_id: int, term: int) -> None:
        pass

    def apply_timed(self, seconds: float) -> None:
        pass


def single_node() -> tuple[Driver, RecordingHost]:
    config = Entry(1, 1, ENTRY_CONFIG, Membership.of([1]).encode(encode_addresses({1: ME})))
    initial = InitialState(
        hard_state=HardState(term=1),
        snapshot=None,
        boundary_index=0,
        boundary_term=0,
        entries=[config],
    )
    core = RaftCore(RaftConfig(node_id=1), random.Random(1), initial)
    host = RecordingHost()
    driver = Driver(
        core,
        KVStateMachine(),
        host,
        DriverSettings(
            node_id=1,
            request_timeout_s=5.0,
            snapshot_entries=1000,
            snapshot_log_ratio=0.0,
            snapshot_retain=0,
            hard_state_durable_at_once=True,
        ),
        random.Random(2),
    )
    host.driver = driver
    return driver, host


def elect(driver: Driver) -> None:
    now = 0.0
    while driver.core.role is not Role.LEADER:
        now += 0.01
        driver.tick(now)
        driver.process()


def test_an_operator_request_waits_for_the_drivers_turn() -> None:
    driver, _ = single_node()
    elect(driver)
    replies: list[ClientReply] = []
    spec = {"id": 2, "http_addr": "127.0.0.1:8002", "rpc_addr": "127.0.0.1:9002"}
    request = ClientRequest(1, Op.MEMBER_ADD, value=orjson.dumps(spec))
    driver.submit(request, replies.append, now=1.0)
    # Nothing reached the core yet: it has one caller, the driver's turn.
    assert driver.core.membership.learners == frozenset()
    driver.process()
    assert driver.core.membership.learners == frozenset({2})


def test_a_forced_snapshot_starts_in_the_turn_that_asked_for_it() -> None:
    driver, host = single_node()
    elect(driver)
    applied = driver.applied_index
    replies: list[ClientReply] = []
    driver.submit(ClientRequest(1, Op.SNAPSHOT), replies.append, now=1.0)
    driver.process()
    assert [meta.index for meta in host.snapshots_started] == [applied]
    assert replies == []  # answered once the snapshot is written


def test_a_snapshot_overtaken_by_a_newer_one_is_not_adopted() -> None:
    driver, host = single_node()
    elect(driver)
    for i in range(3):
        driver.submit(ClientRequest(i + 1, Op.PUT, b"k%d" % i, b"v"), lambda reply: None, 1.0)
        driver.process()
    newer = driver.core.snapshot_meta(driver.applied_index)
    older = driver.core.snapshot_meta(driver.applied_index - 1)
    driver.snapshot_taken(SnapshotRecord(newer, 3, "newer", MemorySnapshotReader(b"new")))
    assert driver.latest_snapshot is not None and driver.latest_snapshot.location == "newer"
    assert driver.snapshot_outdated(older) and driver.snapshot_outdated(newer)
    driver.snapshot_taken(SnapshotRecord(older, 3, "older", MemorySnapshotReader(b"old")))
    assert driver.latest_snapshot.location == "newer"
    assert host.compacted == [newer.index]


def test_reads_and_writes_are_answered_once_applied() -> None:
    driver, _ = single_node()
    elect(driver)
    replies: list[ClientReply] = []
    driver.submit(ClientRequest(1, Op.PUT, b"k", b"v"), replies.append, now=1.0)
    assert replies == []
    driver.process()
    assert [(r.request_id, r.status) for r in replies] == [(1, ReplyStatus.OK)]
    driver.submit(ClientRequest(2, Op.GET, b"k"), replies.append, now=1.0)
    driver.process()
    assert [(r.request_id, r.status) for r in replies][1:] == [(2, ReplyStatus.OK)]
    assert replies[1].revision == replies[0].revision
