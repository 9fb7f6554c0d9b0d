"""Snapshots: round trips, determinism, checksum and format validation."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv.kv import (
    ApplyResult,
    Command,
    Delete,
    KeyValue,
    KVStateMachine,
    Put,
    SnapshotFormatError,
    encode_command,
)
from raftkv.kv.snapshot_format import HEADER, MAGIC, seal

from ._strategies import kv_commands, small_keys, small_prefixes, tagged_workloads

LIMITS = {"max_clients": 2, "max_results_per_client": 3}


def _fed(cmds: list[Command], **limits: int) -> KVStateMachine:
    sm = KVStateMachine(**limits)
    for index, cmd in enumerate(cmds, 1):
        sm.apply(index, encode_command(cmd))
    return sm


def _sample_machine() -> KVStateMachine:
    return _fed(
        [
            Put(b"a", b"1"),
            Put(b"b", b"2"),
            Put(b"a", b"3", 1),
            Put(b"c", b"4", client_id=5, seq=1, first_incomplete=1),
            Delete(b"b", client_id=5, seq=2, first_incomplete=1),
            Put(b"d", b"\xff" * 40, 0, client_id=6, seq=1, first_incomplete=1),
        ]
    )


def _reads(
    sm: KVStateMachine, probe_keys: list[bytes], probe_prefixes: list[bytes]
) -> tuple[object, ...]:
    return (
        sm.applied_index,
        len(sm),
        sm.range(),
        [sm.get(k) for k in probe_keys],
        [sm.range(p, limit=2) for p in probe_prefixes],
        sm.clients.clients(),
        [(c, sm.clients.floor(c), sm.clients.retained(c)) for c in sm.clients.clients()],
    )


@settings(max_examples=200)
@given(
    tagged_workloads(),
    tagged_workloads(),
    st.lists(small_keys, max_size=5),
    st.lists(small_prefixes, max_size=3),
)
def test_round_trip(
    cmds: list[Command], later: list[Command], probe_keys: list[bytes], probe_prefixes: list[bytes]
) -> None:
    original = _fed(cmds, **LIMITS)
    snap = original.snapshot()
    restored = KVStateMachine(**LIMITS)
    restored.restore(snap)
    assert restored.state_hash() == original.state_hash()
    assert restored.snapshot() == snap
    assert _reads(restored, probe_keys, probe_prefixes) == _reads(
        original, probe_keys, probe_prefixes
    )
    # Both continue identically: same answers, including replays from the client table.
    start = original.applied_index + 1
    for offset, cmd in enumerate(later + cmds):
        data = encode_command(cmd)
        assert restored.apply(start + offset, data) == original.apply(start + offset, data)
    assert restored.state_hash() == original.state_hash()


def test_round_trip_empty() -> None:
    empty = KVStateMachine()
    restored = KVStateMachine()
    restored.restore(empty.snapshot())
    assert restored.applied_index == 0
    assert len(restored) == 0
    assert restored.state_hash() == empty.state_hash()


def test_restore_replaces_everything() -> None:
    target = _fed([Put(b"x", b"1"), Put(b"y", b"2", client_id=9, seq=1, first_incomplete=1)])
    target.restore(_sample_machine().snapshot())
    assert target.get(b"x") is None
    assert 9 not in target.clients
    assert target.get(b"a") == KeyValue(b"a", b"3", 1, 3, 2)
    assert target.get(b"d") == KeyValue(b"d", b"\xff" * 40, 6, 6, 1)
    assert target.clients.clients() == [5, 6]
    assert target.clients.retained(5) == [1, 2]
    assert target.applied_index == 6
    # The restored table answers the retry of client 5's delete from memory.
    replay = target.apply(7, encode_command(Delete(b"b", client_id=5, seq=2, first_incomplete=1)))
    assert replay == ApplyResult(replay.status, 5, 5, KeyValue(b"b", b"2", 2, 2, 1), deleted=1)


def test_snapshot_is_deterministic_and_hash_is_its_checksum() -> None:
    a, b = _sample_machine(), _sample_machine()
    snap = a.snapshot()
    assert snap == a.snapshot() == b.snapshot()
    assert snap.startswith(MAGIC)
    assert a.state_hash() == snap[-32:].hex()
    assert len(a.state_hash()) == 64


def test_many_keys_round_trip_across_chunks() -> None:
    sm = KVStateMachine()
    for i in range(10_000):
        sm.apply(i + 1, encode_command(Put(b"key%05d" % (i * 7919 % 10_000), b"v%d" % i)))
    restored = KVStateMachine()
    restored.restore(sm.snapshot())
    assert restored.range() == sm.range()
    assert restored.state_hash() == sm.state_hash()


# -- corruption ------------------------------------------------------------------------


def test_every_flipped_byte_is_detected() -> None:
    snap = _sample_machine().snapshot()
    for pos in range(len(snap)):
        damaged = bytearray(snap)
        damaged[pos] ^= 0x40
        with pytest.raises(SnapshotFormatError):
            KVStateMachine().restore(bytes(damaged))


def test_every_truncation_is_detected() -> None:
    snap = _sample_machine().snapshot()
    for size in range(len(snap)):
        with pytest.raises(SnapshotFormatError):
            KVStateMachine().restore(snap[:size])
    with pytest.raises(SnapshotFormatError):
        KVStateMachine().restore(snap + b"\x00")


@given(st.binary(max_size=300))
def test_garbage_is_rejected(data: bytes) -> None:
    with pytest.raises(SnapshotFormatError):
        KVStateMachine().restore(data)


@pytest.mark.parametrize("data", ["text", None, 5])
def test_non_bytes_rejected(data: object) -> None:
    with pytest.raises(SnapshotFormatError):
        KVStateMachine().restore(data)  # type: ignore[arg-type]


def test_failed_restore_leaves_state_unchanged() -> None:
    sm = _sample_machine()
    before = sm.snapshot()
    with pytest.raises(SnapshotFormatError):
        sm.restore(before[:-1] + bytes([before[-1] ^ 1]))
    with pytest.raises(SnapshotFormatError):
        sm.restore(_resealed(before, lambda body: body + b"\x00"))
    assert sm.snapshot() == before


def _resealed(snap: bytes, edit: object) -> bytes:
    """Apply ``edit`` to the body and give it a valid checksum again."""
    assert callable(edit)
    body = edit(snap[:-32])
    assert isinstance(body, bytes)
    return seal([body])


def _header_edit(**fields: int) -> object:
    def edit(body: bytes) -> bytes:
        magic, version, applied, count = HEADER.unpack_from(body)
        values = {"version": version, "applied": applied, "count": count, **fields}
        return (
            HEADER.pack(magic, values["version"], values["applied"], values["count"])
            + body[HEADER.size :]
        )

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda body: b"NOTRAFTK" + body[8:], "magic"),
        (_header_edit(version=4), "version"),
        (_header_edit(count=5), "out of order|truncated|invalid"),
        (_header_edit(count=2), "limit|truncated|invalid|out of order"),
        (_header_edit(applied=3), "revisions|invalid"),
        (lambda body: body + b"\x00", "trailing"),
        (lambda body: body[:-1], "truncated"),
    ],
)
def test_checksummed_but_invalid_content(edit: object, message: str) -> None:
    snap = _sample_machine().snapshot()
    with pytest.raises(SnapshotFormatError, match=message):
        KVStateMachine().restore(_resealed(snap, edit))


def test_keys_out_of_order_rejected() -> None:
    records = []
    for key in (b"b", b"a"):
        records.append(struct.pack("<II", 1, 1) + key + struct.pack("<QQQ", 1, 1, 1) + b"v")
    body = HEADER.pack(MAGIC, 1, 5, 2) + b"".join(records) + struct.pack("<Q", 0)
    with pytest.raises(SnapshotFormatError, match="out of order"):
        KVStateMachine().restore(seal([body]))
    fixed = HEADER.pack(MAGIC, 1, 5, 2) + b"".join(reversed(records)) + struct.pack("<Q", 0)
    sm = KVStateMachine()
    sm.restore(seal([fixed]))
    assert [kv.key for kv in sm.range()] == [b"a", b"b"]


def test_snapshot_with_more_clients_than_the_limit_rejected() -> None:
    sm = _sample_machine()
    with pytest.raises(SnapshotFormatError, match="limit"):
        KVStateMachine(max_clients=1).restore(sm.snapshot())
    with pytest.raises(SnapshotFormatError, match="limit"):
        KVStateMachine(max_results_per_client=1).restore(sm.snapshot())


@given(st.lists(kv_commands(), max_size=30))
def test_hash_equal_iff_snapshot_equal(cmds: list[Command]) -> None:
    a = _fed(cmds)
    b = _fed(cmds[:-1])
    if cmds:
        b.advance(len(cmds))
    assert (a.state_hash() == b.state_hash()) == (a.snapshot() == b.snapshot())
