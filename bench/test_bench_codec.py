"""Micro-benchmark of the codec: an AppendEntries carrying 256 entries of 100 bytes.

The baseline is the same wire layout written in plain Python with precompiled ``struct``
formats, decoding to Python objects (a small slotted class per entry) and making the same
safety checks, so the ratio measures what compiling the codec buys and nothing else.

Run with ``pytest bench/test_bench_codec.py --benchmark-enable``; the last test prints the
ratios (baseline time / codec time). Nothing here asserts a speed.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from raftkv_ext import codec
from raftkv_ext.entry import Entry

N_ENTRIES = 256
ENTRY_SIZE = 100

# --- the plain-Python baseline ---------------------------------------------------------

_FRAME = struct.Struct("<IB")
_APPEND = struct.Struct("<7QI")  # sender .. round, entry count
_ENTRY = struct.Struct("<QQBI")  # index, term, type, data length
_APPEND_ENTRIES = 1
_MAX_ENTRY_TYPE = 2


class PyEntry:
    __slots__ = ("data", "index", "term", "type")

    def __init__(self, index: int, term: int, type: int, data: bytes) -> None:
        self.index = index
        self.term = term
        self.type = type
        self.data = data


class PyAppendEntries:
    __slots__ = (
        "commit",
        "entries",
        "prev_index",
        "prev_term",
        "recipient",
        "round",
        "sender",
        "term",
    )

    # Positional like the codec's AppendEntries, so both are built the same way.
    def __init__(
        self,
        sender: int,
        recipient: int,
        term: int,
        prev_index: int,
        prev_term: int,
        commit: int,
        entries: list[PyEntry],
        round: int,
    ) -> None:
        self.sender = sender
        self.recipient = recipient
        self.term = term
        self.prev_index = prev_index
        self.prev_term = prev_term
        self.commit = commit
        self.entries = entries
        self.round = round


def py_encode(m: PyAppendEntries) -> bytes:
    pack_entry = _ENTRY.pack
    parts: list[bytes] = [
        b"",
        _APPEND.pack(
            m.sender,
            m.recipient,
            m.term,
            m.prev_index,
            m.prev_term,
            m.commit,
            m.round,
            len(m.entries),
        ),
    ]
    size = 1 + _APPEND.size
    for e in m.entries:
        parts.append(pack_entry(e.index, e.term, e.type, len(e.data)))
        parts.append(e.data)
        size += _ENTRY.size + len(e.data)
    parts[0] = _FRAME.pack(size, _APPEND_ENTRIES)
    return b"".join(parts)


def py_decode(frame: bytes, max_frame_size: int = codec.DEFAULT_MAX_FRAME_SIZE) -> PyAppendEntries:
    if len(frame) < _FRAME.size:
        raise ValueError("truncated frame")
    length, type_id = _FRAME.unpack_from(frame)
    if length == 0 or length > max_frame_size or length != len(frame) - 4:
        raise ValueError("bad frame length")
    if type_id != _APPEND_ENTRIES:
        raise ValueError("unknown message type")
    end = len(frame)
    if end - 5 < _APPEND.size:
        raise ValueError("truncated body")
    sender, recipient, term, prev_index, prev_term, commit, rnd, count = _APPEND.unpack_from(
        frame, 5
    )
    pos = 5 + _APPEND.size
    if count * _ENTRY.size > end - pos:
        raise ValueError("entry count too large")
    unpack_entry = _ENTRY.unpack_from
    header = _ENTRY.size
    entries: list[PyEntry] = []
    append = entries.append
    for _ in range(count):
        if end - pos < header:
            raise ValueError("truncated entry header")
        index, eterm, etype, n = unpack_entry(frame, pos)
        if etype > _MAX_ENTRY_TYPE:
            raise ValueError("unknown entry type")
        pos += header
        if n > end - pos:
            raise ValueError("truncated entry data")
        append(PyEntry(index, eterm, etype, frame[pos : pos + n]))
        pos += n
    if pos != end:
        raise ValueError("trailing bytes")
    return PyAppendEntries(sender, recipient, term, prev_index, prev_term, commit, entries, rnd)


# --- fixtures --------------------------------------------------------------------------


def _payload(i: int) -> bytes:
    return bytes((i + j) & 0xFF for j in range(ENTRY_SIZE))


MESSAGE = codec.AppendEntries(
    1, 2, 7, 1000, 7, 1200, [Entry(1001 + i, 7, 0, _payload(i)) for i in range(N_ENTRIES)], round=42
)
PY_MESSAGE = PyAppendEntries(
    1, 2, 7, 1000, 7, 1200, [PyEntry(1001 + i, 7, 0, _payload(i)) for i in range(N_ENTRIES)], 42
)
FRAME = codec.encode(MESSAGE)

# Median seconds per call, filled in by the benchmarks as they run.
_RESULTS: dict[str, float] = {}


def _record(benchmark: Any, key: str) -> None:
    if benchmark.stats is not None:  # None when benchmarks are disabled
        _RESULTS[key] = benchmark.stats.stats.median


def test_layouts_agree() -> None:
    """The baseline writes and reads exactly the codec's bytes, so the race is fair."""
    assert py_encode(PY_MESSAGE) == FRAME
    decoded = py_decode(FRAME)
    assert [(e.index, e.term, e.type, e.data) for e in decoded.entries] == [
        (e.index, e.term, e.type, e.data) for e in MESSAGE.entries
    ]
    assert (decoded.commit, decoded.round) == (MESSAGE.commit, MESSAGE.round)
    assert len(FRAME) == 5 + 60 + N_ENTRIES * (21 + ENTRY_SIZE)


@pytest.mark.benchmark(group="encode AppendEntries 256x100B")
def test_encode_codec(benchmark: Any) -> None:
    assert benchmark(codec.encode, MESSAGE) == FRAME
    _record(benchmark, "encode codec")


@pytest.mark.benchmark(group="encode AppendEntries 256x100B")
def test_encode_python_struct(benchmark: Any) -> None:
    assert benchmark(py_encode, PY_MESSAGE) == FRAME
    _record(benchmark, "encode python")


@pytest.mark.benchmark(group="decode AppendEntries 256x100B")
def test_decode_codec(benchmark: Any) -> None:
    assert benchmark(codec.decode, FRAME) == MESSAGE
    _record(benchmark, "decode codec")


@pytest.mark.benchmark(group="decode AppendEntries 256x100B")
def test_decode_python_struct(benchmark: Any) -> None:
    assert len(benchmark(py_decode, FRAME).entries) == N_ENTRIES
    _record(benchmark, "decode python")


@pytest.mark.benchmark(group="decode AppendEntries 256x100B")
def test_decode_codec_stream(benchmark: Any) -> None:
    """The same frame through FrameDecoder.feed, as the transport receives it."""
    decoder = codec.FrameDecoder()
    assert benchmark(decoder.feed, FRAME) == [MESSAGE]
    _record(benchmark, "feed codec")


def test_summary(capsys: pytest.CaptureFixture[str]) -> None:
    lines = []
    for op in ("encode", "decode"):
        ours, base = _RESULTS.get(f"{op} codec"), _RESULTS.get(f"{op} python")
        if ours is None or base is None:
            lines.append(f"{op}: not measured (run with --benchmark-enable)")
            continue
        lines.append(
            f"{op} AppendEntries {N_ENTRIES}x{ENTRY_SIZE}B: codec {ours * 1e6:8.2f} us, "
            f"python struct {base * 1e6:8.2f} us, ratio {base / ours:5.1f}x (medians)"
        )
    with capsys.disabled():
        print("\n" + "\n".join(lines))
