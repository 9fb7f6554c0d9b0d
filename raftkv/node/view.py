"""The narrow, read-only view of a node that the status documents and the metrics
collector read (status.py, raft_metrics.py): what they may see, and nothing they could
change."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from raftkv.node.lease_clock import LeaseStats
from raftkv.node.node_config import NodeAddress, NodeConfig
from raftkv.node.transport import PeerStats
from raftkv.node.watch_hub import WatchStats
from raftkv.raft.core import Role
from raftkv.raft.membership import Membership
from raftkv.raft.progress import Progress

__all__ = ["NodeView", "RaftState"]


class RaftState(Protocol):
    """The consensus state a view reads (``RaftCore`` provides it)."""

    @property
    def role(self) -> Role: ...

    @property
    def term(self) -> int: ...

    @property
    def leader_id(self) -> int: ...

    @property
    def committed(self) -> int: ...

    @property
    def last_index(self) -> int: ...

    @property
    def membership(self) -> Membership: ...

    @property
    def progress(self) -> Mapping[int, Progress]: ...


class NodeView(Protocol):
    @property
    def config(self) -> NodeConfig: ...

    @property
    def raft_state(self) -> RaftState: ...

    @property
    def applied_index(self) -> int: ...

    @property
    def addresses(self) -> Mapping[int, NodeAddress]: ...

    @property
    def last_heard(self) -> Mapping[int, float]: ...

    @property
    def elected_at(self) -> float | None: ...

    def state_hash(self) -> str: ...

    def peer_stats(self) -> Mapping[int, PeerStats]: ...

    def pending_writes(self) -> int: ...

    def watch_stats(self) -> WatchStats: ...

    def lease_stats(self) -> LeaseStats: ...
