"""Watches as every client sees them: the events a watch yields, and the I/O-free logic
that turns the server's messages into those events and keeps the position to resume from.

A watch stream is a sequence of *messages* (docs/api.md, "Watch"): ``start``, then
``events``, ``resync`` chunks and ``progress``, each carrying the revision the stream is
complete through once the message is taken in. The HTTP clients read them as NDJSON
lines (``parse_json_message``), the native clients as ClientReply bodies
(``decode_native_message``); both feed them to a ``WatchState``, which

* advances the resume position only on a message received in full (for a resync, only
  on its last chunk), so that a reconnection with ``since=`` that position neither
  misses nor repeats a change;
* gathers the chunks of a resync and hands them out as one ``resync`` event;
* drops events at or below the position, should a server ever repeat them;
* queues the events for the caller and tracks ``revision``, the position through which
  the caller has been handed every change (it trails the received position while
  events wait in the queue).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from raftkv.kv.results import KeyValue
from raftkv.wire.errors import RaftkvError
from raftkv.wire.protocol import MAX_REVISION
from raftkv.wire.watch_frames import (
    EVENT_PUT,
    WatchKind,
    decode_events,
    decode_resync,
    message_kind,
)
from raftkv.wire.watch_frames import WatchEvent as WireEvent

__all__ = [
    "DEFAULT_PROGRESS_INTERVAL",
    "SILENCE_INTERVALS",
    "KeyValue",
    "LineSplitter",
    "MessageKind",
    "WatchEvent",
    "WatchEventType",
    "WatchMessage",
    "WatchState",
    "check_progress_interval",
    "check_since",
    "decode_native_message",
    "parse_json_message",
]

DEFAULT_PROGRESS_INTERVAL = 5.0
"""Seconds between the progress messages a client asks an idle stream for."""
SILENCE_INTERVALS = 3
"""A stream silent for this many progress intervals is presumed dead and replaced."""
MIN_PROGRESS_INTERVAL = 0.1
MAX_PROGRESS_INTERVAL = 3600.0
MAX_LINE_BYTES = 256 * 1024 * 1024
"""The longest NDJSON line a client takes: far above any message a node sends (a resync
chunk holds at most 1000 keys), and a bound on what a broken peer can make it buffer."""

WatchEventType = Literal["put", "delete", "resync", "progress"]
MessageKind = Literal["start", "events", "resync", "progress", "reset", "end"]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One thing a watch reports.

    ``put``: ``key`` was written at ``revision`` (== ``mod_revision``), with ``value``,
    ``create_revision`` and ``version`` as a read would return them. ``delete``: ``key``
    was deleted at ``revision`` (value, create_revision, mod_revision and version are
    empty). With ``prev=True``, ``prev`` is the key's state before the change (None for
    a put that created the key). ``resync``: the watch could not be continued change by
    change; ``items`` is the whole range as it is at ``revision``: replace what you know
    of the range with it. ``progress`` (only with ``with_progress=True``): nothing in the
    range changed through ``revision``.
    """

    type: WatchEventType
    revision: int
    key: bytes = b""
    value: bytes = b""
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    prev: KeyValue | None = None
    items: tuple[KeyValue, ...] = ()


@dataclass(frozen=True, slots=True)
class WatchMessage:
    """One message of a watch stream, whichever transport it came by."""

    kind: MessageKind
    revision: int
    events: tuple[WatchEvent, ...] = ()
    items: tuple[KeyValue, ...] = ()
    done: bool = True
    """resync: whether this chunk is the last of its image."""
    reason: str = ""
    """end (native only): why the node ended the watch."""


# -- arguments ----------------------------------------------------------------------------


def check_since(since: int | None) -> int | None:
    if since is None:
        return None
    if isinstance(since, bool) or not isinstance(since, int) or not 0 <= since <= MAX_REVISION:
        raise ValueError(f"since must be an int in [0, 2**63), got {since!r}")
    return since


def check_progress_interval(interval: float | None) -> float:
    """The progress interval to ask for, in seconds (the default when None)."""
    if interval is None:
        return DEFAULT_PROGRESS_INTERVAL
    if (
        isinstance(interval, bool)
        or not isinstance(interval, int | float)
        or not MIN_PROGRESS_INTERVAL <= interval <= MAX_PROGRESS_INTERVAL
    ):
        raise ValueError(
            f"progress_interval must be {MIN_PROGRESS_INTERVAL:g} to "
            f"{MAX_PROGRESS_INTERVAL:g} seconds, got {interval!r}"
        )
    return float(interval)


# -- NDJSON (the HTTP stream) -------------------------------------------------------------


class LineSplitter:
    """The complete lines of a byte stream, fed in arbitrary chunks.

    A line counts only once its newline has arrived: a connection that breaks in the
    middle of a message leaves its start here, never to be parsed as a message.
    """

    __slots__ = ("_partial",)

    def __init__(self) -> None:
        self._partial = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        if b"\n" not in chunk:
            self._partial += chunk
            if len(self._partial) > MAX_LINE_BYTES:
                raise RaftkvError(f"a watch message longer than {MAX_LINE_BYTES} bytes")
            return []
        lines = (bytes(self._partial) + chunk).split(b"\n")
        self._partial = bytearray(lines.pop())
        return lines


def _malformed(what: str) -> RaftkvError:
    return RaftkvError(f"malformed watch message: {what}")


def _revision_field(document: dict[str, Any], name: str) -> int:
    value = document.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _malformed(f"{name!r} is not a revision: {value!r}")
    return value


def _bytes_field(document: dict[str, Any], name: str) -> bytes:
    """``name`` as text, or ``name_base64`` for bytes that are not UTF-8 (as the API)."""
    text = document.get(name)
    if isinstance(text, str):
        return text.encode("utf-8")
    encoded = document.get(f"{name}_base64")
    if isinstance(encoded, str):
        try:
            return base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise _malformed(f"{name}_base64 is not base64") from None
    raise _malformed(f"no {name!r} field")


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _malformed(f"{what} is not an object")
    return value


def _list_field(document: dict[str, Any], name: str) -> list[dict[str, Any]]:
    value = document.get(name)
    if not isinstance(value, list):
        raise _malformed(f"{name!r} is not a list")
    return [_object(item, f"an item of {name!r}") for item in value]


def _kv_json(document: dict[str, Any], key: bytes | None = None) -> KeyValue:
    """A kv of a resync (``key`` None), or the ``prev`` of an event on ``key``."""
    return KeyValue(
        _bytes_field(document, "key") if key is None else key,
        _bytes_field(document, "value"),
        _revision_field(document, "create_revision"),
        _revision_field(document, "mod_revision"),
        _revision_field(document, "version"),
    )


def _event_json(document: dict[str, Any]) -> WatchEvent:
    kind = document.get("type")
    key = _bytes_field(document, "key")
    revision = _revision_field(document, "revision")
    prev_doc = document.get("prev")
    prev = None if prev_doc is None else _kv_json(_object(prev_doc, "'prev'"), key)
    if kind == "delete":
        return WatchEvent("delete", revision, key, prev=prev)
    if kind != "put":
        raise _malformed(f"unknown event type {kind!r}")
    return WatchEvent(
        "put",
        revision,
        key,
        _bytes_field(document, "value"),
        _revision_field(document, "create_revision"),
        revision,
        _revision_field(document, "version"),
        prev,
    )


def parse_json_message(line: bytes | str) -> WatchMessage:
    """One NDJSON line of an HTTP watch stream. Raises RaftkvError when it is not one."""
    try:
        document = json.loads(line)
    except ValueError as exc:
        raise _malformed(f"not JSON ({exc})") from None
    document = _object(document, "the message")
    kind = document.get("kind")
    revision = _revision_field(document, "revision")
    if kind in ("start", "progress"):
        return WatchMessage(kind, revision)
    if kind == "events":
        events = tuple(_event_json(item) for item in _list_field(document, "events"))
        return WatchMessage("events", revision, events=events)
    if kind == "resync":
        items = tuple(_kv_json(item) for item in _list_field(document, "items"))
        done = document.get("done")
        if not isinstance(done, bool):
            raise _malformed("'done' is not a boolean")
        return WatchMessage("resync", revision, items=items, done=done)
    raise _malformed(f"unknown kind {kind!r}")


# -- native replies -----------------------------------------------------------------------


def _event_native(event: WireEvent) -> WatchEvent:
    if event.type == EVENT_PUT:
        return WatchEvent(
            "put",
            event.revision,
            event.key,
            event.value,
            event.create_revision,
            event.revision,
            event.version,
            event.prev,
        )
    return WatchEvent("delete", event.revision, event.key, prev=event.prev)


def decode_native_message(revision: int, body: bytes) -> WatchMessage:
    """The body of one OK reply of a native watch stream, whose ``revision`` the reply
    carries. Raises RaftkvError when it is not a watch message."""
    if revision < 0:
        raise _malformed(f"negative revision {revision}")
    try:
        kind = message_kind(body)
        if kind == WatchKind.EVENTS:
            events = tuple(_event_native(event) for event in decode_events(body))
            return WatchMessage("events", revision, events=events)
        if kind == WatchKind.RESYNC:
            items, done = decode_resync(body)
            return WatchMessage("resync", revision, items=tuple(items), done=done)
    except ValueError as exc:
        raise _malformed(str(exc)) from None
    if kind == WatchKind.START:
        return WatchMessage("start", revision)
    if kind == WatchKind.PROGRESS:
        return WatchMessage("progress", revision)
    if kind == WatchKind.RESET:
        return WatchMessage("reset", revision)
    return WatchMessage("end", revision, reason=body[1:].decode("utf-8", "replace"))


# -- the state of one watch ---------------------------------------------------------------


class WatchState:
    """Where one watch is, across all the connections it takes.

    ``position``: the revision through which every message has been received, None
    until the first ``start`` of a watch made without ``since``. A reconnection asks
    for the changes after it. ``revision``: the same for what the caller has been
    handed (``pop``); it is what the caller stores to resume a watch later.
    """

    def __init__(self, since: int | None, *, with_progress: bool) -> None:
        self._position = since
        self._revision = since
        self._with_progress = with_progress
        self._started = False
        # The chunks of a resync whose last chunk has not come yet, and its revision.
        self._image: list[KeyValue] = []
        self._image_revision: int | None = None
        # Events for the caller, each with the position it completes once handed out; a
        # None event only moves the position, and is never first (``_queue``, ``pop``).
        self._ready: deque[tuple[WatchEvent | None, int]] = deque()

    @property
    def position(self) -> int | None:
        return self._position

    @property
    def revision(self) -> int | None:
        return self._revision

    @property
    def started(self) -> bool:
        """Whether a ``start`` message has come (the position is known)."""
        return self._started

    def connection_lost(self) -> None:
        """The stream broke: a resync it had begun will be sent again, whole."""
        self._image = []
        self._image_revision = None

    def pop(self) -> WatchEvent | None:
        """The next event for the caller, None when none is waiting."""
        ready = self._ready
        if not ready:
            return None
        event, self._revision = ready.popleft()
        # Moves of the position right behind it are the caller's as soon as it has it.
        while ready and ready[0][0] is None:
            self._revision = ready.popleft()[1]
        return event

    def take(self, message: WatchMessage) -> None:
        """Take in one message received in full."""
        if message.kind == "start":
            self._take_start(message.revision)
            return
        position = self._position
        if position is None:
            raise RaftkvError(f"watch protocol error: a {message.kind} message before start")
        if message.kind == "events":
            self._take_events(position, message.events, message.revision)
        elif message.kind == "resync":
            self._take_resync(position, message)
        elif message.kind == "progress":
            self._take_progress(position, message.revision)
        else:
            # RESET answers only a watch asked with NO_IMAGE, which no client asks for;
            # END is the transport's business and never reaches here.
            raise RaftkvError(f"watch protocol error: unexpected {message.kind} message")

    def _queue(self, event: WatchEvent | None, position: int) -> None:
        if event is None and not self._ready:
            self._revision = position  # nothing waits before it: the caller has it all
        else:
            self._ready.append((event, position))

    def _advance(self, event: WatchEvent | None, position: int) -> None:
        self._position = position
        self._queue(event, position)

    def _take_start(self, revision: int) -> None:
        self._started = True
        self.connection_lost()
        # A resumed stream starts where it was asked to; never move back.
        position = self._position
        self._advance(None, revision if position is None else max(position, revision))

    def _take_events(self, position: int, events: Sequence[WatchEvent], revision: int) -> None:
        # A server never repeats an event; should one, it is dropped rather than shown twice.
        fresh = [event for event in events if event.revision > position]
        last = max(position, revision)
        for index, event in enumerate(fresh):
            following = fresh[index + 1].revision if index + 1 < len(fresh) else None
            if following is None:
                position = last
            elif following > event.revision:
                # Every change through this revision is handed out once this one is.
                position = event.revision
            self._queue(event, position)
        if not fresh:
            self._queue(None, last)
        self._position = last

    def _take_resync(self, position: int, message: WatchMessage) -> None:
        if self._image_revision != message.revision:
            # The first chunk, or a new image replacing an unfinished one.
            self._image = []
            self._image_revision = message.revision
        self._image.extend(message.items)
        if not message.done:
            return
        items = tuple(self._image)
        self.connection_lost()
        if message.revision < position:
            return  # an image older than what the caller already has
        self._advance(WatchEvent("resync", message.revision, items=items), message.revision)

    def _take_progress(self, position: int, revision: int) -> None:
        if revision < position:
            return
        event = WatchEvent("progress", revision) if self._with_progress else None
        self._advance(event, revision)
