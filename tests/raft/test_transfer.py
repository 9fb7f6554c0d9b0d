"""Leadership transfer, thesis §3.10: catch the target up, then TimeoutNow."""

from __future__ import annotations

import pytest

from raftkv.raft import ForwardResult, ProposalDroppedError, Role
from raftkv_ext.codec import AppendEntriesResponse, TimeoutNow

from .harness import ELECTION_TICKS, HEARTBEAT_TICKS, Cluster, of_type


def cluster_with_lagging_node_3() -> Cluster:
    cluster = Cluster()
    cluster.elect(1)
    cluster.isolate(3)
    for i in range(5):
        cluster.propose(1, b"cmd-%d" % i)
    cluster.stabilize()
    assert cluster[3].last_index < cluster[1].last_index
    return cluster


def transfer(cluster: Cluster, source: int, target: int) -> None:
    cluster[source].transfer_leadership(target)
    cluster.nodes[source].process()


def test_3_10_target_is_caught_up_then_told_to_campaign_and_wins() -> None:
    cluster = cluster_with_lagging_node_3()
    cluster.heal()
    old_term, last = cluster[1].term, cluster[1].last_index
    start = len(cluster.sent)
    transfer(cluster, 1, 3)
    # The entries node 3 missed count as in flight until the next heartbeat round shows
    # they were lost; then the leader resends them.
    cluster.tick([1], times=HEARTBEAT_TICKS)
    since = cluster.sent[start:]
    (timeout_now,) = of_type(since, TimeoutNow)
    assert (timeout_now.sender, timeout_now.recipient) == (1, 3)
    # TimeoutNow went out only after node 3 acknowledged the leader's whole log, so it
    # could win the election it was asked to start.
    caught_up = of_type(since, AppendEntriesResponse, sender=3, success=True, index=last)
    assert caught_up and since.index(caught_up[0]) < since.index(timeout_now)
    assert cluster.leaders() == [3]
    assert cluster[3].term == old_term + 1
    assert all(cluster[n].leader_id == 3 for n in cluster.nodes)


def test_3_10_proposals_are_refused_while_a_transfer_is_under_way() -> None:
    cluster = cluster_with_lagging_node_3()
    transfer(cluster, 1, 3)
    with pytest.raises(ProposalDroppedError):
        cluster[1].propose([b"x"])
    # So are proposals forwarded by a follower.
    cluster[2].forward(9, [b"y"])
    cluster.nodes[2].process()
    cluster.stabilize()
    assert cluster.nodes[2].forwarded == [ForwardResult(9, 0, cluster[1].term, False)]


def test_3_10_transfer_to_an_unreachable_target_is_abandoned_after_an_election_timeout() -> None:
    cluster = cluster_with_lagging_node_3()
    leader = cluster[1]
    term = leader.term
    transfer(cluster, 1, 3)
    cluster.tick([1, 2], times=ELECTION_TICKS - 1)
    assert leader.lead_transferee == 3
    cluster.tick([1, 2])
    assert leader.lead_transferee == 0
    # The leader leads on, in the same term, and takes proposals again.
    assert (leader.role, leader.term) == (Role.LEADER, term)
    index = cluster.propose(1, b"x")
    cluster.stabilize()
    assert leader.committed == index


def test_3_10_best_target_is_the_most_up_to_date_voter_and_learners_are_refused() -> None:
    cluster = Cluster(voters=(1, 2, 3), learners=(4,))
    leader = cluster.elect(1)
    cluster.isolate(3)
    cluster.propose(1, b"x")
    cluster.stabilize()
    # Node 2 holds everything, node 3 misses an entry, node 4 cannot be elected.
    assert leader.best_transfer_target() == 2
    with pytest.raises(ValueError):
        leader.transfer_leadership(4)
    assert leader.lead_transferee == 0
