"""Hostile input: a run of entry encodings (a batch read from a log record, or the entries
of an AppendEntries) either decodes or raises CodecError; what decodes re-encodes to the
same bytes."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftkv_ext import codec
from raftkv_ext.entry import Entry, decode_entry
from raftkv_ext.errors import CodecError

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENTRIES = st.lists(
    st.builds(
        Entry,
        st.integers(0, 2**64 - 1),
        st.integers(0, 9),
        st.integers(0, 2),
        st.binary(max_size=30),
    ),
    max_size=4,
)


def entries_or_refuse(raw: bytes) -> None:
    try:
        entries = codec.decode_entries(raw)
    except CodecError as exc:
        assert str(exc)
        return
    assert codec.encode_entries(entries) == raw


def entry_or_refuse(raw: bytes) -> None:
    try:
        entry = decode_entry(raw)
    except CodecError as exc:
        assert str(exc)
        return
    assert entry.encode() == raw


@FUZZ
@given(raw=st.binary(max_size=300))
def test_random_bytes(raw: bytes) -> None:
    entries_or_refuse(raw)
    entry_or_refuse(raw)


@FUZZ
@given(entries=ENTRIES, data=st.data())
def test_damaged_batches(entries: list[Entry], data: st.DataObject) -> None:
    raw = bytearray(codec.encode_entries(entries))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw)))
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "length"]))
        if kind == "flip" and at < len(raw):
            raw[at] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del raw[at:]
        elif kind == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=6))
        else:
            # A data length (the u32 at byte 17 of an entry) that is small but wrong.
            raw[at : at + 4] = struct.pack("<I", data.draw(st.integers(0, 40)))
    entries_or_refuse(bytes(raw))
    entry_or_refuse(bytes(raw))
