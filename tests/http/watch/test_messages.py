"""The messages of an HTTP watch: their JSON, NDJSON lines and SSE events (with an id
wherever a client may resume)."""

from __future__ import annotations

import base64

import orjson
import pytest

from raftkv.http.watch.messages import (
    NDJSON,
    RESYNC_CHUNK_ITEMS,
    SSE,
    MessageFormat,
    event_json,
    events_message,
    message,
    resync_messages,
)
from raftkv.kv.results import KeyValue
from raftkv.wire.watch_frames import EVENT_DELETE, EVENT_PUT, WatchEvent

BINARY = b"\xff\x00\xfe"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sse_fields(frame: bytes) -> list[tuple[str, str]]:
    assert frame.endswith(b"\n\n")
    lines = frame[:-2].decode().split("\n")
    return [(name, value) for name, _, value in (line.partition(": ") for line in lines)]


# -- framing ------------------------------------------------------------------------------


def test_ndjson_is_one_json_document_a_line() -> None:
    frame = NDJSON.frame({"kind": "progress", "revision": 7})
    assert frame == b'{"kind":"progress","revision":7}\n'
    assert NDJSON.frame({"kind": "resync", "revision": 7}, resume=False).endswith(b"}\n")
    assert NDJSON.media_type == "application/x-ndjson"
    assert not NDJSON.sse


def test_sse_names_the_event_by_its_kind_and_ids_it_by_its_revision() -> None:
    frame = SSE.frame({"kind": "events", "revision": 12, "events": []})
    assert sse_fields(frame) == [
        ("event", "events"),
        ("id", "12"),
        ("data", '{"kind":"events","revision":12,"events":[]}'),
    ]
    assert sse_fields(SSE.frame({"kind": "resync", "revision": 3}, resume=False)) == [
        ("event", "resync"),
        ("data", '{"kind":"resync","revision":3}'),
    ]
    assert SSE.media_type == "text/event-stream"
    assert SSE.sse


def test_start_and_progress_messages() -> None:
    assert orjson.loads(message("start", 0, NDJSON)) == {"kind": "start", "revision": 0}
    assert sse_fields(message("progress", 2**63 - 1, SSE))[:2] == [
        ("event", "progress"),
        ("id", str(2**63 - 1)),
    ]


# -- events -------------------------------------------------------------------------------


def test_a_put_event() -> None:
    event = WatchEvent(EVENT_PUT, b"k", b"v", 9, 4, 3, KeyValue(b"k", b"old", 4, 8, 2))
    assert event_json(event, with_prev=False) == {
        "type": "put",
        "key": "k",
        "value": "v",
        "revision": 9,
        "create_revision": 4,
        "mod_revision": 9,
        "version": 3,
    }
    assert event_json(event, with_prev=True)["prev"] == {
        "value": "old",
        "create_revision": 4,
        "mod_revision": 8,
        "version": 2,
    }


def test_a_put_that_created_its_key_has_no_prev() -> None:
    event = WatchEvent(EVENT_PUT, b"k", b"", 5, 5, 1, None)
    doc = event_json(event, with_prev=True)
    assert "prev" not in doc
    assert doc["value"] == ""


def test_a_delete_event() -> None:
    event = WatchEvent(EVENT_DELETE, b"k", b"", 11, 0, 0, KeyValue(b"k", BINARY, 1, 9, 4))
    assert event_json(event, with_prev=False) == {"type": "delete", "key": "k", "revision": 11}
    assert event_json(event, with_prev=True) == {
        "type": "delete",
        "key": "k",
        "revision": 11,
        "prev": {
            "value_base64": b64(BINARY),
            "create_revision": 1,
            "mod_revision": 9,
            "version": 4,
        },
    }


def test_bytes_that_are_not_utf8_are_base64() -> None:
    event = WatchEvent(EVENT_PUT, BINARY, BINARY + b"v", 2, 2, 1, None)
    doc = event_json(event, with_prev=True)
    assert doc["key_base64"] == b64(BINARY)
    assert doc["value_base64"] == b64(BINARY + b"v")
    assert "key" not in doc
    assert "value" not in doc
    assert event_json(WatchEvent(EVENT_DELETE, BINARY, b"", 3, 0, 0, None), with_prev=True) == {
        "type": "delete",
        "key_base64": b64(BINARY),
        "revision": 3,
    }


@pytest.mark.parametrize("form", [NDJSON, SSE], ids=["ndjson", "sse"])
def test_an_events_message(form: MessageFormat) -> None:
    events = [
        WatchEvent(EVENT_PUT, b"a", b"1", 4, 4, 1, None),
        WatchEvent(EVENT_DELETE, b"b", b"", 4, 0, 0, KeyValue(b"b", b"2", 1, 1, 1)),
    ]
    frame = events_message(events, 6, with_prev=True, form=form)
    data = sse_fields(frame)[-1][1].encode() if form.sse else frame
    assert orjson.loads(data) == {
        "kind": "events",
        "revision": 6,
        "events": [event_json(e, with_prev=True) for e in events],
    }
    if form.sse:
        assert sse_fields(frame)[:2] == [("event", "events"), ("id", "6")]


# -- resyncs ------------------------------------------------------------------------------


def items(count: int) -> list[KeyValue]:
    return [KeyValue(b"k%05d" % i, b"v", i + 1, i + 1, 1) for i in range(count)]


def documents(frames: list[bytes], form: MessageFormat) -> list[dict[str, object]]:
    if form.sse:
        return [orjson.loads(sse_fields(f)[-1][1]) for f in frames]
    return [orjson.loads(f) for f in frames]


@pytest.mark.parametrize("form", [NDJSON, SSE], ids=["ndjson", "sse"])
def test_an_empty_image_is_one_final_message(form: MessageFormat) -> None:
    (frame,) = resync_messages([], 8, form)
    assert documents([frame], form) == [
        {"kind": "resync", "revision": 8, "items": [], "done": True}
    ]
    if form.sse:
        assert ("id", "8") in sse_fields(frame)


@pytest.mark.parametrize(
    ("count", "sizes"),
    [
        (1, [1]),
        (RESYNC_CHUNK_ITEMS, [RESYNC_CHUNK_ITEMS]),
        (RESYNC_CHUNK_ITEMS + 1, [RESYNC_CHUNK_ITEMS, 1]),
        (2 * RESYNC_CHUNK_ITEMS, [RESYNC_CHUNK_ITEMS, RESYNC_CHUNK_ITEMS]),
    ],
)
def test_an_image_is_split_and_only_its_last_message_is_done(count: int, sizes: list[int]) -> None:
    image = items(count)
    for form in (NDJSON, SSE):
        frames = resync_messages(image, 30, form)
        docs = documents(frames, form)
        assert [len(d["items"]) for d in docs] == sizes  # type: ignore[arg-type]
        last_only = [False] * (len(sizes) - 1) + [True]
        assert [d["done"] for d in docs] == last_only
        assert {d["revision"] for d in docs} == {30}
        assert [i for d in docs for i in d["items"]] == [  # type: ignore[attr-defined]
            {"key": kv.key.decode(), "value": "v", "create_revision": kv.create_revision,
             "mod_revision": kv.mod_revision, "version": 1}
            for kv in image
        ]  # fmt: skip
        if form.sse:
            # Resuming from the middle of an image would lose the rest of it.
            assert [("id", "30") in sse_fields(f) for f in frames] == last_only
            assert all(sse_fields(f)[0] == ("event", "resync") for f in frames)


def test_image_items_that_are_not_utf8_are_base64() -> None:
    (frame,) = resync_messages([KeyValue(BINARY, BINARY, 1, 2, 3)], 2, NDJSON)
    assert orjson.loads(frame)["items"] == [
        {
            "key_base64": b64(BINARY),
            "value_base64": b64(BINARY),
            "create_revision": 1,
            "mod_revision": 2,
            "version": 3,
        }
    ]
