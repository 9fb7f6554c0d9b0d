"""One worker's feed of every change, and the fan-out of it to its HTTP watchers.

The worker holds a single watch on the whole keyspace in its Raft process (NO_IMAGE: it
wants to hear of a gap rather than receive an image of everything), so the Raft
process encodes each applied batch once per worker however many clients watch. The
feed keeps the most recent changes in a ring, so that a new watcher or one that fell
behind catches up here without asking the Raft process.

Live watchers (those exactly at the feed's revision) are grouped by the range they
watch: a change is routed to its groups by a dictionary lookup per distinct prefix
length, not a scan of the watchers, and each group encodes a batch once per message
format for all its members. A watcher joins its group only when it is caught up, in a
step with no await between reading the ring and joining, so no change is delivered
twice or missed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import NamedTuple, Protocol

from raftkv.http.serving.ipc_client import IpcClient, IpcUnavailable
from raftkv.wire.protocol import Flag, Op, ReplyStatus
from raftkv.wire.watch_frames import WatchEvent, WatchKind, decode_events, message_kind
from raftkv_ext.codec import ClientReply, ClientRequest

__all__ = ["DEFAULT_RING_EVENTS", "WatchFeed", "WatchRange"]

log = logging.getLogger(__name__)

DEFAULT_RING_EVENTS = 16_384
"""Changes the feed keeps for watchers to catch up from without the Raft process."""
_RECONNECT_MIN_S = 0.05
_RECONNECT_MAX_S = 1.0
_PROGRESS_SCAN_S = 0.25


class WatchRange(NamedTuple):
    """One key, or every key starting with ``key`` when ``is_prefix``."""

    key: bytes
    is_prefix: bool

    def matches(self, key: bytes) -> bool:
        return key.startswith(self.key) if self.is_prefix else key == self.key


class Watcher(Protocol):
    """What the feed needs of a watcher (watcher.py): its range and message form, and
    the calls by which changes are pushed to it."""

    @property
    def range(self) -> WatchRange: ...

    @property
    def with_prev(self) -> bool: ...

    @property
    def sse(self) -> bool: ...

    def encode_events(self, events: list[WatchEvent], revision: int) -> bytes: ...

    def push(self, chunk: bytes, revision: int, events: int = 1) -> None: ...

    def fall_behind(self, *, slow: bool = True) -> None: ...

    def progress_due(self, now: float, revision: int) -> None: ...


class _Group:
    """The live watchers of one range."""

    __slots__ = ("members", "range")

    def __init__(self, watch_range: WatchRange) -> None:
        self.range = watch_range
        self.members: set[Watcher] = set()

    def deliver(self, events: list[WatchEvent], revision: int) -> None:
        encoded: dict[tuple[bool, bool], bytes] = {}
        for watcher in list(self.members):
            variant = (watcher.with_prev, watcher.sse)
            chunk = encoded.get(variant)
            if chunk is None:
                chunk = encoded[variant] = watcher.encode_events(events, revision)
            watcher.push(chunk, revision, len(events))


class WatchFeed:
    """Every change applied by this worker's Raft process, fanned out to its watchers."""

    def __init__(
        self,
        ipc: IpcClient,
        *,
        ring_events: int = DEFAULT_RING_EVENTS,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._ipc = ipc
        self._ring_events = ring_events
        self._clock = clock
        # (revision the batch completes the feed through, its changes), oldest first.
        self._ring: deque[tuple[int, list[WatchEvent]]] = deque()
        self._ring_count = 0
        self.revision = -1
        """The feed has every change through this revision (-1: not started)."""
        self.floor = -1
        """The ring has every change after this revision."""
        self._groups: dict[WatchRange, _Group] = {}
        self._exact: dict[bytes, _Group] = {}
        self._prefixes: dict[bytes, _Group] = {}
        self._prefix_lengths: dict[int, int] = {}
        self._watchers: set[Watcher] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None
        self._progress_task: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[None] | None = None
        self.events_received = 0
        self.resets = 0

    # -- lifecycle -----------------------------------------------------------------

    async def ready(self) -> None:
        """Wait until the feed has started (subscribed and positioned)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="raftkv-watch-feed")
            self._progress_task = asyncio.create_task(
                self._progress_loop(), name="raftkv-watch-progress"
            )
        while self.revision < 0:
            await self.wait_advance()

    async def close(self) -> None:
        for task in (self._task, self._progress_task):
            if task is not None:
                task.cancel()
        self._task = self._progress_task = None

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._lost = lost
            flags = Flag.PREFIX | Flag.NO_IMAGE | Flag.WATCH_PREV
            if self.revision >= 0:
                flags |= Flag.HAS_PREV_REVISION
            else:
                flags |= Flag.STALE_READ
            request = ClientRequest(
                self._ipc.next_request_id(),
                Op.WATCH,
                prev_revision=max(self.revision, 0),
                flags=int(flags),
                # A progress message whenever the applied revision moves without a
                # change: watchers that wait for a revision learn of it at once.
                limit=1,
            )
            end: Callable[[], None] | None = None
            try:
                end = await self._ipc.open_stream(request, self._on_reply)
                await lost
                backoff = 0.0
            except IpcUnavailable as exc:
                log.warning("watch feed: %s", exc)
            finally:
                if end is not None:
                    end()
            backoff = min(max(backoff * 2, _RECONNECT_MIN_S), _RECONNECT_MAX_S)
            await asyncio.sleep(backoff)

    def _on_reply(self, reply: ClientReply | None) -> None:
        lost = self._lost
        if reply is None or reply.status != ReplyStatus.OK:
            if reply is not None:
                log.warning(
                    "watch feed refused (status %d): %s",
                    reply.status,
                    reply.body.decode("utf-8", "replace"),
                )
            if lost is not None and not lost.done():
                lost.set_result(None)
            return
        try:
            kind = message_kind(reply.body)
            if kind == WatchKind.EVENTS:
                self._apply_events(decode_events(reply.body), reply.revision)
            elif kind in (WatchKind.START, WatchKind.PROGRESS):
                self._advance(reply.revision)
            elif kind == WatchKind.RESET:
                self._reset(reply.revision)
            elif kind == WatchKind.END:
                if lost is not None and not lost.done():
                    lost.set_result(None)
            else:
                raise ValueError(f"unexpected {kind.name} message on the feed")
        except ValueError as exc:
            log.error("watch feed: bad message from the Raft process: %s", exc)
            if lost is not None and not lost.done():
                lost.set_result(None)

    # -- the ring --------------------------------------------------------------------

    def _advance(self, revision: int) -> None:
        if revision <= self.revision:
            return
        if self.revision < 0:
            self.floor = revision
        self.revision = revision
        self._wake()

    def _apply_events(self, events: list[WatchEvent], revision: int) -> None:
        if self.revision < 0 or revision <= self.revision:
            return  # not positioned yet, or already had (never expected)
        fresh = [event for event in events if event.revision > self.revision]
        self.revision = revision
        if fresh:
            self.events_received += len(fresh)
            self._ring.append((revision, fresh))
            self._ring_count += len(fresh)
            while self._ring_count > self._ring_events and len(self._ring) > 1:
                dropped_through, dropped = self._ring.popleft()
                self._ring_count -= len(dropped)
                self.floor = dropped_through
            self._route(fresh, revision)
        self._wake()

    def _reset(self, revision: int) -> None:
        """The Raft process no longer has the changes through ``revision``: start the
        ring again there; live watchers catch up on their own."""
        self.resets += 1
        self._ring.clear()
        self._ring_count = 0
        self.revision = self.floor = max(revision, self.revision)
        for group in list(self._groups.values()):
            for watcher in list(group.members):
                watcher.fall_behind(slow=False)
        self._wake()

    def covers(self, position: int) -> bool:
        """Whether the ring has every change after ``position`` up to the feed's
        revision."""
        return 0 <= self.floor <= position <= self.revision

    def events_after(
        self, position: int, watch_range: WatchRange, max_events: int
    ) -> tuple[list[WatchEvent], int]:
        """Changes to ``watch_range`` after ``position`` from the ring (which must cover
        it), and the revision they complete the watcher through: the feed's revision,
        or less when ``max_events`` stopped the list at a batch boundary."""
        found: list[WatchEvent] = []
        matches = watch_range.matches
        for through, events in self._ring:
            if through <= position:
                continue
            for event in events:
                if event.revision > position and matches(event.key):
                    found.append(event)
            if len(found) >= max_events and through < self.revision:
                return found, through
        return found, self.revision

    async def wait_advance(self, timeout: float | None = None) -> None:
        """Wait until the feed's revision moves (or ``timeout`` passes)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            if timeout is None:
                await waiter
            else:
                await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- live watchers -------------------------------------------------------------

    def register(self, watcher: Watcher) -> None:
        self._watchers.add(watcher)

    def unregister(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)
        self.leave(watcher)

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def join(self, watcher: Watcher) -> None:
        """``watcher`` is at the feed's revision: from now on it gets changes live."""
        watch_range = watcher.range
        group = self._groups.get(watch_range)
        if group is None:
            group = self._groups[watch_range] = _Group(watch_range)
            if watch_range.is_prefix:
                self._prefixes[watch_range.key] = group
                length = len(watch_range.key)
                self._prefix_lengths[length] = self._prefix_lengths.get(length, 0) + 1
            else:
                self._exact[watch_range.key] = group
        group.members.add(watcher)

    def leave(self, watcher: Watcher) -> None:
        watch_range = watcher.range
        group = self._groups.get(watch_range)
        if group is None or watcher not in group.members:
            return
        group.members.discard(watcher)
        if group.members:
            return
        del self._groups[watch_range]
        if watch_range.is_prefix:
            del self._prefixes[watch_range.key]
            length = len(watch_range.key)
            remaining = self._prefix_lengths[length] - 1
            if remaining:
                self._prefix_lengths[length] = remaining
            else:
                del self._prefix_lengths[length]
        else:
            del self._exact[watch_range.key]

    def _route(self, events: list[WatchEvent], revision: int) -> None:
        if not self._groups:
            return
        per_group: dict[_Group, list[WatchEvent]] = {}
        exact = self._exact
        prefixes = self._prefixes
        lengths = self._prefix_lengths
        for event in events:
            key = event.key
            group = exact.get(key)
            if group is not None:
                per_group.setdefault(group, []).append(event)
            for length in lengths:
                if length <= len(key):
                    group = prefixes.get(key[:length])
                    if group is not None:
                        per_group.setdefault(group, []).append(event)
        for group, matched in per_group.items():
            group.deliver(matched, revision)

    async def _progress_loop(self) -> None:
        """Progress messages for idle live watchers, at each one's interval."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_PROGRESS_SCAN_S)
            if self.revision < 0:
                continue
            now = loop.time()
            for watcher in list(self._watchers):
                watcher.progress_due(now, self.revision)
