"""An in-memory Raft store that models what fsync does and does not promise.

Writes first go to a volatile queue; ``sync()`` makes everything written so far durable.
A sync that takes time covers what was written before it began (``mark`` when it starts,
``sync(mark)`` when it ends), not what was written while it ran, as an fdatasync
running in kvnode's fsync thread promises nothing for the writes made meanwhile. A
crash keeps the durable state plus a random prefix of the unsynced writes (the disk may
have written some of them on its own), and nothing else. The simulator builds a node's
start-up state only from what survived.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from raftkv.node.snapshot_record import SnapshotRecord
from raftkv.raft.ready import HardState, InitialState, Snapshot
from raftkv_ext.entry import Entry


class MemorySnapshotReader:
    """Serves a snapshot held in memory to the core, which sends it in chunks (the
    in-memory counterpart of the snapshot store's file reader)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def size(self) -> int:
        return len(self._data)

    def read(self, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]


def memory_snapshot_record(snapshot: Snapshot) -> SnapshotRecord:
    """What a driver is told of a snapshot kept in memory."""
    return SnapshotRecord(
        snapshot.meta, len(snapshot.data), "memory", MemorySnapshotReader(snapshot.data)
    )


@dataclass(slots=True)
class _Durable:
    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    boundary_index: int = 0
    boundary_term: int = 0
    entries: list[Entry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _WriteHardState:
    hard_state: HardState


@dataclass(frozen=True, slots=True)
class _WriteEntries:
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class _WriteSnapshot:
    snapshot: Snapshot


_Write = _WriteHardState | _WriteEntries | _WriteSnapshot


class MemoryStorage:
    """Durable state of one simulated node."""

    def __init__(self) -> None:
        self._durable = _Durable()
        self._pending: list[_Write] = []
        # Writes made so far, the pending ones included: the position a mark names.
        self._written = 0

    @property
    def unsynced_writes(self) -> int:
        return len(self._pending)

    def mark(self) -> int:
        """The position of the last write so far, for a sync that begins now."""
        return self._written

    def _write(self, write: _Write) -> None:
        self._pending.append(write)
        self._written += 1

    def write_hard_state(self, hard_state: HardState) -> None:
        self._write(_WriteHardState(hard_state))

    def write_entries(self, entries: list[Entry]) -> None:
        if entries:
            self._write(_WriteEntries(tuple(entries)))

    def write_snapshot(self, snapshot: Snapshot) -> None:
        self._write(_WriteSnapshot(snapshot))

    def save_snapshot_now(self, snapshot: Snapshot) -> None:
        """A snapshot the node took itself: written, synced and renamed into place.

        The log is left alone; ``compact`` trims it separately. A snapshot older than
        the one on disk (the leader's arrived while this one was being written) is not
        saved: the disk keeps the newest, as the snapshot store does.
        """
        durable = self._durable
        if durable.snapshot is not None and durable.snapshot.meta.index >= snapshot.meta.index:
            return
        durable.snapshot = snapshot

    def compact(self, index: int, term: int) -> None:
        """Drop durable entries up to ``index`` (term ``term``), which the durable
        snapshot covers.

        The durable log may still hold a stale entry at ``index`` whose replacement
        is not synced yet; then everything after it is stale too, and is dropped
        rather than left to follow a boundary it does not belong to.
        """
        durable = self._durable
        assert durable.snapshot is not None and index <= durable.snapshot.meta.index
        if index <= durable.boundary_index:
            return
        position = index - durable.boundary_index - 1
        if position < len(durable.entries) and durable.entries[position].term == term:
            durable.entries = durable.entries[position + 1 :]
        else:
            durable.entries = []
        durable.boundary_index = index
        durable.boundary_term = term

    def sync(self, mark: int | None = None) -> None:
        """Make the writes up to ``mark`` (default: every write so far) durable."""
        pending = self._pending
        count = len(pending) if mark is None else len(pending) - (self._written - mark)
        for write in pending[:count]:
            self._apply(self._durable, write)
        del pending[: max(count, 0)]

    def crash(self, rng: random.Random) -> None:
        """Power loss: a random prefix of the unsynced writes reaches the disk."""
        survivors = rng.randrange(0, len(self._pending) + 1)
        for write in self._pending[:survivors]:
            self._apply(self._durable, write)
        self._pending = []

    def initial_state(self) -> tuple[InitialState, Snapshot | None]:
        durable = self._durable
        snapshot = durable.snapshot
        boundary_index, boundary_term = durable.boundary_index, durable.boundary_term
        entries = list(durable.entries)
        if snapshot is not None:
            meta = snapshot.meta
            position = meta.index - boundary_index - 1
            held = 0 <= position < len(entries) and entries[position].term == meta.term
            if meta.index > boundary_index and not held:
                # The log does not reach the snapshot with a matching entry (its tail
                # was never synced, or was overwritten): it starts after the snapshot.
                boundary_index, boundary_term, entries = meta.index, meta.term, []
                durable.boundary_index, durable.boundary_term = boundary_index, boundary_term
                durable.entries = []
        state = InitialState(
            hard_state=durable.hard_state,
            snapshot=snapshot.meta if snapshot else None,
            boundary_index=boundary_index,
            boundary_term=boundary_term,
            entries=entries,
        )
        return state, snapshot

    def bootstrap(self, entries: list[Entry], hard_state: HardState) -> None:
        """Seed a fresh node of a new cluster (written and synced before start)."""
        self._apply(self._durable, _WriteHardState(hard_state))
        self._apply(self._durable, _WriteEntries(tuple(entries)))

    @staticmethod
    def _apply(durable: _Durable, write: _Write) -> None:
        if isinstance(write, _WriteHardState):
            durable.hard_state = write.hard_state
        elif isinstance(write, _WriteEntries):
            # Entries at or below the boundary are covered by a snapshot saved meanwhile.
            entries = [e for e in write.entries if e.index > durable.boundary_index]
            if not entries:
                return
            first = entries[0].index
            keep = first - durable.boundary_index - 1
            if keep > len(durable.entries):
                raise AssertionError(
                    f"gap in durable log: write at {first} after "
                    f"{durable.boundary_index + len(durable.entries)}"
                )
            durable.entries = durable.entries[:keep] + entries
        else:
            meta = write.snapshot.meta
            if durable.snapshot is not None and durable.snapshot.meta.index >= meta.index:
                return  # a newer snapshot (the node's own) was saved meanwhile
            durable.snapshot = write.snapshot
            if meta.index <= durable.boundary_index:
                return
            last = durable.boundary_index + len(durable.entries)
            position = meta.index - durable.boundary_index - 1
            if meta.index <= last and durable.entries[position].term == meta.term:
                durable.entries = durable.entries[position + 1 :]
            else:
                durable.entries = []
            durable.boundary_index = meta.index
            durable.boundary_term = meta.term
