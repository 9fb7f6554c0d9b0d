"""The driver on its own, with a host that records what it is asked to do: operator
requests wait for the driver's turn, forced snapshots start in that turn, an overtaken
snapshot is recognised, reads and writes are answered once applied, and a follower's
acknowledgements wait for exactly the syncs that what they promise needs.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson
from hypothesis import given
from hypothesis import strategies as st

from raftkv.kv import KVStateMachine
from raftkv.kv.commands import Put, encode_command
from raftkv.node.driver import Driver, DriverSettings, command_for
from raftkv.node.node_config import NodeAddress
from raftkv.node.node_snapshot import encode_addresses
from raftkv.node.snapshot_record import SnapshotRecord
from raftkv.raft.config import RaftConfig
from raftkv.raft.core import RaftCore, Role
from raftkv.raft.membership import Membership
from raftkv.raft.ready import HardState, InitialState, Snapshot, SnapshotMeta
from raftkv.testing.sim_storage import MemorySnapshotReader
from raftkv.wire.protocol import Flag, Op, ReplyStatus
from raftkv_ext.codec import AppendEntries, AppendEntriesResponse, ClientReply, ClientRequest
from raftkv_ext.entry import ENTRY_CONFIG, ENTRY_NORMAL, Entry

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


# ---------------------------------------------------------------- a follower's syncs


@dataclass
class SlowDiskHost(RecordingHost):
    """A host whose syncs finish only when the test says so (``finish_sync``)."""

    syncs_started: int = 0

    def start_sync(self) -> None:
        self.syncs_started += 1

    def finish_sync(self) -> None:
        assert self.driver is not None
        self.driver.synced()
        self.driver.process()

    def acks(self) -> list[int]:
        """The indexes of the successful AppendEntriesResponses sent so far, in order."""
        return [m.index for m in self.sent if isinstance(m, AppendEntriesResponse) and m.success]


def follower(*, hard_state_durable_at_once: bool = True) -> tuple[Driver, SlowDiskHost]:
    """Node 2 of a three-node cluster at term 1, its log holding the configuration."""
    config = Entry(1, 1, ENTRY_CONFIG, Membership.of([1, 2, 3]).encode(b""))
    initial = InitialState(hard_state=HardState(term=1), entries=[config])
    core = RaftCore(RaftConfig(node_id=2), random.Random(1), initial)
    host = SlowDiskHost()
    driver = Driver(
        core,
        KVStateMachine(),
        host,
        DriverSettings(
            node_id=2,
            request_timeout_s=5.0,
            snapshot_entries=1000,
            snapshot_log_ratio=0.0,
            snapshot_retain=0,
            hard_state_durable_at_once=hard_state_durable_at_once,
        ),
        random.Random(2),
    )
    host.driver = driver
    return driver, host


def leader_appends(
    driver: Driver, prev_index: int, commit: int, last: int | None = None, term: int = 1
) -> None:
    """Leader 1's AppendEntries after ``prev_index`` (term 1 there), carrying entries up
    to ``last`` (none when None), and the driver's turn that handles it."""
    entries = [
        Entry(index, term, ENTRY_NORMAL, b"not a command")
        for index in range(prev_index + 1, (last or prev_index) + 1)
    ]
    driver.step([AppendEntries(1, 2, term, prev_index, 1, commit, entries)])
    driver.process()


def test_a_follower_acknowledges_heartbeats_and_commit_indexes_without_a_sync() -> None:
    driver, host = follower()
    leader_appends(driver, prev_index=1, commit=1, last=3)
    assert (host.syncs_started, host.acks()) == (1, [])
    host.finish_sync()
    assert host.acks() == [3]
    # The leader's next commit index, then a heartbeat: nothing new to make durable.
    leader_appends(driver, prev_index=3, commit=3)
    assert driver.core.committed == 3
    leader_appends(driver, prev_index=3, commit=3)
    assert (host.syncs_started, host.acks()) == (1, [3, 3, 3])


def test_an_empty_append_covering_entries_being_synced_is_answered_after_that_sync() -> None:
    driver, host = follower()
    leader_appends(driver, prev_index=1, commit=1, last=3)
    # Its prev_index is the last entry written, whose sync is still running: its ack
    # promises that entry, so it leaves with that sync's ack, after it.
    leader_appends(driver, prev_index=3, commit=3)
    assert (host.syncs_started, host.acks()) == (1, [])
    host.finish_sync()
    assert (host.syncs_started, host.acks()) == (1, [3, 3])


def test_an_empty_append_behind_entries_awaiting_their_sync_waits_for_that_sync() -> None:
    driver, host = follower()
    leader_appends(driver, prev_index=1, commit=1, last=3)
    # Written while the first sync runs: only the next one covers these entries.
    leader_appends(driver, prev_index=3, commit=1, last=5)
    leader_appends(driver, prev_index=5, commit=5)
    assert (host.syncs_started, host.acks()) == (1, [])
    host.finish_sync()
    assert (host.syncs_started, host.acks()) == (2, [3])
    host.finish_sync()
    assert (host.syncs_started, host.acks()) == (2, [3, 5, 5])


def test_a_new_term_from_a_heartbeat_is_synced_first_unless_durable_at_once() -> None:
    # The simulator's disk: the hard state is durable only once synced.
    driver, host = follower(hard_state_durable_at_once=False)
    leader_appends(driver, prev_index=1, commit=0, term=2)
    assert (host.syncs_started, host.acks()) == (1, [])
    host.finish_sync()
    assert host.acks() == [1]
    # kvnode's: the hard state file is fsynced and renamed into place when saved.
    driver, host = follower(hard_state_durable_at_once=True)
    leader_appends(driver, prev_index=1, commit=0, term=2)
    assert (host.syncs_started, host.acks()) == (0, [1])


# ---------------------------------------------------------------- a Put's command


def put_command(request: ClientRequest) -> bytes:
    """A PUT's command as raftkv.kv.commands encodes it (what command_for must match)."""
    prev = request.prev_revision if request.flags & Flag.HAS_PREV_REVISION else None
    tag = {
        "client_id": request.client_id,
        "seq": request.seq,
        "first_incomplete": request.first_incomplete,
    }
    return encode_command(Put(request.key, request.value, prev, **tag))


U64 = st.integers(0, 5) | st.integers(0, 2**64 - 1)


@given(
    key=st.binary(max_size=8),
    value=st.binary(max_size=8),
    client_id=U64,
    seq=U64,
    first_incomplete=U64,
    prev_revision=st.integers(-2, 5) | st.integers(-(2**63), 2**63 - 1),
    flags=st.sampled_from([0, Flag.HAS_PREV_REVISION, Flag.STALE_READ | Flag.HAS_PREV_REVISION]),
)
def test_a_puts_command_is_the_state_machines_encoding(
    key: bytes,
    value: bytes,
    client_id: int,
    seq: int,
    first_incomplete: int,
    prev_revision: int,
    flags: int,
) -> None:
    """command_for encodes a plain PUT by its short way (encode_plain_put): the same bytes
    as encode_command, and the same refusal for what encode_command refuses."""
    request = ClientRequest(
        1,
        Op.PUT,
        key,
        value,
        client_id=client_id,
        seq=seq,
        prev_revision=prev_revision,
        flags=flags,
        first_incomplete=first_incomplete,
    )
    try:
        expected = put_command(request)
    except ValueError as refused:
        try:
            command_for(request)
        except ValueError as exc:
            assert str(exc) == str(refused)
        else:
            raise AssertionError(f"accepted what encode_command refuses: {refused}") from None
        return
    assert command_for(request) == expected
