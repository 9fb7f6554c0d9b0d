"""Linearizable reads without writing to the log: ReadIndex, thesis §6.4.

1. The leader needs an entry of its own term committed to know the commit index.
2. It records the commit index as the read index,
3. confirms it is still leader with one heartbeat round acknowledged by a quorum
   (shared by every read waiting at that moment),
4. and the read may be served once applied reaches the read index.
"""

from __future__ import annotations

from raftkv.raft import ReadState, Role
from raftkv_ext.codec import AppendEntries, ReadIndex, ReadIndexResponse

from .harness import ELECTION_TICKS, HEARTBEAT_TICKS, Cluster, of_type


def test_6_4_new_leader_answers_reads_only_once_its_no_op_commits() -> None:
    cluster = Cluster()
    cluster.campaign(1)
    cluster.stabilize(drop=lambda m: isinstance(m, AppendEntries))  # no-op held back
    leader = cluster[1]
    assert leader.role is Role.LEADER and leader.committed < leader.last_index
    cluster.read_index(1, b"r")
    cluster.stabilize()  # nothing is in flight: the read waits on the leader
    assert cluster.nodes[1].reads == []
    # The next heartbeat round lets the no-op through; then the read gets an index at
    # (not before) the no-op.
    cluster.tick([1], times=HEARTBEAT_TICKS)
    assert leader.committed == leader.last_index == 2
    assert cluster.nodes[1].reads == [ReadState(b"r", 2)]


def test_6_4_reads_waiting_together_share_one_heartbeat_round() -> None:
    cluster = Cluster()
    leader = cluster.elect(1)
    for batch in (5, 3):
        start = len(cluster.sent)
        contexts = [b"read-%d-%d" % (batch, i) for i in range(batch)]
        for context in contexts:
            leader.read_index(context)
        cluster.nodes[1].process()
        cluster.stabilize()
        appends = of_type(cluster.sent[start:], AppendEntries, sender=1)
        # One message per follower, however many reads: one round.
        assert sorted(m.recipient for m in appends) == [2, 3]
        assert len({m.round for m in appends}) == 1
        served = cluster.nodes[1].reads[-batch:]
        assert served == [ReadState(c, leader.committed) for c in contexts]


def test_6_4_read_index_is_the_commit_index_when_the_read_arrives() -> None:
    cluster = Cluster()
    leader = cluster.elect(1)
    cluster.propose(1, b"x")
    cluster.stabilize()
    at_request = leader.committed
    cluster.read_index(1, b"r")
    # A write that commits during the confirmation round does not move the read index:
    # serving at the earlier index is already linearizable.
    later = cluster.propose(1, b"y")
    cluster.stabilize()
    assert leader.committed == later
    assert cluster.nodes[1].reads == [ReadState(b"r", at_request)]


def test_6_4_follower_read_asks_the_leader_and_gets_a_read_state() -> None:
    cluster = Cluster()
    leader = cluster.elect(1)
    start = len(cluster.sent)
    cluster.read_index(2, b"f")
    cluster.stabilize()
    since = cluster.sent[start:]
    assert [(m.sender, m.recipient) for m in of_type(since, ReadIndex)] == [(2, 1)]
    (answer,) = of_type(since, ReadIndexResponse)
    assert (answer.recipient, answer.success) == (2, True)
    assert cluster.nodes[2].reads == [ReadState(b"f", leader.committed)]


def test_6_4_follower_without_a_leader_drops_the_read_at_once() -> None:
    cluster = Cluster()
    cluster.read_index(2, b"f")
    assert cluster.nodes[2].dropped_reads == [b"f"]
    assert cluster.queue == []


def test_6_4_a_deposed_leaders_pending_reads_are_dropped() -> None:
    cluster = Cluster()
    cluster.elect(1)
    cluster.isolate(1)
    cluster.read_index(1, b"r")
    new_leader = cluster.wait_for_leader([2, 3])
    cluster.heal()
    cluster.tick([new_leader], times=HEARTBEAT_TICKS)  # its heartbeat deposes node 1
    assert cluster[1].role is Role.FOLLOWER
    assert cluster.nodes[1].dropped_reads == [b"r"]
    assert cluster.nodes[1].reads == []


def test_6_4_leader_cut_off_from_the_majority_never_confirms_a_read() -> None:
    # Without check-quorum the cut-off leader waits forever, and must not answer.
    cluster = Cluster(check_quorum=False)
    cluster.elect(1)
    cluster.isolate(1)
    cluster.read_index(1, b"r")
    cluster.tick([1], times=10 * ELECTION_TICKS)
    assert cluster[1].role is Role.LEADER
    assert cluster.nodes[1].reads == []
    # With check-quorum it steps down and fails the read instead.
    cluster = Cluster(check_quorum=True)
    cluster.elect(1)
    cluster.isolate(1)
    cluster.read_index(1, b"r")
    cluster.tick([1], times=2 * ELECTION_TICKS)
    assert cluster.nodes[1].reads == []
    assert cluster.nodes[1].dropped_reads == [b"r"]
