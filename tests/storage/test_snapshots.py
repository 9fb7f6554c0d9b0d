"""Snapshot files: format, atomic writes, pruning, chunked writing, reading, corruption."""

from __future__ import annotations

import os
import random
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv.raft.membership import Membership
from raftkv.raft.ready import SnapshotMeta, SnapshotReader
from raftkv.storage.errors import StorageCorruptionError
from raftkv.storage.snapshots import (
    BLOCK_SIZE,
    MAGIC,
    SnapshotFile,
    SnapshotStore,
    StoredSnapshot,
    snapshot_file_name,
)

MEMBERS = Membership.of([1, 2, 3])
JOINT = Membership.of([1, 2, 4], learners=[7], outgoing=[1, 2, 3])


def meta(index: int, term: int, membership: Membership = MEMBERS) -> SnapshotMeta:
    return SnapshotMeta(index, term, membership)


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# -- save and latest -----------------------------------------------------------------


def test_an_empty_store_has_no_snapshot(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    assert store.latest() is None
    assert store.list() == []


def test_save_then_latest_round_trips(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    data = blob(3 * BLOCK_SIZE + 123)
    path = store.save(meta(120, 4, JOINT), data)
    assert path == str(tmp_path / snapshot_file_name(120, 4))
    assert os.path.basename(path) == "snapshot-00000000000000000120-00000000000000000004.snap"
    latest = SnapshotStore(tmp_path).latest()
    assert latest is not None
    assert latest.meta == meta(120, 4, JOINT)
    assert latest.path == path
    assert latest.size == len(data)
    assert store.read_all(latest) == data


def test_the_file_starts_with_the_header_fields(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    data = b"state machine image"
    path = store.save(meta(9, 2), data)
    raw = Path(path).read_bytes()
    magic, version, header_len, index, term, size = struct.unpack_from("<8sIIQQQ", raw)
    assert (magic, version, index, term, size) == (MAGIC, 1, 9, 2, len(data))
    membership = MEMBERS.encode()
    assert raw[52 : 52 + len(membership)] == membership
    assert raw[header_len : header_len + len(data)] == data
    # One block, so one checksum after the data, and nothing else.
    assert len(raw) == header_len + len(data) + 4


def test_an_empty_snapshot_round_trips(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(meta(1, 1), b"")
    latest = store.latest()
    assert latest is not None
    assert latest.size == 0
    assert store.read_all(latest) == b""
    with store.open_reader(latest) as reader:
        assert reader.read(0, 100) == b""


def test_latest_is_the_highest_index(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(meta(10, 1), b"ten")
    store.save(meta(30, 2), b"thirty")
    latest = store.latest()
    assert latest is not None
    assert (latest.meta.index, store.read_all(latest)) == (30, b"thirty")


def test_saving_the_same_position_again_replaces_the_file(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(meta(10, 1), b"first")
    store.save(meta(10, 1), b"second")
    assert [f.index for f in store.list()] == [10]
    latest = store.latest()
    assert latest is not None
    assert store.read_all(latest) == b"second"


def test_an_older_snapshot_than_the_newest_is_refused(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(meta(50, 3), b"new")
    with pytest.raises(ValueError, match="older"):
        store.save(meta(40, 3), b"old")
    with pytest.raises(ValueError, match="older"):
        store.begin(meta(50, 2))
    assert [(f.index, f.term) for f in store.list()] == [(50, 3)]
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


def test_keeps_only_the_newest_two(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    paths = [store.save(meta(10 * i, i), blob(100, i)) for i in range(1, 6)]
    assert store.list() == [SnapshotFile(40, 4, paths[3]), SnapshotFile(50, 5, paths[4])]
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths[3:])
    latest = store.latest()
    assert latest is not None
    assert store.read_all(latest) == blob(100, 5)


def test_list_orders_by_index_not_by_creation(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(meta(9, 1), b"a")
    store.save(meta(100, 1), b"b")
    # A name sorting wrongly as text would put index 100 before 9; names are padded.
    assert [f.index for f in store.list()] == [9, 100]
    (tmp_path / "notes.txt").write_text("ignored")
    assert [f.index for f in store.list()] == [9, 100]


# -- chunked writing -----------------------------------------------------------------


def test_chunked_writer_equals_one_shot_save(tmp_path: Path) -> None:
    data = blob(5 * BLOCK_SIZE + 777, seed=3)
    one_shot = SnapshotStore(tmp_path / "a").save(meta(77, 5, JOINT), data)
    store = SnapshotStore(tmp_path / "b")
    rng = random.Random(11)
    with store.begin(meta(77, 5, JOINT)) as writer:
        pos = 0
        while pos < len(data):
            # Sizes straddle block boundaries and the write buffer, in mixed types.
            size = rng.choice([0, 1, 7, 4096, BLOCK_SIZE - 1, BLOCK_SIZE + 3, 300_000])
            piece = data[pos : pos + size]
            writer.write(rng.choice([bytes, bytearray, memoryview])(piece))
            pos += len(piece)
        assert writer.bytes_written == len(data)
        chunked = writer.commit()
    assert Path(chunked).read_bytes() == Path(one_shot).read_bytes()


def test_a_large_single_chunk_equals_many_small_ones(tmp_path: Path) -> None:
    data = blob(2 * 1024 * 1024 + 5, seed=8)
    big = SnapshotStore(tmp_path / "big").save(meta(3, 1), data)
    store = SnapshotStore(tmp_path / "small")
    with store.begin(meta(3, 1)) as writer:
        for pos in range(0, len(data), 1000):
            writer.write(data[pos : pos + 1000])
        small = writer.commit()
    assert Path(small).read_bytes() == Path(big).read_bytes()


def test_an_unfinished_writer_is_invisible(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(meta(5, 1), b"old")
    writer = store.begin(meta(9, 2))
    writer.write(b"half of the new")
    latest = store.latest()
    assert latest is not None
    assert latest.meta.index == 5
    assert [f.index for f in store.list()] == [5]
    writer.abort()
    assert os.listdir(tmp_path) == [snapshot_file_name(5, 1)]


def test_an_exception_inside_the_writer_block_aborts(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with pytest.raises(RuntimeError, match="network"), store.begin(meta(9, 2)) as writer:
        writer.write(b"partial")
        raise RuntimeError("network dropped")
    assert os.listdir(tmp_path) == []
    assert store.latest() is None


def test_a_finished_writer_refuses_more(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    writer = store.begin(meta(9, 2))
    writer.write(b"x")
    writer.commit()
    with pytest.raises(ValueError):
        writer.write(b"y")
    with pytest.raises(ValueError):
        writer.commit()
    writer.abort()  # harmless after commit
    latest = store.latest()
    assert latest is not None
    assert store.read_all(latest) == b"x"


def test_commit_refuses_a_snapshot_overtaken_meanwhile(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    slow = store.begin(meta(10, 1))
    slow.write(b"slow")
    store.save(meta(20, 1), b"fast")
    with pytest.raises(ValueError, match="older"):
        slow.commit()
    assert [f.index for f in store.list()] == [20]
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


# -- crash leftovers -----------------------------------------------------------------


def test_leftover_temp_files_are_removed_on_open(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(meta(5, 1), b"kept")
    writer = store.begin(meta(8, 1))
    writer.write(b"never committed")
    temp_names = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(temp_names) == 1
    # The process dies here: the writer is never committed or aborted.
    reopened = SnapshotStore(tmp_path)
    assert os.listdir(tmp_path) == [snapshot_file_name(5, 1)]
    latest = reopened.latest()
    assert latest is not None
    assert reopened.read_all(latest) == b"kept"
    writer.abort()  # its file is already gone


def test_a_crash_between_write_and_rename_keeps_the_old_snapshot(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    store.save(meta(5, 1), b"old state")
    # A complete, valid newer snapshot that never got its rename.
    other = SnapshotStore(tmp_path / "elsewhere").save(meta(9, 2), b"new state")
    temp = tmp_path / "snaps" / (snapshot_file_name(9, 2) + ".x1y2z3.tmp")
    temp.write_bytes(Path(other).read_bytes())
    reopened = SnapshotStore(tmp_path / "snaps")
    assert not temp.exists()
    latest = reopened.latest()
    assert latest is not None
    assert latest.meta == meta(5, 1)
    assert reopened.read_all(latest) == b"old state"


# -- reading -------------------------------------------------------------------------


def test_reader_reads_arbitrary_ranges(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    data = blob(2 * BLOCK_SIZE + 999, seed=5)
    store.save(meta(42, 3), data)
    latest = store.latest()
    assert latest is not None
    reader = store.open_reader(latest)
    as_protocol: SnapshotReader = reader
    assert as_protocol.size == len(data)
    assert reader.meta == meta(42, 3)

    @settings(max_examples=200, deadline=None)
    @given(offset=st.integers(0, len(data)), length=st.integers(0, len(data) + 10))
    def check(offset: int, length: int) -> None:
        assert reader.read(offset, length) == data[offset : offset + length]

    check()
    # Reading in chunks, as InstallSnapshot does, reassembles the data.
    chunks = [reader.read(pos, 40_000) for pos in range(0, len(data), 40_000)]
    assert b"".join(chunks) == data
    assert reader.read(len(data), 10) == b""
    reader.close()


@pytest.mark.parametrize(("offset", "length"), [(-1, 5), (0, -1), (101, 1)])
def test_reader_rejects_ranges_outside_the_data(tmp_path: Path, offset: int, length: int) -> None:
    store = SnapshotStore(tmp_path)
    store.save(meta(1, 1), blob(100))
    latest = store.latest()
    assert latest is not None
    with store.open_reader(latest) as reader, pytest.raises(ValueError):
        reader.read(offset, length)


def test_a_closed_reader_refuses_reads(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(meta(1, 1), b"abc")
    latest = store.latest()
    assert latest is not None
    reader = store.open_reader(latest)
    reader.close()
    reader.close()
    with pytest.raises(ValueError):
        reader.read(0, 1)


def test_a_reader_outlives_the_pruning_of_its_file(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    data = blob(10_000, seed=1)
    store.save(meta(1, 1), data)
    first = store.latest()
    assert first is not None
    with store.open_reader(first) as reader:
        store.save(meta(2, 1), b"b")
        store.save(meta(3, 1), b"c")
        assert not os.path.exists(first.path)
        assert reader.read(5000, 100) == data[5000:5100]


# -- corruption ----------------------------------------------------------------------


def saved(tmp_path: Path, data: bytes) -> tuple[SnapshotStore, StoredSnapshot]:
    store = SnapshotStore(tmp_path)
    store.save(meta(10, 1), b"an older, intact snapshot")
    store.save(meta(20, 2, JOINT), data)
    latest = store.latest()
    assert latest is not None
    return store, latest


@pytest.mark.parametrize("position", [0, 1, BLOCK_SIZE - 1, BLOCK_SIZE, 3 * BLOCK_SIZE + 17])
def test_a_flipped_data_byte_is_reported_with_its_block_offset(
    tmp_path: Path, position: int
) -> None:
    store, latest = saved(tmp_path, blob(3 * BLOCK_SIZE + 500, seed=2))
    flip(latest.path, latest.data_offset + position)
    with pytest.raises(StorageCorruptionError) as caught:
        store.latest()
    error = caught.value
    assert error.path == latest.path
    block_start = latest.data_offset + position // BLOCK_SIZE * BLOCK_SIZE
    assert error.offset == block_start
    assert error.offset <= latest.data_offset + position < error.offset + BLOCK_SIZE
    assert latest.path in str(error)
    assert f"offset {block_start}" in str(error)


def test_corruption_of_the_newest_never_falls_back_to_the_older(tmp_path: Path) -> None:
    store, latest = saved(tmp_path, blob(1000))
    flip(latest.path, latest.data_offset + 500)
    with pytest.raises(StorageCorruptionError):
        store.latest()
    with pytest.raises(StorageCorruptionError):
        SnapshotStore(tmp_path).latest()
    # Both files are still there for the operator, and the older one checks out.
    files = store.list()
    assert [(f.index, f.term) for f in files] == [(10, 1), (20, 2)]
    older = store.verify(files[0].path)
    assert store.read_all(older) == b"an older, intact snapshot"
    with pytest.raises(StorageCorruptionError):
        store.verify(files[1].path)


def test_read_all_rechecks_the_data(tmp_path: Path) -> None:
    store, latest = saved(tmp_path, blob(2 * BLOCK_SIZE + 10, seed=4))
    flip(latest.path, latest.data_offset + BLOCK_SIZE + 3)
    with pytest.raises(StorageCorruptionError) as caught:
        store.read_all(latest)
    assert caught.value.path == latest.path
    assert caught.value.offset == latest.data_offset + BLOCK_SIZE


def test_a_damaged_block_table_entry_is_told_apart_from_damaged_data(tmp_path: Path) -> None:
    data = blob(2 * BLOCK_SIZE + 10, seed=6)
    store, latest = saved(tmp_path, data)
    table_offset = latest.data_offset + len(data)
    flip(latest.path, table_offset + 4 + 2)  # the second block's checksum
    with pytest.raises(StorageCorruptionError) as caught:
        store.latest()
    assert caught.value.offset == table_offset + 4
    assert "block table" in caught.value.reason


@pytest.mark.parametrize(
    ("position", "offset", "reason"),
    [
        (0, 0, "magic"),
        (8, 8, "version"),
        (20, 0, "header checksum"),  # inside the index field
        (33, 0, "header checksum"),  # inside the data size
        (53, 0, "header checksum"),  # inside the membership
    ],
)
def test_a_damaged_header_is_reported(
    tmp_path: Path, position: int, offset: int, reason: str
) -> None:
    store, latest = saved(tmp_path, blob(5000))
    flip(latest.path, position)
    with pytest.raises(StorageCorruptionError) as caught:
        store.latest()
    assert caught.value.path == latest.path
    assert caught.value.offset == offset
    assert reason in caught.value.reason


def test_a_truncated_file_is_reported_where_it_ends(tmp_path: Path) -> None:
    store, latest = saved(tmp_path, blob(BLOCK_SIZE + 100))
    cut = latest.data_offset + 1000
    os.truncate(latest.path, cut)
    with pytest.raises(StorageCorruptionError) as caught:
        store.latest()
    assert caught.value.path == latest.path
    assert caught.value.offset == cut


def test_a_file_shorter_than_a_header_is_reported(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    path = tmp_path / snapshot_file_name(3, 1)
    path.write_bytes(MAGIC + b"\x01")
    with pytest.raises(StorageCorruptionError) as caught:
        store.latest()
    assert caught.value.path == str(path)
    assert caught.value.offset == 9


def test_a_file_renamed_to_another_position_is_reported(tmp_path: Path) -> None:
    store, latest = saved(tmp_path, b"data")
    os.rename(latest.path, tmp_path / snapshot_file_name(30, 2))
    with pytest.raises(StorageCorruptionError) as caught:
        store.latest()
    assert caught.value.path == str(tmp_path / snapshot_file_name(30, 2))
    assert caught.value.offset == 16


def test_a_reader_refuses_a_file_replaced_since_it_was_verified(tmp_path: Path) -> None:
    store, latest = saved(tmp_path, b"verified data")
    store.save(meta(20, 2, JOINT), b"different length data")
    with pytest.raises(StorageCorruptionError):
        store.open_reader(latest)
    with pytest.raises(StorageCorruptionError):
        store.read_all(latest)


# -- file modes ----------------------------------------------------------------------


@pytest.mark.usefixtures("permissive_umask")
def test_new_directories_are_0700_and_files_0600(tmp_path: Path) -> None:
    directory = tmp_path / "data" / "snapshots"
    store = SnapshotStore(directory)
    assert mode(tmp_path / "data") == 0o700
    assert mode(directory) == 0o700
    with store.begin(meta(1, 1)) as writer:
        writer.write(b"x")
        (temp,) = os.listdir(directory)
        assert mode(directory / temp) == 0o600
        path = writer.commit()
    assert mode(path) == 0o600
