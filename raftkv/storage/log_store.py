"""The interface every Raft log store implements.

The segment log (``raftkv_ext.segment_log.SegmentLog``) and the SQLite store
(``raftkv.storage.sqlite_log.SQLiteLog``) both satisfy it, and one test suite runs
against each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from raftkv_ext.entry import Entry


class LogIndexError(IndexError):
    """An index outside what the store retains (compacted away, or past the end)."""


class LogStore(Protocol):
    """A durable, append-only sequence of entries with contiguous indexes.

    Indexes start at 1. The store may have been compacted: then entries below
    ``first_index`` are gone, but the term of entry ``first_index - 1`` (the boundary,
    usually a snapshot's last entry) is still known, so the consistency check of
    AppendEntries can be made against it.
    """

    @property
    def first_index(self) -> int:
        """Index of the first retained entry; ``last_index + 1`` when none is retained."""

    @property
    def last_index(self) -> int:
        """Index of the last entry; the boundary index when no entry is retained."""

    def term(self, index: int) -> int:
        """Term of entry ``index``, for ``first_index - 1 <= index <= last_index``.

        Index 0 has term 0. Anything else outside that range raises LogIndexError.
        """

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries whose indexes run on from ``last_index + 1``, in one write.

        Durable only after the next ``sync()``.
        """

    def sync(self) -> None:
        """Make every append and truncation so far durable (one fdatasync)."""

    def entries(self, lo: int, hi: int, max_bytes: int = 0) -> list[Entry]:
        """Entries with ``lo <= index < hi``.

        With ``max_bytes > 0`` it stops before the entry that would take the total wire
        size above ``max_bytes``, but always returns at least one entry when
        ``lo < hi``. Raises LogIndexError when the range is not retained.
        """

    def truncate_after(self, index: int) -> None:
        """Drop every entry above ``index`` (a conflicting suffix). Durable after sync()."""

    def compact(self, index: int, term: int) -> None:
        """A snapshot now covers everything up to ``index`` (whose term is ``term``).

        Whole segments whose entries all lie at or below ``index`` are deleted; the
        store may keep some entries below ``index`` until their segment is wholly
        covered.
        """

    def reset(self, index: int, term: int) -> None:
        """Drop every entry: the log now starts after a snapshot at (index, term)."""

    def close(self) -> None:
        """Release files. Unsynced data may be lost."""
