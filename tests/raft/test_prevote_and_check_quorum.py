"""Guards against disruptive and deposed nodes: pre-vote (thesis §9.6), check-quorum
(thesis §6.2) and the leader lease that makes followers ignore needless elections
(thesis §4.2.3).
"""

from __future__ import annotations

from raftkv.raft import Role
from raftkv_ext.codec import RequestVote, RequestVoteResponse

from .harness import ELECTION_TICKS, Cluster, of_type


def test_9_6_isolated_node_with_pre_vote_neither_bumps_its_term_nor_disrupts() -> None:
    cluster = Cluster(pre_vote=True)
    leader = cluster.elect(1)
    term = leader.term
    cluster.isolate(3)
    cluster.tick(times=10 * ELECTION_TICKS)
    # It kept asking whether it could win (pre-votes), never moving to a new term.
    assert of_type(cluster.dropped, RequestVote, sender=3, pre_vote=True) != []
    assert of_type(cluster.sent, RequestVote, sender=3, pre_vote=False) == []
    assert cluster[3].term == term
    # Back in the cluster, it rejoins under the same leader and term.
    cluster.heal()
    cluster.tick(times=3 * ELECTION_TICKS)
    assert cluster.leaders() == [1]
    assert leader.term == term
    assert (cluster[3].role, cluster[3].leader_id, cluster[3].term) == (Role.FOLLOWER, 1, term)


def test_9_6_without_pre_vote_the_isolated_node_bumps_its_term_and_deposes_the_leader() -> None:
    cluster = Cluster(pre_vote=False)
    leader = cluster.elect(1)
    term = leader.term
    cluster.isolate(3)
    cluster.tick(times=10 * ELECTION_TICKS)
    isolated_term = cluster[3].term
    assert isolated_term >= term + 5  # one real election per timeout
    cluster.heal()
    cluster.tick(times=3 * ELECTION_TICKS)
    # Its higher term reached the leader (in answers to heartbeats) and forced an
    # election nobody needed, in a term beyond the one node 3 came back with.
    new_leader = cluster.wait_for_leader()
    assert cluster[new_leader].term > isolated_term


def test_9_6_a_granted_pre_vote_changes_nothing_on_the_voter() -> None:
    cluster = Cluster()
    voter = cluster[1]
    replies = cluster.inject(RequestVote(2, 1, 5, 1, 1, pre_vote=True))
    (answer,) = of_type(replies, RequestVoteResponse)
    assert answer.granted and answer.pre_vote and answer.term == 5
    assert (voter.term, voter.vote) == (1, 0)
    # Nothing to make durable, so nothing waits for the disk.
    assert cluster.nodes[1].readys[-1].hard_state is None


def ticks_until_step_down(cluster: Cluster, node_id: int, limit: int) -> int:
    core = cluster[node_id]
    for tick in range(1, limit + 1):
        cluster.tick()
        if core.role is not Role.LEADER:
            return tick
    raise AssertionError(f"node {node_id} still leads after {limit} ticks")


def test_6_2_leader_cut_off_from_the_majority_steps_down_within_two_timeouts() -> None:
    cluster = Cluster(check_quorum=True)
    leader = cluster.elect(1)
    cluster.tick(times=3)
    cluster.isolate(1)
    ticks = ticks_until_step_down(cluster, 1, limit=10 * ELECTION_TICKS)
    # Followers that answered before the cut count for the first check, not the next.
    assert ELECTION_TICKS < ticks <= 2 * ELECTION_TICKS
    assert (leader.role, leader.leader_id) == (Role.FOLLOWER, 0)


def test_6_2_without_check_quorum_a_cut_off_leader_keeps_believing() -> None:
    cluster = Cluster(check_quorum=False)
    leader = cluster.elect(1)
    cluster.isolate(1)
    cluster.tick([1], times=10 * ELECTION_TICKS)
    assert leader.role is Role.LEADER


def test_6_2_connected_leader_keeps_its_quorum() -> None:
    cluster = Cluster(check_quorum=True)
    leader = cluster.elect(1)
    term = leader.term
    cluster.tick(times=10 * ELECTION_TICKS)
    assert (leader.role, leader.term) == (Role.LEADER, term)


def test_4_2_3_follower_that_hears_from_a_leader_ignores_higher_term_vote_requests() -> None:
    cluster = Cluster(check_quorum=True)
    leader = cluster.elect(1)
    cluster.tick(times=2)
    follower = cluster[2]
    term, vote = follower.term, follower.vote
    # Node 3 (say, back from a partition) asks for a vote in a new term. Node 2 heard
    # from the leader within the minimum election timeout: it neither answers nor
    # adopts the term, so the leader is not disturbed.
    last = follower.last_index, follower.log.last_term
    assert cluster.inject(RequestVote(3, 2, term + 1, *last)) == []
    assert (follower.term, follower.vote, follower.leader_id) == (term, vote, 1)
    # A request flagged as a leadership transfer is the exception (thesis §3.10).
    replies = cluster.inject(RequestVote(3, 2, term + 1, *last, transfer=True))
    (answer,) = of_type(replies, RequestVoteResponse)
    assert answer.granted and follower.term == term + 1
    assert leader.term == term


def test_4_2_3_the_lease_runs_out_after_an_election_timeout_without_the_leader() -> None:
    cluster = Cluster(check_quorum=True)
    cluster.elect(1)
    follower = cluster[2]
    term = follower.term
    cluster.isolate(2)
    cluster.tick([2], times=ELECTION_TICKS)
    last = follower.last_index, follower.log.last_term
    (answer,) = of_type(cluster.inject(RequestVote(3, 2, term + 1, *last)), RequestVoteResponse)
    assert answer.granted
    assert (follower.term, follower.vote) == (term + 1, 3)


def test_6_2_node_that_raised_its_term_while_cut_off_rejoins_through_its_answers() -> None:
    # Without pre-vote, a cut-off node raises its term; with check-quorum everyone in
    # the lease ignores its RequestVotes. It gets back in because it answers the
    # leader's (stale) AppendEntries with its term, which makes the leader step down.
    cluster = Cluster(pre_vote=False, check_quorum=True)
    cluster.elect(1)
    cluster.isolate(3)
    cluster.propose(1, b"x")
    cluster.stabilize()
    cluster.tick([3], times=5 * ELECTION_TICKS)
    assert cluster[3].term > cluster[1].term
    cluster.heal()
    cluster.tick(times=10 * ELECTION_TICKS)
    leader = cluster.leader()
    assert cluster[leader].term > 2
    assert cluster[3].log.entries == cluster[leader].log.entries
