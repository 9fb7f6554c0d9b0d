"""What the driver knows of a stored snapshot, whoever stored it."""

from __future__ import annotations

from dataclasses import dataclass

from raftkv.raft.ready import SnapshotMeta, SnapshotReader

__all__ = ["SnapshotRecord"]


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    meta: SnapshotMeta
    size: int
    location: str
    """Where the host keeps it (a file path for ``kvnode``): a backup answers with it."""
    reader: SnapshotReader
    """Serves the snapshot to the core, which sends it to followers in chunks."""
