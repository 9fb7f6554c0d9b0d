"""raftkv.client.watch: the messages of a watch stream, as NDJSON lines and as native
replies, and the state that turns them into events and keeps the resume position."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from raftkv.client.watch import (
    LineSplitter,
    WatchEvent,
    WatchMessage,
    WatchState,
    check_progress_interval,
    check_since,
    decode_native_message,
    parse_json_message,
)
from raftkv.kv.results import KeyValue
from raftkv.wire.errors import RaftkvError
from raftkv.wire.watch_frames import (
    EVENT_DELETE,
    EVENT_PUT,
    WatchKind,
    encode_events,
    encode_message,
    encode_resync,
)
from raftkv.wire.watch_frames import WatchEvent as WireEvent


def line(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def put(key: bytes, value: bytes, revision: int, version: int = 1) -> WatchEvent:
    return WatchEvent("put", revision, key, value, revision - version + 1, revision, version)


def delete(key: bytes, revision: int) -> WatchEvent:
    return WatchEvent("delete", revision, key)


def events(revision: int, *items: WatchEvent) -> WatchMessage:
    return WatchMessage("events", revision, events=items)


def drain(state: WatchState) -> list[tuple[WatchEvent, int | None]]:
    """Every event waiting, each with the caller's revision once it has it."""
    taken = []
    while (event := state.pop()) is not None:
        taken.append((event, state.revision))
    return taken


# -- NDJSON -------------------------------------------------------------------------------


def test_json_messages_of_every_kind() -> None:
    assert parse_json_message(b'{"kind": "start", "revision": 10}\n') == WatchMessage("start", 10)
    assert parse_json_message('{"kind":"progress","revision":12}') == WatchMessage("progress", 12)
    message = parse_json_message(
        line(
            {
                "kind": "events",
                "revision": 15,
                "events": [
                    {
                        "type": "put",
                        "key": "app/a",
                        "value": "1",
                        "revision": 13,
                        "create_revision": 11,
                        "mod_revision": 13,
                        "version": 2,
                        "prev": {
                            "value": "0",
                            "create_revision": 11,
                            "mod_revision": 11,
                            "version": 1,
                        },
                    },
                    {"type": "delete", "key": "app/b", "revision": 14},
                ],
            }
        )
    )
    assert message == WatchMessage(
        "events",
        15,
        events=(
            WatchEvent(
                "put", 13, b"app/a", b"1", 11, 13, 2, prev=KeyValue(b"app/a", b"0", 11, 11, 1)
            ),
            WatchEvent("delete", 14, b"app/b"),
        ),
    )


def test_keys_and_values_that_are_not_utf8_come_in_base64() -> None:
    key, value, old = b"bin/\xff\x00", b"\x80\x81", b"\xfe"
    encoded = {
        "kind": "events",
        "revision": 7,
        "events": [
            {
                "type": "put",
                "key_base64": base64.b64encode(key).decode(),
                "value_base64": base64.b64encode(value).decode(),
                "revision": 7,
                "create_revision": 3,
                "mod_revision": 7,
                "version": 4,
                "prev": {
                    "value_base64": base64.b64encode(old).decode(),
                    "create_revision": 3,
                    "mod_revision": 5,
                    "version": 3,
                },
            }
        ],
    }
    (event,) = parse_json_message(line(encoded)).events
    assert (event.key, event.value) == (key, value)
    assert event.prev == KeyValue(key, old, 3, 5, 3)

    resync = parse_json_message(
        line(
            {
                "kind": "resync",
                "revision": 9,
                "done": False,
                "items": [
                    {
                        "key_base64": base64.b64encode(key).decode(),
                        "value": "text",
                        "create_revision": 3,
                        "mod_revision": 7,
                        "version": 4,
                    }
                ],
            }
        )
    )
    assert resync == WatchMessage("resync", 9, items=(KeyValue(key, b"text", 3, 7, 4),), done=False)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"kind": "start"}', "'revision'"),
        (b'{"kind": "start", "revision": -1}', "'revision'"),
        (b'{"kind": "start", "revision": true}', "'revision'"),
        (b'{"kind": "gossip", "revision": 1}', "unknown kind"),
        (b'{"kind": "events", "revision": 1, "events": {}}', "'events' is not a list"),
        (b'{"kind": "events", "revision": 1, "events": [{"type": "put", "revision": 1}]}', "key"),
        (
            b'{"kind": "events", "revision": 1, "events": [{"type": "move", "key": "a", '
            b'"revision": 1}]}',
            "unknown event type",
        ),
        (
            b'{"kind": "events", "revision": 1, "events": [{"type": "delete", '
            b'"key_base64": "%%", "revision": 1}]}',
            "not base64",
        ),
        (b'{"kind": "resync", "revision": 1, "items": [], "done": 1}', "'done'"),
    ],
)
def test_malformed_json_messages_are_errors(text: bytes, complaint: str) -> None:
    with pytest.raises(RaftkvError, match="malformed watch message") as raised:
        parse_json_message(text)
    assert complaint in raised.value.message


def test_lines_count_once_their_newline_has_come() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b'{"kind": "st') == []
    assert splitter.feed(b'art"}\n{"a"') == [b'{"kind": "start"}']
    assert splitter.feed(b": 1}\n\n{") == [b'{"a": 1}', b""]
    assert splitter.feed(b"}") == []  # a stream that ends here never parses "{}"


# -- native replies -----------------------------------------------------------------------


def test_native_messages_of_every_kind() -> None:
    prev = KeyValue(b"k", b"old", 2, 4, 2)
    body = encode_events(
        [
            WireEvent(EVENT_PUT, b"k", b"new", 8, 2, 3, prev),
            WireEvent(EVENT_DELETE, b"gone", b"", 8, 0, 0, None),
        ],
        with_prev=True,
    )
    assert decode_native_message(9, body) == WatchMessage(
        "events",
        9,
        events=(
            WatchEvent("put", 8, b"k", b"new", 2, 8, 3, prev=prev),
            WatchEvent("delete", 8, b"gone"),
        ),
    )
    items = [KeyValue(b"a", b"1", 1, 1, 1), KeyValue(b"b\xff", b"\x00", 2, 3, 2)]
    assert decode_native_message(5, encode_resync(items, done=True)) == WatchMessage(
        "resync", 5, items=tuple(items), done=True
    )
    assert decode_native_message(3, encode_message(WatchKind.START)) == WatchMessage("start", 3)
    assert decode_native_message(4, encode_message(WatchKind.PROGRESS)) == WatchMessage(
        "progress", 4
    )
    assert decode_native_message(4, encode_message(WatchKind.RESET)).kind == "reset"
    end = decode_native_message(6, encode_message(WatchKind.END, "cancelled"))
    assert (end.kind, end.reason) == ("end", "cancelled")


@pytest.mark.parametrize("body", [b"", b"\x63", b"\x02\x01\x00", b"\x03\x07"])
def test_malformed_native_messages_are_errors(body: bytes) -> None:
    with pytest.raises(RaftkvError, match="malformed watch message"):
        decode_native_message(1, body)


# -- the state ----------------------------------------------------------------------------


def test_a_watch_from_now_starts_where_the_server_says() -> None:
    state = WatchState(None, with_progress=False)
    assert (state.position, state.revision, state.started) == (None, None, False)
    state.take(WatchMessage("start", 40))
    assert (state.position, state.revision, state.started) == (40, 40, True)
    assert state.pop() is None


def test_the_callers_revision_moves_as_events_are_handed_out() -> None:
    state = WatchState(10, with_progress=False)
    state.take(WatchMessage("start", 10))
    a, b, c = put(b"a", b"1", 11), delete(b"b", 11), put(b"c", b"2", 13)
    state.take(events(14, a, b, c))
    # Received in full: a reconnection resumes after 14 ...
    assert state.position == 14
    # ... while the caller, who has nothing yet, would resume after 10.
    assert state.revision == 10
    # Both changes of revision 11 handed out: complete through 11; the last one: 14.
    assert drain(state) == [(a, 10), (b, 11), (c, 14)]


def test_events_at_or_below_the_position_are_dropped() -> None:
    state = WatchState(None, with_progress=False)
    state.take(WatchMessage("start", 20))
    old, now, later = put(b"k", b"old", 20), put(b"k", b"now", 21, 2), put(b"k", b"x", 23, 3)
    state.take(events(21, old, now))
    assert drain(state) == [(now, 21)]
    # The same message again, and one reaching back before the position.
    state.take(events(21, old, now))
    state.take(events(23, now, later))
    assert drain(state) == [(later, 23)]
    # A resumed stream that starts below the position does not move it back.
    state.connection_lost()
    state.take(WatchMessage("start", 19))
    assert (state.position, state.revision) == (23, 23)
    state.take(events(23, old, now, later))
    assert drain(state) == []


def test_resync_chunks_become_one_event_once_the_last_has_come() -> None:
    state = WatchState(5, with_progress=False)
    state.take(WatchMessage("start", 5))
    first, second = KeyValue(b"a", b"1", 30, 31, 2), KeyValue(b"b", b"2", 40, 40, 1)
    state.take(WatchMessage("resync", 50, items=(first,), done=False))
    assert (state.position, state.pop()) == (5, None)  # not yet: resume after 5
    state.take(WatchMessage("resync", 50, items=(second,), done=True))
    assert state.position == 50
    assert drain(state) == [(WatchEvent("resync", 50, items=(first, second)), 50)]


def test_a_resync_cut_by_a_lost_connection_is_taken_whole_from_the_next() -> None:
    state = WatchState(5, with_progress=False)
    state.take(WatchMessage("start", 5))
    first, second = KeyValue(b"a", b"1", 1, 1, 1), KeyValue(b"b", b"2", 2, 2, 1)
    state.take(WatchMessage("resync", 50, items=(first,), done=False))
    state.connection_lost()
    assert state.position == 5
    # The next stream sends its own image, maybe at another revision.
    state.take(WatchMessage("start", 5))
    state.take(WatchMessage("resync", 52, items=(first,), done=False))
    state.take(WatchMessage("resync", 52, items=(second,), done=True))
    assert drain(state) == [(WatchEvent("resync", 52, items=(first, second)), 52)]


def test_an_image_older_than_the_position_is_dropped() -> None:
    state = WatchState(60, with_progress=False)
    state.take(WatchMessage("start", 60))
    state.take(WatchMessage("resync", 50, items=(KeyValue(b"a", b"1", 1, 1, 1),), done=True))
    assert (state.pop(), state.position) == (None, 60)
    state.take(WatchMessage("resync", 60, items=(), done=True))
    assert drain(state) == [(WatchEvent("resync", 60), 60)]


def test_progress_moves_the_position_and_is_an_event_only_when_asked() -> None:
    quiet = WatchState(None, with_progress=False)
    quiet.take(WatchMessage("start", 1))
    quiet.take(WatchMessage("progress", 9))
    assert (quiet.pop(), quiet.position, quiet.revision) == (None, 9, 9)

    chatty = WatchState(None, with_progress=True)
    chatty.take(WatchMessage("start", 1))
    chatty.take(WatchMessage("progress", 9))
    chatty.take(WatchMessage("progress", 8))  # stale: dropped
    assert drain(chatty) == [(WatchEvent("progress", 9), 9)]


def test_a_position_move_behind_an_event_is_the_callers_with_that_event() -> None:
    state = WatchState(None, with_progress=False)
    state.take(WatchMessage("start", 1))
    event = put(b"k", b"v", 2)
    state.take(events(2, event))
    state.take(WatchMessage("progress", 7))
    assert state.revision == 1
    assert state.pop() == event
    assert state.revision == 7


def test_protocol_errors() -> None:
    state = WatchState(None, with_progress=False)
    with pytest.raises(RaftkvError, match="before start"):
        state.take(WatchMessage("progress", 3))
    state.take(WatchMessage("start", 3))
    with pytest.raises(RaftkvError, match="unexpected reset"):
        state.take(WatchMessage("reset", 4))


def test_arguments() -> None:
    assert check_since(None) is None
    assert check_since(0) == 0
    for bad in (-1, 2**63, True, 1.5):
        with pytest.raises(ValueError, match="since"):
            check_since(bad)  # type: ignore[arg-type]
    assert check_progress_interval(None) == 5.0
    assert check_progress_interval(1) == 1.0
    for bad_interval in (0, 0.05, 3601, True, "5"):
        with pytest.raises(ValueError, match="progress_interval"):
            check_progress_interval(bad_interval)  # type: ignore[arg-type]
