"""Hostile input: whatever a snapshot file holds (a damaged disk, or a backup file handed
to ``kvnode restore``), checking and reading it either succeeds or raises
StorageCorruptionError naming the file, never another exception."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftkv.raft.membership import Membership
from raftkv.raft.ready import SnapshotMeta
from raftkv.storage.errors import StorageCorruptionError
from raftkv.storage.snapshots import (
    MAGIC,
    SnapshotStore,
    read_snapshot_data,
    verify_snapshot_file,
)
from raftkv_ext.segment_log import crc32c

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
_FIXED = struct.Struct("<8sIIQQQIII")
SMALL = st.integers(0, 64)
U32 = st.integers(0, 2**32 - 1)


def check_or_refuse(raw: bytes, name: str = "backup.snap") -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = str(Path(directory) / name)
        Path(path).write_bytes(raw)
        try:
            stored = verify_snapshot_file(path)
            data = read_snapshot_data(stored)
        except StorageCorruptionError as exc:
            assert exc.path == path
            assert 0 <= exc.offset <= len(raw)
            return
    assert len(data) == stored.size


def _sample_file() -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        store = SnapshotStore(directory)
        meta = SnapshotMeta(7, 3, Membership.of([1, 2, 3], learners=[4]))
        return Path(store.save(meta, bytes(range(256)) * 3)).read_bytes()


SAMPLE = _sample_file()


@FUZZ
@given(raw=st.binary(max_size=400))
def test_random_bytes(raw: bytes) -> None:
    check_or_refuse(raw)


@FUZZ
@given(
    version=st.sampled_from([1, 1, 0, 2]),
    header_len=U32 | st.integers(60, 120),
    index=st.integers(0, 2**64 - 1),
    term=st.integers(0, 2**64 - 1),
    data_size=st.integers(0, 2**64 - 1) | SMALL,
    data_crc=U32,
    block_size=U32 | st.integers(0, 16),
    membership=st.binary(max_size=60)
    | st.builds(lambda v: Membership.of(v).encode(), st.frozensets(SMALL, max_size=3)),
    fix_header_len=st.booleans(),
    rest=st.binary(max_size=300),
)
def test_random_fields_behind_a_valid_header_checksum(
    version: int,
    header_len: int,
    index: int,
    term: int,
    data_size: int,
    data_crc: int,
    block_size: int,
    membership: bytes,
    fix_header_len: bool,
    rest: bytes,
) -> None:
    # The header checksum stops random bytes early; compute it so that every later
    # check (sizes, block table, membership, data) meets hostile values too.
    if fix_header_len:
        header_len = _FIXED.size + len(membership) + 4
    fixed = _FIXED.pack(
        MAGIC, version, header_len, index, term, data_size, data_crc, block_size, len(membership)
    )
    body = fixed + membership
    check_or_refuse(body + struct.pack("<I", crc32c(body)) + rest)


@FUZZ
@given(data=st.data())
def test_damaged_real_files(data: st.DataObject) -> None:
    raw = bytearray(SAMPLE)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw)))
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if kind == "flip" and at < len(raw):
            raw[at] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del raw[at:]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    # Under its store name too, where the name's index and term must match the header.
    check_or_refuse(bytes(raw))
    check_or_refuse(bytes(raw), f"snapshot-{7:020d}-{3:020d}.snap")


def test_the_sample_checks() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "backup.snap"
        path.write_bytes(SAMPLE)
        stored = verify_snapshot_file(str(path))
        assert read_snapshot_data(stored) == bytes(range(256)) * 3
        assert stored.meta.membership == Membership.of([1, 2, 3], learners=[4])
