"""Hostile input: whatever the segment files hold, opening the log and reading every
entry it reports either works or raises LogCorruptionError naming the file, never
another exception. Random bytes stop at the first checksum, so the tests also write
headers and records with valid checksums around hostile contents."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftkv_ext.entry import ENTRY_NORMAL, Entry
from raftkv_ext.errors import LogCorruptionError
from raftkv_ext.segment_log import SegmentLog, crc32c

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEGMENT_SIZE = 300
_HEADER = struct.Struct("<8sIIQQQ")


def segment_name(first: int) -> str:
    return f"{first:020d}.seg"


def open_or_refuse(files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        for name, raw in files.items():
            (Path(directory) / name).write_bytes(raw)
        try:
            with SegmentLog(directory, SEGMENT_SIZE) as log:
                first, last = log.first_index, log.last_index
                entries = log.entries(first, last + 1) if last >= first else []
                terms = [log.term(i) for i in range(first - 1, last + 1)]
        except LogCorruptionError as exc:
            assert exc.path.startswith(directory)
            assert 0 <= exc.offset <= max(len(raw) for raw in files.values())
            assert exc.reason
            return
    assert [e.index for e in entries] == list(range(first, last + 1))
    assert terms[1:] == [e.term for e in entries]


def header(first: int, prev_term: int, version: int = 1, flags: int = 0, epoch: int = 0) -> bytes:
    head = _HEADER.pack(b"RAFTKVSG", version, flags, first, prev_term, epoch)
    return head + struct.pack("<I", crc32c(head))


def record(payload: bytes) -> bytes:
    return struct.pack("<II", len(payload), crc32c(payload)) + payload


def _sample_files() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as directory:
        with SegmentLog(directory, SEGMENT_SIZE) as log:
            for lo in range(1, 13, 3):
                log.append(
                    [Entry(i, 1 + i // 5, ENTRY_NORMAL, bytes([i]) * i) for i in range(lo, lo + 3)]
                )
            log.sync()
        return {path.name: path.read_bytes() for path in sorted(Path(directory).glob("*.seg"))}


SAMPLE = _sample_files()


@FUZZ
@given(first=st.integers(1, 5), raw=st.binary(max_size=300))
def test_random_bytes_as_a_segment(first: int, raw: bytes) -> None:
    open_or_refuse({segment_name(first): raw})


@FUZZ
@given(
    first=st.integers(0, 2**64 - 1) | st.integers(0, 4),
    prev_term=st.integers(0, 2**64 - 1) | st.integers(0, 4),
    version=st.sampled_from([1, 1, 0, 2]),
    flags=st.sampled_from([0, 0, 1, 2**32 - 1]),
    payloads=st.lists(
        st.binary(max_size=40)
        | st.builds(
            lambda i, t, d: Entry(i, t, ENTRY_NORMAL, d).encode(),
            st.integers(0, 6),
            st.integers(0, 6),
            st.binary(max_size=10),
        ),
        max_size=5,
    ),
    tail=st.binary(max_size=20),
    named=st.integers(1, 4),
)
def test_valid_checksums_around_hostile_contents(
    first: int,
    prev_term: int,
    version: int,
    flags: int,
    payloads: list[bytes],
    tail: bytes,
    named: int,
) -> None:
    raw = header(first, prev_term, version, flags) + b"".join(record(p) for p in payloads) + tail
    open_or_refuse({segment_name(named): raw})


@FUZZ
@given(data=st.data())
def test_damaged_real_logs(data: st.DataObject) -> None:
    files = {name: bytearray(raw) for name, raw in SAMPLE.items()}
    for _ in range(data.draw(st.integers(1, 3))):
        raw = files[data.draw(st.sampled_from(sorted(files)))]
        at = data.draw(st.integers(0, len(raw)))
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "u32"]))
        if kind == "flip" and at < len(raw):
            raw[at] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del raw[at:]
        elif kind == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            raw[at : at + 4] = struct.pack("<I", data.draw(st.integers(0, 2**32 - 1)))
    open_or_refuse({name: bytes(raw) for name, raw in files.items()})


def test_the_sample_opens_whole() -> None:
    assert len(SAMPLE) > 1
    with tempfile.TemporaryDirectory() as directory:
        for name, raw in SAMPLE.items():
            (Path(directory) / name).write_bytes(raw)
        with SegmentLog(directory, SEGMENT_SIZE) as log:
            assert (log.first_index, log.last_index) == (1, 12)
            assert log.entries(12, 13) == [Entry(12, 3, ENTRY_NORMAL, bytes([12]) * 12)]
