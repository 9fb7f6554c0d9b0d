"""The leader's judgement of each follower: the health rules, and the fields of
/cluster/status and /cluster/nodes built from them (three in-process Raft drivers)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from raftkv.node.node import RaftNode
from raftkv.node.replication_health import (
    HEALTHY,
    LAGGING,
    LAGGING_ENTRIES,
    UNREACHABLE,
    classify,
    follower_health,
)
from raftkv.node.status import cluster_nodes, status_document

from .test_node_answers import start_cluster, wait_for

TIMEOUT_S = 0.15


def judge(
    *,
    lag: int = 0,
    contact: float | None = 0.01,
    connected: bool = True,
    snapshot: bool = False,
) -> str:
    return classify(
        lag_entries=lag,
        last_contact_s=contact,
        connected=connected,
        sending_snapshot=snapshot,
        election_timeout_s=TIMEOUT_S,
    )


def test_a_follower_heard_recently_and_close_behind_is_healthy() -> None:
    assert judge() == HEALTHY
    assert judge(lag=LAGGING_ENTRIES, contact=TIMEOUT_S) == HEALTHY


def test_a_follower_far_behind_or_being_sent_a_snapshot_is_lagging() -> None:
    assert judge(lag=LAGGING_ENTRIES + 1) == LAGGING
    assert judge(lag=0, snapshot=True) == LAGGING


@pytest.mark.parametrize(
    ("contact", "connected"),
    [(TIMEOUT_S + 0.001, True), (None, True), (0.01, False), (None, False)],
    ids=["silent-too-long", "never-heard", "no-connection", "neither"],
)
def test_silence_or_no_connection_is_unreachable(contact: float | None, connected: bool) -> None:
    assert judge(contact=contact, connected=connected) == UNREACHABLE
    # Being unreachable outweighs lag: that is the first thing to fix.
    assert judge(lag=LAGGING_ENTRIES * 5, contact=contact, connected=connected) == UNREACHABLE


def test_follower_health_measures_lag_and_silence() -> None:
    judged = follower_health(
        leader_last_index=5000,
        match_index=3000,
        heard_at=100.0,
        now=100.05,
        connected=True,
        sending_snapshot=False,
        election_timeout_s=TIMEOUT_S,
    )
    assert judged.lag_entries == 2000
    assert judged.last_contact_s == pytest.approx(0.05)
    assert judged.health == LAGGING


def test_follower_health_of_a_follower_never_heard_from() -> None:
    judged = follower_health(
        leader_last_index=10,
        # A follower ahead of what the leader knows (a stale match) lags by nothing.
        match_index=12,
        heard_at=None,
        now=1.0,
        connected=True,
        sending_snapshot=False,
        election_timeout_s=TIMEOUT_S,
    )
    assert (judged.lag_entries, judged.last_contact_s, judged.health) == (0, None, UNREACHABLE)


def nodes_by_id(node: RaftNode) -> dict[int, dict[str, Any]]:
    return {entry["id"]: entry for entry in orjson.loads(cluster_nodes(node))["nodes"]}


async def documents_scenario(base: Path) -> None:
    nodes = await start_cluster(base)
    try:
        leader_id = next(iter(nodes.values())).core.leader_id
        leader = nodes[leader_id]
        followers = [i for i in nodes if i != leader_id]

        def all_healthy() -> bool:
            entries = nodes_by_id(leader)
            progress = status_document(leader)["replicationProgress"]
            return all(
                entries[i]["health"] == HEALTHY and progress[str(i)]["health"] == HEALTHY
                for i in followers
            )

        await wait_for(all_healthy, "every follower healthy in the leader's view")
        entries = nodes_by_id(leader)
        me = entries[leader_id]
        assert (me["lagEntries"], me["lastContactSeconds"], me["health"]) == (0, None, HEALTHY)
        for follower in followers:
            entry = entries[follower]
            assert entry["lagEntries"] == leader.core.last_index - entry["matchIndex"]
            assert isinstance(entry["lastContactSeconds"], float)
            assert entry["lastContactSeconds"] >= 0.0
            # The existing fields are still there.
            assert entry["reachable"] is True and entry["membership"] == "voter"

        progress = status_document(leader)["replicationProgress"]
        assert set(progress) == {str(i) for i in followers}
        for peer in progress.values():
            assert {"matchIndex", "nextIndex", "state", "lag"} <= set(peer)
            # Healthy when polled above; read again, a stall of the whole process
            # could make a follower look silent, so only the word's kind is checked.
            assert peer["health"] in (HEALTHY, LAGGING, UNREACHABLE)
            assert isinstance(peer["lastContactSeconds"], float)

        # A follower's own view: only the leader judges lag and health, but the follower
        # knows when it last heard from the leader.
        follower_view = nodes_by_id(nodes[followers[0]])
        assert all(e["health"] is None and e["lagEntries"] is None for e in follower_view.values())
        assert isinstance(follower_view[leader_id]["lastContactSeconds"], float)
        assert follower_view[followers[0]]["lastContactSeconds"] is None
        assert status_document(nodes[followers[0]])["replicationProgress"] == {}

        # A stopped follower becomes unreachable in the leader's view.
        stopped = followers[0]
        await nodes[stopped].stop()
        await wait_for(
            lambda: nodes_by_id(leader)[stopped]["health"] == UNREACHABLE,
            "the stopped follower to be unreachable",
        )
        assert nodes_by_id(leader)[stopped]["reachable"] is False
    finally:
        await asyncio.gather(*(node.stop() for node in nodes.values()))


def test_the_status_documents_carry_each_followers_health(tmp_path: Path) -> None:
    asyncio.run(documents_scenario(tmp_path))
