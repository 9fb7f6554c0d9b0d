"""Which nodes the Raft process keeps links to: the members of the configuration it has,
and the current leader even when that configuration does not name it yet.

The chaos failure behind it: a node rejoining with an empty log installed a snapshot
taken before the leader (a node replaced earlier) was added back; the snapshot's
configuration did not name the leader, the node dropped its link and refused the
leader's connections, and so could never receive the entry that named it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from raftkv.node.node import RaftNode
from raftkv.node.node_config import NodeAddress, NodeConfig

BOOK = {i: NodeAddress(i, f"127.0.0.1:{9000 + i}", f"127.0.0.1:{8000 + i}") for i in (1, 2, 3)}


def node_with(tmp_path: Path, members: set[int], leader: int) -> RaftNode:
    node = RaftNode(NodeConfig(1, BOOK, tmp_path / "node-1"))
    node._addresses = dict(BOOK)
    core = SimpleNamespace(membership=SimpleNamespace(members=frozenset(members)), leader_id=leader)
    node._driver = SimpleNamespace(core=core)  # type: ignore[assignment]
    return node


def test_the_leader_stays_a_peer_when_the_configuration_does_not_name_it(tmp_path: Path) -> None:
    node = node_with(tmp_path, {1, 2}, leader=3)
    assert set(node._peer_addresses()) == {2, 3}


def test_a_node_in_no_configuration_and_not_leading_is_no_peer(tmp_path: Path) -> None:
    node = node_with(tmp_path, {1, 2}, leader=2)
    assert set(node._peer_addresses()) == {2}
    node = node_with(tmp_path, {1, 2}, leader=0)
    assert set(node._peer_addresses()) == {2}
