"""Open the log store an operator chose (``--storage segment|sqlite``)."""

from __future__ import annotations

import os
from typing import Final

from raftkv.storage.log_store import LogStore
from raftkv.storage.sqlite_log import SQLiteLog
from raftkv_ext.segment_log import DEFAULT_SEGMENT_SIZE, SegmentLog

STORE_KINDS: Final = ("segment", "sqlite")


def open_log_store(
    kind: str, directory: str | os.PathLike[str], segment_size: int = DEFAULT_SEGMENT_SIZE
) -> LogStore:
    """Open (creating if needed) the log store of ``kind`` in ``directory``.

    ``segment_size`` applies to the segment log only; SQLite has no segments.
    """
    if kind == "segment":
        return SegmentLog(os.fspath(directory), segment_size)
    if kind == "sqlite":
        return SQLiteLog(directory)
    raise ValueError(f"unknown log store kind {kind!r}; expected one of {', '.join(STORE_KINDS)}")
