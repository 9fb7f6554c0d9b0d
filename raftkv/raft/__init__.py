"""The Raft consensus core: a deterministic state machine with no I/O.

Time advances only through ``RaftCore.tick()``, randomness comes from a seeded source the
caller passes in, and every effect (what to persist, send and apply) is returned in a
``Ready`` for the driver to carry out. See docs/architecture.md, "The consensus core".
"""

from raftkv.raft.config import RaftConfig
from raftkv.raft.core import (
    CommittedEntryConflictError,
    NotLeaderError,
    ProposalDroppedError,
    RaftCore,
    Role,
)
from raftkv.raft.membership import Membership
from raftkv.raft.ready import (
    ForwardResult,
    HardState,
    InitialState,
    ReadState,
    Ready,
    Snapshot,
    SnapshotMeta,
    SnapshotReader,
)

__all__ = [
    "CommittedEntryConflictError",
    "ForwardResult",
    "HardState",
    "InitialState",
    "Membership",
    "NotLeaderError",
    "ProposalDroppedError",
    "RaftConfig",
    "RaftCore",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SnapshotReader",
]
