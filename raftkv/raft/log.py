"""The core's in-memory view of the replicated log (Raft §5.3).

It holds the entries after a boundary (the compaction point, at or behind the latest
snapshot) and tracks what has been handed to the driver to persist, what is known to be
durable, what is committed and what has been handed out to apply.
"""

from __future__ import annotations

from collections.abc import Sequence

from raftkv_ext.entry import Entry


class RaftLog:
    __slots__ = (
        "boundary_index",
        "boundary_term",
        "committed",
        "entries",
        "handed_apply",
        "persisted",
        "unstable_from",
    )

    def __init__(self, boundary_index: int, boundary_term: int, entries: Sequence[Entry]) -> None:
        self.boundary_index = boundary_index
        self.boundary_term = boundary_term
        self.entries: list[Entry] = list(entries)
        for offset, entry in enumerate(self.entries):
            if entry.index != boundary_index + 1 + offset:
                raise ValueError(f"log entries not contiguous at {entry.index}")
        self.committed = boundary_index
        self.handed_apply = boundary_index
        # Everything loaded at start-up is already on disk.
        self.persisted = self.last_index
        self.unstable_from = self.last_index + 1

    @property
    def last_index(self) -> int:
        return self.boundary_index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.boundary_term

    @property
    def first_index(self) -> int:
        return self.boundary_index + 1

    def term(self, index: int) -> int | None:
        """Term at ``index``, or None when the index is compacted or beyond the end."""
        if index == self.boundary_index:
            return self.boundary_term
        if index < self.boundary_index or index > self.last_index:
            return None
        return self.entries[index - self.boundary_index - 1].term

    def matches(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: is a log ending at (last_index, last_term) at least as up to date?"""
        return last_term > self.last_term or (
            last_term == self.last_term and last_index >= self.last_index
        )

    def slice(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries lo..hi-1, stopping before max_bytes is exceeded (at least one)."""
        return self.slice_sized(lo, hi, max_bytes)[0]

    def slice_sized(self, lo: int, hi: int, max_bytes: int) -> tuple[list[Entry], int]:
        """``slice`` and the total wire size of the entries it returns."""
        start = lo - self.boundary_index - 1
        stop = hi - self.boundary_index - 1
        if start < 0:
            raise ValueError(f"index {lo} is compacted (boundary {self.boundary_index})")
        chosen = self.entries[start:stop]
        total = 0
        for count, entry in enumerate(chosen):
            size = entry.wire_size
            if total + size > max_bytes and count > 0:
                return chosen[:count], total
            total += size
        return chosen, total

    def append(self, entries: Sequence[Entry]) -> None:
        """Leader append: entries continue the log."""
        if entries and entries[0].index != self.last_index + 1:
            raise ValueError(f"append at {entries[0].index} after {self.last_index}")
        self.entries.extend(entries)

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry that is new or disagrees with ours, 0 if none."""
        for entry in entries:
            if entry.index <= self.boundary_index:
                continue
            if self.term(entry.index) != entry.term:
                return entry.index
        return 0

    def truncate_and_append(self, entries: Sequence[Entry]) -> None:
        """Follower append: drop any conflicting suffix, then append (§5.3)."""
        first = entries[0].index
        if first <= self.committed:
            raise AssertionError(f"truncating committed entry {first} (commit {self.committed})")
        del self.entries[first - self.boundary_index - 1 :]
        self.entries.extend(entries)
        self.unstable_from = min(self.unstable_from, first)
        self.persisted = min(self.persisted, first - 1)

    def first_index_of_term(self, index: int) -> int:
        """The first index, at or below ``index``, whose term equals term(index)."""
        term = self.term(index)
        while index - 1 > self.boundary_index and self.term(index - 1) == term:
            index -= 1
        return index

    def last_index_of_term(self, term: int) -> int:
        """The last index holding ``term``, or 0 when the log has none."""
        for entry in reversed(self.entries):
            if entry.term == term:
                return entry.index
            if entry.term < term:
                break
        return 0

    def take_unstable(self) -> list[Entry]:
        entries = self.entries[self.unstable_from - self.boundary_index - 1 :]
        self.unstable_from = self.last_index + 1
        return entries

    def take_committed(self) -> list[Entry]:
        """Entries committed but not yet handed out to apply."""
        start = self.handed_apply
        if self.committed <= start:
            return []
        entries = self.entries[start - self.boundary_index : self.committed - self.boundary_index]
        self.handed_apply = self.committed
        return entries

    def compact(self, index: int) -> None:
        """Forget entries up to ``index`` (covered by a snapshot)."""
        if index <= self.boundary_index:
            return
        if index > self.handed_apply:
            raise ValueError(f"cannot compact past applied index {self.handed_apply}")
        term = self.term(index)
        assert term is not None
        del self.entries[: index - self.boundary_index]
        self.boundary_index = index
        self.boundary_term = term

    def restore(self, index: int, term: int) -> None:
        """Install a snapshot at (index, term): keep a matching suffix, else drop it all."""
        if self.matches(index, term):
            del self.entries[: index - self.boundary_index]
        else:
            self.entries = []
            self.persisted = index
            self.unstable_from = index + 1
        self.boundary_index = index
        self.boundary_term = term
        self.committed = max(self.committed, index)
        self.handed_apply = max(self.handed_apply, index)
        self.persisted = max(self.persisted, index)
        self.unstable_from = max(self.unstable_from, index + 1)
