"""Hand-written malformed inputs: each kind of damage raises CodecError with its own message.

Every case is checked through both ``decode`` and a fresh ``FrameDecoder``, since the
two share the body decoders but frame the bytes differently.
"""

from __future__ import annotations

import re
import struct
from typing import Any

import pytest
from codec_strategies import sample_messages

from raftkv_ext import codec
from raftkv_ext.entry import Entry
from raftkv_ext.errors import CodecError

SAMPLES = sample_messages()
KNOWN_TYPES = set(codec.MESSAGE_TYPES)


def frame(type_id: int, body: bytes) -> bytes:
    return struct.pack("<IB", len(body) + 1, type_id) + body


def body_of(msg: Any) -> bytes:
    return codec.encode(msg)[5:]


def patch_u32(body: bytes, offset: int, value: int) -> bytes:
    return body[:offset] + struct.pack("<I", value) + body[offset + 4 :]


def refused(pattern: str, data: bytes, max_frame_size: int = codec.DEFAULT_MAX_FRAME_SIZE) -> str:
    """Assert that both decoders refuse ``data`` with a message matching ``pattern``."""
    with pytest.raises(CodecError, match=pattern) as caught:
        codec.decode(data, max_frame_size)
    decoder = codec.FrameDecoder(max_frame_size)
    with pytest.raises(CodecError, match=pattern):
        decoder.feed(data)
    assert decoder.poisoned
    return str(caught.value)


# --- frame level -----------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\x05", b"\x05\x00", b"\x05\x00\x00"])
def test_truncated_frame_header(data: bytes) -> None:
    with pytest.raises(CodecError, match=rf"truncated frame header: {len(data)} of 4 bytes"):
        codec.decode(data)


def test_truncated_frame_header_is_held_by_the_stream_decoder() -> None:
    decoder = codec.FrameDecoder()
    assert decoder.feed(b"\x05\x00\x00") == []
    assert decoder.buffered == 3


@pytest.mark.parametrize("tail", [b"", b"\x07", b"\x00" * 30])
def test_zero_length_frame(tail: bytes) -> None:
    refused(r"zero-length frame", b"\x00\x00\x00\x00" + tail)


def test_zero_length_frame_after_a_good_one_in_a_stream() -> None:
    decoder = codec.FrameDecoder()
    good = codec.encode(codec.TimeoutNow(1, 2, 3))
    assert decoder.feed(good + b"\x00\x00") == [codec.TimeoutNow(1, 2, 3)]
    with pytest.raises(CodecError, match="zero-length frame"):
        decoder.feed(b"\x00\x00")


def test_frame_above_the_limit() -> None:
    data = codec.encode(codec.ReadIndex(1, 2, 3, b"x" * 100))
    length = len(data) - 4
    assert codec.decode(data, length) == codec.ReadIndex(1, 2, 3, b"x" * 100)
    message = refused(
        rf"frame length {length} exceeds the limit of {length - 1} bytes", data, length - 1
    )
    assert str(length) in message


def test_default_limit_is_64_mib() -> None:
    assert codec.DEFAULT_MAX_FRAME_SIZE == 64 * 1024 * 1024
    header = struct.pack("<I", 64 * 1024 * 1024 + 1)
    refused(r"exceeds the limit of 67108864 bytes", header + b"\x01")


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_truncated_frame(msg: Any) -> None:
    data = codec.encode(msg)
    with pytest.raises(CodecError, match=r"truncated frame: length says \d+ bytes, \d+ present"):
        codec.decode(data[:-1])
    # A stream decoder just waits for the rest.
    decoder = codec.FrameDecoder()
    assert decoder.feed(data[:-1]) == []
    assert decoder.feed(data[-1:]) == [msg]


@pytest.mark.parametrize("extra", [b"\x00", b"\x01\x02\x03\x04\x05\x06"])
def test_trailing_bytes_after_frame(extra: bytes) -> None:
    data = codec.encode(codec.TimeoutNow(1, 2, 3)) + extra
    with pytest.raises(CodecError, match=rf"^{len(extra)} trailing bytes after the frame$"):
        codec.decode(data)


@pytest.mark.parametrize("type_id", sorted(set(range(256)) - KNOWN_TYPES))
def test_unknown_message_type(type_id: int) -> None:
    refused(rf"^unknown message type {type_id}$", frame(type_id, b"\x00" * 64))


# --- body level ------------------------------------------------------------------------


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_empty_body_is_truncated(msg: Any) -> None:
    name = type(msg).__name__
    refused(
        rf"^truncated {name} body: 0 bytes where at least \d+ are needed$",
        frame(type(msg).TYPE_ID, b""),
    )


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_truncation_of_a_body_is_refused(msg: Any) -> None:
    body = body_of(msg)
    for cut in range(len(body)):
        damaged = frame(type(msg).TYPE_ID, body[:cut])
        with pytest.raises(
            CodecError, match=r"truncated|points past the end|needs at least|bad magic"
        ):
            codec.decode(damaged)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_trailing_bytes_inside_a_body(msg: Any) -> None:
    name = type(msg).__name__
    refused(
        rf"^1 trailing bytes after the {name} body$",
        frame(type(msg).TYPE_ID, body_of(msg) + b"\x00"),
    )
    refused(
        rf"^3 trailing bytes after the {name} body$",
        frame(type(msg).TYPE_ID, body_of(msg) + b"abc"),
    )


# (message, offset of a u32 length in its body, name of the field it measures)
LENGTH_FIELDS = [
    (codec.InstallSnapshot(1, 2, 3, 4, 5, b"", 6, 7, b"", False), 57, "config"),
    (codec.InstallSnapshot(1, 2, 3, 4, 5, b"", 6, 7, b"", False), 61, "data"),
    (codec.ReadIndex(1, 2, 3, b""), 24, "context"),
    (codec.ReadIndexResponse(1, 2, 3, b"", 4, True), 33, "context"),
    (codec.Propose(1, 2, 3, 4, [b""]), 36, "command 0"),
    (codec.HandshakeReply(True, 1, ""), 9, "reason"),
    (codec.ClientRequest(1, 2), 57, "key"),
    (codec.ClientRequest(1, 2), 61, "value"),
    (codec.ClientReply(1, 2), 34, "body"),
]


@pytest.mark.parametrize(
    ("msg", "offset", "field"),
    LENGTH_FIELDS,
    ids=[f"{type(m).__name__}.{f}" for m, _, f in LENGTH_FIELDS],
)
@pytest.mark.parametrize("length", [5, 1000, 0xFFFFFFFF])
def test_length_field_pointing_past_the_end(msg: Any, offset: int, field: str, length: int) -> None:
    body = patch_u32(body_of(msg), offset, length)
    name = type(msg).__name__
    refused(
        rf"{name} {field} length {length} points past the end of the body "
        rf"\(\d+ bytes left\)",
        frame(type(msg).TYPE_ID, body),
    )


def test_entry_data_length_pointing_past_the_end() -> None:
    msg = codec.AppendEntries(1, 2, 3, 4, 5, 6, [Entry(7, 5, 0, b"abc")])
    body = patch_u32(body_of(msg), 60 + 17, 4)
    refused(r"truncated entry data: length says 4, 3 present", frame(1, body))


def test_truncated_entry_header() -> None:
    # Count 2 passes the count check (the first entry's data fills the room a second
    # header would need), but the second header is missing or cut short.
    msg = codec.AppendEntries(1, 2, 3, 4, 5, 6, [Entry(7, 5, 0, b"x" * 21)])
    body = patch_u32(body_of(msg), 56, 2)
    refused(r"truncated entry header: 0 of 21 bytes", frame(1, body))
    refused(r"truncated entry header: 20 of 21 bytes", frame(1, body + b"\x00" * 20))


@pytest.mark.parametrize("count", [1, 2, 1000, 0xFFFFFFFF])
def test_entry_count_larger_than_the_body_can_hold(count: int) -> None:
    body = patch_u32(body_of(codec.AppendEntries(1, 2, 3, 4, 5, 6)), 56, count)
    refused(
        rf"AppendEntries entry count {count} needs at least {count * 21} bytes, "
        r"0 present",
        frame(1, body),
    )


@pytest.mark.parametrize("count", [1, 0xFFFFFFFF])
def test_command_count_larger_than_the_body_can_hold(count: int) -> None:
    body = patch_u32(body_of(codec.Propose(1, 2, 3, 4, [])), 32, count)
    refused(
        rf"Propose command count {count} needs at least {count * 4} bytes, 0 present",
        frame(10, body),
    )


def test_command_length_missing() -> None:
    # Count 2 passes the count check (8 bytes present) but the second length is cut.
    body = patch_u32(body_of(codec.Propose(1, 2, 3, 4, [b"abcd"])), 32, 2)
    refused(
        r"truncated Propose body: 0 bytes where the 4-byte length of command 1 is needed",
        frame(10, body),
    )


@pytest.mark.parametrize("entry_type", [3, 7, 255])
def test_unknown_entry_type(entry_type: int) -> None:
    msg = codec.AppendEntries(1, 2, 3, 4, 5, 6, [Entry(7, 5, 0, b"abc")])
    body = bytearray(body_of(msg))
    body[60 + 16] = entry_type
    refused(rf"unknown entry type {entry_type}", frame(1, bytes(body)))
    raw = bytearray(Entry(7, 5, 0, b"abc").encode())
    raw[16] = entry_type
    with pytest.raises(CodecError, match=rf"unknown entry type {entry_type}"):
        codec.decode_entries(bytes(raw))


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff",  # never valid in UTF-8
        b"\xc0\x80",  # overlong encoding of NUL
        b"\xed\xa0\x80",  # an encoded surrogate
        b"ok \xe2\x82",  # a sequence cut short
        b"\xf4\x90\x80\x80",  # above U+10FFFF
    ],
)
def test_invalid_utf8_in_reason(raw: bytes) -> None:
    body = struct.pack("<QBI", 1, 0, len(raw)) + raw
    refused(r"invalid UTF-8 in HandshakeReply reason at byte \d+", frame(65, body))


# (message with every boolean false, offset of its flags byte, bits in use)
FLAG_BYTES = [
    (codec.AppendEntriesResponse(1, 2, 3, False, 4), 56, 0x01),
    (codec.RequestVote(1, 2, 3, 4, 5), 40, 0x03),
    (codec.RequestVoteResponse(1, 2, 3, False), 24, 0x03),
    (codec.InstallSnapshot(1, 2, 3, 4, 5, b"", 6, 7, b"", False), 56, 0x01),
    (codec.InstallSnapshotResponse(1, 2, 3, 4, 5, False), 40, 0x03),
    (codec.ReadIndexResponse(1, 2, 3, b"", 4, False), 32, 0x01),
    (codec.ProposeResponse(1, 2, 3, 4, 5, False), 40, 0x01),
    (codec.HandshakeReply(False, 1), 8, 0x01),
]


@pytest.mark.parametrize(
    ("msg", "offset", "allowed"), FLAG_BYTES, ids=[type(m).__name__ for m, _, _ in FLAG_BYTES]
)
def test_unknown_flag_bits(msg: Any, offset: int, allowed: int) -> None:
    body = bytearray(body_of(msg))
    assert body[offset] == 0
    for bit in range(8):
        body[offset] = 1 << bit
        data = frame(type(msg).TYPE_ID, bytes(body))
        if allowed & (1 << bit):
            assert codec.decode(data) != msg  # a known flag flips a field
        else:
            refused(rf"invalid {type(msg).__name__} flags 0x{1 << bit:02x}", data)


@pytest.mark.parametrize("magic", [0, 1, 0x564B4653, 0x52464B56, 0xFFFFFFFF])
def test_handshake_with_bad_magic(magic: int) -> None:
    body = struct.pack("<IIQQ", magic, codec.PROTOCOL_VERSION, 7, 1)
    message = refused(r"bad magic", frame(64, body))
    assert f"0x{magic:08x}" in message
    assert f"0x{codec.MAGIC:08x}" in message
    # Even when the rest is missing, the stranger is told about the magic first.
    refused(r"bad magic", frame(64, body[:5]))


def test_handshake_with_good_magic_but_short_body() -> None:
    body = struct.pack("<IIQQ", codec.MAGIC, 1, 7, 1)
    refused(
        r"truncated Handshake body: 23 bytes where at least 24 are needed", frame(64, body[:-1])
    )
    refused(r"truncated Handshake body: 3 bytes", frame(64, body[:3]))


# --- entries ---------------------------------------------------------------------------


def test_decode_entries_errors() -> None:
    good = codec.encode_entries([Entry(1, 1, 0, b"abc"), Entry(2, 1, 0, b"defg")])
    assert codec.decode_entries(good) == [Entry(1, 1, 0, b"abc"), Entry(2, 1, 0, b"defg")]
    with pytest.raises(CodecError, match=r"truncated entry data: length says 4, 3 present"):
        codec.decode_entries(good[:-1])
    with pytest.raises(CodecError, match=r"truncated entry header: 5 of 21 bytes"):
        codec.decode_entries(good + b"\x00" * 5)


# --- the stream decoder after an error ---------------------------------------------------


def test_decoder_is_poisoned_after_an_error() -> None:
    decoder = codec.FrameDecoder()
    good = codec.encode(codec.TimeoutNow(1, 2, 3))
    with pytest.raises(CodecError, match="unknown message type 200"):
        decoder.feed(good[:3] + good[3:] + frame(200, b"") + good[:2])
    assert decoder.poisoned
    assert decoder.buffered == 0
    for later in (good, b"", bytearray(good)):
        with pytest.raises(
            CodecError, match=r"decoder unusable after an earlier error: unknown message"
        ):
            decoder.feed(later)


def test_decoder_is_poisoned_by_an_error_in_a_buffered_frame() -> None:
    decoder = codec.FrameDecoder()
    bad = frame(1, b"\x00" * 10)
    assert decoder.feed(bad[:7]) == []
    with pytest.raises(CodecError, match=re.escape("truncated AppendEntries body")):
        decoder.feed(bad[7:])
    assert decoder.poisoned
    with pytest.raises(CodecError, match="decoder unusable"):
        decoder.feed(codec.encode(codec.TimeoutNow(1, 2, 3)))
