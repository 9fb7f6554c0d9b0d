"""The JSON a node gives for ``/cluster/status`` and ``/cluster/nodes``."""

from __future__ import annotations

import datetime
import time
from typing import Any

import orjson

from raftkv.node.replication_health import HEALTHY, FollowerHealth, follower_health
from raftkv.node.view import NodeView
from raftkv.raft.core import Role
from raftkv.raft.progress import ProgressState


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat()


def _reachable(node: NodeView) -> set[int]:
    """Peers with a live connection to or from this node, plus itself."""
    stats = node.peer_stats()
    live = {
        peer
        for peer, peer_stats in stats.items()
        if peer_stats.connected or peer_stats.inbound_connected
    }
    live.add(node.config.node_id)
    return live


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _followers_health(node: NodeView, now: float, connected: set[int]) -> dict[int, FollowerHealth]:
    """The leader's judgement of each follower; empty on any other node, which does not
    know the followers' progress (a follower's worker asks the leader instead)."""
    core = node.raft_state
    if core.role is not Role.LEADER:
        return {}
    election_timeout_s = node.config.election_ticks * node.config.tick_ms / 1000
    return {
        peer: follower_health(
            leader_last_index=core.last_index,
            match_index=progress.match,
            heard_at=node.last_heard.get(peer),
            now=now,
            connected=peer in connected,
            sending_snapshot=progress.state is ProgressState.SNAPSHOT,
            election_timeout_s=election_timeout_s,
        )
        for peer, progress in core.progress.items()
    }


def status_document(node: NodeView) -> dict[str, Any]:
    core = node.raft_state
    membership = core.membership
    leader = core.leader_id or None
    leader_address = node.addresses.get(core.leader_id) if core.leader_id else None
    progress: dict[str, dict[str, Any]] = {}
    reachable = _reachable(node)
    followers = _followers_health(node, time.monotonic(), reachable)
    for peer, pr in sorted(core.progress.items()):
        judged = followers.get(peer)
        if judged is None:
            continue
        progress[str(peer)] = {
            "matchIndex": pr.match,
            "nextIndex": pr.next,
            "state": pr.state.value,
            "lag": judged.lag_entries,
            "lastContactSeconds": _seconds(judged.last_contact_s),
            "health": judged.health,
        }
    return {
        "nodeId": node.config.node_id,
        "role": core.role.value,
        "leader": leader,
        "leaderHttpAddr": leader_address.http_addr if leader_address else None,
        # This node's native client port (kvnode --client-addr), None when it is off.
        "clientAddr": node.config.client_addr,
        "currentTerm": core.term,
        "commitIndex": core.committed,
        "appliedIndex": node.applied_index,
        "lastIndex": core.last_index,
        "liveNodes": len(reachable & membership.members | {node.config.node_id}),
        "totalNodes": len(membership.members),
        "electedAt": _iso(node.elected_at),
        "replicationProgress": progress,
    }


def cluster_status(node: NodeView, with_hash: bool = False) -> bytes:
    document = status_document(node)
    if with_hash:
        # Replicas at the same applied index must have the same hash.
        document["stateHash"] = node.state_hash()
        document["stateHashIndex"] = node.applied_index
    return orjson.dumps(document)


def _replication_fields(
    node: NodeView, node_id: int, judged: FollowerHealth | None, now: float
) -> dict[str, Any]:
    """``lagEntries``, ``lastContactSeconds`` and ``health`` of one member. Only the
    leader judges lag and health; in another node's view they are null, and the contact
    time is that node's own (when it last heard from that member)."""
    if judged is not None:
        return {
            "lagEntries": judged.lag_entries,
            "lastContactSeconds": _seconds(judged.last_contact_s),
            "health": judged.health,
        }
    is_self = node_id == node.config.node_id
    if is_self and node.raft_state.role is Role.LEADER:
        return {"lagEntries": 0, "lastContactSeconds": None, "health": HEALTHY}
    heard_at = None if is_self else node.last_heard.get(node_id)
    return {
        "lagEntries": None,
        "lastContactSeconds": None if heard_at is None else _seconds(max(0.0, now - heard_at)),
        "health": None,
    }


def cluster_nodes(node: NodeView) -> bytes:
    core = node.raft_state
    membership = core.membership
    reachable = _reachable(node)
    now = time.monotonic()
    followers = _followers_health(node, now, reachable)
    nodes = []
    for node_id in sorted(membership.members):
        address = node.addresses.get(node_id)
        kind = "voter" if node_id in membership.all_voters else "learner"
        entry: dict[str, Any] = {
            "id": node_id,
            "httpAddr": address.http_addr if address else None,
            "rpcAddr": address.rpc_addr if address else None,
            "membership": kind,
            "isLeader": node_id == core.leader_id,
            "reachable": node_id in reachable,
        }
        progress = core.progress.get(node_id)
        if progress is not None:
            entry["matchIndex"] = progress.match
            entry["nextIndex"] = progress.next
        entry.update(_replication_fields(node, node_id, followers.get(node_id), now))
        nodes.append(entry)
    leader_address = node.addresses.get(core.leader_id) if core.leader_id else None
    return orjson.dumps(
        {
            "nodes": nodes,
            "leader": core.leader_id or None,
            "term": core.term,
            "nodeId": node.config.node_id,
            "role": core.role.value,
            "leaderHttpAddr": leader_address.http_addr if leader_address else None,
        }
    )
