"""The bodies of watch messages: events from the history and from decoded events, resync
chunks, the short kinds; and every malformed body refused with ValueError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftkv.kv.results import KeyValue
from raftkv.kv.snapshot_format import META
from raftkv.kv.watch_history import Change
from raftkv.wire.watch_frames import (
    EVENT_DELETE,
    EVENT_PUT,
    WatchEvent,
    WatchKind,
    decode_events,
    decode_resync,
    encode_changes,
    encode_events,
    encode_message,
    encode_resync,
    message_kind,
)

NOT_UTF8 = b"\xff\xfe\x00k"


def stored(create: int, mod: int, version: int, value: bytes) -> bytes:
    return META.pack(create, mod, version) + value


# -- from the history ---------------------------------------------------------------------


def test_changes_become_events() -> None:
    changes = [
        Change(3, b"a", stored(3, 3, 1, b"new"), None),
        Change(4, b"a", stored(3, 4, 2, b""), stored(3, 3, 1, b"new")),
        Change(5, b"a", None, stored(3, 4, 2, b"")),
        Change(5, NOT_UTF8, None, stored(1, 2, 2, b"\x80\x81")),
    ]
    with_prev = decode_events(encode_changes(changes, with_prev=True))
    assert with_prev == [
        WatchEvent(EVENT_PUT, b"a", b"new", 3, 3, 1, None),
        WatchEvent(EVENT_PUT, b"a", b"", 4, 3, 2, KeyValue(b"a", b"new", 3, 3, 1)),
        WatchEvent(EVENT_DELETE, b"a", b"", 5, 0, 0, KeyValue(b"a", b"", 3, 4, 2)),
        WatchEvent(EVENT_DELETE, NOT_UTF8, b"", 5, 0, 0, KeyValue(NOT_UTF8, b"\x80\x81", 1, 2, 2)),
    ]
    assert with_prev[1].mod_revision == 4
    without = decode_events(encode_changes(changes, with_prev=False))
    assert without == [event._replace(prev=None) for event in with_prev]


def test_no_changes_is_an_empty_events_message() -> None:
    body = encode_changes([], with_prev=True)
    assert body == bytes((WatchKind.EVENTS,))
    assert message_kind(body) == WatchKind.EVENTS
    assert decode_events(body) == []


# -- from decoded events ------------------------------------------------------------------

keys = st.binary(min_size=1, max_size=12) | st.just(NOT_UTF8)
values = st.binary(max_size=24)
revisions = st.integers(0, 2**64 - 1)


@st.composite
def events(draw: st.DrawFn) -> WatchEvent:
    key = draw(keys)
    prev = None
    if draw(st.booleans()):
        prev = KeyValue(key, draw(values), draw(revisions), draw(revisions), draw(revisions))
    if draw(st.booleans()):
        return WatchEvent(EVENT_DELETE, key, b"", draw(revisions), 0, 0, prev)
    return WatchEvent(
        EVENT_PUT, key, draw(values), draw(revisions), draw(revisions), draw(revisions), prev
    )


@given(st.lists(events(), max_size=6))
def test_events_round_trip(batch: list[WatchEvent]) -> None:
    assert decode_events(encode_events(batch, with_prev=True)) == batch
    assert decode_events(encode_events(batch, with_prev=False)) == [
        event._replace(prev=None) for event in batch
    ]


@given(st.lists(events(), max_size=6), st.booleans())
def test_both_encoders_write_the_same_bytes(batch: list[WatchEvent], with_prev: bool) -> None:
    changes = [
        Change(
            event.revision,
            event.key,
            None
            if event.type == EVENT_DELETE
            else stored(event.create_revision, event.revision, event.version, event.value),
            None
            if event.prev is None
            else stored(
                event.prev.create_revision, event.prev.mod_revision, event.prev.version,
                event.prev.value,
            ),
        )
        for event in batch
    ]  # fmt: skip
    assert encode_changes(changes, with_prev=with_prev) == encode_events(batch, with_prev=with_prev)


SAMPLE = [
    WatchEvent(EVENT_PUT, b"key", b"value", 9, 2, 3, KeyValue(b"key", b"old", 2, 8, 2)),
    WatchEvent(EVENT_DELETE, NOT_UTF8, b"", 10, 0, 0, None),
    WatchEvent(EVENT_PUT, b"k2", b"", 10, 10, 1, None),
    WatchEvent(EVENT_DELETE, b"k3", b"", 11, 0, 0, KeyValue(b"k3", b"", 1, 1, 1)),
]


def test_a_truncated_events_message_is_refused_unless_cut_between_events() -> None:
    body = encode_events(SAMPLE, with_prev=True)
    boundaries = {1}
    for n in range(1, len(SAMPLE) + 1):
        boundaries.add(len(encode_events(SAMPLE[:n], with_prev=True)))
    assert max(boundaries) == len(body)
    for cut in range(len(body)):
        truncated = body[:cut]
        if cut in boundaries:
            count = next(
                n
                for n in range(len(SAMPLE) + 1)
                if len(encode_events(SAMPLE[:n], with_prev=True)) == cut
            )
            assert decode_events(truncated) == SAMPLE[:count]
        else:
            with pytest.raises(ValueError):
                decode_events(truncated)


_HEADER = struct.Struct("<BBII")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", "not an EVENTS"),
        (bytes((WatchKind.RESYNC,)), "not an EVENTS"),
        (b"\x02" + _HEADER.pack(3, 0, 1, 0) + b"k" + META.pack(0, 1, 0), "type 3"),
        (b"\x02" + _HEADER.pack(0, 0, 1, 0) + b"k" + META.pack(0, 1, 0), "type 0"),
        (b"\x02" + _HEADER.pack(EVENT_PUT, 2, 1, 0) + b"k" + META.pack(0, 1, 0), "type"),
        (b"\x02" + _HEADER.pack(EVENT_PUT, 0, 2**32 - 1, 0) + b"k", "inside an event"),
        (b"\x02" + _HEADER.pack(EVENT_PUT, 0, 1, 2**32 - 1) + b"k" + META.pack(1, 1, 1), "inside"),
        (
            b"\x02" + _HEADER.pack(EVENT_PUT, 1, 1, 0) + b"k" + META.pack(1, 1, 1) + b"\x05",
            "previous value header",
        ),
        (
            b"\x02"
            + _HEADER.pack(EVENT_PUT, 1, 1, 0)
            + b"k"
            + META.pack(1, 1, 1)
            + struct.pack("<I", 10)
            + META.pack(1, 1, 1)
            + b"short",
            "inside a previous value",
        ),
    ],
)
def test_malformed_events_messages_are_refused(body: bytes, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        decode_events(body)


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_value_error(rest: bytes) -> None:
    body = bytes((WatchKind.EVENTS,)) + rest
    try:
        decoded = decode_events(body)
    except ValueError:
        return
    # Whatever decodes encodes back to the same bytes: nothing is read loosely.
    assert encode_events(decoded, with_prev=True) == body


# -- resync chunks ------------------------------------------------------------------------


def test_resync_chunks_round_trip() -> None:
    items = [
        KeyValue(b"a", b"1", 1, 4, 2),
        KeyValue(NOT_UTF8, b"", 3, 3, 1),
        KeyValue(b"z", b"\x00\xff", 7, 9, 3),
    ]
    body = encode_resync(items, done=False)
    assert message_kind(body) == WatchKind.RESYNC
    assert decode_resync(body) == (items, False)
    assert decode_resync(encode_resync(items[:1], done=True)) == (items[:1], True)
    assert decode_resync(encode_resync([], done=True)) == ([], True)


@given(
    st.lists(
        st.builds(KeyValue, keys, values, revisions, revisions, revisions),
        max_size=5,
    ),
    st.booleans(),
)
def test_any_resync_chunk_round_trips(items: list[KeyValue], done: bool) -> None:
    assert decode_resync(encode_resync(items, done=done)) == (items, done)


def test_malformed_resync_chunks_are_refused() -> None:
    for body in (b"", bytes((WatchKind.RESYNC,)), b"\x02\x01", b"\x03\x02"):
        with pytest.raises(ValueError, match="not a RESYNC"):
            decode_resync(body)
    body = encode_resync([KeyValue(b"key", b"value", 1, 2, 3)], done=True)
    for cut in range(2, len(body)):
        if cut == 2:
            assert decode_resync(body[:cut]) == ([], True)
            continue
        with pytest.raises(ValueError):
            decode_resync(body[:cut])


# -- the short kinds ----------------------------------------------------------------------


def test_short_messages_and_their_kinds() -> None:
    for kind in (WatchKind.START, WatchKind.PROGRESS, WatchKind.RESET):
        body = encode_message(kind)
        assert body == bytes((kind,))
        assert message_kind(body) == kind
    end = encode_message(WatchKind.END, "cancelled ✓")
    assert message_kind(end) == WatchKind.END
    assert end[1:].decode() == "cancelled ✓"


def test_unknown_or_empty_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        message_kind(b"")
    for first in (0, 7, 255):
        with pytest.raises(ValueError):
            message_kind(bytes((first,)))
