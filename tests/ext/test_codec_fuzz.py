"""Hostile input: random and mutated bytes either decode or raise CodecError, nothing else.

Whatever does decode must re-encode to exactly the bytes it came from (the encoding is
canonical), which also shows that nothing was read from outside the input.
"""

from __future__ import annotations

import contextlib
import struct
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from codec_strategies import SMALL_MESSAGE, U32
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftkv_ext import codec
from raftkv_ext.errors import CodecError

# 400 examples in CI; RAFTKV_FUZZ=long (tests/conftest.py) raises the default above that.
FUZZ = settings(
    max_examples=max(400, settings.default.max_examples),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
KNOWN_TYPES = sorted(codec.MESSAGE_TYPES)


def decode_or_refuse(data: bytes, max_frame_size: int = codec.DEFAULT_MAX_FRAME_SIZE) -> None:
    try:
        msg = codec.decode(data, max_frame_size)
    except CodecError as exc:
        assert str(exc)
        return
    assert isinstance(msg, codec.MessageBase)
    assert codec.encode(msg) == data


def stream_or_refuse(data: bytes, cuts: list[int], max_frame_size: int) -> None:
    decoder = codec.FrameDecoder(max_frame_size)
    out: list[Any] = []
    pos = 0
    try:
        for cut in [*sorted(cuts), len(data)]:
            out += decoder.feed(data[pos:cut])
            pos = cut
            # Never more than one unfinished frame, and never more than the limit allows.
            assert decoder.buffered < 4 + max_frame_size
    except CodecError as exc:
        assert str(exc)
        assert decoder.poisoned
        assert decoder.buffered == 0
        with pytest.raises(CodecError):
            decoder.feed(b"")
        return
    # Everything decoded re-encodes to the stream minus the unfinished tail it holds.
    assert codec.encode_batch(out) == data[: len(data) - decoder.buffered]


def framed(type_id: int, body: bytes) -> bytes:
    return struct.pack("<IB", len(body) + 1, type_id) + body


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes_to_decode(data: bytes) -> None:
    decode_or_refuse(data)
    decode_or_refuse(data, max_frame_size=64)


@FUZZ
@given(type_id=st.sampled_from(KNOWN_TYPES) | st.integers(0, 255), body=st.binary(max_size=300))
def test_random_body_behind_a_valid_header(type_id: int, body: bytes) -> None:
    decode_or_refuse(framed(type_id, body))


@FUZZ
@given(type_id=st.sampled_from(KNOWN_TYPES), body=st.binary(max_size=200), data=st.data())
def test_random_body_with_plausible_lengths(type_id: int, body: bytes, data: st.DataObject) -> None:
    # Random u32s are almost always huge; plant small ones so that count and length
    # checks pass and the decoders go deeper.
    raw = bytearray(body)
    for _ in range(data.draw(st.integers(0, 6))):
        if len(raw) >= 4:
            at = data.draw(st.integers(0, len(raw) - 4))
            raw[at : at + 4] = struct.pack("<I", data.draw(st.integers(0, 64)))
    decode_or_refuse(framed(type_id, bytes(raw)))


@FUZZ
@given(
    data=st.binary(max_size=600),
    cuts=st.lists(st.integers(0, 600), max_size=20),
    max_frame_size=st.sampled_from([1, 16, 300, codec.DEFAULT_MAX_FRAME_SIZE]),
)
def test_random_bytes_to_frame_decoder(data: bytes, cuts: list[int], max_frame_size: int) -> None:
    stream_or_refuse(data, [c for c in cuts if c <= len(data)], max_frame_size)


def _flip(buf: bytearray, at: int, value: int) -> None:
    buf[at % len(buf)] ^= value or 1


def _insert(buf: bytearray, at: int, value: int) -> None:
    buf.insert(at % (len(buf) + 1), value)


def _delete(buf: bytearray, at: int, value: int) -> None:
    del buf[at % len(buf)]


def _truncate(buf: bytearray, at: int, value: int) -> None:
    del buf[at % len(buf) :]


def _overwrite_u32(buf: bytearray, at: int, value: int) -> None:
    at %= len(buf)
    buf[at : at + 4] = struct.pack("<I", value * 0x01010101 if value > 200 else value)


MUTATIONS: list[Callable[[bytearray, int, int], None]] = [
    _flip,
    _insert,
    _delete,
    _truncate,
    _overwrite_u32,
]
MUTATION = st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 10**6), st.integers(0, 255))


def mutate(
    frame: bytes, ops: list[tuple[Callable[[bytearray, int, int], None], int, int]]
) -> bytes:
    buf = bytearray(frame)
    for op, at, value in ops:
        if buf:
            op(buf, at, value)
    return bytes(buf)


@FUZZ
@given(msg=SMALL_MESSAGE, ops=st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_frames_to_decode(msg: Any, ops: list[Any]) -> None:
    decode_or_refuse(mutate(codec.encode(msg), ops))


@FUZZ
@given(
    msgs=st.lists(SMALL_MESSAGE, min_size=1, max_size=4),
    ops=st.lists(MUTATION, min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
)
def test_mutated_streams_to_frame_decoder(msgs: list[Any], ops: list[Any], cuts: list[int]) -> None:
    data = mutate(codec.encode_batch(msgs), ops)
    stream_or_refuse(data, [c for c in cuts if c <= len(data)], 4096)


@FUZZ
@given(msg=SMALL_MESSAGE, at=st.integers(0, 10**6), bit=st.integers(0, 7))
def test_every_single_bit_flip_is_safe(msg: Any, at: int, bit: int) -> None:
    buf = bytearray(codec.encode(msg))
    buf[at % len(buf)] ^= 1 << bit
    decode_or_refuse(bytes(buf))


# --- oversized length headers ----------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 100, 4096])
def test_oversized_header_is_refused_before_any_body_is_buffered(limit: int) -> None:
    header = struct.pack("<I", limit + 1)
    decoder = codec.FrameDecoder(limit)
    # A header that arrives in pieces is held (it is at most three bytes)...
    assert decoder.feed(header[:1]) == []
    assert decoder.feed(header[1:3]) == []
    assert decoder.buffered == 3
    # ...and refused the moment it is whole, together with whatever body came with it.
    with pytest.raises(CodecError, match=rf"frame length {limit + 1} exceeds the limit"):
        decoder.feed(header[3:] + b"\x01" * 50)
    assert decoder.buffered == 0
    assert decoder.poisoned


def test_oversized_header_alone_is_refused_at_once() -> None:
    decoder = codec.FrameDecoder(1000)
    with pytest.raises(CodecError, match="exceeds the limit of 1000 bytes"):
        decoder.feed(struct.pack("<I", 1001))
    assert decoder.buffered == 0


def test_frame_of_exactly_the_limit_is_accepted() -> None:
    msg = codec.ReadIndex(1, 2, 3, b"z" * 500)
    data = codec.encode(msg)
    decoder = codec.FrameDecoder(len(data) - 4)
    assert decoder.feed(data[:100]) == []
    assert decoder.buffered == 100
    assert decoder.feed(data[100:]) == [msg]
    assert decoder.buffered == 0


def test_a_non_raftkv_peer_is_refused_on_its_first_bytes() -> None:
    # "GET " read as a length is about 542 MB: over any sane limit.
    decoder = codec.FrameDecoder()
    with pytest.raises(CodecError, match="exceeds the limit"):
        decoder.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def _peak_allocation(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        with contextlib.suppress(CodecError):
            fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_declared_length_is_not_allocated_up_front() -> None:
    """A peer that declares a 64 MiB frame and sends 10 bytes costs about 10 bytes."""
    decoder = codec.FrameDecoder()
    header = struct.pack("<IB", codec.DEFAULT_MAX_FRAME_SIZE, 5)

    def feed() -> None:
        decoder.feed(header + b"\x00" * 10)

    assert _peak_allocation(feed) < 64 * 1024
    assert decoder.buffered == 15


@pytest.mark.parametrize(
    ("type_id", "offset"), [(1, 56), (10, 32)], ids=["AppendEntries", "Propose"]
)
def test_hostile_count_allocates_nothing(type_id: int, offset: int) -> None:
    body = bytearray(80)
    body[offset : offset + 4] = struct.pack("<I", 0xFFFFFFFF)
    data = framed(type_id, bytes(body))

    def run() -> None:
        with pytest.raises(CodecError, match="count 4294967295 needs at least"):
            codec.decode(data)

    assert _peak_allocation(run) < 64 * 1024


# --- handshakes ------------------------------------------------------------------------


@FUZZ
@given(
    magic=U32.filter(lambda m: m != codec.MAGIC),
    version=U32,
    cluster=st.integers(0, 2**64 - 1),
    node=st.integers(0, 2**64 - 1),
)
def test_handshake_with_any_wrong_magic_is_refused(
    magic: int, version: int, cluster: int, node: int
) -> None:
    good = codec.encode(codec.Handshake(version, cluster, node))
    assert good[5:9] == struct.pack("<I", codec.MAGIC)
    bad = good[:5] + struct.pack("<I", magic) + good[9:]
    with pytest.raises(CodecError, match="bad magic"):
        codec.decode(bad)
    with pytest.raises(CodecError, match="bad magic"):
        codec.FrameDecoder().feed(bad)
    assert codec.decode(good) == codec.Handshake(version, cluster, node)
