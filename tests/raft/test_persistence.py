"""What must be durable before a node speaks.

Figure 2 of the Raft paper: persistent state (current term, vote, log) is "updated on
stable storage before responding to RPCs". Thesis §10.2.1: the leader may write its own
log in parallel with sending AppendEntries, but counts itself toward a quorum only once
its write is durable. The core expresses this through ``Ready.messages`` (send now) and
``Ready.persisted_messages`` (send after the Ready's hard state and entries are synced).
"""

from __future__ import annotations

from raftkv.raft import HardState, Ready
from raftkv.raft.config import UnsafeFaults
from raftkv_ext.codec import AppendEntries, AppendEntriesResponse, RequestVote, RequestVoteResponse

from .harness import Cluster, of_type


def ready_with_entry(readys: list[Ready], index: int) -> Ready:
    (ready,) = [r for r in readys if any(e.index == index for e in r.entries)]
    return ready


def test_figure_2_follower_acks_appended_entries_only_once_they_are_durable() -> None:
    cluster = Cluster()
    cluster.elect(1)
    follower = cluster.nodes[2]
    follower.hold_persist = True
    index = cluster.propose(1, b"x")
    cluster.stabilize()

    ready = ready_with_entry(follower.readys, index)
    (ack,) = of_type(ready.persisted_messages, AppendEntriesResponse)
    assert ack.success and ack.index == index
    assert of_type(ready.messages, AppendEntriesResponse) == []
    # Nothing went out yet, and the disk does not have the entry.
    assert of_type(cluster.sent, AppendEntriesResponse, sender=2, index=index) == []
    assert follower.store.last_index < index

    follower.flush()
    assert follower.store.last_index == index
    # (The held Readys also answer the leader's later commit notice, hence "any".)
    assert ack in of_type(cluster.sent, AppendEntriesResponse, sender=2, index=index)


def test_figure_2_vote_is_granted_only_once_it_is_durable() -> None:
    cluster = Cluster(pre_vote=False)
    voter = cluster.nodes[2]
    voter.hold_persist = True
    cluster.campaign(1)
    cluster.deliver()  # the RequestVotes reach nodes 2 and 3

    (ready,) = [r for r in voter.readys if r.persisted_messages]
    # The vote and the answer that reveals it travel in the same Ready...
    assert ready.hard_state == HardState(term=2, vote=1)
    (answer,) = ready.persisted_messages
    assert isinstance(answer, RequestVoteResponse) and answer.granted
    assert of_type(ready.messages, RequestVoteResponse) == []
    # ...and the answer is not sent before the hard state is on disk.
    assert of_type(cluster.sent, RequestVoteResponse, sender=2) == []
    assert voter.store.hard_state == HardState(term=1)
    # A crash now loses the vote, but nobody ever learned of it: no promise is broken.
    cluster.crash(2)
    cluster.restart(2)
    assert cluster[2].vote == 0


def test_figure_2_candidate_asks_for_votes_only_once_its_own_vote_is_durable() -> None:
    cluster = Cluster(pre_vote=False)
    candidate = cluster.nodes[1]
    candidate.hold_persist = True
    cluster.campaign(1)
    (ready,) = [r for r in candidate.readys if r.hard_state is not None]
    assert ready.hard_state == HardState(term=2, vote=1)
    assert {m.recipient for m in of_type(ready.persisted_messages, RequestVote)} == {2, 3}
    assert of_type(ready.messages, RequestVote) == []
    assert of_type(cluster.sent, RequestVote) == []
    candidate.flush()
    assert len(of_type(cluster.sent, RequestVote, term=2)) == 2


def test_10_2_1_leader_sends_appends_while_its_own_write_is_in_flight() -> None:
    cluster = Cluster()
    cluster.elect(1)
    leader = cluster.nodes[1]
    leader.hold_persist = True
    index = cluster.propose(1, b"x")
    ready = ready_with_entry(leader.readys, index)
    # The same Ready hands the entry to the disk and to the followers.
    carrying = [
        m for m in of_type(ready.messages, AppendEntries) if index in [e.index for e in m.entries]
    ]
    assert {m.recipient for m in carrying} == {2, 3}
    assert leader.store.last_index < index


def test_10_2_1_leader_counts_itself_toward_commit_only_after_on_persisted() -> None:
    cluster = Cluster()
    cluster.elect(1)
    leader = cluster.nodes[1]
    core = cluster[1]
    before = core.committed
    leader.hold_persist = True
    index = cluster.propose(1, b"x")
    # Only node 2 gets the entry: with the leader's own copy not yet durable, one
    # acknowledgement out of three is not a majority.
    cluster.stabilize(drop=lambda m: m.recipient == 3)
    assert core.progress[2].match == index
    assert core.committed == before
    assert [e.index for e in leader.applied if e.index == index] == []
    # The fsync returns: the leader's copy plus node 2's make two of three.
    leader.flush()
    assert core.committed == index
    assert [e.data for e in leader.applied if e.index == index] == [b"x"]


def test_fault_ack_before_persist_acknowledges_what_a_crash_then_loses() -> None:
    # Documents UnsafeFaults.ack_before_persist: the follower's ack leaves before its
    # write is durable, the leader commits on it, and a crash leaves a committed entry
    # on one disk out of three.
    cluster = Cluster(faults=UnsafeFaults(ack_before_persist=True))
    cluster.elect(1)
    follower = cluster.nodes[2]
    follower.hold_persist = True
    index = cluster.propose(1, b"x")
    cluster.stabilize(drop=lambda m: m.recipient == 3)

    ready = ready_with_entry(follower.readys, index)
    assert of_type(ready.messages, AppendEntriesResponse, index=index) != []
    assert cluster[1].committed == index
    cluster.crash(2)
    holders = [n for n, node in cluster.nodes.items() if node.store.last_index >= index]
    assert holders == [1]
