"""Log replication, Raft paper §5.3 (AppendEntries rules of Figure 2)."""

from __future__ import annotations

import pytest

from raftkv.raft import CommittedEntryConflictError, Role
from raftkv_ext.codec import AppendEntries, AppendEntriesResponse
from raftkv_ext.entry import ENTRY_NORMAL, Entry

from .harness import Cluster, of_type


def terms(entries: list[Entry]) -> list[tuple[int, int]]:
    return [(e.index, e.term) for e in entries]


def test_5_3_proposals_replicate_and_commit_on_every_node() -> None:
    cluster = Cluster()
    cluster.elect(1)
    first = cluster.propose(1, b"a", b"b")
    cluster.stabilize()
    cluster.propose(1, b"c")
    cluster.stabilize()
    assert first == 3  # after the bootstrap config and the leader's no-op
    leader_log = cluster[1].log.entries
    for node_id, node in cluster.nodes.items():
        core = cluster[node_id]
        assert core.committed == 5
        assert core.log.entries == leader_log
        assert node.store.entries == leader_log  # what it acked is on its disk
        assert [e.data for e in node.applied if e.type == ENTRY_NORMAL] == [b"a", b"b", b"c"]


def test_5_3_follower_rejects_append_when_its_log_lacks_the_previous_entry() -> None:
    cluster = Cluster()
    # Node 2 holds entries 1..3 (terms 1, 2, 2) and is in term 2.
    cluster.rewrite_disk(2, [2, 2], term=2)
    # prev_index beyond its log: the hint is the first index it lacks.
    (reply,) = cluster.inject(AppendEntries(1, 2, 3, 7, 3, 0, [Entry(8, 3)]))
    assert isinstance(reply, AppendEntriesResponse)
    assert (reply.success, reply.index, reply.hint_index, reply.hint_term) == (False, 7, 4, 0)
    # prev entry present with another term: the hint is the start of our term there, so
    # the leader can skip the whole term in one step.
    (reply,) = cluster.inject(AppendEntries(1, 2, 3, 3, 3, 0, [Entry(4, 3)]))
    assert isinstance(reply, AppendEntriesResponse)
    assert (reply.success, reply.index, reply.hint_index, reply.hint_term) == (False, 3, 2, 2)
    # Nothing was appended by either rejected message.
    assert terms(cluster[2].log.entries) == [(1, 1), (2, 2), (3, 2)]


def lagging_follower_with_a_conflicting_term(stale: int, fresh: int) -> tuple[Cluster, int, int]:
    """Five nodes. Node 2 holds ``stale`` uncommitted term-2 entries nobody else has; the
    leader, elected in a later term while node 2 is reachable, holds ``fresh`` entries of
    term 3 beyond them, so its first probe lands deep in node 2's conflicting term.

    Returns the cluster, the leader, and the index in ``cluster.sent`` where the new
    leader's term starts.
    """
    cluster = Cluster(voters=(1, 2, 3, 4, 5))
    cluster.elect(1)
    cluster.partition({1, 2}, {3, 4, 5})
    for i in range(stale):
        cluster.propose(1, b"stale-%d" % i)
    cluster.stabilize()  # only node 2 gets them: no majority, nothing commits
    assert cluster[2].last_index == 2 + stale and cluster[2].committed == 2
    first = cluster.wait_for_leader([3, 4, 5])
    for i in range(fresh):
        cluster.propose(first, b"fresh-%d" % i)
    cluster.stabilize()
    # Reconnect node 2 (node 1 stays away) and move leadership, so the next leader is
    # elected with node 2 in reach and probes it from the end of its own log.
    cluster.heal()
    cluster.isolate(1)
    second = next(n for n in (3, 4, 5) if n != first)
    start = len(cluster.sent)
    cluster[first].transfer_leadership(second)
    cluster.nodes[first].process()
    cluster.stabilize()
    assert cluster.leader() == second  # node 1, cut off, still believes it leads term 2
    return cluster, second, start


def test_5_3_leader_backs_off_a_whole_term_per_rejection() -> None:
    cluster, leader, start = lagging_follower_with_a_conflicting_term(stale=10, fresh=40)
    assert cluster[2].log.entries == cluster[leader].log.entries
    since = cluster.sent[start:]
    rejections = of_type(since, AppendEntriesResponse, sender=2, success=False)
    # Node 2 is 30 entries short and its 10 entries after index 2 are all wrong. With one
    # step back per rejection that would take about 40 round trips; the hints let the
    # leader jump to node 2's end, then over its whole term 2, then send what it needs.
    assert len(rejections) <= 2
    appends = of_type(since, AppendEntries, sender=leader, recipient=2)
    first_success = next(
        i
        for i, m in enumerate(since)
        if isinstance(m, AppendEntriesResponse) and m.sender == 2 and m.success
    )
    probes = [m for m in appends if since.index(m) < first_success]
    assert len(probes) <= 3


def test_5_3_conflicting_suffix_is_truncated_and_replaced_by_the_leaders_entries() -> None:
    cluster, leader, _ = lagging_follower_with_a_conflicting_term(stale=10, fresh=40)
    node = cluster.nodes[2]
    leader_log = cluster[leader].log.entries
    assert cluster[2].log.entries == leader_log
    assert node.store.entries == leader_log
    assert not any(e.data.startswith(b"stale") for e in node.store.entries)
    # The stale entries were never applied; the leader's were, in order.
    applied = [e.data for e in node.applied if e.type == ENTRY_NORMAL]
    assert applied == [b"fresh-%d" % i for i in range(40)]


def test_5_3_only_a_conflict_truncates_and_it_drops_everything_after_it() -> None:
    cluster = Cluster()
    cluster.rewrite_disk(2, [2, 2, 2], term=2)  # indexes 2..4 in term 2
    # An old, duplicated AppendEntries for index 2 agrees with what node 2 has: the
    # entries after it must survive (they may be acknowledged to the leader already).
    cluster.inject(AppendEntries(1, 2, 2, 1, 1, 0, [Entry(2, 2, ENTRY_NORMAL, b"disk")]))
    assert terms(cluster[2].log.entries) == [(1, 1), (2, 2), (3, 2), (4, 2)]
    # A new leader's entry 3 of term 3 conflicts: 3 and everything after it go.
    cluster.inject(AppendEntries(1, 2, 3, 2, 2, 0, [Entry(3, 3, ENTRY_NORMAL, b"new")]))
    assert terms(cluster[2].log.entries) == [(1, 1), (2, 2), (3, 3)]
    assert terms(cluster.nodes[2].store.entries) == [(1, 1), (2, 2), (3, 3)]


def test_5_3_follower_commit_is_min_of_leader_commit_and_index_of_last_new_entry() -> None:
    cluster = Cluster()
    # Node 2 holds 2..4 of term 2; a leader of term 3 knows 4 is committed in its log,
    # but node 2's entries 3 and 4 might not be the leader's.
    cluster.rewrite_disk(2, [2, 2, 2], term=2)
    core = cluster[2]
    # A heartbeat verifies only up to its prev entry, 2: committing 4 here could commit
    # stale entries.
    cluster.inject(AppendEntries(1, 2, 3, 2, 2, 4, []))
    assert core.committed == 2
    assert cluster.nodes[2].applied_index == 2
    # Entry 3 verified (it matches): commit follows to 3, still not 4.
    cluster.inject(AppendEntries(1, 2, 3, 2, 2, 4, [Entry(3, 2, ENTRY_NORMAL, b"disk")]))
    assert core.committed == 3
    assert core.last_index == 4  # entry 4 kept: nothing conflicted
    # When the leader's commit is the smaller one, it wins.
    cluster.inject(AppendEntries(1, 2, 3, 3, 2, 3, [Entry(4, 2, ENTRY_NORMAL, b"disk")]))
    assert core.committed == 3
    cluster.inject(AppendEntries(1, 2, 3, 4, 2, 4, []))
    assert core.committed == 4
    assert core.role is Role.FOLLOWER and core.leader_id == 1


def test_5_4_an_entry_contradicting_a_committed_one_stops_the_follower_loudly() -> None:
    """Leader Completeness rules out a leader whose log disagrees with a follower's
    committed entries; it happens only when a disk lost writes it had acknowledged (a
    chaos run once tore a synced record off a log). Skipping the committed prefix, as
    the fast path does, would then keep the follower's entry and let the state machines
    diverge silently; the follower must stop with the index and both terms instead.
    """
    cluster = Cluster()
    cluster.rewrite_disk(2, [2, 2, 2], term=2)  # indexes 2..4 in term 2
    core = cluster[2]
    cluster.inject(AppendEntries(1, 2, 2, 4, 2, 4, []))
    assert core.committed == 4
    before = terms(core.log.entries)
    # A term-3 leader that lacks entries 3 and 4 of term 2 (its disk lost them).
    with pytest.raises(CommittedEntryConflictError, match="entry 3 is committed here with term 2"):
        cluster.inject(
            AppendEntries(1, 2, 3, 2, 2, 5, [Entry(3, 3, ENTRY_NORMAL, b"x"), Entry(4, 3)])
        )
    assert terms(core.log.entries) == before
    # The contradiction may be the previous entry itself.
    with pytest.raises(CommittedEntryConflictError) as caught:
        cluster.inject(AppendEntries(1, 2, 3, 3, 3, 5, [Entry(4, 3)]))
    assert (caught.value.index, caught.value.ours, caught.value.theirs) == (3, 2, 3)
    assert terms(core.log.entries) == before
    # A retransmission that agrees with the committed prefix is still accepted.
    (reply,) = cluster.inject(
        AppendEntries(
            1, 2, 3, 2, 2, 5, [Entry(3, 2, ENTRY_NORMAL, b"disk"), Entry(4, 2), Entry(5, 3)]
        )
    )
    assert reply.success and terms(core.log.entries)[-1] == (5, 3)


@pytest.mark.parametrize("depth", [1, 4])
def test_the_leader_keeps_at_most_max_inflight_appends_unanswered_per_follower(
    depth: int,
) -> None:
    cluster = Cluster(max_inflight_messages=depth)
    cluster.elect(1)
    cluster.stabilize()
    sent_before = len(cluster.sent)
    cluster.queue.clear()
    for i in range(10):  # proposals one at a time, each its own append, none answered
        cluster.propose(1, b"w%d" % i)
    appends = of_type(cluster.sent[sent_before:], AppendEntries, sender=1, recipient=2)
    assert len(appends) == depth
    cluster.stabilize()  # once answered, the rest follows and everything commits
    assert cluster[2].log.entries == cluster[1].log.entries
    assert cluster[1].committed == cluster[1].log.last_index
