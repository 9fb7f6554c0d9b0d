"""Hostile input behind a valid checksum: a state machine snapshot is checksummed, so
random bytes stop at the checksum; these tests seal random and damaged bodies so that
every record decoder behind it is exercised. Restore either succeeds or raises
SnapshotFormatError, leaving the state unchanged."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftkv.kv import Delete, KVStateMachine, Put, SnapshotFormatError, encode_command
from raftkv.kv.snapshot_format import DIGEST_SIZE, HEADER, MAGIC, seal

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _sample_snapshot() -> bytes:
    machine = KVStateMachine()
    commands = [
        Put(b"a", b"1"),
        Put(b"b", b"2", client_id=7, seq=1, first_incomplete=1),
        Delete(b"a", client_id=7, seq=2, first_incomplete=1),
        Put(b"c", b"\xff" * 20, client_id=8, seq=1, first_incomplete=1),
    ]
    for index, command in enumerate(commands, 1):
        machine.apply(index, encode_command(command))
    return machine.snapshot()


SAMPLE = _sample_snapshot()
SAMPLE_BODY = SAMPLE[:-DIGEST_SIZE]


def restore_or_refuse(body: bytes) -> None:
    machine = KVStateMachine()
    machine.apply(1, encode_command(Put(b"before", b"x")))
    before = machine.state_hash()
    data = seal([body])
    try:
        machine.restore(data)
    except SnapshotFormatError as exc:
        assert str(exc)
        assert machine.state_hash() == before
        return
    # What restores is a real state: its own snapshot restores to the same state.
    again = KVStateMachine()
    again.restore(machine.snapshot())
    assert again.state_hash() == machine.state_hash()


@FUZZ
@given(
    version=st.integers(0, 255) | st.sampled_from([1, 2]),
    applied=st.integers(0, 2**64 - 1) | st.integers(0, 10),
    count=st.integers(0, 2**64 - 1) | st.integers(0, 4),
    rest=st.binary(max_size=300),
)
def test_random_records_behind_a_valid_header(
    version: int, applied: int, count: int, rest: bytes
) -> None:
    restore_or_refuse(HEADER.pack(MAGIC, version, applied, count) + rest)


@FUZZ
@given(body=st.binary(max_size=300))
def test_random_bodies(body: bytes) -> None:
    restore_or_refuse(body)


@FUZZ
@given(data=st.data())
def test_damaged_real_bodies(data: st.DataObject) -> None:
    body = bytearray(SAMPLE_BODY)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body)))
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "small-u32"]))
        if kind == "flip" and at < len(body):
            body[at] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del body[at:]
        elif kind == "insert":
            body[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            # Small lengths and counts get past the bounds checks to the records behind.
            body[at : at + 4] = data.draw(st.integers(0, 40)).to_bytes(4, "little")
    restore_or_refuse(bytes(body))


def test_the_sample_restores() -> None:
    machine = KVStateMachine()
    machine.restore(SAMPLE)
    assert machine.snapshot() == SAMPLE
