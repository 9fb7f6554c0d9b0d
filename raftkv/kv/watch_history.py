"""The bounded history of changes that watches resume from.

The state machine records one change per key written or deleted: its revision, the key,
the key's stored form after the change (None for a delete) and before it (None when it
did not exist). Stored forms are the state machine's own ``META | value`` objects, so a
change holds references, not copies.

The history keeps every change with a revision above ``floor``; anything at or below it
may be gone. It drops the oldest changes beyond ``max_changes``, a whole revision at a
time (a prefix delete writes many keys at one revision, and a watch that resumes after a
revision must get all of that revision's changes or none). It is not part of the
replicated state: a replica restored from a snapshot starts again with an empty history
whose floor is the snapshot's index, and replaying the log after it refills it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["DEFAULT_MAX_CHANGES", "Change", "WatchHistory"]

DEFAULT_MAX_CHANGES = 100_000
"""Changes kept unless ``kvnode --watch-history`` says otherwise."""

_COMPACT_AT = 4096
"""Dropped slots accumulated before the list is shifted down (amortises the cost)."""


class Change(NamedTuple):
    revision: int
    key: bytes
    stored: bytes | None
    """META | value after the change; None for a delete."""
    prev: bytes | None
    """META | value before the change; None if the key did not exist."""


_Entry = tuple[int, bytes, bytes | None, bytes | None]


class WatchHistory:
    """Changes in revision order: appended by the state machine, read by watches."""

    __slots__ = ("_changes", "_floor", "_head", "_revisions", "max_changes")

    def __init__(self, max_changes: int = DEFAULT_MAX_CHANGES, floor: int = 0) -> None:
        if max_changes < 1:
            raise ValueError("the watch history must keep at least one change")
        self.max_changes = max_changes
        # Plain tuples, not Change: the collector stops tracking a plain tuple of bytes
        # and ints, but never a named tuple, and 100,000 tracked changes made every full
        # collection of the Raft process scan them (tens of ms each, on every node).
        self._changes: list[_Entry] = []
        # A parallel list of revisions for bisecting without a key function.
        self._revisions: list[int] = []
        self._head = 0
        self._floor = floor

    @property
    def floor(self) -> int:
        """Every change with a revision above this one is kept."""
        return self._floor

    def __len__(self) -> int:
        return len(self._changes) - self._head

    def append(self, revision: int, key: bytes, stored: bytes | None, prev: bytes | None) -> None:
        """Record a change. Revisions never decrease (several changes may share one)."""
        self._changes.append((revision, key, stored, prev))
        self._revisions.append(revision)
        if len(self._changes) - self._head > self.max_changes:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        revisions = self._revisions
        # Drop the oldest revision whole, however many changes it holds.
        oldest = revisions[self._head]
        head = bisect_right(revisions, oldest, self._head)
        self._floor = oldest
        self._head = head
        if head >= _COMPACT_AT and head * 2 >= len(revisions):
            del self._changes[:head]
            del revisions[:head]
            self._head = 0

    def covers(self, revision: int) -> bool:
        """Whether every change after ``revision`` is still kept."""
        return revision >= self._floor

    def after(
        self, revision: int, matches: Callable[[bytes], bool] | None = None
    ) -> list[Change] | None:
        """Every kept change with a revision above ``revision`` (and a key ``matches``
        accepts), oldest first, or None when some of them are gone (``revision`` is
        below the floor)."""
        if revision < self._floor:
            return None
        start = bisect_right(self._revisions, revision, self._head)
        entries = self._changes[start:]
        if matches is not None:
            # Before making them Changes, which costs more than the test.
            entries = [entry for entry in entries if matches(entry[1])]
        return list(map(Change._make, entries))

    def reset(self, floor: int) -> None:
        """Forget everything: the state jumped to ``floor`` (a snapshot was restored)."""
        self._changes = []
        self._revisions = []
        self._head = 0
        self._floor = floor
