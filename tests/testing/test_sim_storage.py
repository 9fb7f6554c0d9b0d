"""The simulated disk keeps exactly what fsync promises."""

from __future__ import annotations

import random

from raftkv.raft.membership import Membership
from raftkv.raft.ready import HardState, Snapshot, SnapshotMeta
from raftkv.testing.sim_storage import MemoryStorage
from raftkv_ext.entry import Entry


def entries(first: int, last: int, term: int) -> list[Entry]:
    return [Entry(i, term, 0, f"e{i}".encode()) for i in range(first, last + 1)]


class _NoneSurvive(random.Random):
    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        return 0


def test_synced_writes_survive_a_crash() -> None:
    storage = MemoryStorage()
    storage.write_hard_state(HardState(term=3, vote=2))
    storage.write_entries(entries(1, 5, 3))
    storage.sync()
    storage.write_entries(entries(6, 8, 3))
    storage.crash(_NoneSurvive())
    state, snapshot = storage.initial_state()
    assert snapshot is None
    assert state.hard_state == HardState(term=3, vote=2)
    assert [e.index for e in state.entries] == [1, 2, 3, 4, 5]


def test_a_sync_covers_only_what_was_written_before_it_began() -> None:
    """As an fdatasync in kvnode's fsync thread: writes made while it runs wait for the
    next sync. (While a sync made everything written by its end durable, a driver that
    released the acknowledgements of such writes with the running sync passed the
    simulation.)"""
    storage = MemoryStorage()
    storage.write_entries(entries(1, 3, 1))
    mark = storage.mark()
    storage.write_entries(entries(4, 5, 1))
    storage.sync(mark)
    assert storage.unsynced_writes == 1
    storage.crash(_NoneSurvive())
    state, _ = storage.initial_state()
    assert [e.index for e in state.entries] == [1, 2, 3]


def test_a_crash_keeps_a_prefix_of_unsynced_writes() -> None:
    kept_lengths = set()
    for seed in range(40):
        storage = MemoryStorage()
        storage.write_entries(entries(1, 2, 1))
        storage.write_entries(entries(3, 4, 1))
        storage.write_entries(entries(5, 6, 1))
        storage.crash(random.Random(seed))
        state, _ = storage.initial_state()
        indexes = [e.index for e in state.entries]
        assert indexes == list(range(1, len(indexes) + 1))
        kept_lengths.add(len(indexes))
    assert kept_lengths == {0, 2, 4, 6}


def test_overwriting_a_suffix_truncates_the_durable_log() -> None:
    storage = MemoryStorage()
    storage.write_entries(entries(1, 5, 1))
    storage.write_entries(entries(3, 4, 2))
    storage.sync()
    state, _ = storage.initial_state()
    assert [(e.index, e.term) for e in state.entries] == [(1, 1), (2, 1), (3, 2), (4, 2)]


def test_compaction_with_a_stale_entry_at_the_boundary_drops_the_stale_suffix() -> None:
    storage = MemoryStorage()
    storage.write_entries(entries(1, 6, 1))
    storage.sync()
    # The node overwrote 4.. with term 2 in memory, applied it, and snapshotted at 5;
    # the overwrite is not synced yet.
    storage.write_entries(entries(4, 6, 2))
    meta = SnapshotMeta(5, 2, Membership.of([1]))
    storage.save_snapshot_now(Snapshot(meta, b"state"))
    storage.compact(5, 2)
    storage.crash(_NoneSurvive())
    state, snapshot = storage.initial_state()
    assert snapshot is not None and snapshot.meta == meta
    assert (state.boundary_index, state.boundary_term) == (5, 2)
    assert state.entries == []


def test_a_log_that_does_not_reach_its_snapshot_restarts_after_it() -> None:
    storage = MemoryStorage()
    storage.write_entries(entries(1, 3, 1))
    storage.sync()
    meta = SnapshotMeta(7, 1, Membership.of([1]))
    storage.save_snapshot_now(Snapshot(meta, b"state"))
    state, _ = storage.initial_state()
    assert (state.boundary_index, state.boundary_term, state.entries) == (7, 1, [])


def test_an_older_received_snapshot_never_replaces_a_newer_saved_one() -> None:
    """A snapshot from the leader still waiting for its sync must not, when it lands,
    replace the node's own newer snapshot (found by a long simulation campaign: the
    restart then saw a snapshot behind its log boundary)."""
    storage = MemoryStorage()
    storage.write_entries(entries(1, 3, 1))
    storage.sync()
    received = SnapshotMeta(150, 2, Membership.of([1]))
    storage.write_snapshot(Snapshot(received, b"from the leader"))  # not synced yet
    own = SnapshotMeta(160, 2, Membership.of([1]))
    storage.save_snapshot_now(Snapshot(own, b"taken here"))
    storage.compact(152, 2)
    storage.sync()
    state, snapshot = storage.initial_state()
    assert snapshot is not None and snapshot.meta == own
    assert state.snapshot == own
    assert state.boundary_index <= own.index
