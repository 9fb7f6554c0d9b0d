"""Leader election, Raft paper §5.2 (and the term rules of §5.1)."""

from __future__ import annotations

import pytest

from raftkv.raft import Role
from raftkv_ext.codec import AppendEntries, RequestVote, RequestVoteResponse

from .harness import ELECTION_TICKS, Cluster, of_type


def ticks_until_leader(cluster: Cluster, node_id: int, limit: int = 100) -> int:
    core = cluster[node_id]
    for tick in range(1, limit + 1):
        cluster.tick([node_id])
        if core.role is Role.LEADER:
            return tick
    raise AssertionError(f"node {node_id} did not lead within {limit} ticks")


def test_5_2_single_voter_elects_itself_when_its_election_timeout_expires() -> None:
    cluster = Cluster(voters=(1,))
    core = cluster[1]
    ticks = ticks_until_leader(cluster, 1)
    # It waited out a full election timeout first: no leader is elected "for free".
    assert ELECTION_TICKS <= ticks < 2 * ELECTION_TICKS
    assert core.term == 2
    assert core.leader_id == 1
    # Being its own quorum, it commits its no-op as soon as the no-op is durable.
    assert core.committed == 2
    assert [e.index for e in cluster.nodes[1].applied] == [1, 2]


@pytest.mark.parametrize("seed", range(8))
def test_5_2_three_nodes_elect_exactly_one_leader(seed: int) -> None:
    cluster = Cluster(seed=seed)
    leader = cluster.wait_for_leader()
    term = cluster[leader].term
    # Keep time running: heartbeats hold the leadership and nobody else takes over.
    for _ in range(5 * ELECTION_TICKS):
        cluster.tick()
        assert cluster.leaders() == [leader]
    for node_id in cluster.nodes:
        assert cluster[node_id].term == term
        assert cluster[node_id].leader_id == leader


def test_5_2_election_timeouts_are_random_in_one_to_two_election_timeouts() -> None:
    # A single voter campaigns exactly when its timer fires, which exposes the draw.
    election_ticks = 20
    observed = []
    for seed in range(300):
        cluster = Cluster(voters=(1,), seed=seed, election_ticks=election_ticks)
        observed.append(ticks_until_leader(cluster, 1))
    assert min(observed) >= election_ticks
    assert max(observed) < 2 * election_ticks
    # Spread over the whole range (300 draws from 20 values miss one with p ~ 1e-5;
    # the seeds are fixed so this is deterministic anyway), not a constant.
    assert set(observed) == set(range(election_ticks, 2 * election_ticks))
    # The draw comes only from the seeded source: the same seed, the same timeout.
    again = Cluster(voters=(1,), seed=7, election_ticks=election_ticks)
    assert ticks_until_leader(again, 1) == observed[7]


def test_5_2_timer_is_redrawn_on_every_new_election() -> None:
    # An isolated node without pre-vote starts election after election; the gaps
    # between its term bumps are successive draws of the timeout.
    cluster = Cluster(pre_vote=False)
    cluster.isolate(3)
    core = cluster[3]
    gaps, last_change, term = [], 0, core.term
    for tick in range(1, 400):
        cluster.tick([3])
        if core.term != term:
            gaps.append(tick - last_change)
            last_change, term = tick, core.term
    assert len(gaps) >= 15
    assert all(ELECTION_TICKS <= gap < 2 * ELECTION_TICKS for gap in gaps)
    assert len(set(gaps)) > 3


def ask_vote(cluster: Cluster, voter: int, candidate: int, term: int) -> RequestVoteResponse:
    """Deliver a RequestVote from ``candidate`` (with a log like everyone's) to ``voter``."""
    replies = cluster.inject(RequestVote(candidate, voter, term, 1, 1))
    (answer,) = of_type(replies, RequestVoteResponse, recipient=candidate)
    return answer


def test_5_2_a_node_votes_for_at_most_one_candidate_per_term() -> None:
    cluster = Cluster()
    assert ask_vote(cluster, voter=1, candidate=2, term=2).granted
    assert cluster[1].vote == 2
    # Another candidate of the same term is refused...
    assert not ask_vote(cluster, voter=1, candidate=3, term=2).granted
    # ...while the chosen one may ask again (its request or our answer may be lost).
    assert ask_vote(cluster, voter=1, candidate=2, term=2).granted
    # The vote is durable: after a restart the node still refuses the other candidate.
    cluster.restart(1)
    assert cluster[1].vote == 2
    assert not ask_vote(cluster, voter=1, candidate=3, term=2).granted
    # A new term is a new vote.
    assert ask_vote(cluster, voter=1, candidate=3, term=3).granted


@pytest.mark.parametrize(
    ("message", "leader"),
    [
        pytest.param(AppendEntries(2, 1, 5, 1, 1, 1), 2, id="append-of-higher-term"),
        pytest.param(AppendEntries(2, 1, 2, 1, 1, 1), 2, id="append-of-same-term"),
        pytest.param(RequestVoteResponse(2, 1, 5, False), 0, id="vote-reply-of-higher-term"),
        pytest.param(RequestVote(3, 1, 5, 1, 1), 0, id="vote-request-of-higher-term"),
    ],
)
def test_5_2_a_candidate_steps_down_when_it_meets_a_current_leader_or_newer_term(
    message: AppendEntries | RequestVoteResponse | RequestVote, leader: int
) -> None:
    cluster = Cluster(pre_vote=False)
    cluster.campaign(1)
    core = cluster[1]
    assert (core.role, core.term) == (Role.CANDIDATE, 2)
    core.step(message)
    assert core.role is Role.FOLLOWER
    # §5.1: a higher term is adopted; a leader of our own term is recognised.
    assert core.term == message.term
    assert core.leader_id == leader


def test_5_2_split_vote_is_resolved_by_a_later_election() -> None:
    # Four voters: nodes 1 and 2 stand at once, node 3 votes for 1 and node 4 for 2,
    # so neither reaches the three votes it needs.
    cluster = Cluster(voters=(1, 2, 3, 4), pre_vote=False)
    cluster.campaign(1)
    cluster.campaign(2)
    split = {(1, 4), (2, 3)}
    cluster.stabilize(
        drop=lambda m: isinstance(m, RequestVote) and (m.sender, m.recipient) in split
    )
    assert cluster.leaders() == []
    assert (cluster[1].role, cluster[2].role) == (Role.CANDIDATE, Role.CANDIDATE)
    assert cluster[1].term == cluster[2].term == 2
    # Timeouts are random, so one candidate times out first and wins a later term.
    leader = cluster.wait_for_leader()
    assert cluster.leaders() == [leader]
    assert cluster[leader].term > 2
    for node_id in cluster.nodes:
        assert cluster[node_id].leader_id == leader
