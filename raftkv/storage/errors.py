"""Errors raised by the storage layer when what is on disk cannot be trusted."""

from __future__ import annotations


class StorageCorruptionError(Exception):
    """A stored file holds data that no crash of ours could have produced.

    Raised for hard state, snapshot and SQLite log files (the segment log raises its own
    ``raftkv_ext.errors.LogCorruptionError``). The node must stop: guessing around
    damaged Raft state can lose acknowledged writes or elect two leaders, so the operator
    decides what to do with the file. ``path`` names the file; ``offset`` is the byte at
    which the damage was found, or 0 when the damage has no useful position (a JSON
    document or a database that fails its own checks).
    """

    def __init__(self, path: str, reason: str, offset: int | None = None) -> None:
        where = f" at byte offset {offset}" if offset is not None else ""
        super().__init__(f"{path}: corrupt{where}: {reason}")
        self.path = path
        self.reason = reason
        self.offset = 0 if offset is None else offset
