"""Cluster membership changes, Raft paper §6 (joint consensus) and thesis §4.2.2
(a removed leader steps down) and §4.2.1 (learners: non-voting members that catch up).
"""

from __future__ import annotations

import pytest

from raftkv.raft import Membership, ProposalDroppedError, Role
from raftkv_ext.codec import AppendEntries, RequestVote
from raftkv_ext.entry import ENTRY_CONFIG, ENTRY_NORMAL

from .harness import Cluster, of_type

OLD = frozenset({1, 2, 3})
NEW = frozenset({1, 4, 5})


def configs(cluster: Cluster, node_id: int) -> list[tuple[int, Membership]]:
    """The configuration entries in a node's log, decoded."""
    return [
        (e.index, Membership.decode(e.data)[0])
        for e in cluster[node_id].log.entries
        if e.type == ENTRY_CONFIG
    ]


def start_replacing_two_of_three(cut: set[int]) -> tuple[Cluster, int]:
    """{1,2,3} -> {1,4,5}, with the nodes in ``cut`` unreachable. Returns the joint index."""
    cluster = Cluster(voters=(1, 2, 3), spares=(4, 5))
    cluster.elect(1)
    for node_id in cut:
        cluster.isolate(node_id)
    joint = cluster[1].change_membership(NEW)
    cluster.nodes[1].process()
    cluster.stabilize()
    return cluster, joint


@pytest.mark.parametrize(
    "cut",
    [pytest.param({4, 5}, id="old-majority-only"), pytest.param({2, 3}, id="new-majority-only")],
)
def test_6_joint_configuration_commits_only_with_a_majority_of_both(cut: set[int]) -> None:
    cluster, joint = start_replacing_two_of_three(cut)
    leader = cluster[1]
    assert leader.membership == Membership(voters=NEW, outgoing=OLD)
    reachable = {1, 2, 3, 4, 5} - cut
    # Every reachable node holds the joint entry: a plain majority of the five nodes,
    # and of one of the two configurations; yet it is not committed.
    assert all(cluster[n].last_index >= joint for n in reachable)
    assert leader.committed < joint
    # As soon as the other side answers too, it commits.
    cluster.heal()
    cluster.tick([1], times=2)
    assert leader.committed >= joint


def test_6_leader_appends_c_new_after_c_old_new_commits() -> None:
    cluster, joint = start_replacing_two_of_three(cut=set())
    leader = cluster[1]
    # The leader did not wait to be asked: C_new follows C_old,new right away.
    assert configs(cluster, 1)[-2:] == [
        (joint, Membership(voters=NEW, outgoing=OLD)),
        (joint + 1, Membership(voters=NEW)),
    ]
    assert leader.committed >= joint + 1
    assert leader.role is Role.LEADER
    for node_id in NEW:
        assert cluster[node_id].membership == Membership(voters=NEW)
    # Under C_new alone, nodes 2 and 3 no longer matter for commitment.
    cluster.crash(2)
    cluster.crash(3)
    index = cluster.propose(1, b"after")
    cluster.stabilize()
    assert leader.committed == index
    assert [e.data for e in cluster.nodes[4].applied if e.index == index] == [b"after"]


def test_6_learner_replicates_but_never_votes_or_counts_toward_quorum() -> None:
    cluster = Cluster(voters=(1, 2, 3), learners=(4,))
    start = len(cluster.sent)
    cluster.elect(1)
    # Nobody asks the learner for a vote.
    assert {m.recipient for m in of_type(cluster.sent[start:], RequestVote)} == {2, 3}
    first = cluster.propose(1, b"x")
    cluster.stabilize()
    assert [e.data for e in cluster.nodes[4].applied if e.index == first] == [b"x"]
    # Leader plus learner are two of four nodes holding the entry, but only one of the
    # three voters: not committed.
    cluster.isolate(2)
    cluster.isolate(3)
    second = cluster.propose(1, b"y")
    cluster.stabilize()
    assert cluster[4].last_index == second
    assert cluster[1].committed == first
    # Left alone, the learner never starts an election.
    cluster.heal()
    cluster.isolate(4)
    learner = cluster[4]
    term, sent = learner.term, len(cluster.sent)
    cluster.tick([4], times=10 * learner.config.election_ticks)
    assert (learner.role, learner.term) == (Role.FOLLOWER, term)
    assert [m for m in cluster.sent[sent:] if m.sender == 4] == []


def test_6_adding_a_learner_is_a_single_step() -> None:
    cluster = Cluster(voters=(1, 2, 3), spares=(4,))
    cluster.elect(1)
    index = cluster[1].change_membership(OLD, learners={4})
    cluster.nodes[1].process()
    cluster.stabilize()
    # The voters do not change, so there is no joint phase.
    assert configs(cluster, 1)[-1] == (index, Membership(voters=OLD, learners=frozenset({4})))
    assert cluster[1].committed >= index
    assert cluster[4].log.entries == cluster[1].log.entries


def test_6_promoted_learner_votes_and_counts_toward_quorum() -> None:
    cluster = Cluster(voters=(1, 2, 3), learners=(4,))
    cluster.elect(1)
    cluster[1].change_membership({1, 2, 3, 4})
    cluster.nodes[1].process()
    cluster.stabilize()
    for node_id in cluster.nodes:
        assert cluster[node_id].membership == Membership(voters=frozenset({1, 2, 3, 4}))
    # Four voters need three: with 3 and 4 down, nodes 1 and 2 (a majority of the old
    # {1,2,3}) can no longer commit.
    cluster.crash(3)
    cluster.crash(4)
    index = cluster.propose(1, b"x")
    cluster.stabilize()
    assert cluster[1].committed < index
    # And the former learner can now lead (thesis §3.10 transfer: it campaigns on request).
    cluster.restart(3)
    cluster.restart(4)
    cluster.tick([1], times=2)
    cluster[1].transfer_leadership(4)
    cluster.nodes[1].process()
    cluster.stabilize()
    assert cluster.leaders() == [4]


def test_4_2_2_leader_removed_by_c_new_steps_down_once_c_new_commits() -> None:
    cluster = Cluster(voters=(1, 2, 3))
    leader = cluster.elect(1)
    joint = leader.change_membership({2, 3})
    cluster.nodes[1].process()
    c_new = joint + 1
    # Until C_new commits, node 1 keeps leading (it manages a cluster it is not in).
    while cluster.queue:
        cluster.deliver()
        if leader.last_index >= c_new and leader.committed < c_new:
            assert leader.role is Role.LEADER
    assert leader.committed >= c_new
    assert leader.role is Role.FOLLOWER
    assert not leader.is_promotable
    # The remaining two elect a leader of their own and commit without node 1.
    new_leader = cluster.wait_for_leader([2, 3])
    index = cluster.propose(new_leader, b"x")
    cluster.stabilize()
    assert cluster[new_leader].committed == index
    assert leader.last_index < index


def test_6_a_second_change_is_refused_while_one_is_pending() -> None:
    cluster = Cluster(voters=(1, 2, 3), spares=(4, 5))
    leader = cluster.elect(1)
    leader.change_membership(OLD, learners={4})
    with pytest.raises(ProposalDroppedError):
        leader.change_membership(OLD, learners={4, 5})
    cluster.nodes[1].process()
    cluster.stabilize()
    # Committed: the next change is welcome. A voter change goes through C_old,new, and
    # nothing else may start until its C_new has committed too.
    leader.change_membership({1, 2, 3, 4})
    with pytest.raises(ProposalDroppedError):
        leader.change_membership(OLD, learners={4, 5})
    cluster.nodes[1].process()
    cluster.deliver()
    cluster.deliver()  # the joint entry commits; C_new is appended but not yet committed
    assert leader.membership == Membership(voters=frozenset({1, 2, 3, 4}))
    with pytest.raises(ProposalDroppedError):
        leader.change_membership(OLD, learners={4, 5})
    cluster.stabilize()
    leader.change_membership({1, 2, 3, 4}, learners={5})


def test_6_membership_survives_a_restart_from_the_log() -> None:
    cluster, _ = start_replacing_two_of_three(cut=set())
    for node_id in NEW:
        cluster.restart(node_id)
        assert cluster[node_id].membership == Membership(voters=NEW)
    # The restarted cluster elects under C_new and commits with nodes 1, 4 and 5 only.
    cluster.crash(2)
    cluster.crash(3)
    leader = cluster.wait_for_leader([1, 4, 5])
    index = cluster.propose(leader, b"x")
    cluster.stabilize()
    assert cluster[leader].committed == index


def test_7_membership_survives_a_restart_from_a_snapshot() -> None:
    cluster, _ = start_replacing_two_of_three(cut=set())
    cluster.propose(1, b"x")
    cluster.stabilize()
    node = cluster.nodes[4]
    meta = node.take_snapshot(b"state")
    assert meta.membership == Membership(voters=NEW)
    # The log no longer holds any configuration entry: only the snapshot knows.
    assert all(e.type == ENTRY_NORMAL for e in node.store.entries)
    assert node.store.boundary_index == meta.index
    cluster.restart(4)
    assert cluster[4].membership == Membership(voters=NEW)
    assert cluster[4].is_promotable


def test_6_elections_in_the_joint_configuration_need_both_majorities() -> None:
    # Nodes 2 and 3 hold C_old,new (uncommitted: 4 and 5 never got it), then the leader
    # crashes. 2 and 3 are a majority of C_old but nothing of C_new.
    cluster, joint = start_replacing_two_of_three(cut={4, 5})
    joint_term = cluster[1].term
    assert cluster[2].membership.is_joint and cluster[3].membership.is_joint
    cluster.crash(1)
    cluster.tick([2, 3, 4, 5], times=10 * cluster[2].config.election_ticks)
    assert cluster.leaders() == []
    # With 4 and 5 reachable, 2 or 3 can win both majorities. That leader completes the
    # change it inherited by appending C_new itself, then steps down (it is not in
    # C_new, thesis §4.2.2), and 4 or 5 take over.
    cluster.heal()
    final = cluster.wait_for_leader([2, 3, 4, 5])
    assert final in NEW
    (c_new,) = [
        e
        for e in cluster[final].log.entries
        if e.type == ENTRY_CONFIG and Membership.decode(e.data)[0] == Membership(voters=NEW)
    ]
    assert c_new.index > joint and c_new.term > joint_term
    first_carrier = next(m for m in of_type(cluster.sent, AppendEntries) if c_new in m.entries)
    assert first_carrier.sender in (2, 3)
    assert cluster[final].committed >= c_new.index
    assert cluster[2].role is Role.FOLLOWER and cluster[3].role is Role.FOLLOWER
