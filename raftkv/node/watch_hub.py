"""Watches served by the Raft process: the HTTP workers' feeds and native clients' watches.

A watch is a WATCH request that is answered by a stream of messages
(wire/watch_frames.py) on the connection it came on. After every turn in which the state
machine applied something, ``publish`` brings each watch up to the applied revision from
the state machine's history (kv/watch_history.py): the matching changes in one EVENTS
message, or nothing (its position still moves; a PROGRESS message says so once the
watch's progress interval has passed). Everything a watch is sent in one turn is
consistent with the state at that turn, so a resync image and the events after it
always fit together.

A watch never holds the apply loop back and never grows the process's memory without
bound: when its connection already has more than ``HIGH_WATER_BYTES`` waiting to be
written, the watch is held where it is and catches up from the history once the
connection drains (from ``publish`` or the progress timer); when the history no longer
reaches back that far, it gets the range's image (a resync) instead, or, for a feed
that asked for NO_IMAGE, a RESET.

A WATCH without a start revision starts at a linearizable "now": the hub asks the driver
for a read index first (READ_INDEX), unless the request allows a stale start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from raftkv.kv.results import KeyValue
from raftkv.kv.state_machine import KVStateMachine
from raftkv.kv.watch_history import Change
from raftkv.wire.protocol import MAX_REVISION, Flag, Op, ReplyStatus
from raftkv.wire.watch_frames import WatchKind, encode_changes, encode_message, encode_resync
from raftkv_ext.codec import ClientReply, ClientRequest

__all__ = ["HIGH_WATER_BYTES", "WatchHub", "WatchSink", "WatchStats"]

MAX_WATCHES_PER_CONNECTION = 8192
"""Watches one connection may have open: a worker's feed and its watchers' catch-ups
(at most one each), or a native client's watches. One more is refused."""
HIGH_WATER_BYTES = 1 << 20
"""A watch whose connection has more than this waiting to be written is held back."""
MESSAGE_BYTES = 1 << 20
"""A catch-up or an image is split into messages of about this size (whole revisions)."""
DEFAULT_PROGRESS_S = 10.0

ReplyFn = Callable[[ClientReply], None]
ReadIndexFn = Callable[[ClientRequest, ReplyFn], None]


class WatchStats(NamedTuple):
    """What the metrics report of the watches and the history."""

    watches: int
    held: int
    events_sent: int
    resyncs: int
    history_changes: int
    history_floor: int


class WatchSink(Protocol):
    """The connection a watch streams on."""

    def send_watch(self, reply: ClientReply) -> None:
        """Queue one message of a watch (not counted as a request in flight)."""

    def write_backlog(self) -> int:
        """Bytes queued on the connection but not yet written to the socket."""


@dataclass(slots=True, eq=False)
class _Watch:
    sink: WatchSink
    request_id: int
    key: bytes
    is_prefix: bool
    with_prev: bool
    no_image: bool
    progress_s: float
    position: int = 0
    """Every matching change through this revision has been sent."""
    told: int = 0
    """The revision of the last message sent: the client's resume point."""
    last_sent_at: float = 0.0
    held: bool = False
    started: bool = False

    def matches(self, key: bytes) -> bool:
        if self.is_prefix:
            return key.startswith(self.key)
        return key == self.key


class WatchHub:
    """Every watch of this Raft process."""

    def __init__(
        self,
        sm: Callable[[], KVStateMachine],
        read_index: ReadIndexFn,
        clock: Callable[[], float],
        *,
        progress_s: float = DEFAULT_PROGRESS_S,
        logger: logging.Logger | None = None,
    ) -> None:
        # The state machine is asked for each time: a node replaces it on restore.
        self._sm = sm
        self._read_index = read_index
        self._clock = clock
        self.progress_s = progress_s
        self.logger = logger or logging.getLogger("raftkv.watch")
        self._watches: dict[tuple[WatchSink, int], _Watch] = {}
        self._per_sink: dict[WatchSink, int] = {}
        self._published = -1
        self.events_sent = 0
        self.resyncs = 0
        self.holds = 0

    def __len__(self) -> int:
        return len(self._watches)

    def stats(self) -> WatchStats:
        history = self._sm().history
        return WatchStats(
            len(self._watches),
            sum(1 for watch in self._watches.values() if watch.held),
            self.events_sent,
            self.resyncs,
            len(history),
            history.floor,
        )

    # -- requests ------------------------------------------------------------------

    def open(self, sink: WatchSink, request: ClientRequest) -> None:
        """A WATCH request from ``sink``: answered with an error, or streamed."""
        request_id = request.request_id
        flags = request.flags
        error = self._check(sink, request)
        if error is not None:
            sink.send_watch(ClientReply(request_id, ReplyStatus.BAD_REQUEST, body=error.encode()))
            return
        watch = _Watch(
            sink,
            request_id,
            request.key,
            is_prefix=bool(flags & Flag.PREFIX),
            with_prev=bool(flags & Flag.WATCH_PREV),
            no_image=bool(flags & Flag.NO_IMAGE),
            progress_s=request.limit / 1000 if request.limit else self.progress_s,
        )
        self._watches[(sink, request_id)] = watch
        self._per_sink[sink] = self._per_sink.get(sink, 0) + 1
        if flags & Flag.HAS_PREV_REVISION:
            self._start(watch, request.prev_revision)
        elif flags & Flag.STALE_READ:
            self._start(watch, self._sm().applied_index)
        else:
            barrier = ClientRequest(request_id, op=Op.READ_INDEX, timeout_ms=request.timeout_ms)
            self._read_index(barrier, lambda reply: self._barrier_passed(watch, reply))

    def _check(self, sink: WatchSink, request: ClientRequest) -> str | None:
        if (sink, request.request_id) in self._watches:
            return f"a watch with request id {request.request_id} is already open"
        if self._per_sink.get(sink, 0) >= MAX_WATCHES_PER_CONNECTION:
            return f"this connection already has {MAX_WATCHES_PER_CONNECTION} watches open"
        if not request.key and not request.flags & Flag.PREFIX:
            return "a watch needs a key, or a prefix with the PREFIX flag"
        if request.flags & Flag.HAS_PREV_REVISION and not 0 <= request.prev_revision <= (
            MAX_REVISION
        ):
            return f"start revision {request.prev_revision} is out of range"
        return None

    def _barrier_passed(self, watch: _Watch, reply: ClientReply) -> None:
        if self._watches.get((watch.sink, watch.request_id)) is not watch:
            return  # cancelled or disconnected meanwhile
        if reply.status != ReplyStatus.OK:
            self._remove(watch.sink, watch.request_id)
            watch.sink.send_watch(reply)
            return
        self._start(watch, reply.index)

    def _start(self, watch: _Watch, position: int) -> None:
        watch.position = watch.told = position
        watch.started = True
        watch.last_sent_at = self._clock()
        watch.sink.send_watch(
            ClientReply(watch.request_id, ReplyStatus.OK, revision=position, body=_START_BODY)
        )
        self._advance(watch, self._sm())

    def cancel(self, sink: WatchSink, request: ClientRequest) -> None:
        """WATCH_CANCEL: ``limit`` names the watch's request id."""
        watch = self._remove(sink, request.limit)
        if watch is None:
            sink.send_watch(
                ClientReply(
                    request.request_id,
                    ReplyStatus.NOT_FOUND,
                    body=f"no watch with request id {request.limit}".encode(),
                )
            )
            return
        self._end(watch, "cancelled")
        sink.send_watch(ClientReply(request.request_id, ReplyStatus.OK))

    def drop(self, sink: WatchSink) -> None:
        """The connection is gone: forget its watches."""
        for key in [key for key in self._watches if key[0] is sink]:
            del self._watches[key]
        self._per_sink.pop(sink, None)

    def _remove(self, sink: WatchSink, request_id: int) -> _Watch | None:
        watch = self._watches.pop((sink, request_id), None)
        if watch is not None:
            remaining = self._per_sink[sink] - 1
            if remaining:
                self._per_sink[sink] = remaining
            else:
                del self._per_sink[sink]
        return watch

    def close_all(self, reason: str) -> None:
        """The node is stopping: end every watch."""
        watches, self._watches = self._watches, {}
        self._per_sink.clear()
        for watch in watches.values():
            self._end(watch, reason)

    def _end(self, watch: _Watch, reason: str) -> None:
        watch.sink.send_watch(
            ClientReply(
                watch.request_id,
                ReplyStatus.OK,
                revision=watch.told,
                body=encode_message(WatchKind.END, reason),
            )
        )

    # -- delivery ------------------------------------------------------------------

    def publish(self) -> None:
        """Bring every watch up to the applied revision (after a turn that applied)."""
        sm = self._sm()
        applied = sm.applied_index
        if applied == self._published or not self._watches:
            self._published = applied
            return
        self._published = applied
        for watch in list(self._watches.values()):
            if watch.started and watch.position < applied:
                self._advance(watch, sm)

    def tick(self) -> None:
        """Periodic: progress for idle watches, and held watches whose connection has
        drained since."""
        sm = self._sm()
        now = self._clock()
        for watch in list(self._watches.values()):
            if not watch.started:
                continue
            if watch.position < sm.applied_index or watch.held:
                self._advance(watch, sm)
            if (
                not watch.held
                and now - watch.last_sent_at >= watch.progress_s
                and watch.sink.write_backlog() <= HIGH_WATER_BYTES
            ):
                self._send(watch, watch.position, _PROGRESS_BODY, now)

    def _advance(self, watch: _Watch, sm: KVStateMachine) -> None:
        applied = sm.applied_index
        if watch.position >= applied:
            # Nothing new, or a start revision still in the future: wait for it.
            watch.held = False
            return
        if watch.sink.write_backlog() > HIGH_WATER_BYTES:
            if not watch.held:
                watch.held = True
                self.holds += 1
            return
        watch.held = False
        matching = sm.history.after(watch.position, watch.matches)
        if matching is None:
            self._resync(watch, sm)
            return
        now = self._clock()
        if matching:
            if not self._send_changes(watch, matching, applied, now):
                return
        elif now - watch.last_sent_at >= watch.progress_s:
            self._send(watch, applied, _PROGRESS_BODY, now)
        watch.position = applied

    def _send_changes(self, watch: _Watch, changes: list[Change], applied: int, now: float) -> bool:
        """Send ``changes`` in messages of whole revisions; False if the connection
        filled up on the way (the watch is then held after the last revision sent)."""
        start = 0
        size = 0
        count = len(changes)
        for i, change in enumerate(changes):
            size += len(change.key) + len(change.stored or b"") + 64
            if watch.with_prev:
                size += len(change.prev or b"")
            last = i + 1 == count
            if not last and (size < MESSAGE_BYTES or changes[i + 1].revision == change.revision):
                continue
            batch = changes[start : i + 1]
            through = applied if last else change.revision
            body = encode_changes(batch, with_prev=watch.with_prev)
            self._send(watch, through, body, now)
            self.events_sent += len(batch)
            watch.position = through
            start = i + 1
            size = 0
            if not last and watch.sink.write_backlog() > HIGH_WATER_BYTES:
                watch.held = True
                self.holds += 1
                return False
        return True

    def _resync(self, watch: _Watch, sm: KVStateMachine) -> None:
        applied = sm.applied_index
        now = self._clock()
        self.resyncs += 1
        if watch.no_image:
            self._send(watch, applied, _RESET_BODY, now)
        else:
            items = _image(sm, watch)
            chunk: list[KeyValue] = []
            size = 0
            for item in items:
                chunk.append(item)
                size += len(item.key) + len(item.value) + 32
                if size >= MESSAGE_BYTES:
                    self._send(watch, applied, encode_resync(chunk, done=False), now)
                    chunk = []
                    size = 0
            self._send(watch, applied, encode_resync(chunk, done=True), now)
        watch.position = applied

    def _send(self, watch: _Watch, revision: int, body: bytes, now: float) -> None:
        watch.told = revision
        watch.last_sent_at = now
        watch.sink.send_watch(
            ClientReply(watch.request_id, ReplyStatus.OK, revision=revision, body=body)
        )


def _image(sm: KVStateMachine, watch: _Watch) -> list[KeyValue]:
    if watch.is_prefix:
        return sm.range(watch.key)
    stored = sm.get(watch.key)
    return [] if stored is None else [stored]


_START_BODY = encode_message(WatchKind.START)
_PROGRESS_BODY = encode_message(WatchKind.PROGRESS)
_RESET_BODY = encode_message(WatchKind.RESET)
