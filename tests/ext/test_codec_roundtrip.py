"""Round trips through every encoder and decoder of raftkv_ext.codec, driven by Hypothesis."""

from __future__ import annotations

import pickle
import struct
from typing import Any

import pytest
from codec_strategies import (
    ANY_MESSAGE,
    ENTRY_LISTS,
    MESSAGES,
    SMALL_MESSAGE,
    SMALL_MESSAGES,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from raftkv_ext import codec
from raftkv_ext.entry import Entry

# The public fields of every message, in __init__ order, written out from the interface
# rather than read from the implementation.
FIELDS: dict[type[Any], tuple[str, ...]] = {
    codec.AppendEntries: (
        "sender",
        "recipient",
        "term",
        "prev_index",
        "prev_term",
        "commit",
        "entries",
        "round",
    ),
    codec.AppendEntriesResponse: (
        "sender",
        "recipient",
        "term",
        "success",
        "index",
        "hint_index",
        "hint_term",
        "round",
    ),
    codec.RequestVote: (
        "sender",
        "recipient",
        "term",
        "last_index",
        "last_term",
        "pre_vote",
        "transfer",
    ),
    codec.RequestVoteResponse: ("sender", "recipient", "term", "granted", "pre_vote"),
    codec.InstallSnapshot: (
        "sender",
        "recipient",
        "term",
        "snap_index",
        "snap_term",
        "config",
        "offset",
        "total_size",
        "data",
        "done",
    ),
    codec.InstallSnapshotResponse: (
        "sender",
        "recipient",
        "term",
        "snap_index",
        "offset",
        "success",
        "done",
    ),
    codec.TimeoutNow: ("sender", "recipient", "term"),
    codec.ReadIndex: ("sender", "recipient", "term", "context"),
    codec.ReadIndexResponse: ("sender", "recipient", "term", "context", "index", "success"),
    codec.Propose: ("sender", "recipient", "term", "batch_id", "commands"),
    codec.ProposeResponse: ("sender", "recipient", "term", "batch_id", "index", "success"),
    codec.Handshake: ("version", "cluster_id", "node_id"),
    codec.HandshakeReply: ("accepted", "node_id", "reason"),
    codec.ClientRequest: (
        "request_id",
        "op",
        "key",
        "value",
        "client_id",
        "seq",
        "prev_revision",
        "limit",
        "flags",
        "timeout_ms",
    ),
    codec.ClientReply: ("request_id", "status", "index", "term", "revision", "body"),
}
CLASSES = list(FIELDS)
HEAVY = settings(
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def field_values(msg: Any) -> tuple[Any, ...]:
    return tuple(getattr(msg, name) for name in FIELDS[type(msg)])


def frame_ends(stream: bytes) -> list[int]:
    """Offsets at which each frame of a well-formed stream ends."""
    ends, pos = [], 0
    while pos < len(stream):
        (length,) = struct.unpack_from("<I", stream, pos)
        pos += 4 + length
        ends.append(pos)
    return ends


def test_strategies_cover_every_message_type() -> None:
    assert set(FIELDS) == set(MESSAGES) == set(SMALL_MESSAGES)
    assert set(FIELDS) == set(codec.MESSAGE_TYPES.values())


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@HEAVY
@given(data=st.data())
def test_encode_decode_round_trip(cls: type[Any], data: st.DataObject) -> None:
    msg = data.draw(MESSAGES[cls])
    frame = codec.encode(msg)
    (length,) = struct.unpack_from("<I", frame)
    assert length == len(frame) - 4
    assert frame[4] == cls.TYPE_ID
    for form in (frame, bytearray(frame), memoryview(frame)):
        out = codec.decode(form)
        assert type(out) is cls
        assert field_values(out) == field_values(msg)
        assert out == msg
    # The encoding is canonical: what decodes re-encodes to the same bytes.
    assert codec.encode(out) == frame
    assert codec.encode_batch([msg]) == frame


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@settings(deadline=None, max_examples=40)
@given(data=st.data())
def test_pickle_round_trip(cls: type[Any], data: st.DataObject) -> None:
    msg = data.draw(SMALL_MESSAGES[cls])
    copy = pickle.loads(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))
    assert type(copy) is cls
    assert field_values(copy) == field_values(msg)
    assert copy == msg


def _repr_is_complete(msg: Any) -> bool:
    # Long bytes and lists are abbreviated in reprs; only short ones can be eval'd back.
    for value in field_values(msg):
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and len(value) > 3:
            return False
        for item in items:
            raw = item.data if isinstance(item, Entry) else item
            if isinstance(raw, bytes) and len(raw) > 32:
                return False
            if isinstance(raw, str) and len(raw) > 80:
                return False
    return True


@settings(deadline=None, max_examples=200)
@given(msg=SMALL_MESSAGE)
def test_repr_evaluates_back_to_the_message(msg: Any) -> None:
    assume(_repr_is_complete(msg))
    text = repr(msg)
    assert text.startswith(type(msg).__name__ + "(")
    namespace = {name: getattr(codec, name) for name in dir(codec)}
    namespace["Entry"] = Entry
    assert eval(text, namespace) == msg


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_repr_abbreviates_long_fields(cls: type[Any]) -> None:
    msg = _long_instance(cls)
    text = repr(msg)
    assert len(text) < 1000
    assert text.startswith(cls.__name__ + "(")
    for name in FIELDS[cls]:
        assert f"{name}=" in text


def _long_instance(cls: type[Any]) -> Any:
    big = bytes(range(256)) * 40
    args: list[Any] = []
    for name in FIELDS[cls]:
        if name == "entries":
            args.append([Entry(i, 1, 0, big) for i in range(1, 50)])
        elif name == "commands":
            args.append([big] * 50)
        elif name in ("config", "data", "context", "key", "value", "body"):
            args.append(big)
        elif name == "reason":
            args.append("x" * 10_000)
        else:
            args.append(1)
    return cls(*args)


@HEAVY
@given(msgs=st.lists(ANY_MESSAGE, max_size=6), data=st.data())
def test_batch_through_frame_decoder_in_random_chunks(msgs: list[Any], data: st.DataObject) -> None:
    stream = codec.encode_batch(msgs)
    assert stream == b"".join(codec.encode(m) for m in msgs)
    ends = frame_ends(stream)
    assert len(ends) == len(msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=40)))
    decoder = codec.FrameDecoder()
    out: list[Any] = []
    pos = 0
    for cut in [*cuts, len(stream)]:
        chunk = stream[pos:cut]
        form = data.draw(st.sampled_from([bytes, bytearray, memoryview]))
        out += decoder.feed(form(chunk))
        pos = cut
        done = [end for end in ends if end <= pos]
        assert len(out) == len(done)
        assert decoder.buffered == pos - (done[-1] if done else 0)
    assert out == msgs
    assert [type(m) for m in out] == [type(m) for m in msgs]
    assert decoder.buffered == 0
    assert not decoder.poisoned


@settings(deadline=None, max_examples=50)
@given(msgs=st.lists(SMALL_MESSAGE, min_size=1, max_size=4))
def test_frame_decoder_one_byte_at_a_time(msgs: list[Any]) -> None:
    stream = codec.encode_batch(msgs)
    ends = set(frame_ends(stream))
    decoder = codec.FrameDecoder()
    out: list[Any] = []
    held = 0
    for i in range(len(stream)):
        got = decoder.feed(stream[i : i + 1])
        held += 1
        if i + 1 in ends:
            assert len(got) == 1
            held = 0
        else:
            assert got == []
        assert decoder.buffered == held
        out += got
    assert out == msgs


@settings(deadline=None, max_examples=50)
@given(msgs=st.lists(SMALL_MESSAGE, max_size=8))
def test_encode_batch_accepts_any_iterable(msgs: list[Any]) -> None:
    expected = b"".join(codec.encode(m) for m in msgs)
    assert codec.encode_batch(msgs) == expected
    assert codec.encode_batch(tuple(msgs)) == expected
    assert codec.encode_batch(m for m in msgs) == expected
    assert codec.FrameDecoder().feed(expected) == msgs


@HEAVY
@given(entries=ENTRY_LISTS)
def test_entries_round_trip(entries: list[Entry]) -> None:
    buf = codec.encode_entries(entries)
    # Back to back, each exactly the entry's own encoding (its log-record payload).
    assert buf == b"".join(e.encode() for e in entries)
    assert len(buf) == sum(e.wire_size for e in entries)
    for form in (buf, bytearray(buf), memoryview(buf)):
        assert codec.decode_entries(form) == entries
    assert codec.encode_entries(tuple(entries)) == buf


@HEAVY
@given(msg=MESSAGES[codec.AppendEntries])
def test_append_entries_carries_log_record_payloads(msg: codec.AppendEntries) -> None:
    frame = codec.encode(msg)
    fixed = 5 + 8 * 7 + 4
    assert struct.unpack_from("<I", frame, fixed - 4)[0] == len(msg.entries)
    assert frame[fixed:] == b"".join(e.encode() for e in msg.entries)
    assert frame[fixed:] == codec.encode_entries(msg.entries)
    decoded = codec.decode(frame)
    assert isinstance(decoded, codec.AppendEntries)
    assert all(type(e) is Entry for e in decoded.entries)
    assert [e.encode() for e in decoded.entries] == [e.encode() for e in msg.entries]


def test_decoded_buffers_are_copies() -> None:
    """Decoded bytes fields and the decoder's held bytes do not alias the caller's buffer."""
    msg = codec.ReadIndex(1, 2, 3, b"context")
    buf = bytearray(codec.encode(msg))
    out = codec.decode(memoryview(buf))
    buf[-3:] = b"XXX"
    assert out == msg

    stream = bytearray(codec.encode(msg))
    decoder = codec.FrameDecoder()
    assert decoder.feed(memoryview(stream)[:10]) == []
    rest = bytes(stream[10:])
    stream[:10] = b"\xff" * 10
    assert decoder.feed(rest) == [msg]
