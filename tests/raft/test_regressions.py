"""Regression tests for bugs these tests found in the core (both fixed): each states the
rule it checks and the scenario that once broke it.
"""

from __future__ import annotations

from raftkv.raft import Role
from raftkv_ext.codec import AppendEntries, InstallSnapshot

from .harness import ELECTION_TICKS, Cluster, of_type


def test_6_2_9_6_follower_with_a_newer_term_still_gets_the_snapshot_it_needs() -> None:
    """A stale InstallSnapshot must be answered with the newer term, as a stale
    AppendEntries is; otherwise a leader that must send a snapshot never learns that its
    follower moved to a later term, and (with check-quorum leases making everyone ignore
    that follower's RequestVotes) the follower is shut out for good.
    """
    cluster = Cluster(pre_vote=False, check_quorum=True, snapshot_chunk_bytes=16)
    cluster.elect(1)
    cluster.isolate(3)
    for i in range(5):
        cluster.propose(1, b"cmd-%d" % i)
    cluster.stabilize()
    cluster.nodes[1].take_snapshot(b"state after five commands")
    # Cut off, node 3 stands in election after election: its term passes the leader's.
    cluster.tick([3], times=5 * ELECTION_TICKS)
    assert cluster[3].term > cluster[1].term
    cluster.heal()
    cluster.tick(times=20 * ELECTION_TICKS)
    leader = cluster.leader()
    # Node 3 is a healthy, connected voter: it must have caught up by now.
    assert cluster[3].last_index == cluster[leader].last_index, (
        f"node 3 (term {cluster[3].term}) stuck at {cluster[3].last_index}; leader "
        f"{leader} (term {cluster[leader].term}) sent "
        f"{len(of_type(cluster.sent, InstallSnapshot, recipient=3))} InstallSnapshot "
        "chunks that node 3 dropped without an answer"
    )


def test_4_2_2_a_node_outside_its_latest_configuration_still_campaigns_when_needed() -> None:
    """Thesis §4.2.2: "a server that is not part of its own latest configuration should
    still start new elections, as it might still be needed until the C_new entry is
    committed (as in Figure 4.6). It does not count its own vote in elections unless it
    is part of its latest configuration."

    Voters {1, 2} move to {2, 3}. Leader 1 commits C_old,new, appends C_new (which
    removes it) and crashes before anyone else gets C_new. Back up, node 1 has the most
    up-to-date log, so under C_old,new every election needs its vote (a majority of
    {1, 2} is both), and it refuses candidates with shorter logs. The core never lets
    node 1 campaign because C_new, uncommitted, says it is not a voter: with all three
    nodes up and the network whole, no leader is ever elected.
    """
    cluster = Cluster(voters=(1, 2), spares=(3,))
    leader = cluster.elect(1)
    joint = leader.change_membership({2, 3})
    cluster.nodes[1].process()
    c_new = joint + 1
    cluster.stabilize(
        drop=lambda m: isinstance(m, AppendEntries) and any(e.index >= c_new for e in m.entries)
    )
    assert leader.committed >= joint and leader.last_index == c_new
    assert cluster[2].last_index == cluster[3].last_index == joint
    cluster.restart(1)
    cluster.tick(times=30 * ELECTION_TICKS)
    assert any(cluster[n].role is Role.LEADER for n in (1, 2, 3)), (
        f"no leader: node 1 promotable={cluster[1].is_promotable} last={cluster[1].last_index}; "
        f"nodes 2, 3 last={cluster[2].last_index}, {cluster[3].last_index} "
        f"in {cluster[2].membership}"
    )
