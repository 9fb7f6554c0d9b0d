"""Log compaction and InstallSnapshot, Raft paper §7 (snapshot sent in chunks, Figure 13)."""

from __future__ import annotations

from raftkv.raft import Membership, Snapshot, SnapshotMeta
from raftkv_ext.codec import InstallSnapshot, InstallSnapshotResponse
from raftkv_ext.entry import ENTRY_NORMAL

from .harness import ELECTION_TICKS, Cluster, DropRule, of_type

CHUNK = 16
STATE = bytes(range(100))  # 7 chunks of at most 16 bytes


def snapshot_behind_follower(entries: int = 10) -> tuple[Cluster, SnapshotMeta]:
    """Node 3 misses ``entries`` commands; the leader then snapshots and compacts its log,
    so it can no longer send node 3 the entries it lacks."""
    cluster = Cluster(snapshot_chunk_bytes=CHUNK)
    cluster.elect(1)
    cluster.isolate(3)
    for i in range(entries):
        cluster.propose(1, b"cmd-%d" % i)
    cluster.stabilize()
    meta = cluster.nodes[1].take_snapshot(STATE)
    assert cluster[1].log.boundary_index == meta.index == 2 + entries
    cluster.heal()
    return cluster, meta


def catch_up(cluster: Cluster, drop: DropRule | None = None) -> None:
    """Run the leader's heartbeats until node 3 has everything the leader has."""
    for _ in range(4 * ELECTION_TICKS):
        cluster.tick([1], drop=drop)
        if cluster[3].last_index == cluster[1].last_index:
            return
    raise AssertionError("node 3 never caught up")


def test_7_lagging_follower_gets_the_snapshot_in_chunks() -> None:
    cluster, meta = snapshot_behind_follower()
    start = len(cluster.sent)
    catch_up(cluster)
    chunks = of_type(cluster.sent[start:], InstallSnapshot, recipient=3)
    assert [c.offset for c in chunks] == list(range(0, len(STATE), CHUNK))
    assert [c.done for c in chunks] == [False] * 6 + [True]
    assert all(len(c.data) <= CHUNK and c.total_size == len(STATE) for c in chunks)

    follower = cluster.nodes[3]
    (installed,) = [r.snapshot for r in follower.readys if r.snapshot is not None]
    assert installed == Snapshot(meta, STATE)
    assert installed.meta.membership == Membership.of([1, 2, 3])
    assert follower.store.snapshot == installed
    assert cluster[3].log.boundary_index == meta.index
    # Replication carries on after the snapshot.
    index = cluster.propose(1, b"after")
    cluster.stabilize()
    assert [e.data for e in follower.applied if e.type == ENTRY_NORMAL] == [b"after"]
    assert cluster[3].committed == index


def test_7_lost_chunk_is_sent_again() -> None:
    cluster, meta = snapshot_behind_follower()
    lost: list[InstallSnapshot] = []

    def lose_third_chunk_once(m: object) -> bool:
        if isinstance(m, InstallSnapshot) and m.offset == 2 * CHUNK and not lost:
            lost.append(m)
            return True
        return False

    start = len(cluster.sent)
    catch_up(cluster, drop=lose_third_chunk_once)
    assert lost
    assert len(of_type(cluster.sent[start:], InstallSnapshot, offset=2 * CHUNK)) == 2
    (installed,) = [r.snapshot for r in cluster.nodes[3].readys if r.snapshot is not None]
    assert installed == Snapshot(meta, STATE)


def test_7_lost_final_acknowledgement_does_not_install_twice() -> None:
    cluster, meta = snapshot_behind_follower()
    lost: list[InstallSnapshotResponse] = []

    def lose_final_ack_once(m: object) -> bool:
        if isinstance(m, InstallSnapshotResponse) and m.done and not lost:
            lost.append(m)
            return True
        return False

    catch_up(cluster, drop=lose_final_ack_once)
    assert lost
    installs = [r.snapshot for r in cluster.nodes[3].readys if r.snapshot is not None]
    assert installs == [Snapshot(meta, STATE)]


def follower_with_ten_entries() -> Cluster:
    cluster = Cluster()
    cluster.rewrite_disk(2, [2] * 9, term=2)  # entries 1..10; 2..10 in term 2
    return cluster


def chunk(snap_index: int, snap_term: int, data: bytes) -> InstallSnapshot:
    config = Membership.of([1, 2, 3]).encode()
    return InstallSnapshot(1, 2, 2, snap_index, snap_term, config, 0, len(data), data, True)


def test_7_follower_keeps_the_entries_that_follow_a_snapshot_it_already_holds() -> None:
    cluster = follower_with_ten_entries()
    replies = cluster.inject(chunk(5, 2, b"state@5"))
    core, node = cluster[2], cluster.nodes[2]
    (ready,) = [r for r in node.readys if r.snapshot is not None]
    assert ready.snapshot == Snapshot(SnapshotMeta(5, 2, Membership.of([1, 2, 3])), b"state@5")
    # §7: "If existing log entry has same index and term as snapshot's last included
    # entry, retain log entries following it."
    assert [e.index for e in core.log.entries] == [6, 7, 8, 9, 10]
    assert core.last_index == 10 and core.committed == 5
    assert (node.store.boundary_index, [e.index for e in node.store.entries]) == (
        5,
        [6, 7, 8, 9, 10],
    )
    # Installing is a durable change: the answer waits for the disk (persisted_messages).
    assert of_type(ready.persisted_messages, InstallSnapshotResponse, done=True) != []
    assert of_type(replies, InstallSnapshotResponse, success=True, done=True) != []


def test_7_follower_discards_its_log_when_the_snapshot_disagrees_with_it() -> None:
    cluster = follower_with_ten_entries()
    cluster.inject(chunk(5, 3, b"state@5"))  # our entry 5 has term 2, not 3
    core, node = cluster[2], cluster.nodes[2]
    assert core.log.entries == []
    assert (core.last_index, core.log.last_term, core.committed) == (5, 3, 5)
    assert (node.store.boundary_index, node.store.entries) == (5, [])
