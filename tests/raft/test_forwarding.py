"""Proposals forwarded by a follower to the leader (docs/architecture.md, "A write, end to end")."""

from __future__ import annotations

import pytest

from raftkv.raft import ForwardResult, NotLeaderError
from raftkv_ext.codec import Propose, ProposeResponse

from .harness import Cluster, of_type


def test_forwarded_batch_is_appended_by_the_leader_and_its_index_reported_back() -> None:
    cluster = Cluster()
    leader = cluster.elect(1)
    start = len(cluster.sent)
    cluster[2].forward(7, [b"a", b"b"])
    cluster.nodes[2].process()
    cluster.stabilize()
    since = cluster.sent[start:]
    assert [(m.sender, m.recipient) for m in of_type(since, Propose)] == [(2, 1)]
    (answer,) = of_type(since, ProposeResponse)
    assert answer.success and answer.recipient == 2
    index = answer.index
    assert cluster.nodes[2].forwarded == [ForwardResult(7, index, leader.term, True)]
    # The batch sits at index, index + 1 in the leader's term, and everybody applies it.
    batch = [e for e in leader.log.entries if e.index in (index, index + 1)]
    assert [(e.term, e.data) for e in batch] == [(leader.term, b"a"), (leader.term, b"b")]
    for node in cluster.nodes.values():
        assert [e.data for e in node.applied if e.index >= index] == [b"a", b"b"]


def test_forward_needs_a_known_leader_and_is_not_for_the_leader_itself() -> None:
    cluster = Cluster()
    with pytest.raises(NotLeaderError) as no_leader:
        cluster[2].forward(1, [b"a"])
    assert no_leader.value.leader_id == 0
    cluster.elect(1)
    with pytest.raises(NotLeaderError):
        cluster[1].forward(1, [b"a"])
