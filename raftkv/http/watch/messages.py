"""The messages of an HTTP watch, as NDJSON lines or Server-Sent Events (docs/api.md).

Every message is a JSON object with a ``kind`` and the ``revision`` the stream is
complete through once it is taken in. In SSE the kind is the event name and that
revision the event id, except on a resync chunk that is not the last, so that a
reconnecting ``EventSource`` never resumes from the middle of an image.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from raftkv.http.kv_json import kv_json, text_or_base64
from raftkv.kv.results import KeyValue
from raftkv.wire.watch_frames import EVENT_PUT, WatchEvent

__all__ = ["MessageFormat", "event_json", "events_message", "message", "resync_messages"]

RESYNC_CHUNK_ITEMS = 1000
"""Key-values per resync message: bounds one line, and the work between two sends."""


class MessageFormat:
    """NDJSON or SSE framing of one JSON document."""

    __slots__ = ("media_type", "sse")

    def __init__(self, *, sse: bool) -> None:
        self.sse = sse
        self.media_type = "text/event-stream" if sse else "application/x-ndjson"

    def frame(self, document: dict[str, Any], *, resume: bool = True) -> bytes:
        data: bytes = orjson.dumps(document)
        if not self.sse:
            return data + b"\n"
        kind: str = document["kind"]
        head = b"event: " + kind.encode() + b"\n"
        if resume:
            head += b"id: " + str(document["revision"]).encode() + b"\n"
        return head + b"data: " + data + b"\n\n"


NDJSON = MessageFormat(sse=False)
SSE = MessageFormat(sse=True)


def event_json(event: WatchEvent, *, with_prev: bool) -> dict[str, Any]:
    if event.type == EVENT_PUT:
        doc: dict[str, Any] = {"type": "put", **text_or_base64("key", event.key)}
        doc.update(text_or_base64("value", event.value))
        doc["revision"] = event.revision
        doc["create_revision"] = event.create_revision
        doc["mod_revision"] = event.revision
        doc["version"] = event.version
    else:
        doc = {"type": "delete", **text_or_base64("key", event.key), "revision": event.revision}
    prev = event.prev
    if with_prev and prev is not None:
        prev_doc: dict[str, Any] = text_or_base64("value", prev.value)
        prev_doc["create_revision"] = prev.create_revision
        prev_doc["mod_revision"] = prev.mod_revision
        prev_doc["version"] = prev.version
        doc["prev"] = prev_doc
    return doc


def events_message(
    events: Iterable[WatchEvent], revision: int, *, with_prev: bool, form: MessageFormat
) -> bytes:
    return form.frame(
        {
            "kind": "events",
            "revision": revision,
            "events": [event_json(event, with_prev=with_prev) for event in events],
        }
    )


def message(kind: str, revision: int, form: MessageFormat) -> bytes:
    """A start or progress message."""
    return form.frame({"kind": kind, "revision": revision})


def resync_messages(items: Sequence[KeyValue], revision: int, form: MessageFormat) -> list[bytes]:
    """The image of a range at ``revision``, in messages of at most RESYNC_CHUNK_ITEMS."""
    chunks = [
        items[i : i + RESYNC_CHUNK_ITEMS] for i in range(0, len(items), RESYNC_CHUNK_ITEMS)
    ] or [items]
    last = len(chunks) - 1
    return [
        form.frame(
            {
                "kind": "resync",
                "revision": revision,
                "items": [kv_json(kv) for kv in chunk],
                "done": i == last,
            },
            resume=i == last,
        )
        for i, chunk in enumerate(chunks)
    ]
