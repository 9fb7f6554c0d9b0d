"""The watch workload's parsing: NDJSON messages as docs/api.md shows them, only whole
lines taken, and the HTTP client's events recorded as the messages they stand for."""

from __future__ import annotations

import base64
import json

import pytest

from raftkv.client.watch import WatchEvent
from raftkv.kv.results import KeyValue
from raftkv.testing.watch_check import Change, Events, Item, Progress, Resync, Start
from raftkv.testing.watch_workload import complete_lines, parse_message, record_client_event


def line(document: dict[str, object]) -> bytes:
    return json.dumps(document).encode()


def test_each_message_kind_parses() -> None:
    assert parse_message(line({"kind": "start", "revision": 7})) == Start(7)
    assert parse_message(line({"kind": "progress", "revision": 9})) == Progress(9)
    events = parse_message(
        line(
            {
                "kind": "events",
                "revision": 12,
                "events": [
                    {
                        "type": "put",
                        "key": "w/a/1",
                        "value": "v",
                        "revision": 10,
                        "create_revision": 4,
                        "mod_revision": 10,
                        "version": 3,
                        "prev": {
                            "value": "u",
                            "create_revision": 4,
                            "mod_revision": 8,
                            "version": 2,
                        },
                    },
                    {"type": "delete", "key": "w/a/2", "revision": 11},
                ],
            }
        )
    )
    assert events == Events(
        12,
        (
            Change(10, "w/a/1", "put", "v", 4, 3, Item("w/a/1", "u", 4, 8, 2)),
            Change(11, "w/a/2", "delete"),
        ),
    )
    resync = parse_message(
        line(
            {
                "kind": "resync",
                "revision": 20,
                "done": False,
                "items": [
                    {
                        "key": "k",
                        "value": "x",
                        "create_revision": 1,
                        "mod_revision": 2,
                        "version": 2,
                    }
                ],
            }
        )
    )
    assert resync == Resync(20, (Item("k", "x", 1, 2, 2),), done=False)


def test_bytes_that_are_not_text_stay_distinct() -> None:
    raw = b"\xff\xfe"
    message = parse_message(
        line(
            {
                "kind": "events",
                "revision": 3,
                "events": [
                    {
                        "type": "put",
                        "key": "k",
                        "value_base64": base64.b64encode(raw).decode(),
                        "revision": 3,
                        "create_revision": 3,
                        "mod_revision": 3,
                        "version": 1,
                    }
                ],
            }
        )
    )
    assert isinstance(message, Events)
    assert message.changes[0].value.startswith("base64:")


@pytest.mark.parametrize(
    "text",
    [b"not json", b"[1, 2]", b'{"kind": "nope", "revision": 1}', b'{"kind": "start"}'],
)
def test_anything_else_is_refused(text: bytes) -> None:
    with pytest.raises((ValueError, KeyError)):
        parse_message(text)


def test_only_whole_lines_are_taken() -> None:
    chunks = [b'{"a"', b': 1}\n{"b": 2}\n{"c"', b': 3}\n{"cut']
    assert list(complete_lines(iter(chunks))) == [b'{"a": 1}', b'{"b": 2}', b'{"c": 3}']


def test_client_events_become_messages() -> None:
    messages: list[Start | Events | Resync | Progress] = [Start(5)]
    record_client_event(messages, WatchEvent("put", 6, b"w/a/1", b"v", 6, 6, 1))
    record_client_event(messages, WatchEvent("delete", 8, b"w/a/1"))
    record_client_event(messages, WatchEvent("delete", 8, b"w/a/2"))
    record_client_event(messages, WatchEvent("progress", 9))
    record_client_event(
        messages, WatchEvent("resync", 15, items=(KeyValue(b"w/a/3", b"z", 12, 14, 2),))
    )
    assert messages == [
        Start(5),
        Events(6, (Change(6, "w/a/1", "put", "v", 6, 1),)),
        Events(8, (Change(8, "w/a/1", "delete"), Change(8, "w/a/2", "delete"))),
        Progress(9),
        Resync(15, (Item("w/a/3", "z", 12, 14, 2),)),
    ]
