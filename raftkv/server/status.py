"""The JSON a node gives for ``/cluster/status`` and ``/cluster/nodes``."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

import orjson

from raftkv.raft.core import Role

if TYPE_CHECKING:
    from raftkv.server.node import RaftNode


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat()


def _reachable(node: RaftNode) -> set[int]:
    """Peers with a live connection to or from this node, plus itself."""
    stats = node.transport.stats()
    live = {
        peer
        for peer, peer_stats in stats.items()
        if peer_stats.connected or peer_stats.inbound_connected
    }
    live.add(node.config.node_id)
    return live


def status_document(node: RaftNode) -> dict[str, Any]:
    core = node.core
    membership = core.membership
    leader = core.leader_id or None
    leader_address = node.addresses.get(core.leader_id) if core.leader_id else None
    progress: dict[str, dict[str, Any]] = {}
    if core.role is Role.LEADER:
        for peer, pr in sorted(core.progress.items()):
            progress[str(peer)] = {
                "matchIndex": pr.match,
                "nextIndex": pr.next,
                "state": pr.state.value,
                "lag": max(0, core.last_index - pr.match),
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
        "appliedIndex": node.sm.applied_index,
        "lastIndex": core.last_index,
        "liveNodes": len(_reachable(node) & membership.members | {node.config.node_id}),
        "totalNodes": len(membership.members),
        "electedAt": _iso(node.elected_at),
        "replicationProgress": progress,
    }


def cluster_status(node: RaftNode, with_hash: bool = False) -> bytes:
    document = status_document(node)
    if with_hash:
        # Replicas at the same applied index must have the same hash.
        document["stateHash"] = node.sm.state_hash()
        document["stateHashIndex"] = node.sm.applied_index
    return orjson.dumps(document)


def cluster_nodes(node: RaftNode) -> bytes:
    core = node.core
    membership = core.membership
    reachable = _reachable(node)
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
