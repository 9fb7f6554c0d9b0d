"""One HTTP watch stream: where it is, what waits to be sent, and how it catches up.

A watcher is *live* when it is at the feed's revision and in its range's group: changes
are pushed into its outbox as encoded messages. Otherwise it is *catching up*: its own
task reads the changes after its position from the feed's ring, or, when the ring does
not reach back that far, from a watch of its own in the Raft process (whose history
is longer, and which sends the range's image when even that is too short), until the
ring covers it and it can join its group.

The outbox is bounded (``--watch-buffer-bytes``). A watcher whose client does not read
fast enough overflows it: the outbox is dropped, the watcher leaves its group and
catches up from the last message actually handed to the client once that send
completes. It is never dropped silently and never slows the feed. A send that makes
no progress for ``--watch-slow-timeout`` cuts the connection off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from raftkv.http.serving.ipc_client import IpcClient, IpcUnavailable
from raftkv.http.watch.feed import WatchFeed, WatchRange
from raftkv.http.watch.messages import (
    MessageFormat,
    events_message,
    message,
    resync_messages,
)
from raftkv.kv.results import KeyValue
from raftkv.wire.protocol import Flag, Op, ReplyStatus
from raftkv.wire.watch_frames import (
    WatchEvent,
    WatchKind,
    decode_events,
    decode_resync,
    message_kind,
)
from raftkv_ext.codec import ClientReply, ClientRequest

__all__ = ["CatchUpSource", "CaughtUpEvents", "ResyncImage", "Watcher", "WatcherClosed"]

log = logging.getLogger(__name__)

CATCH_UP_EVENTS = 1000
"""Changes per message while catching up: bounds each send."""
CATCH_UP_QUEUE = 16
"""Messages (of up to about 1 MiB; a resync's chunks count as one) a watcher's own
Raft-process watch may queue while its client is slow: past it the watch is ended, and
reopened from where the watcher got to once these are sent, so a slow client never makes
the worker buffer more."""
_RETRY_S = 0.5

Send = Callable[[bytes], Awaitable[None]]
WriteNow = Callable[[bytes], bool]
"""Hands a message to the client's connection at once if it has room (True), without
waiting; False when the message must wait for the stream's task."""


class WatcherClosed(Exception):
    """The client went away or was cut off."""


class WatchMetricsSink(Protocol):
    """What a watcher reports (the worker's metrics implement it)."""

    def events_sent(self, count: int) -> None: ...
    def resynced(self) -> None: ...
    def fell_behind(self) -> None: ...


class Watcher:
    """One stream's state. ``push`` and ``fall_behind`` are called by the feed; ``run``
    is the stream's task."""

    def __init__(
        self,
        feed: WatchFeed,
        ipc: IpcClient,
        watch_range: WatchRange,
        position: int,
        *,
        with_prev: bool,
        form: MessageFormat,
        progress_s: float,
        buffer_bytes: int,
        metrics: WatchMetricsSink,
    ) -> None:
        self.feed = feed
        self.ipc = ipc
        self.range = watch_range
        self.with_prev = with_prev
        self.form = form
        self.progress_s = progress_s
        self.buffer_bytes = buffer_bytes
        self.metrics = metrics
        self.position = position
        """Messages through this revision are queued or sent."""
        self.sent = position
        """Messages through this revision were handed to the client's connection."""
        self.live = False
        self._outbox: list[bytes] = []
        self._outbox_bytes = 0
        self._outbox_events = 0
        self._wake: asyncio.Future[None] | None = None
        self._last_queued_at = 0.0
        self._write_now: WriteNow | None = None
        self._sending = False

    # -- called by the feed --------------------------------------------------------

    @property
    def sse(self) -> bool:
        return self.form.sse

    def encode_events(self, events: list[WatchEvent], revision: int) -> bytes:
        return events_message(events, revision, with_prev=self.with_prev, form=self.form)

    def push(self, chunk: bytes, revision: int, events: int = 1) -> None:
        """Send a live message now if the connection has room and nothing is ahead of
        it, else queue it for the stream's task; past the buffer limit the watcher
        falls behind."""
        if not self.live:
            return
        self._last_queued_at = asyncio.get_running_loop().time()
        if (
            not self._outbox
            and not self._sending
            and self._write_now is not None
            and self._write_now(chunk)
        ):
            # Most messages of a live watcher go this way: waking its task for each
            # cost more than the message.
            self.position = self.sent = revision
            self.metrics.events_sent(events)
            return
        self._outbox.append(chunk)
        self._outbox_bytes += len(chunk)
        self._outbox_events += events
        self.position = revision
        if self._outbox_bytes > self.buffer_bytes:
            self.fall_behind()
            return
        self._notify()

    def fall_behind(self, *, slow: bool = True) -> None:
        """Leave the live group and catch up later from what was really sent
        (``slow``: because the client did not keep up, rather than a gap in the feed)."""
        if not self.live:
            return
        self.live = False
        self.feed.leave(self)
        self._outbox = []
        self._outbox_bytes = 0
        self._outbox_events = 0
        self.position = self.sent
        if slow:
            self.metrics.fell_behind()
        self._notify()

    def progress_due(self, now: float, revision: int) -> None:
        if (
            self.live
            and not self._outbox
            and now - self._last_queued_at >= self.progress_s
            and revision >= self.position
        ):
            self.push(message("progress", revision, self.form), revision, events=0)

    def _notify(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    # -- the stream's task -----------------------------------------------------------

    async def run(self, send: Send, write_now: WriteNow | None = None) -> None:
        """Send the start message, then everything after it until the client goes
        (``send`` raises WatcherClosed). With ``write_now``, a live message that finds
        nothing queued before it is written from ``push`` directly."""
        loop = asyncio.get_running_loop()
        self._write_now = write_now
        await send(message("start", self.position, self.form))
        self._last_queued_at = loop.time()
        while True:
            if not self.live:
                await self._catch_up(send)
                continue
            if not self._outbox:
                self._wake = loop.create_future()
                try:
                    await self._wake
                finally:
                    self._wake = None
                continue
            chunks, self._outbox = self._outbox, []
            events = self._outbox_events
            self._outbox_bytes = 0
            self._outbox_events = 0
            # Handed over before the await: a send under way completes or ends the
            # stream, so falling behind meanwhile must resume after this chunk.
            self.sent = self.position
            self._sending = True
            try:
                await send(b"".join(chunks))
            finally:
                self._sending = False
            self.metrics.events_sent(events)

    async def _catch_up(self, send: Send) -> None:
        feed = self.feed
        loop = asyncio.get_running_loop()
        while True:
            if self.position > feed.revision:
                # A start revision not reached yet: wait for it, with progress.
                await feed.wait_advance(self.progress_s)
                if self.position > feed.revision and (
                    loop.time() - self._last_queued_at >= self.progress_s
                ):
                    await self._send_now(send, message("progress", self.position, self.form))
                continue
            if not feed.covers(self.position):
                await self._from_raft_process(send)
                continue
            events, through = feed.events_after(self.position, self.range, CATCH_UP_EVENTS)
            if through < feed.revision:
                await self._send_events(send, events, through)
                continue
            chunk = self.encode_events(events, through) if events else b""
            if len(chunk) > self.buffer_bytes // 2:
                # Too much to queue at once: send it, then look again.
                await self._send_now(send, chunk)
                self.metrics.events_sent(len(events))
                self.position = self.sent = through
                continue
            # Caught up: queue the rest and join, with no await in between.
            self.live = True
            feed.join(self)
            if events:
                self.push(chunk, through, len(events))
            else:
                self.position = through
            return

    async def _send_events(self, send: Send, events: list[WatchEvent], through: int) -> None:
        if events:
            self.sent = through
            await self._send_now(send, self.encode_events(events, through))
            self.metrics.events_sent(len(events))
        self.position = self.sent = through

    async def _send_now(self, send: Send, chunk: bytes) -> None:
        await send(chunk)
        self._last_queued_at = asyncio.get_running_loop().time()

    async def _from_raft_process(self, send: Send) -> None:
        """Catch up through a watch of our own in the Raft process until the feed's
        ring covers the position (or the client is too slow to keep it open)."""
        source = CatchUpSource(self.ipc, self.range, self.position, with_prev=self.with_prev)
        try:
            await source.open()
        except IpcUnavailable as exc:
            log.warning("watch catch-up: %s", exc)
            await asyncio.sleep(_RETRY_S)
            return
        try:
            while True:
                item = await source.next()
                if item is None:
                    if not source.overflowed:
                        await asyncio.sleep(_RETRY_S)
                    return
                if isinstance(item, ResyncImage):
                    for chunk in resync_messages(item.items, item.revision, self.form):
                        await self._send_now(send, chunk)
                    self.metrics.resynced()
                    self.position = self.sent = item.revision
                elif isinstance(item, CaughtUpEvents):
                    await self._send_events(send, item.events, item.revision)
                else:
                    self.position = self.sent = max(self.position, item)
                if self.feed.covers(self.position) or self.position > self.feed.revision:
                    return
        finally:
            source.close()


class CaughtUpEvents:
    __slots__ = ("events", "revision")

    def __init__(self, events: list[WatchEvent], revision: int) -> None:
        self.events = events
        self.revision = revision


class ResyncImage:
    __slots__ = ("items", "revision")

    def __init__(self, items: list[KeyValue], revision: int) -> None:
        self.items = items
        self.revision = revision


class CatchUpSource:
    """A watch in the Raft process from a position: changes from its history, or the
    range's image (a resync) when the history does not reach back that far."""

    def __init__(
        self, ipc: IpcClient, watch_range: WatchRange, position: int, *, with_prev: bool
    ) -> None:
        self._ipc = ipc
        self._range = watch_range
        self._position = position
        self._with_prev = with_prev
        self._queue: asyncio.Queue[ClientReply | None] = asyncio.Queue()
        self._end: Callable[[], None] | None = None
        self._image: list[KeyValue] = []
        self._counted = 0
        self.overflowed = False
        """The watcher fell CATCH_UP_QUEUE messages behind: this watch was ended."""

    def _on_reply(self, reply: ClientReply | None) -> None:
        if self.overflowed:
            return
        if reply is not None and _counted(reply):
            if self._counted >= CATCH_UP_QUEUE:
                # At least one message that moves the watcher on is queued before this
                # (the START and an image's chunks are not counted): reopening from where
                # the watcher gets to always makes progress.
                self.overflowed = True
                self.close()
                reply = None
            else:
                self._counted += 1
        self._queue.put_nowait(reply)

    async def open(self) -> None:
        flags = int(Flag.HAS_PREV_REVISION)
        if self._range.is_prefix:
            flags |= Flag.PREFIX
        if self._with_prev:
            flags |= Flag.WATCH_PREV
        request = ClientRequest(
            self._ipc.next_request_id(),
            Op.WATCH,
            self._range.key,
            prev_revision=self._position,
            flags=int(flags),
            limit=1,
        )
        self._end = await self._ipc.open_stream(request, self._on_reply)

    async def next(self) -> CaughtUpEvents | ResyncImage | int | None:
        """The next change batch, a complete resync, a revision reached with no
        change, or None when the watch ended (the caller retries later)."""
        while True:
            reply = await self._queue.get()
            if reply is None:
                return None
            if _counted(reply):
                self._counted -= 1
            if reply.status != ReplyStatus.OK:
                log.warning(
                    "watch catch-up refused (status %d): %s",
                    reply.status,
                    reply.body.decode("utf-8", "replace"),
                )
                return None
            try:
                kind = message_kind(reply.body)
                if kind == WatchKind.EVENTS:
                    return CaughtUpEvents(decode_events(reply.body), reply.revision)
                if kind == WatchKind.RESYNC:
                    items, done = decode_resync(reply.body)
                    self._image.extend(items)
                    if not done:
                        continue
                    image, self._image = self._image, []
                    return ResyncImage(image, reply.revision)
                if kind in (WatchKind.START, WatchKind.PROGRESS):
                    return reply.revision
                return None  # END (or RESET, which is never asked for here)
            except ValueError as exc:
                log.error("watch catch-up: bad message from the Raft process: %s", exc)
                return None

    def close(self) -> None:
        if self._end is not None:
            self._end()
            self._end = None


def _counted(reply: ClientReply) -> bool:
    """Whether a message counts against CATCH_UP_QUEUE: not the START (it moves the
    watcher nowhere) nor a resync chunk before the last (an image is taken whole)."""
    body = reply.body
    if reply.status != ReplyStatus.OK or not body:
        return True
    if body[0] == WatchKind.START:
        return False
    return not (body[0] == WatchKind.RESYNC and len(body) >= 2 and body[1] == 0)
