"""The watch history: what it keeps, what it drops (whole revisions), its floor, and the
changes the state machine records in it."""

from __future__ import annotations

import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv.kv import (
    AuthChange,
    Command,
    Delete,
    DeletePrefix,
    KVStateMachine,
    Put,
    Status,
    encode_command,
)
from raftkv.kv.snapshot_format import META
from raftkv.kv.watch_history import _COMPACT_AT, Change, WatchHistory

from ._strategies import kv_commands


def stored(create: int, mod: int, version: int, value: bytes) -> bytes:
    """A key's stored form, as the state machine keeps it: META | value."""
    return META.pack(create, mod, version) + value


# -- WatchHistory alone -----------------------------------------------------------------


def test_an_empty_history_covers_its_floor_and_above() -> None:
    history = WatchHistory(10, floor=7)
    assert history.floor == 7
    assert len(history) == 0
    assert history.after(7) == []
    assert history.after(100) == []
    assert history.covers(7)
    assert history.covers(8)
    assert not history.covers(6)
    assert history.after(6) is None


def test_after_returns_the_changes_above_a_revision_in_order() -> None:
    history = WatchHistory(10)
    history.append(1, b"a", b"A1", None)
    history.append(2, b"b", b"B2", None)
    history.append(2, b"c", None, b"C0")
    history.append(4, b"a", b"A4", b"A1")
    assert len(history) == 4
    assert history.after(0) == [
        Change(1, b"a", b"A1", None),
        Change(2, b"b", b"B2", None),
        Change(2, b"c", None, b"C0"),
        Change(4, b"a", b"A4", b"A1"),
    ]
    assert [c.key for c in history.after(1) or []] == [b"b", b"c", b"a"]
    # A revision between two changes, and one at or past the last.
    assert history.after(3) == [Change(4, b"a", b"A4", b"A1")]
    assert history.after(4) == []
    assert history.after(9) == []
    assert history.floor == 0


def test_after_can_keep_only_the_keys_a_watch_matches() -> None:
    history = WatchHistory(10, floor=1)
    history.append(2, b"p/a", b"A", None)
    history.append(3, b"q", b"Q", None)
    history.append(3, b"p/b", b"B", None)
    matching = history.after(1, lambda key: key.startswith(b"p/"))
    assert matching == [Change(2, b"p/a", b"A", None), Change(3, b"p/b", b"B", None)]
    assert all(type(change) is Change for change in matching or [])
    assert history.after(0, lambda key: True) is None  # below the floor, as without


def test_kept_changes_are_not_tracked_by_the_garbage_collector() -> None:
    """A full collection of the Raft process would otherwise scan every kept change."""
    history = WatchHistory(1000)
    for revision in range(1, 1001):
        history.append(revision, b"k%d" % revision, b"v", None)
    gc.collect()
    assert not any(gc.is_tracked(entry) for entry in history._changes)


def test_the_oldest_revision_goes_first_and_raises_the_floor() -> None:
    history = WatchHistory(3)
    history.append(1, b"a", b"1", None)
    history.append(2, b"b", b"2", None)
    history.append(3, b"c", b"3", None)
    assert history.floor == 0
    history.append(4, b"d", b"4", None)
    assert history.floor == 1
    assert len(history) == 3
    assert history.after(0) is None
    assert not history.covers(0)
    assert history.covers(1)
    assert [c.revision for c in history.after(1) or []] == [2, 3, 4]


def test_a_revision_is_dropped_whole() -> None:
    history = WatchHistory(3)
    history.append(1, b"a", b"1", None)
    history.append(1, b"b", b"1", None)
    history.append(2, b"c", b"2", None)
    # Four changes: the oldest revision holds two and both go, leaving two.
    history.append(3, b"d", b"3", None)
    assert history.floor == 1
    assert len(history) == 2
    assert history.after(1) == [Change(2, b"c", b"2", None), Change(3, b"d", b"3", None)]


def test_a_prefix_delete_bigger_than_the_cap_leaves_no_partial_revision() -> None:
    history = WatchHistory(2)
    history.append(1, b"k", b"v", None)
    for key in (b"p/1", b"p/2", b"p/3", b"p/4", b"p/5"):
        history.append(5, key, None, b"old")
    # Revision 5 could not be kept whole: it is gone entirely, never in part.
    assert history.floor == 5
    assert history.after(4) is None
    assert history.after(5) == []
    assert not history.covers(4)
    history.append(6, b"k", b"w", b"v")
    assert history.after(5) == [Change(6, b"k", b"w", b"v")]


def test_the_internal_list_is_compacted() -> None:
    history = WatchHistory(5)
    total = 3 * _COMPACT_AT
    for revision in range(1, total + 1):
        history.append(revision, b"k", b"%d" % revision, None)
        # Dropped slots are shifted out now and then: the list stays bounded.
        assert len(history._changes) <= 2 * _COMPACT_AT + 5
        assert len(history._changes) == len(history._revisions)
    assert len(history) == 5
    assert history.floor == total - 5
    assert [c.revision for c in history.after(total - 5) or []] == list(range(total - 4, total + 1))
    assert history.after(total - 6) is None


def test_reset_forgets_everything_at_a_new_floor() -> None:
    history = WatchHistory(10)
    history.append(1, b"a", b"1", None)
    history.append(2, b"b", b"2", None)
    history.reset(50)
    assert history.floor == 50
    assert len(history) == 0
    assert history.after(49) is None
    assert history.after(50) == []
    history.append(51, b"c", b"3", None)
    assert history.after(50) == [Change(51, b"c", b"3", None)]


def test_the_history_keeps_at_least_one_change() -> None:
    with pytest.raises(ValueError, match="at least one"):
        WatchHistory(0)


@st.composite
def appends(draw: st.DrawFn) -> list[tuple[int, int]]:
    """(revision, changes at it): increasing revisions with gaps, some revisions large."""
    steps = draw(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 7)), max_size=60))
    revision = 0
    out: list[tuple[int, int]] = []
    for gap, count in steps:
        revision += gap
        out.append((revision, count))
    return out


@given(plan=appends(), cap=st.integers(1, 12))
def test_after_matches_a_reference_for_any_appends(plan: list[tuple[int, int]], cap: int) -> None:
    history = WatchHistory(cap)
    reference: list[Change] = []
    for revision, count in plan:
        for i in range(count):
            change = Change(revision, b"k%d" % i, b"v" if i % 2 else None, None)
            history.append(revision, change.key, change.stored, change.prev)
            reference.append(change)
            check_against_reference(history, reference, cap)


def check_against_reference(history: WatchHistory, reference: list[Change], cap: int) -> None:
    last = reference[-1].revision if reference else 0
    floor = history.floor
    for revision in range(last + 2):
        got = history.after(revision)
        assert (got is None) == (revision < floor), (revision, floor)
        assert history.covers(revision) == (got is not None)
        if got is not None:
            assert got == [c for c in reference if c.revision > revision]
    # The floor is as low as the cap allows: what is kept fits, and a raised floor was
    # needed (its revision and the later ones did not fit).
    assert sum(1 for c in reference if c.revision > floor) <= cap
    if floor > 0:
        assert sum(1 for c in reference if c.revision >= floor) > cap


# -- what the state machine records -----------------------------------------------------


class Machine:
    """A state machine fed with consecutive indexes."""

    def __init__(self, **kwargs: int) -> None:
        self.sm = KVStateMachine(**kwargs)
        self.next_index = 1

    def run(self, command: Command) -> Status:
        index = self.next_index
        self.next_index += 1
        return self.sm.apply(index, encode_command(command)).status


def test_a_put_that_creates_records_no_prev() -> None:
    m = Machine()
    assert m.run(Put(b"a", b"1")) == Status.OK
    assert m.sm.history.after(0) == [Change(1, b"a", stored(1, 1, 1, b"1"), None)]


def test_an_overwrite_records_the_stored_form_before_it() -> None:
    m = Machine()
    m.run(Put(b"a", b"1"))
    m.run(Put(b"a", b"two"))
    assert m.sm.history.after(1) == [
        Change(2, b"a", stored(1, 2, 2, b"two"), stored(1, 1, 1, b"1"))
    ]


def test_a_delete_records_no_stored_form() -> None:
    m = Machine()
    m.run(Put(b"a", b"1"))
    m.run(Put(b"a", b""))
    assert m.run(Delete(b"a")) == Status.OK
    assert m.sm.history.after(2) == [Change(3, b"a", None, stored(1, 2, 2, b""))]


def test_a_prefix_delete_records_one_change_per_key_at_one_revision_in_key_order() -> None:
    m = Machine()
    for key in (b"p/c", b"p/a", b"q", b"p/b", b"p"):
        m.run(Put(key, key.upper()))
    assert m.run(DeletePrefix(b"p/")) == Status.OK
    changes = m.sm.history.after(5)
    assert changes == [
        Change(6, b"p/a", None, stored(2, 2, 1, b"P/A")),
        Change(6, b"p/b", None, stored(4, 4, 1, b"P/B")),
        Change(6, b"p/c", None, stored(1, 1, 1, b"P/C")),
    ]
    # Everything: the remaining keys, in key order.
    assert m.run(DeletePrefix(b"")) == Status.OK
    assert [(c.revision, c.key) for c in m.sm.history.after(6) or []] == [(7, b"p"), (7, b"q")]


def test_a_prefix_delete_of_nothing_records_nothing() -> None:
    m = Machine()
    m.run(Put(b"a", b"1"))
    m.run(DeletePrefix(b"zz"))
    assert m.sm.history.after(1) == []


def test_refused_writes_record_nothing() -> None:
    m = Machine()
    m.run(Put(b"a", b"1"))
    assert m.run(Put(b"a", b"2", prev_revision=7)) == Status.CONFLICT
    assert m.run(Put(b"new", b"2", prev_revision=1)) == Status.CONFLICT
    assert m.run(Delete(b"a", prev_revision=9)) == Status.CONFLICT
    assert m.run(Delete(b"absent")) == Status.NOT_FOUND
    assert m.run(Delete(b"absent", prev_revision=3)) == Status.CONFLICT
    # An access-control change and a Raft no-op write no key either.
    assert m.run(AuthChange(b'{"op": "disable"}')) == Status.OK
    m.sm.advance(m.next_index)
    assert m.sm.history.after(1) == []
    assert len(m.sm.history) == 1


def test_a_retried_write_is_recorded_once() -> None:
    m = Machine()
    tag = {"client_id": 5, "seq": 1, "first_incomplete": 1}
    assert m.run(Put(b"a", b"1", **tag)) == Status.OK
    assert m.run(Put(b"a", b"1", **tag)) == Status.OK  # the retry, answered from the table
    assert [c.revision for c in m.sm.history.after(0) or []] == [1]


def test_conditional_writes_that_hold_are_recorded() -> None:
    m = Machine()
    m.run(Put(b"a", b"1", prev_revision=0))
    m.run(Put(b"a", b"2", prev_revision=1))
    m.run(Delete(b"a", prev_revision=2))
    assert [(c.revision, c.stored is None) for c in m.sm.history.after(0) or []] == [
        (1, False),
        (2, False),
        (3, True),
    ]


def test_restore_resets_the_history_at_the_snapshot_index() -> None:
    source = Machine()
    for i in range(5):
        source.run(Put(b"k%d" % i, b"v"))
    image = source.sm.snapshot()
    m = Machine(watch_history=100)
    m.run(Put(b"x", b"1"))
    m.sm.restore(image)
    assert m.sm.history.floor == 5
    assert len(m.sm.history) == 0
    assert m.sm.history.after(4) is None
    assert m.sm.history.after(5) == []
    m.sm.apply(6, encode_command(Put(b"k0", b"w")))
    assert m.sm.history.after(5) == [Change(6, b"k0", stored(1, 6, 2, b"w"), stored(1, 1, 1, b"v"))]


def test_the_state_machine_passes_its_cap_on() -> None:
    m = Machine(watch_history=2)
    for i in range(4):
        m.run(Put(b"k", b"%d" % i))
    assert m.sm.history.max_changes == 2
    assert m.sm.history.floor == 2
    assert [c.revision for c in m.sm.history.after(2) or []] == [3, 4]


def _image(sm: KVStateMachine) -> dict[bytes, bytes]:
    return {
        kv.key: stored(kv.create_revision, kv.mod_revision, kv.version, kv.value)
        for kv in sm.range()
    }


@settings(max_examples=150)
@given(commands=st.lists(kv_commands(), max_size=40), cap=st.integers(1, 10))
def test_the_history_is_the_state_machine_changes(commands: list[Command], cap: int) -> None:
    """The reference is the difference between the state before and after each entry,
    worked out from reads of the state alone."""
    m = Machine(watch_history=cap)
    reference: list[Change] = []
    for command in commands:
        before = _image(m.sm)
        index = m.next_index
        m.run(command)
        after = _image(m.sm)
        for key in sorted(before.keys() | after.keys()):
            if before.get(key) != after.get(key):
                reference.append(Change(index, key, after.get(key), before.get(key)))
        check_against_reference(m.sm.history, reference, cap)
