"""Leases through the driver (raftkv/node/driver.py with raftkv/node/lease_clock.py):
grants, leased writes, keep-alives and TTL puts expire on the time the host passes in;
lease reads report the time left; long leases are checkpointed; and with three nodes a
leader change neither shortens a lease nor lets a checkpoint do so.

Time here is whatever the test says it is: every driver call gets ``now`` explicitly.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import orjson
import pytest

import raftkv.node
from raftkv.kv import KVStateMachine
from raftkv.kv.commands import (
    CommandDecodeError,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseKeepAlive,
    decode_command,
)
from raftkv.node.driver import Driver, DriverSettings
from raftkv.node.node_config import NodeAddress
from raftkv.node.node_snapshot import encode_addresses
from raftkv.node.snapshot_record import SnapshotRecord
from raftkv.raft.config import RaftConfig
from raftkv.raft.core import RaftCore, Role
from raftkv.raft.membership import Membership
from raftkv.raft.ready import HardState, InitialState, Snapshot, SnapshotMeta
from raftkv.wire.protocol import (
    KEY_LEASE,
    LEASE_GRANT_FIELDS,
    Flag,
    Op,
    ReplyStatus,
    decode_key_value,
    decode_lease_info,
    decode_lease_list,
)
from raftkv_ext.codec import ClientReply, ClientRequest
from raftkv_ext.entry import ENTRY_CONFIG, ENTRY_NORMAL, Entry

from .test_driver import ME, RecordingHost
from .test_driver_purity import impurities

if TYPE_CHECKING:
    from raftkv_ext.codec import RaftMessage

C = TypeVar("C")

ET = 3.0  # the drivers' election timeout for leases, s
CI = 10.0  # lease checkpoint interval, s
STEP = 0.25  # seconds between ticks (a binary fraction: sums stay exact)


def decode_data(data: bytes) -> object:
    try:
        return decode_command(data)
    except CommandDecodeError:
        return None


def decode(entry: Entry) -> object:
    return decode_data(entry.data) if entry.type == ENTRY_NORMAL else None


def lease_settings(node_id: int, **overrides: float) -> DriverSettings:
    values: dict[str, float] = {
        "election_timeout_s": ET,
        "lease_checkpoint_interval_s": CI,
        "request_timeout_s": 5.0,
    }
    values.update(overrides)
    return DriverSettings(
        node_id=node_id,
        request_timeout_s=values["request_timeout_s"],
        snapshot_entries=1 << 40,
        snapshot_log_ratio=0.0,
        snapshot_retain=0,
        hard_state_durable_at_once=True,
        election_timeout_s=values["election_timeout_s"],
        lease_checkpoint_interval_s=values["lease_checkpoint_interval_s"],
    )


# ------------------------------------------------------------------------ one node


class Solo:
    """A single-node driver and the time it was last told."""

    def __init__(self, clock: Callable[[], float] | None = None, **settings: float) -> None:
        config = Entry(1, 1, ENTRY_CONFIG, Membership.of([1]).encode(encode_addresses({1: ME})))
        initial = InitialState(
            hard_state=HardState(term=1),
            snapshot=None,
            boundary_index=0,
            boundary_term=0,
            entries=[config],
        )
        core = RaftCore(RaftConfig(node_id=1), random.Random(1), initial)
        self.host = RecordingHost()
        self.sm = KVStateMachine()
        self.driver = Driver(
            core,
            self.sm,
            self.host,
            lease_settings(1, **settings),
            random.Random(2),
            clock=clock or (lambda: 0.0),
        )
        self.host.driver = self.driver
        self.now = 0.0
        self._ids = 0
        self._seq = 0
        while self.driver.core.role is not Role.LEADER:
            self.advance(STEP)
        assert self.now < 10.0
        self.run_until(10.0)  # round times from here on

    def advance(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until(self, until: float) -> None:
        while self.now < until:
            self.now = min(self.now + STEP, until)
            self.driver.tick(self.now)
            self.driver.process(self.now)

    def call(self, op: int, key: bytes = b"", value: bytes = b"", **fields: int) -> ClientReply:
        self._ids += 1
        if op in (Op.PUT, Op.DELETE, Op.LEASE_GRANT, Op.LEASE_KEEP_ALIVE, Op.LEASE_REVOKE):
            self._seq += 1
            fields = {"client_id": 99, "seq": self._seq, "first_incomplete": self._seq} | fields
        replies: list[ClientReply] = []
        request = ClientRequest(self._ids, op, key, value, **fields)
        self.driver.submit(request, replies.append, self.now)
        self.driver.process(self.now)
        assert len(replies) == 1, f"{Op(op).name} not answered in its turn"
        return replies[0]

    def grant(self, ttl_ms: int, lease_id: int = 0) -> int:
        reply = self.call(Op.LEASE_GRANT, value=LEASE_GRANT_FIELDS.pack(lease_id, ttl_ms))
        assert reply.status == ReplyStatus.OK, reply.body
        answer = orjson.loads(reply.body)
        assert answer["ttl_ms"] == ttl_ms
        granted: int = answer["lease"]
        return granted

    def put(self, key: bytes, value: bytes, lease: int = 0, ttl_ms: int = 0) -> ClientReply:
        if lease or ttl_ms:
            value = LEASE_GRANT_FIELDS.pack(lease, ttl_ms) + value
            return self.call(Op.PUT, key, value, flags=Flag.LEASED)
        return self.call(Op.PUT, key, value)

    def exists(self, key: bytes) -> bool:
        return self.driver.sm.get(key) is not None

    def entries(self, kind: type[C]) -> list[tuple[int, C]]:
        return [
            (entry.index, command)
            for entry in self.host.appended
            if entry.type == ENTRY_NORMAL and isinstance(command := decode(entry), kind)
        ]


def test_a_leased_key_lives_out_its_ttl_and_goes_in_one_revision() -> None:
    solo = Solo()
    lease = solo.grant(20_000)  # at 10: runs out at 30
    assert lease > 0
    assert solo.put(b"a", b"1", lease=lease).status == ReplyStatus.OK
    assert solo.put(b"b", b"2", lease=lease).status == ReplyStatus.OK
    assert solo.put(b"plain", b"3").status == ReplyStatus.OK
    solo.run_until(29.75)
    assert solo.exists(b"a") and solo.exists(b"b")
    assert lease in solo.sm.leases
    assert solo.entries(LeaseExpire) == []
    solo.run_until(30.0)
    assert not solo.exists(b"a") and not solo.exists(b"b")
    assert solo.exists(b"plain")
    assert lease not in solo.sm.leases
    assert len(solo.driver.lease_clock) == 0
    [(index, expire)] = solo.entries(LeaseExpire)
    assert isinstance(expire, LeaseExpire) and expire.lease_id == lease
    # Both keys were deleted at the Expire's revision.
    changes = solo.sm.history.after(index - 1)
    assert changes is not None
    assert sorted((c[0], c[1], c[2]) for c in changes) == [(index, b"a", None), (index, b"b", None)]
    # Nothing more is proposed for it.
    solo.run_until(60.0)
    assert len(solo.entries(LeaseExpire)) == 1
    assert solo.driver.leases_expired == 1


def test_a_keep_alive_starts_the_ttl_again() -> None:
    solo = Solo()
    lease = solo.grant(10_000)  # at 10
    solo.put(b"k", b"v", lease=lease)
    solo.run_until(18.0)
    reply = solo.call(Op.LEASE_KEEP_ALIVE, limit=lease)
    assert reply.status == ReplyStatus.OK
    assert orjson.loads(reply.body)["lease"] == lease
    solo.run_until(27.75)
    assert solo.exists(b"k")
    solo.run_until(28.0)
    assert not solo.exists(b"k")
    # A keep-alive of a lease that is gone says so.
    assert solo.call(Op.LEASE_KEEP_ALIVE, limit=lease).status == ReplyStatus.NOT_FOUND


def test_a_put_with_a_ttl_expires_on_its_own() -> None:
    solo = Solo()
    reply = solo.put(b"t", b"v", ttl_ms=5_000)  # at 10
    assert reply.status == ReplyStatus.OK
    private = orjson.loads(reply.body)["lease"]
    assert solo.sm.leases.lease_of(b"t") == private
    solo.run_until(14.75)
    assert solo.exists(b"t")
    solo.run_until(15.0)
    assert not solo.exists(b"t")
    assert private not in solo.sm.leases


def test_rewriting_a_ttl_key_without_a_ttl_ends_its_timer() -> None:
    solo = Solo()
    solo.put(b"t", b"v", ttl_ms=5_000)
    assert len(solo.driver.lease_clock) == 1
    solo.put(b"t", b"w")
    assert len(solo.driver.lease_clock) == 0
    solo.run_until(30.0)
    assert solo.exists(b"t")
    assert solo.entries(LeaseExpire) == []


def test_lease_reads_report_the_time_left() -> None:
    solo = Solo()
    lease = solo.grant(20_000)  # at 10
    other = solo.grant(50_000, lease_id=77)
    assert other == 77
    solo.put(b"x", b"1", lease=lease)
    solo.put(b"y", b"2", lease=lease)
    solo.put(b"z", b"3")
    solo.run_until(14.5)

    info = solo.call(Op.LEASE_INFO, limit=lease, prev_revision=1)
    assert info.status == ReplyStatus.OK
    lease_id, ttl, left, keys, more = decode_lease_info(info.body)
    assert (lease_id, ttl, left, keys, more) == (lease, 20_000, 15_500, [b"x"], True)
    _, _, _, keys, more = decode_lease_info(solo.call(Op.LEASE_INFO, limit=lease).body)
    assert (keys, more) == ([], True)
    _, _, _, keys, more = decode_lease_info(
        solo.call(Op.LEASE_INFO, limit=lease, prev_revision=10).body
    )
    assert (keys, more) == ([b"x", b"y"], False)
    assert solo.call(Op.LEASE_INFO, limit=12345).status == ReplyStatus.NOT_FOUND

    listed = solo.call(Op.LEASE_LIST)
    assert listed.status == ReplyStatus.OK
    assert decode_lease_list(listed.body) == [(lease, 20_000, 15_500), (77, 50_000, 45_500)]

    got = solo.call(Op.GET, b"x", flags=Flag.WITH_LEASE)
    assert got.status == ReplyStatus.OK
    assert KEY_LEASE.unpack_from(got.body) == (lease, 15_500)
    stored = decode_key_value(b"x", got.body[KEY_LEASE.size :])
    assert stored.value == b"1"
    plain = solo.call(Op.GET, b"z", flags=Flag.WITH_LEASE)
    assert KEY_LEASE.unpack_from(plain.body) == (0, 0)
    assert solo.call(Op.GET, b"nope", flags=Flag.WITH_LEASE).status == ReplyStatus.NOT_FOUND
    # Without the flag the body is the plain key-value.
    assert decode_key_value(b"x", solo.call(Op.GET, b"x").body).value == b"1"
    # Stale reads answer at once, with the same times.
    stale = solo.call(Op.LEASE_LIST, flags=Flag.STALE_READ)
    assert decode_lease_list(stale.body) == decode_lease_list(listed.body)

    solo.run_until(29.5)  # time left never goes below 0
    assert decode_lease_list(solo.call(Op.LEASE_LIST).body)[0] == (lease, 20_000, 500)
    solo.run_until(30.5)  # the leased keys are gone
    assert decode_lease_list(solo.call(Op.LEASE_LIST).body) == [(77, 50_000, 29_500)]
    assert decode_key_value(b"z", solo.call(Op.GET, b"z").body).value == b"3"
    assert solo.call(Op.GET, b"x", flags=Flag.WITH_LEASE).status == ReplyStatus.NOT_FOUND


def test_long_leases_are_checkpointed_every_interval() -> None:
    solo = Solo()
    clock = solo.driver.lease_clock
    long_lease = solo.grant(100_000)  # at 10: runs out at 110
    # The leader looks for stale leases once per interval, counted from its election:
    # the first look at least an interval after the grant records the lease.
    first_look = clock._last_checkpoint + CI
    while first_look < 10.0 + CI:
        first_look += CI
    solo.run_until(first_look - STEP)
    assert solo.entries(LeaseCheckpoint) == []
    solo.run_until(first_look)
    left = 100_000 - int((first_look - 10.0) * 1000)
    [(_, first)] = solo.entries(LeaseCheckpoint)
    assert isinstance(first, LeaseCheckpoint)
    assert first.remaining == ((long_lease, left),)
    # Applied: the table now records the time left, which a restart would start from.
    recorded = solo.sm.leases.get(long_lease)
    assert recorded is not None and recorded.remaining_ms == left
    # The time left on the clock is not affected (the leader keeps its own deadline).
    assert clock.remaining_ms(long_lease, solo.now) == left
    solo.run_until(first_look + 3 * CI)
    times = [c.remaining for _, c in solo.entries(LeaseCheckpoint)]
    assert times == [((long_lease, left - int(k * CI * 1000)),) for k in range(4)]
    # A lease kept alive more often than the interval is never checkpointed.
    busy = solo.grant(100_000)
    for _ in range(6):
        solo.advance(CI / 2)
        solo.call(Op.LEASE_KEEP_ALIVE, limit=busy)
    checkpoints = solo.entries(LeaseCheckpoint)
    assert len(checkpoints) == 7
    named = {lease for _, c in checkpoints for lease, _ in c.remaining}
    assert named == {long_lease}


def test_leases_restored_at_start_are_timed_from_the_first_turn() -> None:
    """A node that starts from a state with leases times them from its first tick or
    turn, with the time left that the state recorded."""
    solo = Solo()
    lease = solo.grant(100_000)
    solo.run_until(10.0 + 2 * CI)  # checkpointed once
    recorded = solo.sm.leases.get(lease)
    assert recorded is not None and recorded.remaining_ms < 100_000 - CI * 1000
    state = solo.sm.snapshot()
    restored = KVStateMachine()
    restored.restore(state)
    config = Entry(1, 1, ENTRY_CONFIG, Membership.of([1]).encode(encode_addresses({1: ME})))
    initial = InitialState(HardState(term=1), None, 0, 0, [config])
    host = RecordingHost()
    driver = Driver(
        RaftCore(RaftConfig(node_id=1), random.Random(3), initial),
        restored,
        host,
        lease_settings(1),
        random.Random(4),
    )
    host.driver = driver
    driver.tick(500.0)  # a tick before the first turn times nothing yet
    assert len(driver.lease_clock) == 0
    driver.process(500.0)
    assert driver.lease_clock.remaining_ms(lease, 500.0) == recorded.remaining_ms
    assert driver.lease_clock.remaining_ms(lease, 510.0) == recorded.remaining_ms - 10_000


@dataclass
class _Run:
    replies: list[tuple[int, int, bytes]] = field(default_factory=list)
    entries: list[tuple[int, int, bytes]] = field(default_factory=list)
    timed: list[float] = field(default_factory=list)


def _scripted_run() -> _Run:
    """Grants, leased puts, keep-alives, reads and expiries, all at given times."""
    run = _Run()
    solo = Solo()
    lease = solo.grant(20_000)
    solo.put(b"a", b"1", lease=lease)
    solo.put(b"t", b"2", ttl_ms=7_000)
    for _ in range(3):
        solo.advance(6.0)
        reply = solo.call(Op.LEASE_KEEP_ALIVE, limit=lease)
        run.replies.append((reply.status, reply.index, reply.body))
    for request in (
        (Op.LEASE_LIST,),
        (Op.LEASE_INFO, b"", b""),
    ):
        reply = solo.call(*request, limit=lease)
        run.replies.append((reply.status, reply.index, reply.body))
    reply = solo.call(Op.GET, b"a", flags=Flag.WITH_LEASE)
    run.replies.append((reply.status, reply.index, reply.body))
    solo.advance(40.0)
    run.entries = [(e.index, e.term, e.data) for e in solo.host.appended]
    return run


def test_the_driver_takes_its_time_only_from_its_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's clock may jump (NTP, suspend, a VM migrating): the driver must not
    notice, since it reads no clock. The same script with wildly jumping system clocks
    gives the same entries and the same answers, to the millisecond."""
    expected = _scripted_run()
    expired = [i for i, _, data in expected.entries if isinstance(decode_data(data), LeaseExpire)]
    assert len(expired) == 2, "the script should expire both leases"

    jumps = iter(range(10**9))

    def jumping() -> float:
        step = next(jumps)
        return float((-1) ** step * 1e6 * step)  # back and forth by ever larger leaps

    def jumping_ns() -> int:
        return int(jumping() * 1e9)

    for name in ("time", "monotonic", "perf_counter", "process_time"):
        monkeypatch.setattr(time, name, jumping)
    for name in ("time_ns", "monotonic_ns", "perf_counter_ns"):
        monkeypatch.setattr(time, name, jumping_ns)
    assert _scripted_run() == expected


def test_the_metrics_clock_decides_nothing() -> None:
    """The ``clock`` a host passes the driver times apply batches for metrics only."""
    ticks = iter(range(10**9))
    jumpy = Solo(clock=lambda: float((-1) ** next(ticks) * 1e9))
    steady = Solo()
    for solo in (jumpy, steady):
        lease = solo.grant(20_000)
        solo.put(b"a", b"1", lease=lease)
        solo.run_until(29.75)
        assert solo.exists(b"a")
        solo.run_until(30.0)
        assert not solo.exists(b"a")
    assert [e.data for e in jumpy.host.appended] == [e.data for e in steady.host.appended]


def test_the_lease_clock_module_reads_no_clock_and_does_no_io() -> None:
    from pathlib import Path

    source = (Path(raftkv.node.__file__).parent / "lease_clock.py").read_text()
    assert impurities(source) == []


# ---------------------------------------------------------------------- three nodes


class Peer:
    """One of three drivers; as its host it sends into the trio's queue and syncs at
    once."""

    def __init__(self, trio: Trio, node_id: int, entries: list[Entry]) -> None:
        self.trio = trio
        self.id = node_id
        initial = InitialState(HardState(term=1), None, 0, 0, entries)
        config = RaftConfig(node_id=node_id, election_ticks=10, heartbeat_ticks=2)
        core = RaftCore(config, random.Random(node_id * 31), initial)
        self.driver = Driver(
            core, KVStateMachine(), self, lease_settings(node_id), random.Random(node_id)
        )
        self.appended: list[Entry] = []

    @property
    def role(self) -> Role:
        return self.driver.core.role

    def has(self, lease_id: int) -> bool:
        return lease_id in self.driver.sm.leases

    # DriverHost
    @property
    def addresses(self) -> Mapping[int, NodeAddress]:
        return {}

    @property
    def cluster_id(self) -> int:
        return 7

    def send(self, messages: list[RaftMessage]) -> None:
        self.trio.queue.extend(messages)

    def save_hard_state(self, state: HardState) -> None:
        pass

    def append(self, entries: list[Entry]) -> None:
        self.appended.extend(entries)

    def start_sync(self) -> None:
        self.driver.synced()

    def install_snapshot(self, snapshot: Snapshot) -> SnapshotRecord:
        raise AssertionError("no snapshots here")

    def start_snapshot(self, meta: SnapshotMeta) -> None:
        raise AssertionError("no snapshots here")

    def compact_log(self, index: int, term: int) -> None:
        pass

    def config_applied(self, entry: Entry, membership: Membership, context: bytes) -> None:
        pass

    def joined(self) -> None:
        pass

    def leader_changed(self, leader_id: int, term: int) -> None:
        pass

    def apply_timed(self, seconds: float) -> None:
        pass


class Trio:
    """Three drivers on a manual network: messages wait in ``queue`` until delivered;
    links in ``cut`` lose them."""

    def __init__(self) -> None:
        self.queue: list[RaftMessage] = []
        self.cut: set[tuple[int, int]] = set()
        self.now = 0.0
        config = Entry(1, 1, ENTRY_CONFIG, Membership.of([1, 2, 3]).encode())
        self.peers = {i: Peer(self, i, [config]) for i in (1, 2, 3)}
        self._ids = 0
        self._seq = 0
        while self.leader() is None:
            self.advance(STEP)
        self.run_until(10.0)

    def leader(self) -> Peer | None:
        leaders = [p for p in self.peers.values() if p.role is Role.LEADER]
        return max(leaders, key=lambda p: p.driver.core.term) if leaders else None

    def isolate(self, node_id: int) -> None:
        others = set(self.peers) - {node_id}
        self.cut |= {(node_id, o) for o in others} | {(o, node_id) for o in others}

    def deliver(self) -> None:
        for _ in range(100):
            if not self.queue:
                return
            batch, self.queue = self.queue, []
            for message in batch:
                if (message.sender, message.recipient) in self.cut:
                    continue
                peer = self.peers[message.recipient]
                peer.driver.step([message])
                peer.driver.process(self.now)
        raise AssertionError("messages kept flowing")

    def tick(self, only: set[int] | None = None) -> None:
        for peer in self.peers.values():
            if only is None or peer.id in only:
                peer.driver.tick(self.now)
                peer.driver.process(self.now)

    def advance(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until(self, until: float, check: Callable[[], None] | None = None) -> None:
        while self.now < until:
            self.now = min(self.now + STEP, until)
            self.tick()
            self.deliver()
            if check is not None:
                check()

    def submit(
        self,
        peer: Peer,
        op: int,
        replies: list[ClientReply],
        value: bytes = b"",
        limit: int = 0,
        flags: int = 0,
    ) -> None:
        self._ids += 1
        self._seq += 1
        request = ClientRequest(
            self._ids,
            op,
            value=value,
            client_id=5,
            seq=self._seq,
            first_incomplete=self._seq,
            limit=limit,
            flags=flags,
        )
        peer.driver.submit(request, replies.append, self.now)
        peer.driver.process(self.now)


def test_a_lease_survives_a_leader_change_and_then_expires() -> None:
    trio = Trio()
    old = trio.leader()
    assert old is not None
    replies: list[ClientReply] = []
    trio.submit(old, Op.LEASE_GRANT, replies, value=LEASE_GRANT_FIELDS.pack(9, 30_000))
    trio.deliver()
    assert [r.status for r in replies] == [ReplyStatus.OK]
    granted_at = trio.now  # every node applied the grant now: the lease ends at +30 s
    assert all(p.has(9) for p in trio.peers.values())

    # Followers report no less time left than the leader.
    trio.advance(5.0)
    for peer in trio.peers.values():
        reply: list[ClientReply] = []
        trio.submit(peer, Op.LEASE_INFO, reply, limit=9, flags=Flag.STALE_READ)
        assert decode_lease_info(reply[0].body)[2] == 25_000

    trio.isolate(old.id)
    trio.run_until(granted_at + 12.0)
    new = trio.leader()
    assert new is not None and new is not old

    def never_early() -> None:
        if trio.now < granted_at + 30.0:
            assert all(p.has(9) for p in trio.peers.values()), f"expired at {trio.now}"

    trio.run_until(granted_at + 30.0 + ET - STEP, check=never_early)
    assert new.has(9)  # the new leader added one election timeout
    trio.run_until(granted_at + 30.0 + ET + 1.0)
    assert not new.has(9)
    # The deposed leader, cut off, cannot expire anything; healed, it learns of it.
    assert old.has(9)
    trio.cut.clear()
    trio.advance(3.0)
    assert not any(p.has(9) for p in trio.peers.values())


def test_a_checkpoint_never_undoes_a_keep_alive_committed_before_it() -> None:
    """A keep-alive the leader has appended but not yet applied when it writes a
    checkpoint sits before the checkpoint in the log. The checkpoint's time left was
    measured without it: a follower that applied the keep-alive and then took the
    checkpoint's earlier deadline, and then became leader, expired the lease long
    before the keep-alive's TTL was up."""
    trio = Trio()
    leader = trio.leader()
    assert leader is not None
    replies: list[ClientReply] = []
    trio.submit(leader, Op.LEASE_GRANT, replies, value=LEASE_GRANT_FIELDS.pack(4, 30_000))
    # A second lease, left alone: the checkpoint below is written for it in any case.
    trio.submit(leader, Op.LEASE_GRANT, [], value=LEASE_GRANT_FIELDS.pack(5, 90_000))
    trio.deliver()
    granted_at = trio.now
    assert [r.status for r in replies] == [ReplyStatus.OK]

    # Just before the leader's first checkpoint of the lease (it looks once per interval
    # from its election) a keep-alive arrives; it is replicated, but not acknowledged in
    # time...
    look = leader.driver.lease_clock._last_checkpoint + CI
    while look < granted_at + CI:
        look += CI
    trio.run_until(look - STEP)
    assert not any(isinstance(decode(e), LeaseCheckpoint) for e in leader.appended)
    trio.now = look - STEP / 2
    trio.submit(leader, Op.LEASE_KEEP_ALIVE, replies, limit=4)
    sent_at = trio.now
    held, trio.queue = trio.queue, []
    # ... before the leader looks for leases to checkpoint.
    trio.now = look
    trio.tick(only={leader.id})
    trio.queue[:0] = held
    trio.deliver()
    assert [r.status for r in replies] == [ReplyStatus.OK, ReplyStatus.OK]
    [keep_alive] = [e.index for e in leader.appended if isinstance(decode(e), LeaseKeepAlive)]
    [(at, checkpoint)] = [
        (e.index, c) for e in leader.appended if isinstance(c := decode(e), LeaseCheckpoint)
    ]
    assert at > keep_alive
    # It records the lease nothing renewed, not the one renewed after it looked.
    assert [lease for lease, _ in checkpoint.remaining] == [5]

    # Leadership moves to a follower that applied both.
    follower = next(p for p in trio.peers.values() if p is not leader)
    trio.submit(leader, Op.TRANSFER_LEADER, [], limit=follower.id)
    trio.deliver()
    trio.advance(2.0)
    assert trio.leader() is follower

    def never_early() -> None:
        if trio.now < sent_at + 30.0:
            assert follower.has(4), (
                f"lease expired at {trio.now}, keep-alive sent at {sent_at} with TTL 30"
            )

    trio.run_until(sent_at + 30.0, check=never_early)
    trio.run_until(sent_at + 30.0 + ET + 1.0)
    assert not any(p.has(4) for p in trio.peers.values())
