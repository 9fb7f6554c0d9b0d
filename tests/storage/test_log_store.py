"""Behaviour every LogStore must have, run against each store kind.

These tests use only the LogStore protocol, so a new store passes them by behaving
correctly, not by sharing the segment log's internals.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from raftkv.storage.log_store import LogIndexError, LogStore
from raftkv_ext.entry import ENTRY_CONFIG, ENTRY_NOOP, ENTRY_NORMAL, Entry

from .conftest import LogStoreFactory

# Small enough that a few dozen entries span several segments in stores that have them.
SMALL_SEGMENT = 300


def payload(index: int, size: int) -> bytes:
    """Deterministic, index-specific data, so a misplaced entry cannot compare equal."""
    return (f"<{index}>".encode() * (size // 3 + 1))[:size]


def make_entries(first: int, count: int, term: int, size: int = 16) -> list[Entry]:
    return [Entry(i, term, ENTRY_NORMAL, payload(i, size)) for i in range(first, first + count)]


def fill(
    store: LogStore, count: int, *, per_term: int = 10, batch: int = 7, size: int = 16
) -> list[Entry]:
    """Append count entries after last_index, the term rising every per_term entries."""
    written: list[Entry] = []
    start = store.last_index + 1
    for lo in range(start, start + count, batch):
        hi = min(lo + batch, start + count)
        chunk = [
            Entry(i, 1 + (i - 1) // per_term, ENTRY_NORMAL, payload(i, size)) for i in range(lo, hi)
        ]
        store.append(chunk)
        written.extend(chunk)
    return written


def greedy_prefix(entries: list[Entry], max_bytes: int) -> list[Entry]:
    """What entries(lo, hi, max_bytes) must return for these entries (reference model)."""
    if max_bytes <= 0:
        return list(entries)
    out: list[Entry] = []
    total = 0
    for entry in entries:
        if out and total + entry.wire_size > max_bytes:
            break
        out.append(entry)
        total += entry.wire_size
    return out


# -- empty store, append, term -------------------------------------------------------


def test_empty_store_has_no_entries(log_store_factory: LogStoreFactory, tmp_path: Path) -> None:
    store = log_store_factory(tmp_path / "log")
    assert store.first_index == 1
    assert store.last_index == 0
    assert store.term(0) == 0
    assert store.entries(1, 1) == []
    with pytest.raises(LogIndexError):
        store.term(1)
    with pytest.raises(LogIndexError):
        store.entries(1, 2)


def test_appended_entries_read_back_identically(
    log_store_factory: LogStoreFactory, tmp_path: Path
) -> None:
    store = log_store_factory(tmp_path)
    batch1 = [Entry(1, 1, ENTRY_NOOP, b""), Entry(2, 1, ENTRY_NORMAL, b"put a=1")]
    batch2 = [Entry(3, 2, ENTRY_CONFIG, b"\x00\xff" * 50), Entry(4, 2, ENTRY_NORMAL, b"x")]
    store.append(batch1)
    store.append(batch2)
    store.append([])  # an empty batch changes nothing
    assert (store.first_index, store.last_index) == (1, 4)
    assert store.entries(1, 5) == batch1 + batch2
    assert store.entries(2, 4) == [batch1[1], batch2[0]]
    assert store.entries(4, 5) == [batch2[1]]
    assert [store.term(i) for i in range(5)] == [0, 1, 1, 2, 2]


def test_term_of_every_index(log_store_factory: LogStoreFactory, tmp_path: Path) -> None:
    store = log_store_factory(tmp_path)
    written = fill(store, 95, per_term=9)
    assert store.term(0) == 0
    for entry in written:
        assert store.term(entry.index) == entry.term


@pytest.mark.parametrize("index", [-1, 31, 32, 1000, 2**63, 2**70])
def test_term_out_of_range_raises(
    log_store_factory: LogStoreFactory, tmp_path: Path, index: int
) -> None:
    store = log_store_factory(tmp_path)
    fill(store, 30)
    with pytest.raises(LogIndexError):
        store.term(index)


@pytest.mark.parametrize(("lo", "hi"), [(0, 5), (1, 32), (31, 32), (-3, 2), (5, 2**70)])
def test_entries_out_of_range_raises(
    log_store_factory: LogStoreFactory, tmp_path: Path, lo: int, hi: int
) -> None:
    store = log_store_factory(tmp_path)
    fill(store, 30)
    with pytest.raises(LogIndexError):
        store.entries(lo, hi)


def test_entries_of_an_empty_range_is_empty(
    log_store_factory: LogStoreFactory, tmp_path: Path
) -> None:
    store = log_store_factory(tmp_path)
    fill(store, 10)
    assert store.entries(4, 4) == []
    assert store.entries(11, 11) == []


# -- entries with max_bytes ----------------------------------------------------------


def test_max_bytes_stops_before_the_entry_that_would_exceed(
    log_store_factory: LogStoreFactory, tmp_path: Path
) -> None:
    store = log_store_factory(tmp_path)
    written = fill(store, 10, size=79)  # wire size 21 + 79 = 100 bytes each
    assert written[0].wire_size == 100
    assert store.entries(1, 11, 100) == written[:1]
    assert store.entries(1, 11, 199) == written[:1]
    assert store.entries(1, 11, 200) == written[:2]
    assert store.entries(3, 11, 450) == written[2:6]
    assert store.entries(1, 11, 10_000) == written
    assert store.entries(1, 11, 0) == written


def test_max_bytes_returns_at_least_one_entry(
    log_store_factory: LogStoreFactory, tmp_path: Path
) -> None:
    store = log_store_factory(tmp_path)
    written = fill(store, 5, size=500)
    assert store.entries(2, 6, 1) == [written[1]]
    assert store.entries(5, 6, 1) == [written[4]]


def test_max_bytes_matches_the_greedy_prefix(
    log_store_factory: LogStoreFactory, tmp_path: Path
) -> None:
    # One store for all examples: reads do not change it.
    store = log_store_factory(tmp_path, SMALL_SEGMENT)
    written: list[Entry] = []
    sizes = [0, 3, 200, 17, 64, 1, 90, 150, 5, 5, 5, 333, 12, 40, 7, 0, 81, 260, 9, 30] * 3
    for i, size in enumerate(sizes, start=1):
        entry = Entry(i, 1 + i // 11, ENTRY_NORMAL, payload(i, size))
        store.append([entry])
        written.append(entry)

    @settings(max_examples=300, deadline=None)
    @given(
        lo=st.integers(1, len(sizes)),
        span=st.integers(0, len(sizes)),
        max_bytes=st.integers(0, 1500),
    )
    def check(lo: int, span: int, max_bytes: int) -> None:
        hi = min(lo + span, len(sizes) + 1)
        expected = greedy_prefix(written[lo - 1 : hi - 1], max_bytes)
        assert store.entries(lo, hi, max_bytes) == expected

    check()


# -- append contiguity ---------------------------------------------------------------


@pytest.mark.parametrize(
    "indexes",
    [[22], [20], [21, 23], [21, 22, 22], [1], [0]],
    ids=["gap", "overlap", "gap-inside-batch", "repeat-inside-batch", "restart", "zero"],
)
def test_append_must_continue_at_last_index_plus_one(
    log_store_factory: LogStoreFactory, tmp_path: Path, indexes: list[int]
) -> None:
    store = log_store_factory(tmp_path)
    written = fill(store, 20)
    with pytest.raises(ValueError):
        store.append([Entry(i, 9, ENTRY_NORMAL, b"bad") for i in indexes])
    # A rejected batch leaves no trace, and the log still accepts the right index.
    assert store.last_index == 20
    assert store.entries(1, 21) == written
    store.append([Entry(21, 9)])
    assert store.term(21) == 9


def test_first_append_to_an_empty_store_starts_at_one(
    log_store_factory: LogStoreFactory, tmp_path: Path
) -> None:
    store = log_store_factory(tmp_path)
    with pytest.raises(ValueError):
        store.append([Entry(2, 1)])
    assert store.last_index == 0


# -- truncate_after ------------------------------------------------------------------


def test_truncate_after_drops_the_suffix(
    log_store_factory: LogStoreFactory, tmp_path: Path
) -> None:
    store = log_store_factory(tmp_path, SMALL_SEGMENT)
    written = fill(store, 40)
    store.truncate_after(12)
    assert (store.first_index, store.last_index) == (1, 12)
    assert store.entries(1, 13) == written[:12]
    with pytest.raises(LogIndexError):
        store.term(13)
    with pytest.raises(LogIndexError):
        store.entries(12, 14)
    # The conflicting suffix is replaced by entries of a later term.
    replacement = make_entries(13, 10, term=7)
    store.append(replacement)
    assert store.entries(1, 23) == written[:12] + replacement
    assert store.term(13) == 7


def test_truncate_after_last_index_changes_nothing(
    log_store_factory: LogStoreFactory, tmp_path: Path
) -> None:
    store = log_store_factory(tmp_path)
    written = fill(store, 10)
    store.truncate_after(10)
    store.truncate_after(50)
    assert store.last_index == 10
    assert store.entries(1, 11) == written


def test_truncate_after_zero_empties_the_log(
    log_store_factory: LogStoreFactory, tmp_path: Path
) -> None:
    store = log_store_factory(tmp_path, SMALL_SEGMENT)
    fill(store, 30)
    store.truncate_after(0)
    assert (store.first_index, store.last_index) == (1, 0)
    store.append(make_entries(1, 3, term=4))
    assert [store.term(i) for i in range(4)] == [0, 4, 4, 4]


def test_truncate_below_the_compacted_prefix_raises(
    log_store_factory: LogStoreFactory, tmp_path: Path
) -> None:
    store = log_store_factory(tmp_path, SMALL_SEGMENT)
    fill(store, 60)
    store.compact(40, store.term(40))
    first = store.first_index
    assert first > 2
    with pytest.raises(LogIndexError):
        store.truncate_after(first - 2)
    assert store.last_index == 60
    # Truncating back to the boundary itself is allowed and leaves an empty log.
    store.truncate_after(first - 1)
    assert store.last_index == first - 1
    assert store.first_index == first


# -- compact -------------------------------------------------------------------------


def test_compact_keeps_the_boundary_term(
    log_store_factory: LogStoreFactory, tmp_path: Path
) -> None:
    store = log_store_factory(tmp_path, SMALL_SEGMENT)
    written = fill(store, 100, per_term=10)
    store.compact(50, written[49].term)
    first = store.first_index
    # Something was dropped, and nothing above the snapshot.
    assert first > 1 and first <= 51
    assert store.last_index == 100
    assert store.term(first - 1) == written[first - 2].term
    assert store.term(50) == written[49].term
    assert store.entries(first, 101) == written[first - 1 :]
    for index in range(1, first - 1):
        with pytest.raises(LogIndexError):
            store.term(index)
    with pytest.raises(LogIndexError):
        store.entries(first - 1, 101)
    assert store.term(0) == 0


def test_compact_everything_continues_after_the_snapshot(
    log_store_factory: LogStoreFactory, tmp_path: Path
) -> None:
    store = log_store_factory(tmp_path, SMALL_SEGMENT)
    fill(store, 30, per_term=10)
    store.compact(30, 3)
    assert (store.first_index, store.last_index) == (31, 30)
    assert store.term(30) == 3
    with pytest.raises(LogIndexError):
        store.term(29)
    with pytest.raises(ValueError):
        store.append([Entry(30, 3)])
    more = make_entries(31, 5, term=4)
    store.append(more)
    assert store.entries(31, 36) == more


def test_compact_past_the_last_entry(log_store_factory: LogStoreFactory, tmp_path: Path) -> None:
    # A snapshot received from the leader can be ahead of everything this node has.
    store = log_store_factory(tmp_path)
    fill(store, 10)
    store.compact(200, 9)
    assert (store.first_index, store.last_index) == (201, 200)
    assert store.term(200) == 9
    with pytest.raises(ValueError):
        store.append([Entry(11, 9)])
    store.append([Entry(201, 9)])
    assert store.term(201) == 9


def test_compact_below_the_first_index_changes_nothing(
    log_store_factory: LogStoreFactory, tmp_path: Path
) -> None:
    store = log_store_factory(tmp_path, SMALL_SEGMENT)
    written = fill(store, 60)
    store.compact(30, written[29].term)
    first = store.first_index
    assert first >= 3
    store.compact(first - 2, 1)
    store.compact(first - 1, store.term(first - 1))
    assert store.first_index == first
    assert store.entries(first, 61) == written[first - 1 :]


# -- reset ---------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 5, 25, 400])
def test_reset_drops_every_entry(
    log_store_factory: LogStoreFactory, tmp_path: Path, index: int
) -> None:
    store = log_store_factory(tmp_path, SMALL_SEGMENT)
    fill(store, 25)
    term = 0 if index == 0 else 12
    store.reset(index, term)
    assert (store.first_index, store.last_index) == (index + 1, index)
    assert store.term(index) == term
    if index >= 2:
        with pytest.raises(LogIndexError):
            store.term(index - 1)
    with pytest.raises(LogIndexError):
        store.entries(index, index + 1)
    store.append(make_entries(index + 1, 3, term=13))
    assert [e.index for e in store.entries(index + 1, index + 4)] == [
        index + 1,
        index + 2,
        index + 3,
    ]


# -- segments and reopening ----------------------------------------------------------


def test_many_small_segments_read_back_across_reopen(
    log_store_factory: LogStoreFactory, tmp_path: Path
) -> None:
    store = log_store_factory(tmp_path, 128)
    written: list[Entry] = []
    batch_sizes = [1, 2, 3, 5, 8, 13, 1, 1, 40, 2] * 8
    for n in batch_sizes:
        batch = [
            Entry(i, 1 + i // 50, ENTRY_NORMAL, payload(i, i % 37))
            for i in range(len(written) + 1, len(written) + 1 + n)
        ]
        store.append(batch)
        written.extend(batch)
    store.sync()
    assert store.entries(1, len(written) + 1) == written
    # A range that crosses segment boundaries, with and without a byte limit.
    assert store.entries(17, 260) == written[16:259]
    assert store.entries(17, 260, 700) == greedy_prefix(written[16:259], 700)
    store.close()
    reopened = log_store_factory(tmp_path, 128)
    assert (reopened.first_index, reopened.last_index) == (1, len(written))
    assert reopened.entries(1, len(written) + 1) == written
    for entry in written:
        assert reopened.term(entry.index) == entry.term


def test_reopen_keeps_every_synced_entry(
    log_store_factory: LogStoreFactory, tmp_path: Path
) -> None:
    store = log_store_factory(tmp_path, SMALL_SEGMENT)
    written = fill(store, 50)
    store.sync()
    store.close()
    reopened = log_store_factory(tmp_path, SMALL_SEGMENT)
    assert (reopened.first_index, reopened.last_index) == (1, 50)
    assert reopened.entries(1, 51) == written
    # The reopened store appends where the old one stopped.
    more = make_entries(51, 4, term=20)
    reopened.append(more)
    reopened.sync()
    reopened.close()
    again = log_store_factory(tmp_path, SMALL_SEGMENT)
    assert again.entries(1, 55) == written + more


def test_reopen_after_compaction(log_store_factory: LogStoreFactory, tmp_path: Path) -> None:
    store = log_store_factory(tmp_path, SMALL_SEGMENT)
    written = fill(store, 80)
    store.compact(45, written[44].term)
    first = store.first_index
    boundary = store.term(first - 1)
    store.sync()
    store.close()
    reopened = log_store_factory(tmp_path, SMALL_SEGMENT)
    assert (reopened.first_index, reopened.last_index) == (first, 80)
    assert reopened.term(first - 1) == boundary
    assert reopened.entries(first, 81) == written[first - 1 :]


def test_reopen_after_compacting_everything(
    log_store_factory: LogStoreFactory, tmp_path: Path
) -> None:
    store = log_store_factory(tmp_path, SMALL_SEGMENT)
    fill(store, 40)
    store.compact(40, 77)
    store.sync()
    store.close()
    reopened = log_store_factory(tmp_path, SMALL_SEGMENT)
    assert (reopened.first_index, reopened.last_index) == (41, 40)
    assert reopened.term(40) == 77


def test_reopen_after_truncation(log_store_factory: LogStoreFactory, tmp_path: Path) -> None:
    store = log_store_factory(tmp_path, SMALL_SEGMENT)
    written = fill(store, 60)
    store.sync()
    store.truncate_after(23)
    replacement = make_entries(24, 5, term=30)
    store.append(replacement)
    store.sync()
    store.close()
    reopened = log_store_factory(tmp_path, SMALL_SEGMENT)
    assert (reopened.first_index, reopened.last_index) == (1, 28)
    assert reopened.entries(1, 29) == written[:23] + replacement


def test_reopen_after_truncation_without_new_entries(
    log_store_factory: LogStoreFactory, tmp_path: Path
) -> None:
    store = log_store_factory(tmp_path, SMALL_SEGMENT)
    written = fill(store, 60)
    store.sync()
    store.truncate_after(37)
    store.sync()
    store.close()
    reopened = log_store_factory(tmp_path, SMALL_SEGMENT)
    assert reopened.last_index == 37
    assert reopened.entries(1, 38) == written[:37]


def test_reopen_after_reset(log_store_factory: LogStoreFactory, tmp_path: Path) -> None:
    store = log_store_factory(tmp_path, SMALL_SEGMENT)
    fill(store, 60)
    store.reset(500, 8)
    after = make_entries(501, 3, term=9)
    store.append(after)
    store.sync()
    store.close()
    reopened = log_store_factory(tmp_path, SMALL_SEGMENT)
    assert (reopened.first_index, reopened.last_index) == (501, 503)
    assert reopened.term(500) == 8
    assert reopened.entries(501, 504) == after
    with pytest.raises(LogIndexError):
        reopened.term(60)


# -- a random walk against a model ---------------------------------------------------


def test_random_operations_match_a_model(
    log_store_factory: LogStoreFactory, tmp_path: Path
) -> None:
    """Any sequence of operations (with reopens) leaves the store equal to a plain list."""
    factory = log_store_factory
    segment_size = 400

    class StoreVersusModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.directory = Path(tempfile.mkdtemp(dir=tmp_path))
            self.store = factory(self.directory, segment_size)
            # The model: entries first..last, and the term of first - 1.
            self.first = 1
            self.boundary = 0
            self.log: list[Entry] = []

        @property
        def last(self) -> int:
            return self.first - 1 + len(self.log)

        def model_term(self, index: int) -> int:
            if index == self.first - 1:
                return self.boundary
            return self.log[index - self.first].term

        def last_term(self) -> int:
            return self.model_term(self.last)

        def teardown(self) -> None:
            self.store.close()
            shutil.rmtree(self.directory, ignore_errors=True)

        @rule(count=st.integers(1, 12), bump=st.booleans(), size=st.integers(0, 90))
        def append(self, count: int, bump: bool, size: int) -> None:
            term = self.last_term() + int(bump)
            batch = [
                Entry(i, term, ENTRY_NORMAL, payload(i, size))
                for i in range(self.last + 1, self.last + 1 + count)
            ]
            self.store.append(batch)
            self.log.extend(batch)

        @rule()
        def sync(self) -> None:
            self.store.sync()

        @rule()
        def reopen(self) -> None:
            self.store.sync()
            self.store.close()
            self.store = factory(self.directory, segment_size)

        @rule(data=st.data())
        def truncate_after(self, data: st.DataObject) -> None:
            index = data.draw(st.integers(self.first - 1, self.last + 2))
            self.store.truncate_after(index)
            if index < self.last:
                del self.log[index - self.first + 1 :]

        @rule(data=st.data())
        def compact(self, data: st.DataObject) -> None:
            index = data.draw(st.integers(max(self.first - 1, 0), self.last + 3))
            if index <= self.last:
                term = self.model_term(index)
            else:
                term = self.last_term() + data.draw(st.integers(0, 2))
            if index == 0:
                term = 0
            old_first = self.first
            self.store.compact(index, term)
            if index >= self.last:
                self.first, self.boundary, self.log = index + 1, term, []
                return
            # The store may keep a few entries below the snapshot; never more than before.
            new_first = self.store.first_index
            assert old_first <= new_first <= index + 1
            if new_first > old_first:
                self.boundary = self.model_term(new_first - 1)
                del self.log[: new_first - old_first]
                self.first = new_first

        @rule(index=st.integers(0, 300), term=st.integers(0, 50))
        def reset(self, index: int, term: int) -> None:
            if index == 0:
                term = 0
            self.store.reset(index, term)
            self.first, self.boundary, self.log = index + 1, term, []

        @rule(data=st.data())
        def read(self, data: st.DataObject) -> None:
            lo = data.draw(st.integers(self.first, self.last + 1))
            hi = data.draw(st.integers(lo, self.last + 1))
            max_bytes = data.draw(st.integers(0, 400))
            expected = greedy_prefix(self.log[lo - self.first : hi - self.first], max_bytes)
            assert self.store.entries(lo, hi, max_bytes) == expected

        @invariant()
        def bounds_and_terms_agree(self) -> None:
            assert self.store.first_index == self.first
            assert self.store.last_index == self.last
            assert self.store.term(0) == 0
            assert self.store.term(self.first - 1) == self.boundary
            for entry in self.log:
                assert self.store.term(entry.index) == entry.term
            if self.first - 2 > 0:
                with pytest.raises(LogIndexError):
                    self.store.term(self.first - 2)
            with pytest.raises(LogIndexError):
                self.store.term(self.last + 1)

    run_state_machine_as_test(
        StoreVersusModel,
        settings=settings(
            max_examples=40,
            stateful_step_count=35,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
