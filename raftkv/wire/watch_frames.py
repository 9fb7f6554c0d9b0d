"""The bodies of the replies a WATCH request streams back, shared by the Raft process that
writes them, the HTTP worker and the native client that read them.

A WATCH request is answered by many ClientReply frames carrying its request id, each a
*message*: the first byte of the body is its kind, the reply's ``revision`` is the
position the watch is complete through once the message is taken in (for a resync
chunk that is not the last, the position it will be at). The layout of each kind is in
``docs/api.md`` ("Native protocol", WATCH).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from enum import IntEnum
from typing import NamedTuple

from raftkv.kv.results import KeyValue
from raftkv.kv.watch_history import Change
from raftkv.wire.protocol import decode_key_values, encode_key_values

__all__ = [
    "EVENT_DELETE",
    "EVENT_PUT",
    "WatchEvent",
    "WatchKind",
    "decode_events",
    "decode_resync",
    "encode_changes",
    "encode_events",
    "encode_message",
    "encode_resync",
    "message_kind",
]


class WatchKind(IntEnum):
    """The first byte of a watch message."""

    START = 1
    """The watch delivers every change after ``revision``. Always the first message."""
    EVENTS = 2
    """Changes, complete through ``revision``."""
    RESYNC = 3
    """Followed by ``u8 done`` and key-values as in a LIST reply: part of the range's image
    at ``revision``; the chunk with done = 1 is the last."""
    PROGRESS = 4
    """Nothing in the range changed through ``revision``."""
    RESET = 5
    """Only for a watch asked with NO_IMAGE: the events through ``revision`` are not
    available any more (no image is sent); the watch goes on after ``revision``."""
    END = 6
    """The watch is over (cancelled, or the node is stopping); the rest is a UTF-8 reason.
    No message of this watch follows."""


EVENT_PUT = 1
EVENT_DELETE = 2
_KIND_EVENTS = bytes((WatchKind.EVENTS,))

# type, has_prev, key length, value length; then the key, then _META, then the value
_EVENT = struct.Struct("<BBII")
# create_revision, mod_revision, version: the state machine's stored META layout
_META = struct.Struct("<QQQ")
# previous value length; then _META and the previous value
_PREV_LENGTH = struct.Struct("<I")


class WatchEvent(NamedTuple):
    """One change. A delete has an empty value, create_revision and version 0."""

    type: int
    key: bytes
    value: bytes
    revision: int
    """The change's revision (a put's mod_revision)."""
    create_revision: int
    version: int
    prev: KeyValue | None

    @property
    def mod_revision(self) -> int:
        return self.revision


def encode_changes(changes: Iterable[Change], *, with_prev: bool) -> bytes:
    """An EVENTS message body from the history's changes. A change's stored forms are
    already META | value, so an event is written without unpacking them."""
    parts = [_KIND_EVENTS]
    pack_event = _EVENT.pack
    pack_length = _PREV_LENGTH.pack
    pack_meta = _META.pack
    meta_size = _META.size
    for change in changes:
        stored = change.stored
        prev = change.prev if with_prev else None
        key = change.key
        if stored is None:
            parts.append(pack_event(EVENT_DELETE, prev is not None, len(key), 0))
            parts.append(key)
            parts.append(pack_meta(0, change.revision, 0))
        else:
            parts.append(pack_event(EVENT_PUT, prev is not None, len(key), len(stored) - meta_size))
            parts.append(key)
            parts.append(stored)
        if prev is not None:
            parts.append(pack_length(len(prev) - meta_size))
            parts.append(prev)
    return b"".join(parts)


def encode_events(events: Iterable[WatchEvent], *, with_prev: bool) -> bytes:
    """An EVENTS message body from decoded events (tests and relays)."""
    parts = [_KIND_EVENTS]
    for event in events:
        prev = event.prev if with_prev else None
        parts.append(_EVENT.pack(event.type, prev is not None, len(event.key), len(event.value)))
        parts.append(event.key)
        parts.append(_META.pack(event.create_revision, event.revision, event.version))
        parts.append(event.value)
        if prev is not None:
            parts.append(_PREV_LENGTH.pack(len(prev.value)))
            parts.append(_META.pack(prev.create_revision, prev.mod_revision, prev.version))
            parts.append(prev.value)
    return b"".join(parts)


def decode_events(body: bytes) -> list[WatchEvent]:
    """The events of an EVENTS message body. Raises ValueError when it is malformed."""
    if not body or body[0] != WatchKind.EVENTS:
        raise ValueError("not an EVENTS watch message")
    events: list[WatchEvent] = []
    unpack_event = _EVENT.unpack_from
    unpack_meta = _META.unpack_from
    unpack_length = _PREV_LENGTH.unpack_from
    header = _EVENT.size
    meta = _META.size
    size = len(body)
    offset = 1
    while offset < size:
        if offset + header > size:
            raise ValueError("watch message ends inside an event header")
        kind, has_prev, key_len, value_len = unpack_event(body, offset)
        if kind not in (EVENT_PUT, EVENT_DELETE) or has_prev > 1:
            raise ValueError(f"bad watch event type {kind}")
        offset += header
        end = offset + key_len + meta + value_len
        if end > size:
            raise ValueError("watch message ends inside an event")
        key = body[offset : offset + key_len]
        offset += key_len
        create, revision, version = unpack_meta(body, offset)
        value = body[offset + meta : end]
        offset = end
        prev = None
        if has_prev:
            if offset + 4 + meta > size:
                raise ValueError("watch message ends inside a previous value header")
            (prev_len,) = unpack_length(body, offset)
            prev_create, prev_mod, prev_version = unpack_meta(body, offset + 4)
            offset += 4 + meta
            end = offset + prev_len
            if end > size:
                raise ValueError("watch message ends inside a previous value")
            prev = KeyValue(key, body[offset:end], prev_create, prev_mod, prev_version)
            offset = end
        events.append(WatchEvent(kind, key, value, revision, create, version, prev))
    return events


def encode_resync(items: Sequence[KeyValue], *, done: bool) -> bytes:
    """A RESYNC message body: one chunk of the range's image."""
    return bytes((WatchKind.RESYNC, done)) + encode_key_values(items)


def decode_resync(body: bytes) -> tuple[list[KeyValue], bool]:
    """The items of a RESYNC chunk and whether it is the last."""
    if len(body) < 2 or body[0] != WatchKind.RESYNC or body[1] > 1:
        raise ValueError("not a RESYNC watch message")
    return decode_key_values(body[2:]), bool(body[1])


def encode_message(kind: WatchKind, reason: str = "") -> bytes:
    """The body of a START, PROGRESS, RESET or END message."""
    return bytes((kind,)) + reason.encode()


def message_kind(body: bytes) -> WatchKind:
    """The kind of a watch message. Raises ValueError for an empty body or unknown kind."""
    if not body:
        raise ValueError("empty watch message")
    return WatchKind(body[0])
