"""The worker's feed: one watch of everything in the Raft process, a ring of recent
changes, live groups by range, and what it does when the stream breaks or resets."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from watch_fakes import MemoryRaft, run, settle, until

from raftkv.http.watch import feed as feed_module
from raftkv.http.watch.feed import WatchFeed, WatchRange
from raftkv.http.watch.messages import NDJSON, SSE, MessageFormat, events_message
from raftkv.node.watch_hub import HIGH_WATER_BYTES
from raftkv.wire.protocol import Flag, Op, ReplyStatus
from raftkv.wire.watch_frames import (
    EVENT_PUT,
    WatchEvent,
    WatchKind,
    encode_events,
    encode_message,
    encode_resync,
)
from raftkv_ext.codec import ClientReply

EVERYTHING = WatchRange(b"", is_prefix=True)


@pytest.fixture(autouse=True)
def quick_reconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    # A broken feed reconnects after a back-off; none here, so tests need no clock.
    monkeypatch.setattr(feed_module, "_RECONNECT_MIN_S", 0.0)


async def start(raft: MemoryRaft, **options: Any) -> WatchFeed:
    feed = WatchFeed(raft, **options)  # type: ignore[arg-type]
    await feed.ready()
    return feed


def keys_of(events: list[WatchEvent]) -> list[tuple[int, bytes]]:
    return [(e.revision, e.key) for e in events]


def put_event(key: bytes, revision: int) -> WatchEvent:
    return WatchEvent(EVENT_PUT, key, b"v", revision, revision, 1, None)


# -- the stream -------------------------------------------------------------------------


def test_the_feed_watches_everything_from_the_applied_revision() -> None:
    async def scenario() -> None:
        raft = MemoryRaft()
        raft.put(b"a")
        raft.put(b"b")
        feed = await start(raft)
        try:
            (stream,) = raft.streams
            request = stream.request
            assert request.op == Op.WATCH
            assert request.key == b""
            assert request.flags == Flag.PREFIX | Flag.NO_IMAGE | Flag.WATCH_PREV | Flag.STALE_READ
            assert request.limit == 1
            assert feed.revision == feed.floor == 2
            assert feed.covers(2)
            assert not feed.covers(1)
            assert not feed.covers(3)
            raft.put(b"c")
            await until(lambda: feed.revision == 3)
            assert feed.covers(2)
            assert keys_of(feed.events_after(2, EVERYTHING, 100)[0]) == [(3, b"c")]
            assert feed.events_received == 1
        finally:
            await feed.close()

    run(scenario)


def test_a_feed_not_started_covers_nothing() -> None:
    feed = WatchFeed(MemoryRaft())  # type: ignore[arg-type]
    assert feed.revision == feed.floor == -1
    assert not feed.covers(-1)
    assert not feed.covers(0)


def test_the_position_moves_with_entries_that_change_no_key() -> None:
    async def scenario() -> None:
        raft = MemoryRaft()
        feed = await start(raft)
        try:
            raft.noop()
            raft.noop()
            await until(lambda: feed.revision == 2)
            assert feed.covers(0)
            assert feed.events_after(0, EVERYTHING, 10) == ([], 2)
        finally:
            await feed.close()

    run(scenario)


# -- the ring ---------------------------------------------------------------------------


def test_the_ring_keeps_the_most_recent_changes() -> None:
    async def scenario() -> None:
        raft = MemoryRaft()
        feed = await start(raft, ring_events=4)
        try:
            for i in range(7):
                raft.put(b"k%d" % i)
            await until(lambda: feed.revision == 7)
            assert feed.floor == 3
            assert feed.covers(3)
            assert not feed.covers(2)
            events, through = feed.events_after(3, EVERYTHING, 100)
            assert keys_of(events) == [(4, b"k3"), (5, b"k4"), (6, b"k5"), (7, b"k6")]
            assert through == 7
        finally:
            await feed.close()

    run(scenario)


def test_a_batch_larger_than_the_ring_is_kept_whole() -> None:
    async def scenario() -> None:
        raft = MemoryRaft()
        for i in range(5):
            raft.put(b"p/%d" % i)
        feed = await start(raft, ring_events=2)
        try:
            raft.put(b"x")
            raft.delete_prefix(b"p/")
            await until(lambda: feed.revision == 7)
            assert feed.floor == 6
            events, through = feed.events_after(6, EVERYTHING, 100)
            assert len(events) == 5
            assert {e.revision for e in events} == {7}
            assert through == 7
        finally:
            await feed.close()

    run(scenario)


def test_events_after_stops_at_a_batch_boundary_past_max_events() -> None:
    async def scenario() -> None:
        raft = MemoryRaft()
        raft.put(b"p/1")
        raft.put(b"p/2")
        feed = await start(raft)
        try:
            raft.put(b"a")  # 3
            raft.delete_prefix(b"p/")  # 4: two changes
            raft.put(b"b")  # 5
            raft.put(b"a")  # 6
            await until(lambda: feed.revision == 6)
            # The batch that reaches max_events is given whole, and the revision it ends.
            events, through = feed.events_after(2, EVERYTHING, 2)
            assert keys_of(events) == [(3, b"a"), (4, b"p/1"), (4, b"p/2")]
            assert through == 4
            assert keys_of(feed.events_after(4, EVERYTHING, 1)[0]) == [(5, b"b")]
            assert feed.events_after(4, EVERYTHING, 1)[1] == 5
            # The last batch is the feed's revision.
            assert feed.events_after(5, EVERYTHING, 1) == (feed.events_after(5, EVERYTHING, 9))
            assert feed.events_after(5, EVERYTHING, 1)[1] == 6
            # Only matching events count towards max_events.
            only_a = WatchRange(b"a", is_prefix=False)
            assert keys_of(feed.events_after(2, only_a, 1)[0]) == [(3, b"a")]
            assert feed.events_after(2, only_a, 1)[1] == 3
            assert feed.events_after(3, only_a, 1) == (feed.events_after(3, only_a, 100))
            assert keys_of(feed.events_after(3, only_a, 1)[0]) == [(6, b"a")]
            nothing = WatchRange(b"zz", is_prefix=True)
            assert feed.events_after(2, nothing, 1) == ([], 6)
        finally:
            await feed.close()

    run(scenario)


def test_a_position_inside_a_batch_of_several_revisions() -> None:
    async def scenario() -> None:
        raft = MemoryRaft()
        feed = await start(raft)
        try:
            (stream,) = raft.streams
            rid = stream.request.request_id
            # A catch-up after a hold: one message with several revisions.
            batch = [put_event(b"a", 1), put_event(b"b", 2), put_event(b"c", 3)]
            stream.deliver(
                ClientReply(
                    rid, ReplyStatus.OK, revision=4, body=encode_events(batch, with_prev=True)
                )
            )
            assert feed.revision == 4
            assert keys_of(feed.events_after(1, EVERYTHING, 100)[0]) == [(2, b"b"), (3, b"c")]
            assert feed.events_after(3, EVERYTHING, 100) == ([], 4)
            # Events already had are not taken twice; a message not past the feed, not at all.
            again = [put_event(b"c", 3), put_event(b"d", 5)]
            stream.deliver(
                ClientReply(
                    rid, ReplyStatus.OK, revision=5, body=encode_events(again, with_prev=True)
                )
            )
            stream.deliver(
                ClientReply(
                    rid, ReplyStatus.OK, revision=5, body=encode_events(again, with_prev=True)
                )
            )
            assert keys_of(feed.events_after(0, EVERYTHING, 100)[0]) == [
                (1, b"a"),
                (2, b"b"),
                (3, b"c"),
                (5, b"d"),
            ]
            assert feed.events_received == 4
        finally:
            await feed.close()

    run(scenario)


# -- live groups and routing -------------------------------------------------------------


class StubWatcher:
    """What the feed needs of a live watcher: its range and variant, and a record."""

    encodes: list[tuple[StubWatcher, int]] = []

    def __init__(self, key: bytes, is_prefix: bool, *, with_prev: bool = False, sse: bool = False):
        self.range = WatchRange(key, is_prefix)
        self.with_prev = with_prev
        self.form: MessageFormat = SSE if sse else NDJSON
        self.pushed: list[tuple[bytes, int]] = []
        self.fell = 0

    @property
    def sse(self) -> bool:
        return self.form.sse

    def encode_events(self, events: list[WatchEvent], revision: int) -> bytes:
        StubWatcher.encodes.append((self, revision))
        return events_message(events, revision, with_prev=self.with_prev, form=self.form)

    def push(self, chunk: bytes, revision: int, events: int = 1) -> None:
        self.pushed.append((chunk, revision))

    def fall_behind(self, *, slow: bool = True) -> None:
        self.fell += 1

    def progress_due(self, now: float, revision: int) -> None:
        pass

    def keys(self) -> list[str]:
        out: list[str] = []
        for chunk, _ in self.pushed:
            data = chunk.split(b"data: ", 1)[1] if self.form.sse else chunk
            out += [
                event.get("key", event.get("key_base64")) for event in orjson.loads(data)["events"]
            ]
        return out


def test_changes_are_routed_to_every_matching_range() -> None:
    async def scenario() -> None:
        raft = MemoryRaft()
        feed = await start(raft)
        watchers = {
            "exact a/b": StubWatcher(b"a/b", False),
            "exact a": StubWatcher(b"a", False),
            "prefix ''": StubWatcher(b"", True),
            "prefix a": StubWatcher(b"a", True),
            "prefix a/": StubWatcher(b"a/", True),
            "prefix a/b/c": StubWatcher(b"a/b/c", True),
            "prefix b": StubWatcher(b"b", True),
            "prefix \\xff": StubWatcher(b"\xff", True),
        }
        try:
            for watcher in watchers.values():
                feed.join(watcher)  # type: ignore[arg-type]
            raft.put(b"a/b")
            raft.put(b"b/x")
            raft.put(b"\xff\x00")
            raft.put(b"a")
            await until(lambda: feed.revision == 4)
            got = {name: w.keys() for name, w in watchers.items()}
            assert got == {
                "exact a/b": ["a/b"],
                "exact a": ["a"],
                "prefix ''": ["a/b", "b/x", "/wA=", "a"],
                "prefix a": ["a/b", "a"],
                "prefix a/": ["a/b"],
                "prefix a/b/c": [],
                "prefix b": ["b/x"],
                "prefix \\xff": ["/wA="],
            }
            assert [r for _, r in watchers["prefix ''"].pushed] == [1, 2, 3, 4]
        finally:
            await feed.close()

    run(scenario)


def test_a_group_encodes_each_batch_once_per_variant() -> None:
    async def scenario() -> None:
        raft = MemoryRaft()
        feed = await start(raft)
        members = [
            StubWatcher(b"k", False),
            StubWatcher(b"k", False),
            StubWatcher(b"k", False, with_prev=True),
            StubWatcher(b"k", False, sse=True),
            StubWatcher(b"k", False, sse=True),
            StubWatcher(b"k", False, with_prev=True, sse=True),
        ]
        try:
            for member in members:
                feed.join(member)  # type: ignore[arg-type]
            StubWatcher.encodes.clear()
            raft.put(b"k", b"1")
            raft.put(b"k", b"2")
            await until(lambda: feed.revision == 2)
            assert len(StubWatcher.encodes) == 2 * 4
            for member in members:
                expected = [
                    events_message(
                        [e for e in feed.events_after(0, member.range, 10)[0] if e.revision == r],
                        r,
                        with_prev=member.with_prev,
                        form=member.form,
                    )
                    for r in (1, 2)
                ]
                assert [chunk for chunk, _ in member.pushed] == expected
            assert members[0].pushed[0][0] is members[1].pushed[0][0]  # the same bytes
            assert b'"prev"' in members[2].pushed[1][0]
            assert members[3].pushed[0][0].startswith(b"event: events\nid: 1\n")
        finally:
            await feed.close()

    run(scenario)


def test_leaving_removes_a_range_from_routing() -> None:
    async def scenario() -> None:
        raft = MemoryRaft()
        feed = await start(raft)
        first = StubWatcher(b"p/", True)
        second = StubWatcher(b"p/", True)
        other = StubWatcher(b"q/", True)
        exact = StubWatcher(b"p/x", False)
        try:
            for watcher in (first, second, other, exact):
                feed.join(watcher)  # type: ignore[arg-type]
            feed.leave(first)  # type: ignore[arg-type]
            feed.leave(first)  # type: ignore[arg-type]  (twice: no harm)
            raft.put(b"p/x")
            await until(lambda: feed.revision == 1)
            assert (len(first.pushed), len(second.pushed), len(exact.pushed)) == (0, 1, 1)
            feed.leave(second)  # type: ignore[arg-type]
            feed.leave(exact)  # type: ignore[arg-type]
            raft.put(b"p/x")
            raft.put(b"q/1")
            await until(lambda: feed.revision == 3)
            assert (len(second.pushed), len(exact.pushed), len(other.pushed)) == (1, 1, 1)
            # Only the q/ group is left, and one prefix length.
            assert list(feed._groups) == [other.range]
            assert feed._prefix_lengths == {2: 1}
            assert feed._exact == {}
        finally:
            await feed.close()

    run(scenario)


def test_registered_watchers_are_counted() -> None:
    feed = WatchFeed(MemoryRaft())  # type: ignore[arg-type]
    watcher = StubWatcher(b"k", False)
    feed.register(watcher)  # type: ignore[arg-type]
    feed.join(watcher)  # type: ignore[arg-type]
    assert feed.watchers == 1
    feed.unregister(watcher)  # type: ignore[arg-type]
    assert feed.watchers == 0
    assert feed._groups == {}


# -- when the stream breaks or resets ------------------------------------------------------


def test_a_reset_restarts_the_ring_and_live_watchers_fall_behind() -> None:
    async def scenario() -> None:
        raft = MemoryRaft(history=3)
        feed = await start(raft)
        live = StubWatcher(b"", True)
        try:
            raft.put(b"a")
            await until(lambda: feed.revision == 1)
            feed.join(live)  # type: ignore[arg-type]
            (stream,) = raft.streams
            stream.backlog = HIGH_WATER_BYTES + 1  # the worker stopped reading
            for i in range(6):
                raft.put(b"k%d" % i)
            stream.backlog = 0
            raft.tick()  # the hub finds the history too short for the feed: RESET
            await until(lambda: feed.resets == 1)
            assert stream.received[-1].body == encode_message(WatchKind.RESET)
            assert feed.revision == feed.floor == 7
            assert not feed.covers(6)
            assert feed.events_after(7, EVERYTHING, 10) == ([], 7)
            assert live.fell == 1
            raft.put(b"after")
            await until(lambda: feed.revision == 8)
            assert keys_of(feed.events_after(7, EVERYTHING, 10)[0]) == [(8, b"after")]
        finally:
            await feed.close()

    run(scenario)


def test_a_reset_never_moves_the_feed_back() -> None:
    async def scenario() -> None:
        raft = MemoryRaft()
        for _ in range(4):
            raft.put(b"a")
        feed = await start(raft)
        try:
            (stream,) = raft.streams
            rid = stream.request.request_id
            stream.deliver(
                ClientReply(rid, ReplyStatus.OK, revision=2, body=encode_message(WatchKind.RESET))
            )
            assert feed.revision == feed.floor == 4
            assert feed.resets == 1
        finally:
            await feed.close()

    run(scenario)


@pytest.mark.parametrize("how", ["end", "lost", "refused", "malformed", "resync"])
def test_a_broken_stream_resumes_from_the_feed_s_revision(how: str) -> None:
    async def scenario() -> None:
        raft = MemoryRaft()
        raft.put(b"a")
        feed = await start(raft)
        try:
            (first,) = raft.streams
            rid = first.request.request_id
            raft.put(b"b")
            await until(lambda: feed.revision == 2)
            if how == "lost":
                raft.lose_streams()
            else:
                body = {
                    "end": encode_message(WatchKind.END, "the node is shutting down"),
                    "refused": b"no",
                    "malformed": bytes((WatchKind.EVENTS,)) + b"\x09" * 11,
                    "resync": encode_resync([], done=True),
                }[how]
                status = ReplyStatus.UNAVAILABLE if how == "refused" else ReplyStatus.OK
                first.deliver(ClientReply(rid, status, revision=2, body=body))
            await until(lambda: len(raft.streams) == 2, "a new stream")
            assert first.ended  # the broken stream was ended (and cancelled)
            second = raft.streams[1].request
            assert second.flags & Flag.HAS_PREV_REVISION
            assert not second.flags & Flag.STALE_READ
            assert second.prev_revision == 2
            # Nothing missed in between: the Raft process resumes after revision 2.
            raft.put(b"c")
            await until(lambda: feed.revision == 3)
            assert keys_of(feed.events_after(0, EVERYTHING, 10)[0]) == [(2, b"b"), (3, b"c")]
        finally:
            await feed.close()

    run(scenario)


def test_the_feed_waits_for_a_reachable_raft_process() -> None:
    async def scenario() -> None:
        raft = MemoryRaft()
        raft.unavailable = True
        feed = WatchFeed(raft)  # type: ignore[arg-type]
        try:
            waiting = feed.ready()
            task = asyncio.ensure_future(waiting)
            await settle()
            assert not task.done()
            assert raft.streams == []
            raft.unavailable = False
            await until(task.done, "the feed to start")
            assert feed.revision == 0
        finally:
            await feed.close()

    run(scenario)


def test_wait_advance_wakes_on_a_new_revision_or_returns_at_its_timeout() -> None:
    async def scenario() -> None:
        raft = MemoryRaft()
        feed = await start(raft)
        try:
            await feed.wait_advance(0)  # a timeout is not an error
            waiter = asyncio.ensure_future(feed.wait_advance())
            await settle()
            assert not waiter.done()
            raft.put(b"a")
            await until(waiter.done)
            assert feed._waiters == []
        finally:
            await feed.close()

    run(scenario)
