"""Safety restrictions, Raft paper §5.4: who may be elected (§5.4.1) and what a leader
may commit by counting replicas (§5.4.2, Figure 8).

Both scenarios use plain paper Raft (no pre-vote, no check-quorum), as the paper does.
"""

from __future__ import annotations

from raftkv.raft import Role
from raftkv.raft.config import UnsafeFaults
from raftkv_ext.codec import AppendEntries, RequestVoteResponse
from raftkv_ext.entry import ENTRY_NORMAL, Entry

from .harness import HEARTBEAT_TICKS, Cluster, DropRule, of_type


def win(cluster: Cluster, node_id: int, drop: DropRule | None = None) -> None:
    """Tick only ``node_id`` (delivering between ticks) until it leads."""
    for _ in range(100):
        cluster.tick([node_id], drop=drop)
        if cluster[node_id].role is Role.LEADER:
            return
    raise AssertionError(f"node {node_id} never won")


def applied_at(cluster: Cluster, index: int) -> set[tuple[int, int]]:
    """(index, term) of what every node's state machine applied at ``index``."""
    return {
        (e.index, e.term)
        for node in cluster.nodes.values()
        for e in node.applied
        if e.index == index
    }


# ---------------------------------------------------------------- §5.4.1


def stale_candidate_cluster(faults: UnsafeFaults) -> Cluster:
    """Node 3 misses two committed entries; then the leader, node 1, crashes."""
    cluster = Cluster(faults=faults, pre_vote=False, check_quorum=False)
    cluster.elect(1)
    cluster.isolate(3)
    cluster.propose(1, b"x")
    cluster.propose(1, b"y")
    cluster.stabilize()
    assert cluster[2].committed == 4 and cluster[3].last_index == 2
    cluster.crash(1)
    cluster.heal()
    return cluster


def test_5_4_1_a_candidate_whose_log_is_behind_cannot_be_elected() -> None:
    cluster = stale_candidate_cluster(UnsafeFaults())
    start = len(cluster.sent)
    cluster.campaign(3)
    cluster.stabilize()
    (answer,) = of_type(cluster.sent[start:], RequestVoteResponse, sender=2)
    assert not answer.granted
    assert cluster[3].role is not Role.LEADER
    # Node 2, whose log holds every committed entry, is the one that can win.
    leader = cluster.wait_for_leader([2, 3])
    assert leader == 2
    assert [e.data for e in cluster.nodes[3].applied if e.type == ENTRY_NORMAL] == [b"x", b"y"]


def test_5_4_1_fault_vote_without_log_check_elects_a_stale_leader() -> None:
    # Documents UnsafeFaults.vote_without_log_check: the stale node wins although it
    # lacks committed entries 3 and 4 (Leader Completeness, §5.4.3, is broken), and it
    # puts its own no-op at index 3, where the cluster already committed b"x".
    cluster = stale_candidate_cluster(UnsafeFaults(vote_without_log_check=True))
    cluster.campaign(3)
    cluster.stabilize(drop=lambda m: isinstance(m, AppendEntries))
    assert cluster[3].role is Role.LEADER
    assert cluster[3].log.term(3) == cluster[3].term
    assert cluster[2].committed == 4
    assert cluster[2].log.term(3) == 2


# ---------------------------------------------------------------- §5.4.2, Figure 8


def figure_8(faults: UnsafeFaults) -> Cluster:
    """Figure 8 (a)-(c), acted out message by message on five nodes S1..S5.

    Index 1 is the bootstrap configuration (term 1) on everyone. One entry per
    AppendEntries, so a test can let one entry through and hold back the next.
    """
    cluster = Cluster(
        voters=(1, 2, 3, 4, 5),
        faults=faults,
        max_message_bytes=1,
        pre_vote=False,
        check_quorum=False,
    )

    # (a) S1 leads term 2 and its entry 2 (the term's no-op) reaches S2 only.
    cluster.elect(1, drop=lambda m: isinstance(m, AppendEntries) and m.recipient != 2)
    assert cluster[1].term == 2
    assert holders(cluster, Entry(2, 2)) == {1, 2}

    # (b) S1 crashes; S5 leads term 3 with votes from S3, S4 and itself, and appends a
    # different entry 2, which reaches nobody.
    cluster.crash(1)
    cluster.elect(5, drop=lambda m: isinstance(m, AppendEntries))
    assert cluster[5].term == 3
    assert holders(cluster, Entry(2, 3)) == {5}

    # (c) S5 crashes; S1 restarts and leads term 4. It brings S3 up to entry 2, but its
    # own term-4 entry reaches only S2. S4 and S5 hear nothing, and no follower is told
    # of a commit index >= 2 (the scenario then continues from what S1 alone decided).
    cluster.crash(5)
    cluster.restart(1)

    def term_4_entry_stays_off_s3(m: object) -> bool:
        if not isinstance(m, AppendEntries):
            return False
        carries_term_4 = any(e.term == 4 for e in m.entries)
        accepted = cluster[m.recipient].log.matches(m.prev_index, m.prev_term)
        return (
            m.recipient in (4, 5)
            or (m.recipient == 3 and carries_term_4 and accepted)
            or m.commit >= 2
        )

    win(cluster, 1, drop=term_4_entry_stays_off_s3)
    assert cluster[1].term == 4
    # The term-2 entry is now on a majority (S1, S2, S3); the term-4 entry on two nodes.
    assert holders(cluster, Entry(2, 2)) == {1, 2, 3}
    assert holders(cluster, Entry(3, 4)) == {1, 2}
    return cluster


def holders(cluster: Cluster, entry: Entry) -> set[int]:
    """Live nodes whose log has an entry at (index, term) of ``entry``."""
    return {n for n in cluster.up_ids() if cluster[n].log.matches(entry.index, entry.term)}


def test_5_4_2_figure_8_leader_does_not_commit_an_old_term_entry_by_counting_replicas() -> None:
    cluster = figure_8(UnsafeFaults())
    # Replicated on a majority, yet not committed: S5 could still be elected (by S3, S4
    # and itself) and overwrite it, as (d) shows in the next test.
    assert cluster[1].committed < 2
    assert applied_at(cluster, 2) == set()
    # (e) Once an entry of the leader's own term sits on a majority, it commits, and the
    # term-2 entry before it with it.
    # The lost entry 3 is found missing at the next heartbeat round and sent again.
    cluster.tick([1], times=HEARTBEAT_TICKS)
    assert holders(cluster, Entry(3, 4)) >= {1, 2, 3}
    assert cluster[1].committed == 3
    assert applied_at(cluster, 2) == {(2, 2)}


def test_5_4_2_figure_8_the_uncommitted_old_term_entry_is_overwritten_safely() -> None:
    cluster = figure_8(UnsafeFaults())
    # (d) S1 crashes before its term-4 entry spreads. S5 comes back and is elected by
    # S3 and S4 (its last term, 3, beats their 2 and 1); it replaces entry 2 everywhere.
    cluster.crash(1)
    cluster.restart(5)
    win(cluster, 5)
    assert holders(cluster, Entry(2, 3)) == {2, 3, 4, 5}
    # Entry (2, term 3) is what everyone applies: (2, term 2) was never applied anywhere,
    # which is exactly why S1 must not have committed it.
    assert applied_at(cluster, 2) == {(2, 3)}


def test_5_4_2_figure_8_fault_commit_earlier_terms_breaks_state_machine_safety() -> None:
    # Documents UnsafeFaults.commit_earlier_terms: S1 counts three replicas of its term-2
    # entry and commits it at once...
    cluster = figure_8(UnsafeFaults(commit_earlier_terms=True))
    assert cluster[1].committed >= 2
    s1_applied = {(e.index, e.term) for e in cluster.nodes[1].applied}
    assert (2, 2) in s1_applied
    # ...then (d) happens as in the paper: S5 is elected and commits a different entry 2.
    cluster.crash(1)
    cluster.restart(5)
    win(cluster, 5)
    assert cluster[5].committed >= 2
    # State machines applied different commands at index 2: S1 (before its crash) the
    # term-2 entry, the others the term-3 one.
    assert applied_at(cluster, 2) == {(2, 2), (2, 3)}
