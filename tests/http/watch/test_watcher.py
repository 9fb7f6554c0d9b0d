"""One HTTP watcher over a real feed and an in-memory Raft process: catching up and
joining without a gap or a repeat, falling behind and resuming, resyncs after a reset,
and its own Raft-process watch (CatchUpSource)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from watch_fakes import MemoryRaft, run, settle, until

from raftkv.http.watch import feed as feed_module
from raftkv.http.watch import messages as messages_module
from raftkv.http.watch import watcher as watcher_module
from raftkv.http.watch.feed import WatchFeed, WatchRange
from raftkv.http.watch.messages import NDJSON, SSE, MessageFormat
from raftkv.http.watch.watcher import (
    CatchUpSource,
    CaughtUpEvents,
    ResyncImage,
    Watcher,
    WatcherClosed,
)
from raftkv.kv.results import KeyValue
from raftkv.node import watch_hub
from raftkv.node.watch_hub import HIGH_WATER_BYTES
from raftkv.wire.protocol import Flag, ReplyStatus
from raftkv.wire.watch_frames import WatchKind, encode_message, encode_resync
from raftkv_ext.codec import ClientReply

PREFIX = WatchRange(b"p/", is_prefix=True)


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    # Retries after a failure wait a little; not here, so tests need no clock.
    monkeypatch.setattr(feed_module, "_RECONNECT_MIN_S", 0.0)
    monkeypatch.setattr(watcher_module, "_RETRY_S", 0.0)


class Metrics:
    def __init__(self) -> None:
        self.events = 0
        self.resyncs = 0
        self.behind = 0

    def events_sent(self, count: int) -> None:
        self.events += count

    def resynced(self) -> None:
        self.resyncs += 1

    def fell_behind(self) -> None:
        self.behind += 1


class Client:
    """The HTTP client: takes what it is sent, or blocks until given permits."""

    def __init__(
        self, form: MessageFormat = NDJSON, *, permits: int | None = None, room: bool | None = None
    ) -> None:
        self.form = form
        self.chunks: list[bytes] = []
        self.permits = permits
        self.blocked = False
        self._more = asyncio.Event()
        self.room = room
        """None: no direct writes (as under another server); else whether the
        connection takes a direct write now."""
        self.written_directly = 0

    def write_now(self, data: bytes) -> bool:
        if not self.room:
            return False
        self.chunks.append(data)
        self.written_directly += 1
        return True

    def allow(self, count: int | None) -> None:
        """``count`` more sends go through (None: every one from now on)."""
        self.permits = None if count is None or self.permits is None else self.permits + count
        self._more.set()

    async def send(self, data: bytes) -> None:
        while self.permits is not None and self.permits <= 0:
            self.blocked = True
            self._more.clear()
            await self._more.wait()
        self.blocked = False
        if self.permits is not None:
            self.permits -= 1
        self.chunks.append(data)

    def messages(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for chunk in self.chunks:
            if self.form.sse:
                for block in chunk.decode().split("\n\n"):
                    if block:
                        data = block.split("data: ", 1)[1]
                        out.append(orjson.loads(data))
            else:
                out += [orjson.loads(line) for line in chunk.splitlines()]
        return out

    def events(self) -> list[tuple[int, str]]:
        return [
            (event["revision"], event["key"])
            for message in self.messages()
            if message["kind"] == "events"
            for event in message["events"]
        ]

    def kinds(self) -> list[str]:
        return [message["kind"] for message in self.messages()]


class Rig:
    """A Raft process in memory, the worker's feed on it, and watchers on the feed."""

    def __init__(self, raft: MemoryRaft, feed: WatchFeed) -> None:
        self.raft = raft
        self.feed = feed
        self.metrics = Metrics()
        self.tasks: list[asyncio.Task[None]] = []

    def watcher(
        self,
        position: int,
        watch_range: WatchRange = PREFIX,
        *,
        with_prev: bool = False,
        form: MessageFormat = NDJSON,
        buffer_bytes: int = 1 << 20,
        progress_s: float = 3600.0,
    ) -> Watcher:
        watcher = Watcher(
            self.feed,
            self.raft,  # type: ignore[arg-type]
            watch_range,
            position,
            with_prev=with_prev,
            form=form,
            progress_s=progress_s,
            buffer_bytes=buffer_bytes,
            metrics=self.metrics,
        )
        self.feed.register(watcher)
        return watcher

    def start(self, watcher: Watcher, client: Client) -> asyncio.Task[None]:
        write_now = None if client.room is None else client.write_now
        task = asyncio.ensure_future(watcher.run(client.send, write_now))
        self.tasks.append(task)
        return task

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.feed.close()


async def rig(raft: MemoryRaft | None = None, **feed_options: Any) -> Rig:
    raft = raft or MemoryRaft()
    feed = WatchFeed(raft, **feed_options)  # type: ignore[arg-type]
    await feed.ready()
    return Rig(raft, feed)


def expected(
    raft: MemoryRaft, after: int, watch_range: WatchRange = PREFIX
) -> list[tuple[int, str]]:
    """Every change in the range after ``after``, from the Raft process's history."""
    return [
        (c.revision, c.key.decode())
        for c in raft.sm.history.after(after) or []
        if watch_range.matches(c.key)
    ]


# -- live ---------------------------------------------------------------------------------


def test_a_watcher_at_the_feed_goes_live() -> None:
    async def scenario() -> None:
        r = await rig()
        try:
            r.raft.put(b"p/a")
            await until(lambda: r.feed.revision == 1)
            watcher = r.watcher(1)
            client = Client()
            r.start(watcher, client)
            await until(lambda: watcher.live, "the watcher to go live")
            r.raft.put(b"p/b")
            r.raft.put(b"q")
            r.raft.delete_prefix(b"p/")
            await until(lambda: len(client.events()) == 3)
            messages = client.messages()
            assert messages[0] == {"kind": "start", "revision": 1}
            assert client.events() == [(2, "p/b"), (4, "p/a"), (4, "p/b")]
            assert [m["revision"] for m in messages[1:]] == [2, 4]
            assert r.metrics.events == 3  # events, not messages
            assert r.raft.live_streams() == [r.raft.streams[0]]  # the feed's only
        finally:
            await r.close()

    run(scenario)


def test_progress_for_an_idle_live_watcher() -> None:
    async def scenario() -> None:
        r = await rig()
        try:
            watcher = r.watcher(0, progress_s=30.0)
            client = Client()
            r.start(watcher, client)
            await until(lambda: watcher.live)
            r.raft.put(b"elsewhere")
            await until(lambda: r.feed.revision == 1)
            now = asyncio.get_running_loop().time()
            watcher.progress_due(now, r.feed.revision)  # the interval has not passed
            await settle()
            assert client.kinds() == ["start"]
            watcher.progress_due(now + 30.0, r.feed.revision)
            await until(lambda: len(client.chunks) == 2)
            assert client.messages()[1] == {"kind": "progress", "revision": 1}
            # A revision behind the watcher's position gets none.
            watcher.progress_due(now + 90.0, 0)
            await settle()
            assert len(client.chunks) == 2
        finally:
            await r.close()

    run(scenario)


def test_live_messages_go_straight_to_a_connection_with_room() -> None:
    async def scenario() -> None:
        r = await rig()
        try:
            watcher = r.watcher(0)
            client = Client(room=True)
            r.start(watcher, client)
            await until(lambda: watcher.live)
            assert client.written_directly == 0  # the start went through the task
            r.raft.put(b"p/a")
            r.raft.put(b"p/b")
            await until(lambda: len(client.events()) == 2)
            # Written while the feed routed each batch, not by the watcher's task.
            assert client.written_directly == 2
            assert watcher.sent == watcher.position == 2
            assert r.metrics.events == 2
        finally:
            await r.close()

    run(scenario)


def test_a_message_that_finds_no_room_waits_and_nothing_overtakes_it() -> None:
    async def scenario() -> None:
        r = await rig()
        try:
            watcher = r.watcher(0)
            client = Client(room=False, permits=1)  # the start message, then blocked
            r.start(watcher, client)
            await until(lambda: watcher.live)
            r.raft.put(b"p/1")  # no room: queued for the task, whose send blocks
            await until(lambda: client.blocked)
            client.room = True
            r.raft.put(b"p/2")  # room now, but a send is under way: queued behind it
            r.raft.put(b"p/3")
            await settle()
            assert client.written_directly == 0
            client.allow(None)
            await until(lambda: len(client.events()) == 3)
            assert client.events() == [(1, "p/1"), (2, "p/2"), (3, "p/3")]
            r.raft.put(b"p/4")  # nothing queued or sending: straight through
            await until(lambda: len(client.events()) == 4)
            assert client.written_directly == 1
            assert r.metrics.events == 4
        finally:
            await r.close()

    run(scenario)


# -- catching up and joining ------------------------------------------------------------


def test_catching_up_from_the_ring_joins_without_a_gap_or_a_repeat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watcher_module, "CATCH_UP_EVENTS", 2)

    async def scenario() -> None:
        r = await rig()
        try:
            for i in range(6):
                r.raft.put(b"p/%d" % i)
                r.raft.put(b"other")
            await until(lambda: r.feed.revision == 12)
            watcher = r.watcher(0)
            client = Client(permits=1)
            r.start(watcher, client)
            # Changes keep coming while the watcher catches up, one send at a time.
            for i in range(6, 12):
                await until(lambda: client.blocked, "the client to block")
                r.raft.put(b"p/%d" % i)
                client.allow(1)
            client.allow(None)
            await until(lambda: watcher.live, "the watcher to go live")
            r.raft.put(b"p/last")
            await until(lambda: client.events()[-1:] == [(r.raft.sm.applied_index, "p/last")])
            assert client.events() == expected(r.raft, 0)
            assert r.metrics.events == len(client.events())
            assert len(r.raft.streams) == 1  # the ring sufficed
        finally:
            await r.close()

    run(scenario)


def test_a_large_catch_up_is_sent_before_joining() -> None:
    async def scenario() -> None:
        r = await rig()
        try:
            for i in range(20):
                r.raft.put(b"p/%d" % i, b"x" * 100)
            await until(lambda: r.feed.revision == 20)
            # Half the buffer is less than the catch-up: it is sent, not queued.
            watcher = r.watcher(0, buffer_bytes=2048)
            client = Client()
            r.start(watcher, client)
            await until(lambda: watcher.live)
            assert client.events() == expected(r.raft, 0)
            assert watcher.sent == 20
        finally:
            await r.close()

    run(scenario)


def test_a_future_start_waits_for_its_revision() -> None:
    async def scenario() -> None:
        r = await rig()
        try:
            watcher = r.watcher(3)
            client = Client()
            r.start(watcher, client)
            await settle()
            assert not watcher.live
            for _ in range(5):
                r.raft.put(b"p/k")
            await until(lambda: watcher.live)
            r.raft.put(b"p/k")
            await until(lambda: len(client.events()) == 3)
            assert client.messages()[0] == {"kind": "start", "revision": 3}
            assert client.events() == [(4, "p/k"), (5, "p/k"), (6, "p/k")]
        finally:
            await r.close()

    run(scenario)


# -- falling behind -----------------------------------------------------------------------


def test_an_overflowing_watcher_resumes_from_what_it_sent() -> None:
    async def scenario() -> None:
        r = await rig()
        try:
            watcher = r.watcher(0, buffer_bytes=600)
            client = Client(permits=1)  # the start message only, for now
            r.start(watcher, client)
            await until(lambda: watcher.live)
            r.raft.put(b"p/first")
            # The first chunk is handed over and its send blocks...
            await until(lambda: client.blocked and watcher.sent == 1)
            # ...while more arrives than the buffer holds.
            for i in range(12):
                r.raft.put(b"p/%d" % i, b"v" * 40)
            await until(lambda: not watcher.live, "the watcher to fall behind")
            assert r.metrics.behind == 1
            assert watcher.position == watcher.sent == 1
            assert watcher not in r.feed._groups.get(PREFIX, feed_module._Group(PREFIX)).members
            client.allow(None)
            await until(lambda: watcher.live, "the watcher to catch up again")
            r.raft.put(b"p/after")
            await until(lambda: client.events()[-1:] == [(14, "p/after")])
            assert client.events() == expected(r.raft, 0)
            assert r.metrics.events == len(client.events())
        finally:
            await r.close()

    run(scenario)


def test_a_closed_client_ends_the_run() -> None:
    async def scenario() -> None:
        r = await rig()
        try:
            watcher = r.watcher(0)

            async def gone(data: bytes) -> None:
                raise WatcherClosed

            with pytest.raises(WatcherClosed):
                await watcher.run(gone)
        finally:
            await r.close()

    run(scenario)


# -- from the Raft process ----------------------------------------------------------------


def test_a_watcher_behind_the_ring_catches_up_from_the_raft_process() -> None:
    async def scenario() -> None:
        raft = MemoryRaft()
        r = await rig(raft, ring_events=2)
        try:
            raft.put(b"p/a", b"1")
            for i in range(4):
                raft.put(b"q/%d" % i)
            raft.put(b"p/a", b"2")
            raft.put(b"p/b")
            await until(lambda: r.feed.revision == 7)
            assert not r.feed.covers(0)
            watcher = r.watcher(0, with_prev=True)
            client = Client()
            r.start(watcher, client)
            await until(lambda: watcher.live)
            assert client.events() == expected(raft, 0)
            events = [e for m in client.messages() if m["kind"] == "events" for e in m["events"]]
            assert events[1]["prev"] == {
                "value": "1",
                "create_revision": 1,
                "mod_revision": 1,
                "version": 1,
            }
            # Its own watch in the Raft process was asked from its position, then ended.
            own = raft.streams[1]
            assert own.request.key == b"p/"
            assert own.request.prev_revision == 0
            assert own.request.flags == Flag.PREFIX | Flag.HAS_PREV_REVISION | Flag.WATCH_PREV
            assert own.ended
            assert len(raft.hub) == 1  # the feed's
        finally:
            await r.close()

    run(scenario)


@pytest.mark.parametrize("form", [NDJSON, SSE], ids=["ndjson", "sse"])
def test_a_reset_makes_live_watchers_resync_through_the_raft_process(
    form: MessageFormat, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(messages_module, "RESYNC_CHUNK_ITEMS", 2)
    monkeypatch.setattr(watch_hub, "MESSAGE_BYTES", 100)

    async def scenario() -> None:
        raft = MemoryRaft(history=3)
        r = await rig(raft)
        try:
            raft.put(b"p/gone")
            watcher = r.watcher(0, form=form)
            client = Client(form)
            r.start(watcher, client)
            await until(lambda: watcher.live)
            await until(lambda: client.events() == [(1, "p/gone")])
            # The feed's stream is held (the worker stopped reading) past the history.
            (feed_stream,) = raft.streams
            feed_stream.backlog = HIGH_WATER_BYTES + 1
            raft.delete(b"p/gone")
            for i in range(5):
                raft.put(b"p/%d" % i, b"x" * 30)
            raft.put(b"q")
            feed_stream.backlog = 0
            raft.tick()
            await until(lambda: r.feed.resets == 1)
            await until(lambda: watcher.live, "the watcher to resync and go live")
            assert r.metrics.resyncs == 1
            resync = [m for m in client.messages() if m["kind"] == "resync"]
            assert [m["done"] for m in resync] == [False, False, True]
            assert {m["revision"] for m in resync} == {8}
            items = [item["key"] for m in resync for item in m["items"]]
            assert items == ["p/0", "p/1", "p/2", "p/3", "p/4"]
            if form.sse:
                blocks = [b for chunk in client.chunks for b in chunk.decode().split("\n\n") if b]
                resync_blocks = [b for b in blocks if b.startswith("event: resync")]
                assert ["\nid: 8\n" in b for b in resync_blocks] == [False, False, True]
            raft.put(b"p/new")
            await until(lambda: client.events()[-1:] == [(9, "p/new")])
            assert client.events() == [(1, "p/gone"), (9, "p/new")]
            assert all(s.ended for s in raft.streams[1:])
        finally:
            await r.close()

    run(scenario)


def test_a_catch_up_watch_with_a_backlog_is_reopened_from_where_it_got(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watcher_module, "CATCH_UP_QUEUE", 1)
    monkeypatch.setattr(watch_hub, "MESSAGE_BYTES", 50)

    async def scenario() -> None:
        raft = MemoryRaft()
        r = await rig(raft, ring_events=1)
        try:
            for i in range(8):
                raft.put(b"p/%d" % i, b"x" * 40)
            raft.put(b"q")
            await until(lambda: r.feed.revision == 9)
            watcher = r.watcher(0)
            client = Client()
            r.start(watcher, client)
            await until(lambda: watcher.live)
            assert client.events() == expected(raft, 0)
            assert len(raft.streams) > 2  # its own watch was opened more than once
            assert all(s.ended for s in raft.streams[1:])
        finally:
            await r.close()

    run(scenario)


def test_an_image_in_more_chunks_than_the_catch_up_queue_holds_gets_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One image chunk a key: the image arrives as more messages than CATCH_UP_QUEUE,
    # all at once, right behind the START.
    monkeypatch.setattr(watch_hub, "MESSAGE_BYTES", 1)

    async def scenario() -> None:
        raft = MemoryRaft(history=2)
        r = await rig(raft, ring_events=1)
        try:
            keys = watcher_module.CATCH_UP_QUEUE + 10
            for i in range(keys):
                raft.put(b"p/%03d" % i)
            await until(lambda: r.feed.revision == keys)
            watcher = r.watcher(1)
            client = Client()
            r.start(watcher, client)
            await until(lambda: watcher.live, "the watcher to resync and go live")
            (resync,) = [m for m in client.messages() if m["kind"] == "resync"]
            assert len(resync["items"]) == keys
            assert len(raft.streams) == 2  # one image was enough
        finally:
            await r.close()

    run(scenario)


def test_an_unreachable_raft_process_is_retried() -> None:
    async def scenario() -> None:
        raft = MemoryRaft()
        r = await rig(raft, ring_events=1)
        try:
            raft.put(b"p/1")
            raft.put(b"p/2")
            await until(lambda: r.feed.revision == 2)
            raft.unavailable = True
            watcher = r.watcher(0)
            client = Client()
            r.start(watcher, client)
            await settle()
            assert not watcher.live
            raft.unavailable = False
            await until(lambda: watcher.live)
            assert client.events() == [(1, "p/1"), (2, "p/2")]
        finally:
            await r.close()

    run(scenario)


# -- CatchUpSource --------------------------------------------------------------------------


def test_the_catch_up_source_reports_what_its_watch_brings() -> None:
    async def scenario() -> None:
        raft = MemoryRaft(history=2)
        for i in range(4):
            raft.put(b"p/%d" % i)
        source = CatchUpSource(raft, PREFIX, 1, with_prev=False)  # type: ignore[arg-type]
        await source.open()
        assert await source.next() == 1  # START
        image = await source.next()
        assert isinstance(image, ResyncImage)
        assert image.revision == 4
        assert [kv.key for kv in image.items] == [b"p/0", b"p/1", b"p/2", b"p/3"]
        raft.put(b"p/0")
        events = await source.next()
        assert isinstance(events, CaughtUpEvents)
        assert (events.revision, [e.key for e in events.events]) == (5, [b"p/0"])
        raft.put(b"elsewhere")
        assert await source.next() == 6  # PROGRESS
        source.close()
        source.close()
        assert raft.streams[0].ended
        assert len(raft.hub) == 0

    run(scenario)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (ReplyStatus.OK, encode_message(WatchKind.END, "bye")),
        (ReplyStatus.OK, encode_message(WatchKind.RESET)),
        (ReplyStatus.UNAVAILABLE, b"no leader"),
        (ReplyStatus.OK, b"\x02\x07"),
        (ReplyStatus.OK, b""),
    ],
    ids=["end", "reset", "refused", "malformed", "empty"],
)
def test_the_catch_up_source_ends_on_anything_else(status: ReplyStatus, body: bytes) -> None:
    async def scenario() -> None:
        raft = MemoryRaft()
        source = CatchUpSource(raft, PREFIX, 0, with_prev=False)  # type: ignore[arg-type]
        await source.open()
        assert await source.next() == 0
        stream = raft.streams[0]
        stream.deliver(ClientReply(stream.request.request_id, status, revision=0, body=body))
        assert await source.next() is None
        source.close()

    run(scenario)


def test_the_catch_up_source_puts_resync_chunks_together() -> None:
    async def scenario() -> None:
        raft = MemoryRaft()
        source = CatchUpSource(raft, PREFIX, 0, with_prev=False)  # type: ignore[arg-type]
        await source.open()
        assert await source.next() == 0
        stream = raft.streams[0]
        rid = stream.request.request_id
        first = [KeyValue(b"p/a", b"1", 1, 1, 1)]
        second = [KeyValue(b"p/b", b"2", 2, 2, 1)]
        stream.deliver(ClientReply(rid, ReplyStatus.OK, 0, 0, 9, encode_resync(first, done=False)))
        stream.deliver(ClientReply(rid, ReplyStatus.OK, 0, 0, 9, encode_resync(second, done=True)))
        image = await source.next()
        assert isinstance(image, ResyncImage)
        assert (image.revision, image.items) == (9, first + second)
        stream.deliver(None)  # the connection dropped
        assert await source.next() is None
        source.close()

    run(scenario)


def test_a_catch_up_source_ends_itself_when_its_watcher_does_not_read() -> None:
    """A slow client must not make the worker queue the Raft process's messages without
    bound: past CATCH_UP_QUEUE messages the watch is ended; what was queued is kept."""

    async def scenario() -> None:
        raft = MemoryRaft()
        source = CatchUpSource(raft, PREFIX, 0, with_prev=False)  # type: ignore[arg-type]
        await source.open()
        assert await source.next() == 0  # the START
        stream = raft.streams[0]
        rid = stream.request.request_id
        limit = watcher_module.CATCH_UP_QUEUE
        for revision in range(1, limit + 5):
            stream.deliver(ClientReply(rid, ReplyStatus.OK, 0, 0, revision, b"\x04"))
        assert source.overflowed and stream.ended
        reached = [await source.next() for _ in range(limit)]
        assert reached == list(range(1, limit + 1))
        assert await source.next() is None

    run(scenario)
