"""Entry: construction, its wire encoding (which is also its log-record payload) and
decode_entry."""

from __future__ import annotations

import pickle
import struct

import pytest
from codec_strategies import ENTRY_TYPES, U64
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv_ext import codec
from raftkv_ext.entry import (
    ENTRY_CONFIG,
    ENTRY_NOOP,
    ENTRY_NORMAL,
    HEADER_SIZE,
    Entry,
    decode_entry,
)
from raftkv_ext.errors import CodecError

ENTRIES = st.builds(Entry, U64, U64, ENTRY_TYPES, st.binary(max_size=300))


def test_constants() -> None:
    assert (ENTRY_NORMAL, ENTRY_CONFIG, ENTRY_NOOP) == (0, 1, 2)
    assert HEADER_SIZE == 21


def test_layout() -> None:
    entry = Entry(0x0102030405060708, 9, ENTRY_CONFIG, b"abc")
    assert entry.encode() == struct.pack("<QQBI", 0x0102030405060708, 9, 1, 3) + b"abc"
    assert entry.wire_size == 24
    assert Entry(1, 1).encode() == struct.pack("<QQBI", 1, 1, 0, 0)


def test_defaults() -> None:
    entry = Entry(5, 6)
    assert (entry.index, entry.term, entry.type, entry.data) == (5, 6, ENTRY_NORMAL, b"")
    assert Entry(index=5, term=6, type=ENTRY_NOOP, data=b"x").type == ENTRY_NOOP


@settings(max_examples=300, deadline=None)
@given(entry=ENTRIES)
def test_round_trip(entry: Entry) -> None:
    raw = entry.encode()
    assert len(raw) == entry.wire_size == HEADER_SIZE + len(entry.data)
    for form in (raw, bytearray(raw), memoryview(raw)):
        out = decode_entry(form)
        assert (out.index, out.term, out.type, out.data) == (
            entry.index,
            entry.term,
            entry.type,
            entry.data,
        )
        assert out == entry
        assert hash(out) == hash(entry)
    assert pickle.loads(pickle.dumps(entry)) == entry
    # The codec writes exactly the same bytes, alone or in a batch.
    assert codec.encode_entries([entry]) == raw
    assert codec.decode_entries(raw) == [entry]


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=80))
def test_random_bytes_decode_or_raise(raw: bytes) -> None:
    try:
        entry = decode_entry(raw)
    except CodecError as exc:
        assert str(exc)
        return
    assert entry.encode() == raw


def test_validation() -> None:
    with pytest.raises(ValueError, match="unknown entry type 3"):
        Entry(1, 1, 3)
    with pytest.raises(OverflowError):
        Entry(-1, 1)
    with pytest.raises(OverflowError):
        Entry(1, 2**64)
    with pytest.raises(OverflowError):
        Entry(1, 1, 256)
    for bad in (None, "text", bytearray(b"x")):
        with pytest.raises(TypeError):
            Entry(1, 1, 0, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "pattern"),
    [
        (b"", r"empty entry encoding"),
        (b"\x00" * 20, r"truncated entry header: 20 of 21 bytes"),
        (struct.pack("<QQBI", 1, 1, 3, 0), r"unknown entry type 3"),
        (struct.pack("<QQBI", 1, 1, 255, 0), r"unknown entry type 255"),
        (struct.pack("<QQBI", 1, 1, 0, 4) + b"abc", r"truncated entry data: length says 4, 3 "),
        (struct.pack("<QQBI", 1, 1, 0, 0xFFFFFFFF), r"length says 4294967295, 0 present"),
        (struct.pack("<QQBI", 1, 1, 0, 2) + b"abc", r"1 trailing bytes after entry"),
    ],
)
def test_decode_errors(raw: bytes, pattern: str) -> None:
    with pytest.raises(CodecError, match=pattern):
        decode_entry(raw)


def test_equality_and_hash() -> None:
    a = Entry(1, 2, 0, b"x")
    assert a == Entry(1, 2, 0, b"x")
    assert a != Entry(1, 2, 0, b"y")
    assert a != Entry(1, 3, 0, b"x")
    assert a != Entry(2, 2, 0, b"x")
    assert a != Entry(1, 2, ENTRY_NOOP, b"x")
    assert a != (1, 2, 0, b"x")
    assert len({a, Entry(1, 2, 0, b"x"), Entry(1, 2, 0, b"z")}) == 2


def test_repr() -> None:
    short = Entry(7, 3, ENTRY_CONFIG, b"cfg")
    assert eval(repr(short), {"Entry": Entry}) == short
    long = Entry(7, 3, 0, b"x" * 1000)
    assert len(repr(long)) < 150
    assert repr(long).startswith("Entry(index=7, term=3, type=0, data=b'xxx")


def test_recycled_entries_start_clean() -> None:
    """Entry memory is recycled; every new entry must still carry exactly its own values."""
    for round_ in range(5):
        batch = [Entry(i, round_, i % 3, bytes([i & 0xFF]) * (i % 7)) for i in range(3000)]
        raw = codec.encode_entries(batch)
        del batch
        decoded = codec.decode_entries(raw)
        assert [(e.index, e.term, e.type, e.data) for e in decoded] == [
            (i, round_, i % 3, bytes([i & 0xFF]) * (i % 7)) for i in range(3000)
        ]
