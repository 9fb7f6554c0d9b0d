"""KVStateMachine semantics: revisions, versions, conditions, ranges, determinism."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv.kv import (
    ApplyResult,
    AuthChange,
    Command,
    CommandDecodeError,
    Delete,
    DeletePrefix,
    KeyValue,
    KVStateMachine,
    Put,
    Status,
    decode_command,
    encode_command,
    prefix_end,
)

from ._strategies import kv_commands, tagged_workloads


class Machine:
    """A state machine fed with consecutive indexes."""

    def __init__(self, **kwargs: int) -> None:
        self.sm = KVStateMachine(**kwargs)
        self.next_index = 1

    def run(self, cmd: Command) -> ApplyResult:
        index = self.next_index
        self.next_index += 1
        return self.sm.apply(index, encode_command(cmd))


@pytest.fixture
def m() -> Machine:
    return Machine()


# -- Put --------------------------------------------------------------------------------


def test_put_creates_key(m: Machine) -> None:
    r = m.run(Put(b"a", b"1"))
    assert r == ApplyResult(Status.OK, 1, revision=1)
    assert r.ok
    assert m.sm.get(b"a") == KeyValue(b"a", b"1", create_revision=1, mod_revision=1, version=1)
    assert len(m.sm) == 1
    assert b"a" in m.sm


def test_put_overwrite_bumps_mod_revision_and_version(m: Machine) -> None:
    m.run(Put(b"a", b"1"))
    m.run(Put(b"other", b"x"))
    r = m.run(Put(b"a", b"2"))
    assert r.status is Status.OK
    assert r.revision == 3
    assert r.prev == KeyValue(b"a", b"1", 1, 1, 1)
    assert m.sm.get(b"a") == KeyValue(b"a", b"2", 1, 3, 2)
    m.run(Put(b"a", b"3"))
    assert m.sm.get(b"a") == KeyValue(b"a", b"3", 1, 4, 3)
    assert len(m.sm) == 2


def test_delete_then_recreate_resets_version_and_create_revision(m: Machine) -> None:
    m.run(Put(b"a", b"1"))
    m.run(Put(b"a", b"2"))
    m.run(Delete(b"a"))
    assert m.sm.get(b"a") is None
    r = m.run(Put(b"a", b"3"))
    assert r.prev is None
    assert m.sm.get(b"a") == KeyValue(b"a", b"3", 4, 4, 1)


def test_put_if_absent(m: Machine) -> None:
    assert m.run(Put(b"a", b"1", prev_revision=0)).status is Status.OK
    r = m.run(Put(b"a", b"2", prev_revision=0))
    assert r == ApplyResult(Status.CONFLICT, 2, current_revision=1)
    assert m.sm.get(b"a") == KeyValue(b"a", b"1", 1, 1, 1)


def test_put_compare_and_swap(m: Machine) -> None:
    m.run(Put(b"a", b"1"))
    m.run(Put(b"a", b"2"))
    stale = m.run(Put(b"a", b"x", prev_revision=1))
    assert stale == ApplyResult(Status.CONFLICT, 3, current_revision=2)
    assert m.sm.get(b"a") == KeyValue(b"a", b"2", 1, 2, 2)
    ok = m.run(Put(b"a", b"3", prev_revision=2))
    assert ok.status is Status.OK
    assert ok.revision == 4
    assert ok.prev == KeyValue(b"a", b"2", 1, 2, 2)
    assert m.sm.get(b"a") == KeyValue(b"a", b"3", 1, 4, 3)


def test_put_with_revision_on_absent_key_conflicts_with_zero(m: Machine) -> None:
    r = m.run(Put(b"a", b"1", prev_revision=5))
    assert r == ApplyResult(Status.CONFLICT, 1, current_revision=0)
    assert m.sm.get(b"a") is None
    assert len(m.sm) == 0


def test_conflict_changes_nothing_but_applied_index(m: Machine) -> None:
    m.run(Put(b"a", b"1"))
    other = Machine()
    other.run(Put(b"a", b"1"))
    m.run(Put(b"a", b"2", prev_revision=0))
    other.sm.advance(2)
    assert m.sm.state_hash() == other.sm.state_hash()


# -- Delete -----------------------------------------------------------------------------


def test_delete_existing(m: Machine) -> None:
    m.run(Put(b"a", b"1"))
    r = m.run(Delete(b"a"))
    assert r == ApplyResult(Status.OK, 2, revision=2, prev=KeyValue(b"a", b"1", 1, 1, 1), deleted=1)
    assert m.sm.get(b"a") is None
    assert len(m.sm) == 0
    assert m.sm.range() == []


def test_delete_absent_is_not_found(m: Machine) -> None:
    m.run(Put(b"b", b"1"))
    assert m.run(Delete(b"a")) == ApplyResult(Status.NOT_FOUND, 2)
    assert m.run(Delete(b"a", prev_revision=0)) == ApplyResult(Status.NOT_FOUND, 3)
    assert len(m.sm) == 1


def test_conditional_delete(m: Machine) -> None:
    m.run(Put(b"a", b"1"))
    m.run(Put(b"a", b"2"))
    assert m.run(Delete(b"a", prev_revision=1)) == ApplyResult(
        Status.CONFLICT, 3, current_revision=2
    )
    assert m.run(Delete(b"a", prev_revision=0)) == ApplyResult(
        Status.CONFLICT, 4, current_revision=2
    )
    assert m.sm.get(b"a") == KeyValue(b"a", b"2", 1, 2, 2)
    r = m.run(Delete(b"a", prev_revision=2))
    assert r.status is Status.OK
    assert r.deleted == 1
    assert r.prev == KeyValue(b"a", b"2", 1, 2, 2)
    assert m.run(Delete(b"a", prev_revision=2)) == ApplyResult(
        Status.CONFLICT, 6, current_revision=0
    )


# -- DeletePrefix -----------------------------------------------------------------------


def _put_all(m: Machine, keys: list[bytes]) -> None:
    for key in keys:
        m.run(Put(key, b"v:" + key))


def test_delete_prefix(m: Machine) -> None:
    _put_all(m, [b"a", b"a/1", b"a/2", b"a0", b"b/1", b"a/\xff"])
    r = m.run(DeletePrefix(b"a/"))
    assert r == ApplyResult(Status.OK, 7, revision=7, deleted=3)
    assert [kv.key for kv in m.sm.range()] == [b"a", b"a0", b"b/1"]
    assert len(m.sm) == 3
    assert m.sm.get(b"a/1") is None


def test_delete_prefix_nothing_matches(m: Machine) -> None:
    _put_all(m, [b"a", b"b"])
    assert m.run(DeletePrefix(b"c")) == ApplyResult(Status.OK, 3, revision=0, deleted=0)
    assert len(m.sm) == 2


def test_delete_prefix_empty_deletes_everything(m: Machine) -> None:
    _put_all(m, [b"a", b"b", b"\x00", b"\xff\xff"])
    assert m.run(DeletePrefix(b"")).deleted == 4
    assert len(m.sm) == 0
    assert m.sm.range() == []
    m.run(Put(b"a", b"again"))
    assert m.sm.get(b"a") == KeyValue(b"a", b"again", 6, 6, 1)


def test_delete_prefix_of_ff_bytes(m: Machine) -> None:
    _put_all(m, [b"\xfe", b"\xff", b"\xff\x00", b"\xff\xff", b"\xff\xff\x01"])
    assert m.run(DeletePrefix(b"\xff\xff")).deleted == 2
    assert [kv.key for kv in m.sm.range()] == [b"\xfe", b"\xff", b"\xff\x00"]
    assert m.run(DeletePrefix(b"\xff")).deleted == 2
    assert [kv.key for kv in m.sm.range()] == [b"\xfe"]


def test_delete_prefix_of_many_keys(m: Machine) -> None:
    keys = [b"k%04d" % i for i in range(3000)] + [b"j", b"l"]
    _put_all(m, keys)
    assert m.run(DeletePrefix(b"k")).deleted == 3000
    assert [kv.key for kv in m.sm.range()] == [b"j", b"l"]
    assert m.sm.count() == 2


# -- range ------------------------------------------------------------------------------


def test_range_sorted_with_prefix_and_limit(m: Machine) -> None:
    _put_all(m, [b"b/2", b"a", b"b/10", b"b/1", b"c", b"b", b"b/\xff"])
    assert [kv.key for kv in m.sm.range()] == [b"a", b"b", b"b/1", b"b/10", b"b/2", b"b/\xff", b"c"]
    assert [kv.key for kv in m.sm.range(b"b/")] == [b"b/1", b"b/10", b"b/2", b"b/\xff"]
    assert [kv.key for kv in m.sm.range(b"b/", limit=2)] == [b"b/1", b"b/10"]
    assert [kv.key for kv in m.sm.range(b"b/", limit=100)] == [b"b/1", b"b/10", b"b/2", b"b/\xff"]
    assert m.sm.range(b"d") == []
    assert m.sm.range(b"b/1")[0] == KeyValue(b"b/1", b"v:b/1", 4, 4, 1)
    assert m.sm.count(b"b") == 5


def test_range_pages_with_after(m: Machine) -> None:
    keys = [b"p/%02d" % i for i in range(10)]
    _put_all(m, [*keys, b"p", b"q"])
    pages: list[list[bytes]] = []
    after: bytes | None = None
    while True:
        page = m.sm.range(b"p/", limit=3, after=after)
        if not page:
            break
        pages.append([kv.key for kv in page])
        after = page[-1].key
    assert pages == [keys[0:3], keys[3:6], keys[6:9], keys[9:10]]
    # ``after`` below the prefix does not widen the range, above it empties it.
    assert [kv.key for kv in m.sm.range(b"p/", after=b"a")] == keys
    assert m.sm.range(b"p/", after=b"p0") == []


def test_range_rejects_negative_limit(m: Machine) -> None:
    with pytest.raises(ValueError):
        m.sm.range(b"", limit=-1)


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"", None),
        (b"a", b"b"),
        (b"a\xff", b"b"),
        (b"\xff", None),
        (b"\xff\xff", None),
        (b"a\x00", b"a\x01"),
        (b"\x00\xff\xff", b"\x01"),
    ],
)
def test_prefix_end(prefix: bytes, end: bytes | None) -> None:
    assert prefix_end(prefix) == end


# -- applied index and bad payloads -----------------------------------------------------


def test_applied_index_and_gaps() -> None:
    sm = KVStateMachine()
    assert sm.applied_index == 0
    sm.apply(3, encode_command(Put(b"a", b"1")))
    assert sm.applied_index == 3
    sm.advance(4)
    assert sm.applied_index == 4
    assert sm.apply(10, encode_command(Put(b"a", b"2"))).revision == 10
    assert sm.get(b"a") == KeyValue(b"a", b"2", 3, 10, 2)
    for stale in (10, 9, 0):
        with pytest.raises(ValueError):
            sm.apply(stale, encode_command(Put(b"b", b"1")))
        with pytest.raises(ValueError):
            sm.advance(stale)
    assert sm.get(b"b") is None
    assert sm.applied_index == 10


def test_garbage_payload_is_bad_command_and_changes_nothing(m: Machine) -> None:
    m.run(Put(b"a", b"1"))
    before = m.sm.snapshot()
    r = m.sm.apply(2, b"\x07" + b"\x00" * 40)
    assert r.status is Status.BAD_COMMAND
    assert r.entry_index == 2
    assert "version" in r.error
    assert m.sm.applied_index == 2
    reference = KVStateMachine()
    reference.restore(before)
    reference.advance(2)
    assert m.sm.state_hash() == reference.state_hash()


@given(st.lists(st.binary(max_size=60), max_size=20))
def test_apply_never_raises_on_garbage(payloads: list[bytes]) -> None:
    sm = KVStateMachine()
    for index, data in enumerate(payloads, 1):
        try:
            command = decode_command(data)
        except CommandDecodeError as exc:
            before = len(sm)
            result = sm.apply(index, data)
            assert result == ApplyResult(Status.BAD_COMMAND, index, error=str(exc))
            assert len(sm) == before
        else:
            result = sm.apply(index, data)
            # An auth change's document is judged when applied; a key command's never is.
            if not isinstance(command, AuthChange):
                assert result.status is not Status.BAD_COMMAND
    assert sm.applied_index == len(payloads)


def test_apply_batch_matches_apply() -> None:
    cmds: list[Command] = [
        Put(b"a", b"1"),
        Put(b"a", b"2", 1),
        Delete(b"zz"),
        Put(b"b", b"3", 0),
        DeletePrefix(b""),
    ]
    items = [(i * 2, encode_command(c)) for i, c in enumerate(cmds, 1)]
    one = KVStateMachine()
    expected = [one.apply(i, d) for i, d in items]
    batch = KVStateMachine()
    assert batch.apply_batch(items) == expected
    assert batch.applied_index == 10
    assert batch.state_hash() == one.state_hash()
    assert batch.apply_batch([]) == []


# -- a reference model ------------------------------------------------------------------


class Model:
    """The documented semantics, written as plainly as possible."""

    def __init__(self) -> None:
        self.keys: dict[bytes, KeyValue] = {}

    def apply(self, index: int, cmd: Command) -> tuple[Status, int, int]:
        """Return (status, current_revision, deleted)."""
        if isinstance(cmd, DeletePrefix):
            doomed = [k for k in self.keys if k.startswith(cmd.prefix)]
            for k in doomed:
                del self.keys[k]
            return Status.OK, 0, len(doomed)
        old = self.keys.get(cmd.key)
        current = old.mod_revision if old else 0
        if cmd.prev_revision is not None and cmd.prev_revision != current:
            return Status.CONFLICT, current, 0
        if isinstance(cmd, Delete):
            if old is None:
                return Status.NOT_FOUND, 0, 0
            del self.keys[cmd.key]
            return Status.OK, 0, 1
        if old is None:
            self.keys[cmd.key] = KeyValue(cmd.key, cmd.value, index, index, 1)
        else:
            self.keys[cmd.key] = KeyValue(
                cmd.key, cmd.value, old.create_revision, index, old.version + 1
            )
        return Status.OK, 0, 0


@settings(max_examples=300)
@given(st.lists(kv_commands(), max_size=60))
def test_matches_reference_model(cmds: list[Command]) -> None:
    m = Machine()
    model = Model()
    for cmd in cmds:
        index = m.next_index
        result = m.run(cmd)
        status, current, deleted = model.apply(index, cmd)
        assert (result.status, result.current_revision, result.deleted) == (
            status,
            current,
            deleted,
        )
        assert result.entry_index == index
        assert result.revision == (
            index if status is Status.OK and (not isinstance(cmd, DeletePrefix) or deleted) else 0
        )
        assert m.sm.range() == sorted(model.keys.values())
    for key, kv in model.keys.items():
        assert m.sm.get(key) == kv
        for n in range(len(key) + 1):
            expected = sorted(v for k, v in model.keys.items() if k.startswith(key[:n]))
            assert m.sm.range(key[:n]) == expected
            assert m.sm.range(key[:n], limit=1) == expected[:1]
    assert len(m.sm) == len(model.keys)


# -- determinism ------------------------------------------------------------------------


@given(tagged_workloads())
def test_same_entries_same_hash(cmds: list[Command]) -> None:
    a, b = (
        Machine(max_clients=2, max_results_per_client=3),
        Machine(max_clients=2, max_results_per_client=3),
    )
    for cmd in cmds:
        assert a.run(cmd) == b.run(cmd)
    assert a.sm.state_hash() == b.sm.state_hash()
    assert a.sm.snapshot() == b.sm.snapshot()


def test_equal_states_reached_differently_hash_equal() -> None:
    a, b = Machine(), Machine()
    first: list[Command] = [Put(b"x", b"1"), Put(b"y", b"2"), Delete(b"y")]
    second: list[Command] = [Put(b"x", b"1"), Put(b"z", b"3"), DeletePrefix(b"z")]
    for cmd in first:
        a.run(cmd)
    for cmd in second:
        b.run(cmd)
    assert a.sm.state_hash() == b.sm.state_hash()


@pytest.mark.parametrize(
    "second",
    [
        Put(b"x", b"2"),
        Put(b"y", b"1"),
        Delete(b"x"),
        Put(b"x", b"1", client_id=1, seq=1, first_incomplete=1),
    ],
)
def test_different_states_hash_differently(second: Command) -> None:
    a, b = Machine(), Machine()
    a.run(Put(b"x", b"1"))
    b.run(Put(b"x", b"1"))
    a.run(Put(b"x", b"1"))
    b.run(second)
    assert a.sm.state_hash() != b.sm.state_hash()


def test_applied_index_is_part_of_the_hash() -> None:
    a, b = KVStateMachine(), KVStateMachine()
    a.advance(1)
    b.advance(2)
    assert a.state_hash() != b.state_hash()
    b_empty = KVStateMachine()
    assert KVStateMachine().state_hash() == b_empty.state_hash()
