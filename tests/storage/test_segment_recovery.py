"""Recovery of the segment log from torn and corrupted files.

The rule under test: only the tail of the last segment may end the way a torn write ends
(an incomplete record, or a final record whose checksum fails); that tail is cut off and
reported. Every other kind of damage raises LogCorruptionError naming the file and the
byte offset of the bad record. The tests read and damage the files with their own parser
of the documented layout, so they do not trust the code under test to find records.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import signal
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv.storage.log_store import LogIndexError
from raftkv_ext.entry import ENTRY_NORMAL, Entry
from raftkv_ext.errors import LogCorruptionError
from raftkv_ext.segment_log import (
    RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
    SegmentLog,
    _crc32c_software,
    crc32c,
)

MAGIC = b"RAFTKVSG"
# Header: magic, u32 version, u32 flags, u64 first index, u64 prev term, u64 epoch, u32 crc.
HEADER = struct.Struct("<8sIIQQQ")
ENTRY_HEADER = 21  # u64 index | u64 term | u8 type | u32 data length
TEMPLATE_SEGMENT_SIZE = 400


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        value = byte
        for _ in range(8):
            value = (value >> 1) ^ (0x82F63B78 if value & 1 else 0)
        table.append(value)
    return table


_CRC32C_TABLE = _crc32c_table()


def reference_crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli), bit-reflected, the slow obvious way: the tests' own oracle."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@dataclass(frozen=True)
class Record:
    offset: int  # where the record (its length field) starts in the file
    size: int  # length + checksum + payload

    @property
    def end(self) -> int:
        return self.offset + self.size


def payload_for(index: int) -> bytes:
    # Sizes vary so that record boundaries do not fall on a regular grid.
    return bytes((index * 7 + k) % 251 for k in range(5 + (index * 13) % 40))


def write_entries(
    directory: Path, count: int, segment_size: int = TEMPLATE_SEGMENT_SIZE, batch: int = 3
) -> list[Entry]:
    written: list[Entry] = []
    with SegmentLog(str(directory), segment_size) as log:
        for lo in range(1, count + 1, batch):
            chunk = [
                Entry(i, 1 + i // 10, ENTRY_NORMAL, payload_for(i))
                for i in range(lo, min(lo + batch, count + 1))
            ]
            log.append(chunk)
            written.extend(chunk)
        log.sync()
    return written


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def records(path: Path) -> list[Record]:
    """Records of a well-formed segment file, found by the documented framing."""
    data = path.read_bytes()
    found: list[Record] = []
    offset = SEGMENT_HEADER_BYTES
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        found.append(Record(offset, RECORD_HEADER_BYTES + length))
        offset += RECORD_HEADER_BYTES + length
    assert offset == len(data)
    return found


def flip_bit(path: Path, offset: int, bit: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def cut(path: Path, size: int) -> None:
    os.truncate(path, size)


def encode_header(
    first: int, prev_term: int, epoch: int = 0, version: int = 1, magic: bytes = MAGIC
) -> bytes:
    head = HEADER.pack(magic, version, 0, first, prev_term, epoch)
    return head + struct.pack("<I", reference_crc32c(head))


def encode_record(entry_payload: bytes) -> bytes:
    return struct.pack("<II", len(entry_payload), reference_crc32c(entry_payload)) + entry_payload


def expect_corruption(directory: Path, path: Path, offset: int) -> LogCorruptionError:
    with pytest.raises(LogCorruptionError) as info:
        SegmentLog(str(directory), TEMPLATE_SEGMENT_SIZE)
    assert info.value.path == str(path)
    assert info.value.offset == offset
    assert str(path) in str(info.value)
    return info.value


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Entry]]:
    """A closed, synced log of several segments; tests damage copies of it."""
    directory = tmp_path_factory.mktemp("template") / "log"
    written = write_entries(directory, 40)
    files = segments(directory)
    assert len(files) >= 3
    assert len(records(files[-1])) >= 3
    return directory, written


@pytest.fixture
def log_copy(template: tuple[Path, list[Entry]], tmp_path: Path) -> tuple[Path, list[Entry]]:
    source, written = template
    directory = tmp_path / "log"
    shutil.copytree(source, directory)
    return directory, written


class Copier:
    """Fresh copies of the template for each Hypothesis example."""

    def __init__(self, template: tuple[Path, list[Entry]], root: Path) -> None:
        self.source, self.written = template
        self.root = root
        self.count = 0

    def fresh(self) -> Path:
        self.count += 1
        directory = self.root / f"copy{self.count}"
        shutil.copytree(self.source, directory)
        return directory


# -- the layout --------------------------------------------------------------------------


def test_crc32c_matches_the_standard_check_value() -> None:
    # The CRC32C check value from the CRC catalogue (RFC 3720 uses the same polynomial).
    assert reference_crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"123456789") == 0xE3069283
    assert _crc32c_software(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), split=st.integers(0, 300))
def test_crc32c_agrees_with_the_reference(data: bytes, split: int) -> None:
    expected = reference_crc32c(data)
    assert crc32c(data) == expected
    assert _crc32c_software(data) == expected
    # Checksums can be continued across pieces.
    head, tail = data[:split], data[split:]
    assert crc32c(tail, crc32c(head)) == expected
    assert _crc32c_software(bytearray(tail), _crc32c_software(head)) == expected


def test_files_follow_the_documented_layout(template: tuple[Path, list[Entry]]) -> None:
    directory, written = template
    by_index = {e.index: e for e in written}
    next_index = 1
    for path in segments(directory):
        data = path.read_bytes()
        magic, version, flags, first, prev_term, epoch = HEADER.unpack_from(data)
        (crc,) = struct.unpack_from("<I", data, HEADER.size)
        assert (magic, version, flags, epoch) == (MAGIC, 1, 0, 0)
        assert crc == reference_crc32c(data[: HEADER.size])
        assert HEADER.size + 4 == SEGMENT_HEADER_BYTES
        assert path.name == f"{first:020d}.seg"
        assert first == next_index
        assert prev_term == (by_index[first - 1].term if first > 1 else 0)
        for record in records(path):
            length, checksum = struct.unpack_from("<II", data, record.offset)
            body = data[record.offset + RECORD_HEADER_BYTES : record.end]
            # The payload is exactly the entry's wire encoding.
            assert body == by_index[next_index].encode()
            assert len(body) == length
            assert checksum == reference_crc32c(body)
            next_index += 1
    assert next_index == len(written) + 1


def test_clean_open_reports_nothing_cut(log_copy: tuple[Path, list[Entry]]) -> None:
    directory, written = log_copy
    with SegmentLog(str(directory), TEMPLATE_SEGMENT_SIZE) as log:
        report = log.recovery
        assert report.entries == len(written)
        assert report.segments == len(segments(directory)) == log.segment_count
        assert report.truncated_path is None
        assert (report.truncated_offset, report.truncated_bytes) == (0, 0)
        assert report.removed_files == ()
        assert log.entries(1, len(written) + 1) == written


def test_empty_or_missing_directory_opens_as_an_empty_log(tmp_path: Path) -> None:
    for directory in (tmp_path, tmp_path / "not" / "yet"):
        with SegmentLog(str(directory)) as log:
            assert (log.first_index, log.last_index) == (1, 0)
            assert log.recovery.entries == 0
            assert log.recovery.truncated_path is None


# -- torn tails --------------------------------------------------------------------------


def test_cut_at_every_offset_of_the_final_record(
    template: tuple[Path, list[Entry]], tmp_path: Path
) -> None:
    source, written = template
    last = segments(source)[-1]
    final = records(last)[-1]
    for keep in range(final.size):
        directory = tmp_path / f"cut{keep}"
        shutil.copytree(source, directory)
        path = directory / last.name
        cut(path, final.offset + keep)
        with SegmentLog(str(directory), TEMPLATE_SEGMENT_SIZE) as log:
            report = log.recovery
            assert log.last_index == len(written) - 1
            assert report.entries == len(written) - 1
            if keep == 0:
                # The file ends on a record boundary: nothing is torn.
                assert report.truncated_path is None
            else:
                assert report.truncated_path == str(path)
                assert report.truncated_offset == final.offset
                assert report.truncated_bytes == keep
            assert path.stat().st_size == final.offset
            assert log.entries(1, len(written)) == written[:-1]
            # The log carries on from the cut, and the new entry survives a reopen.
            log.append([written[-1]])
            log.sync()
        with SegmentLog(str(directory), TEMPLATE_SEGMENT_SIZE) as log:
            assert log.recovery.truncated_path is None
            assert log.entries(1, len(written) + 1) == written


def test_cut_anywhere_in_the_last_segment(
    template: tuple[Path, list[Entry]], tmp_path: Path
) -> None:
    copier = Copier(template, tmp_path)
    last = segments(copier.source)[-1]
    recs = records(last)
    first_in_last = len(copier.written) - len(recs) + 1

    @settings(max_examples=80, deadline=None)
    @given(size=st.integers(SEGMENT_HEADER_BYTES, recs[-1].end - 1))
    def check(size: int) -> None:
        directory = copier.fresh()
        cut(directory / last.name, size)
        complete = [r for r in recs if r.end <= size]
        torn_at = complete[-1].end if complete else SEGMENT_HEADER_BYTES
        with SegmentLog(str(directory), TEMPLATE_SEGMENT_SIZE) as log:
            assert log.last_index == first_in_last - 1 + len(complete)
            report = log.recovery
            if size == torn_at:
                assert report.truncated_path is None
            else:
                assert report.truncated_path == str(directory / last.name)
                assert report.truncated_offset == torn_at
                assert report.truncated_bytes == size - torn_at
            assert log.entries(1, log.last_index + 1) == copier.written[: log.last_index]

    check()


def test_bad_checksum_on_the_final_record_is_cut(
    log_copy: tuple[Path, list[Entry]], caplog: pytest.LogCaptureFixture
) -> None:
    directory, written = log_copy
    path = segments(directory)[-1]
    final = records(path)[-1]
    # The last data byte: the frame stays self-consistent, only the checksum fails.
    flip_bit(path, final.end - 1, 3)
    with (
        caplog.at_level(logging.WARNING, logger="raftkv.storage"),
        SegmentLog(str(directory), TEMPLATE_SEGMENT_SIZE) as log,
    ):
        assert log.last_index == len(written) - 1
        report = log.recovery
        assert report.truncated_path == str(path)
        assert (report.truncated_offset, report.truncated_bytes) == (final.offset, final.size)
    warnings = [
        r for r in caplog.records if r.name == "raftkv.storage" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage()
    assert str(final.offset) in warnings[0].getMessage()


def test_every_bit_flip_in_the_final_record(
    template: tuple[Path, list[Entry]], tmp_path: Path
) -> None:
    """A flip the checksum catches in a self-consistent final record is a torn write.

    A flip in the length, or in the entry's index or data length, makes the frame disagree
    with itself, which a torn write (a correct prefix) cannot do: that is corruption.
    """
    source, written = template
    last = segments(source)[-1]
    final = records(last)[-1]
    corrupting = (
        set(range(0, 4))  # record length
        | set(range(8, 16))  # entry index
        | set(range(8 + 17, 8 + ENTRY_HEADER))
    )  # entry data length
    for byte in range(final.size):
        for bit in range(8):
            directory = tmp_path / f"flip{byte}_{bit}"
            shutil.copytree(source, directory)
            path = directory / last.name
            flip_bit(path, final.offset + byte, bit)
            if byte in corrupting:
                expect_corruption(directory, path, final.offset)
            else:
                with SegmentLog(str(directory), TEMPLATE_SEGMENT_SIZE) as log:
                    assert log.last_index == len(written) - 1
                    assert log.recovery.truncated_offset == final.offset
                    assert log.recovery.truncated_bytes == final.size
            shutil.rmtree(directory)


def test_zero_filled_tail_is_cut(log_copy: tuple[Path, list[Entry]]) -> None:
    # Some file systems leave zeros past the last write when the size got to disk first.
    directory, written = log_copy
    path = segments(directory)[-1]
    end = path.stat().st_size
    with path.open("ab") as f:
        f.write(bytes(4096))
    with SegmentLog(str(directory), TEMPLATE_SEGMENT_SIZE) as log:
        assert log.last_index == len(written)
        assert log.recovery.truncated_path == str(path)
        assert (log.recovery.truncated_offset, log.recovery.truncated_bytes) == (end, 4096)
    assert path.stat().st_size == end


def test_short_garbage_tail_is_cut(log_copy: tuple[Path, list[Entry]]) -> None:
    directory, written = log_copy
    path = segments(directory)[-1]
    end = path.stat().st_size
    with path.open("ab") as f:
        f.write(b"\x07\x01\x02")  # shorter than a record header
    with SegmentLog(str(directory), TEMPLATE_SEGMENT_SIZE) as log:
        assert log.last_index == len(written)
        assert (log.recovery.truncated_offset, log.recovery.truncated_bytes) == (end, 3)


def test_garbage_that_is_not_a_torn_record_is_corruption(
    log_copy: tuple[Path, list[Entry]],
) -> None:
    directory, _ = log_copy
    path = segments(directory)[-1]
    end = path.stat().st_size
    with path.open("ab") as f:
        # A length too small for any entry, followed by non-zero bytes.
        f.write(struct.pack("<II", 5, 0) + b"junk" * 4)
    expect_corruption(directory, path, end)


def test_torn_record_that_claims_a_damaged_length_is_corruption(
    log_copy: tuple[Path, list[Entry]],
) -> None:
    # A record whose length runs past the end of the file, but whose entry header (which
    # made it to disk) says something else: the length is damaged, not torn.
    directory, written = log_copy
    path = segments(directory)[-1]
    end = path.stat().st_size
    body = Entry(len(written) + 1, 9, ENTRY_NORMAL, b"abc").encode()
    with path.open("ab") as f:
        f.write(struct.pack("<II", len(body) + 500, reference_crc32c(body)) + body)
    expect_corruption(directory, path, end)


# -- damage that a crash cannot explain --------------------------------------------------


def test_bit_flip_in_an_earlier_record_of_the_last_segment(
    template: tuple[Path, list[Entry]], tmp_path: Path
) -> None:
    copier = Copier(template, tmp_path)
    last = segments(copier.source)[-1]
    recs = records(last)[:-1]

    @settings(max_examples=150, deadline=None)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        record = data.draw(st.sampled_from(recs))
        byte = data.draw(st.integers(0, record.size - 1))
        bit = data.draw(st.integers(0, 7))
        directory = copier.fresh()
        flip_bit(directory / last.name, record.offset + byte, bit)
        expect_corruption(directory, directory / last.name, record.offset)

    check()


def test_bit_flip_in_an_earlier_segment(template: tuple[Path, list[Entry]], tmp_path: Path) -> None:
    copier = Copier(template, tmp_path)
    sealed = segments(copier.source)[:-1]
    targets = [(path.name, record) for path in sealed for record in records(path)]

    @settings(max_examples=150, deadline=None)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        name, record = data.draw(st.sampled_from(targets))
        byte = data.draw(st.integers(0, record.size - 1))
        bit = data.draw(st.integers(0, 7))
        directory = copier.fresh()
        flip_bit(directory / name, record.offset + byte, bit)
        expect_corruption(directory, directory / name, record.offset)

    check()


def test_bit_flip_in_a_segment_header(template: tuple[Path, list[Entry]], tmp_path: Path) -> None:
    copier = Copier(template, tmp_path)
    names = [path.name for path in segments(copier.source)]

    @settings(max_examples=100, deadline=None)
    @given(
        name=st.sampled_from(names),
        byte=st.integers(0, SEGMENT_HEADER_BYTES - 1),
        bit=st.integers(0, 7),
    )
    def check(name: str, byte: int, bit: int) -> None:
        directory = copier.fresh()
        flip_bit(directory / name, byte, bit)
        error = expect_corruption(directory, directory / name, 0)
        assert "header" in error.reason or "magic" in error.reason

    check()


@pytest.mark.parametrize("which", [0, 1, -1])
def test_truncated_segment_header(log_copy: tuple[Path, list[Entry]], which: int) -> None:
    # Headers appear atomically (written aside, then renamed), so a short one is damage.
    directory, _ = log_copy
    path = segments(directory)[which]
    for size in (0, 9, SEGMENT_HEADER_BYTES - 1):
        cut(path, size)
        expect_corruption(directory, path, 0)


def test_truncated_record_in_a_sealed_segment(log_copy: tuple[Path, list[Entry]]) -> None:
    directory, _ = log_copy
    path = segments(directory)[0]
    final = records(path)[-1]
    cut(path, final.offset + 11)
    error = expect_corruption(directory, path, final.offset)
    assert "sealed" in error.reason


def test_bad_checksum_on_the_final_record_of_a_sealed_segment(
    log_copy: tuple[Path, list[Entry]],
) -> None:
    directory, _ = log_copy
    path = segments(directory)[1]
    final = records(path)[-1]
    flip_bit(path, final.end - 1, 0)
    expect_corruption(directory, path, final.offset)


def test_index_gap_between_segments(log_copy: tuple[Path, list[Entry]]) -> None:
    directory, _ = log_copy
    files = segments(directory)
    files[1].unlink()
    error = expect_corruption(directory, files[2], 0)
    assert "gap" in error.reason


def test_index_gap_inside_a_segment(log_copy: tuple[Path, list[Entry]]) -> None:
    # A record with a valid checksum but the wrong index: nothing torn about it.
    directory, _ = log_copy
    for path in (segments(directory)[0], segments(directory)[-1]):
        data = bytearray(path.read_bytes())
        target = records(path)[-1]
        old = bytes(data[target.offset + RECORD_HEADER_BYTES : target.end])
        index, term = struct.unpack_from("<QQ", old)
        wrong = Entry(index + 5, term, old[16], old[ENTRY_HEADER:]).encode()
        data[target.offset : target.end] = encode_record(wrong)
        saved = path.read_bytes()
        path.write_bytes(bytes(data))
        error = expect_corruption(directory, path, target.offset)
        assert "gap" in error.reason
        path.write_bytes(saved)


def test_record_longer_than_its_entry_is_corruption(log_copy: tuple[Path, list[Entry]]) -> None:
    directory, _ = log_copy
    path = segments(directory)[-1]
    data = bytearray(path.read_bytes())
    target = records(path)[0]
    body = bytes(data[target.offset + RECORD_HEADER_BYTES : target.end]) + b"!"
    data[target.offset : target.end] = encode_record(body)
    path.write_bytes(bytes(data))
    expect_corruption(directory, path, target.offset)


def test_boundary_term_disagreeing_with_the_previous_segment(
    log_copy: tuple[Path, list[Entry]],
) -> None:
    directory, _ = log_copy
    path = segments(directory)[1]
    data = bytearray(path.read_bytes())
    _, _, _, first, prev_term, epoch = HEADER.unpack_from(data)
    data[:SEGMENT_HEADER_BYTES] = encode_header(first, prev_term + 1, epoch)
    path.write_bytes(bytes(data))
    error = expect_corruption(directory, path, 0)
    assert "term" in error.reason


@pytest.mark.parametrize(
    ("header_args", "reason"),
    [
        ({"version": 2}, "version"),
        ({"magic": b"NOTASEG!"}, "magic"),
        ({"first_delta": 1}, "file name"),
    ],
)
def test_header_with_a_valid_checksum_but_wrong_fields(
    log_copy: tuple[Path, list[Entry]], header_args: dict[str, object], reason: str
) -> None:
    directory, _ = log_copy
    path = segments(directory)[-1]
    data = bytearray(path.read_bytes())
    _, _, _, first, prev_term, epoch = HEADER.unpack_from(data)
    version = header_args.get("version", 1)
    magic = header_args.get("magic", MAGIC)
    delta = header_args.get("first_delta", 0)
    assert isinstance(version, int)
    assert isinstance(magic, bytes)
    assert isinstance(delta, int)
    data[:SEGMENT_HEADER_BYTES] = encode_header(
        first + delta, prev_term, epoch, version=version, magic=magic
    )
    path.write_bytes(bytes(data))
    error = expect_corruption(directory, path, 0)
    assert reason in error.reason


def test_a_file_that_is_not_a_segment(log_copy: tuple[Path, list[Entry]]) -> None:
    directory, written = log_copy
    # Unrelated files are left alone.
    (directory / "README").write_text("notes\n")
    with SegmentLog(str(directory), TEMPLATE_SEGMENT_SIZE) as log:
        assert log.last_index == len(written)
    assert (directory / "README").exists()
    # Something named like a segment must be one.
    impostor = directory / f"{len(written) + 1:020d}.seg"
    impostor.write_text("this is not a segment, but it is long enough to hold a header\n")
    error = expect_corruption(directory, impostor, 0)
    assert "magic" in error.reason
    impostor.unlink()
    odd_name = directory / "latest.seg"
    odd_name.write_bytes(encode_header(1, 0))
    error = expect_corruption(directory, odd_name, 0)
    assert "name" in error.reason


def test_segment_named_zero_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / f"{0:020d}.seg"
    path.write_bytes(encode_header(0, 0))
    expect_corruption(tmp_path, path, 0)


# -- leftovers of interrupted operations --------------------------------------------------


def test_unfinished_segment_file_is_removed(log_copy: tuple[Path, list[Entry]]) -> None:
    directory, written = log_copy
    leftover = directory / f"{len(written) + 1:020d}.seg.tmp"
    leftover.write_bytes(encode_header(len(written) + 1, 4)[:20])
    with SegmentLog(str(directory), TEMPLATE_SEGMENT_SIZE) as log:
        assert log.recovery.removed_files == (str(leftover),)
        assert log.last_index == len(written)
    assert not leftover.exists()


def test_reset_interrupted_before_old_segments_were_deleted(
    log_copy: tuple[Path, list[Entry]], tmp_path: Path
) -> None:
    directory, _ = log_copy
    saved = tmp_path / "saved"
    shutil.copytree(directory, saved)
    with SegmentLog(str(directory), TEMPLATE_SEGMENT_SIZE) as log:
        log.reset(1000, 6)
        log.append([Entry(1001, 7, ENTRY_NORMAL, b"after")])
        log.sync()
    # A crash before the deletions reached the disk brings the old segments back.
    for path in segments(saved):
        shutil.copy(path, directory / path.name)
    with SegmentLog(str(directory), TEMPLATE_SEGMENT_SIZE) as log:
        assert sorted(log.recovery.removed_files) == sorted(
            str(directory / p.name) for p in segments(saved)
        )
        assert (log.first_index, log.last_index) == (1001, 1001)
        assert log.term(1000) == 6
        assert log.entries(1001, 1002) == [Entry(1001, 7, ENTRY_NORMAL, b"after")]
    assert [p.name for p in segments(directory)] == [f"{1001:020d}.seg"]


# -- reads, misuse and OS errors ---------------------------------------------------------


def test_damage_after_open_is_caught_by_reads(log_copy: tuple[Path, list[Entry]]) -> None:
    directory, written = log_copy
    path = segments(directory)[0]
    target = records(path)[1]
    with SegmentLog(str(directory), TEMPLATE_SEGMENT_SIZE) as log:
        assert log.entries(1, 4) == written[:3]
        flip_bit(path, target.end - 1, 5)
        with pytest.raises(LogCorruptionError) as info:
            log.entries(1, 4)
        assert (info.value.path, info.value.offset) == (str(path), target.offset)
        # Reads that avoid the damaged record still work.
        assert log.entries(3, 5) == written[2:4]


def test_closed_log_raises_value_error(tmp_path: Path) -> None:
    log = SegmentLog(str(tmp_path))
    log.append([Entry(1, 1)])
    log.close()
    log.close()  # closing twice is harmless
    calls: list[Callable[[], object]] = [
        lambda: log.term(1),
        lambda: log.term(0),
        lambda: log.terms(0, 1),
        lambda: log.entries(1, 2),
        lambda: log.append([Entry(2, 1)]),
        log.sync,
        lambda: log.truncate_after(0),
        lambda: log.compact(1, 1),
        lambda: log.reset(5, 1),
        lambda: log.first_index,
        lambda: log.last_index,
        lambda: log.segment_count,
        lambda: log.recovery,
    ]
    for call in calls:
        with pytest.raises(ValueError, match="closed"):
            call()


def test_uninitialised_log_raises_instead_of_crashing() -> None:
    # __new__ without __init__ is exactly the misuse under test.
    log = SegmentLog.__new__(SegmentLog)
    with pytest.raises(ValueError, match="closed"):
        log.term(1)
    with pytest.raises(ValueError, match="closed"):
        log.append([Entry(1, 1)])


def test_append_rejects_things_that_are_not_entries(tmp_path: Path) -> None:
    with SegmentLog(str(tmp_path)) as log:
        with pytest.raises(TypeError):
            log.append([Entry(1, 1), b"raw bytes"])  # type: ignore[list-item]
        with pytest.raises(TypeError):
            log.append(7)  # type: ignore[arg-type]
        assert log.last_index == 0
        log.append((Entry(1, 1), Entry(2, 1)))  # any sequence will do
        assert log.last_index == 2


def test_terms_matches_term(tmp_path: Path) -> None:
    with SegmentLog(str(tmp_path), 256) as log:
        log.append([Entry(i, 1 + i // 4, ENTRY_NORMAL, b"t") for i in range(1, 41)])
        log.compact(20, log.term(20))
        first = log.first_index
        assert log.terms(first - 1, 41) == [log.term(i) for i in range(first - 1, 41)]
        assert log.terms(5, 5) == []
        with pytest.raises(LogIndexError):
            log.terms(first - 1, 42)
        if first > 2:
            with pytest.raises(LogIndexError):
                log.terms(first - 2, first)


def test_segments_roll_at_the_size_limit(tmp_path: Path) -> None:
    with SegmentLog(str(tmp_path), 200) as log:
        # One batch may overshoot the limit: the check happens before a batch.
        log.append([Entry(i, 1, ENTRY_NORMAL, b"x" * 50) for i in range(1, 11)])
        assert log.segment_count == 1
        assert segments(tmp_path)[0].stat().st_size > 200
        log.append([Entry(11, 2, ENTRY_NORMAL, b"y")])
        assert log.segment_count == 2
        assert [p.name for p in segments(tmp_path)] == [f"{1:020d}.seg", f"{11:020d}.seg"]
        # The new segment's header carries the term of the entry before it.
        assert HEADER.unpack_from(segments(tmp_path)[1].read_bytes())[4] == 1


def test_sync_from_another_thread_while_appending(tmp_path: Path) -> None:
    """sync() may run in a worker thread while the owner appends (and rolls segments)."""
    stop = threading.Event()
    errors: list[BaseException] = []
    log = SegmentLog(str(tmp_path), 2048)

    def syncer() -> None:
        try:
            while not stop.is_set():
                log.sync()
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=syncer)
    thread.start()
    try:
        for lo in range(1, 3001, 10):
            log.append([Entry(i, 1, ENTRY_NORMAL, b"z" * 30) for i in range(lo, lo + 10)])
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert log.segment_count > 10
    log.sync()
    log.close()
    with SegmentLog(str(tmp_path), 2048) as reopened:
        assert reopened.last_index == 3000
        assert reopened.recovery.truncated_path is None


def test_opening_a_regular_file_raises_oserror(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(OSError):
        SegmentLog(str(path))


def test_failed_write_raises_oserror_and_leaves_the_log_intact(tmp_path: Path) -> None:
    # RLIMIT_FSIZE makes the kernel refuse writes past a size (EFBIG once SIGXFSZ is
    # ignored), which simulates a full disk mid-batch without needing one.
    with SegmentLog(str(tmp_path)) as log:
        log.append([Entry(i, 1, ENTRY_NORMAL, b"k" * 40) for i in range(1, 6)])
        size = segments(tmp_path)[0].stat().st_size
        old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))
        try:
            with pytest.raises(OSError, match="cannot write"):
                log.append([Entry(i, 1, ENTRY_NORMAL, b"k" * 40) for i in range(6, 20)])
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, old_handler)
        # The partial batch was cut off, and the log carries on.
        assert log.last_index == 5
        assert segments(tmp_path)[0].stat().st_size == size
        log.append([Entry(6, 1, ENTRY_NORMAL, b"ok")])
        log.sync()
    with SegmentLog(str(tmp_path)) as reopened:
        assert reopened.last_index == 6
        assert reopened.recovery.truncated_path is None


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_close_releases_every_descriptor(tmp_path: Path) -> None:
    before = _open_fds()
    log = SegmentLog(str(tmp_path), 200)
    for lo in range(1, 301, 5):
        log.append([Entry(i, 1, ENTRY_NORMAL, b"d" * 20) for i in range(lo, lo + 5)])
    # Reading every segment opens (and caps) read descriptors of sealed segments.
    assert len(log.entries(1, 301)) == 300
    log.truncate_after(150)
    log.compact(100, log.term(100))
    log.sync()
    log.reset(1000, 3)
    log.append([Entry(1001, 3)])
    log.close()
    assert _open_fds() == before


def test_init_twice_is_refused(tmp_path: Path) -> None:
    with SegmentLog(str(tmp_path)) as log:
        with pytest.raises(RuntimeError):
            log.__init__(str(tmp_path))  # type: ignore[misc]
        log.append([Entry(1, 1)])
        assert log.last_index == 1
