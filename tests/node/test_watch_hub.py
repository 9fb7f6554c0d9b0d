"""The Raft process's watches (WatchHub) over a real state machine, a fake connection and
an injected clock: how a watch starts, what it is sent and when, back-pressure, resyncs,
cancellation; and one run through IpcServer on a real Unix socket."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from raftkv.kv import Delete, DeletePrefix, KVStateMachine, Put, encode_command
from raftkv.kv.results import KeyValue
from raftkv.node import watch_hub
from raftkv.node.driver import KV_WRITE_OPS, command_for, read_reply
from raftkv.node.ipc_server import IpcServer
from raftkv.node.requests import reply_for_result
from raftkv.node.watch_hub import HIGH_WATER_BYTES, WatchHub
from raftkv.wire.protocol import MAX_REVISION, Flag, Op, ReplyStatus
from raftkv.wire.watch_frames import (
    EVENT_DELETE,
    EVENT_PUT,
    WatchEvent,
    WatchKind,
    decode_events,
    decode_resync,
    message_kind,
)
from raftkv_ext.codec import (
    PROTOCOL_VERSION,
    ClientReply,
    ClientRequest,
    FrameDecoder,
    Handshake,
    HandshakeReply,
    encode,
    encode_batch,
)

from .test_driver import elect, single_node

PROGRESS_S = 10.0
ReplyFn = Callable[[ClientReply], None]


class Sink:
    """A connection: what the hub sent on it, and a write backlog the test sets."""

    def __init__(self) -> None:
        self.sent: list[ClientReply] = []
        self.backlog = 0

    def send_watch(self, reply: ClientReply) -> None:
        self.sent.append(reply)

    def write_backlog(self) -> int:
        return self.backlog

    def take(self) -> list[ClientReply]:
        sent, self.sent = self.sent, []
        return sent


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Setup:
    """A hub over a state machine written at consecutive indexes."""

    def __init__(self, *, history: int = 1000) -> None:
        self.sm = KVStateMachine(watch_history=history)
        self.clock = Clock()
        self.barriers: list[tuple[ClientRequest, ReplyFn]] = []
        self.hub = WatchHub(
            lambda: self.sm,
            lambda request, reply: self.barriers.append((request, reply)),
            self.clock,
            progress_s=PROGRESS_S,
        )

    def apply(self, command: Put | Delete | DeletePrefix, *, publish: bool = True) -> int:
        index = self.sm.applied_index + 1
        assert self.sm.apply(index, encode_command(command)).ok
        if publish:
            self.hub.publish()
        return index

    def put(self, key: bytes, value: bytes = b"v", *, publish: bool = True) -> int:
        return self.apply(Put(key, value), publish=publish)

    def noop(self) -> int:
        """An entry that writes no key (a Raft no-op), then the turn's publish."""
        index = self.sm.applied_index + 1
        self.sm.advance(index)
        self.hub.publish()
        return index

    def watch(
        self,
        sink: Sink,
        key: bytes,
        *,
        request_id: int = 1,
        since: int | None = None,
        flags: int = 0,
        limit: int = 0,
    ) -> None:
        if since is not None:
            flags |= Flag.HAS_PREV_REVISION
        request = ClientRequest(
            request_id,
            Op.WATCH,
            key,
            prev_revision=-1 if since is None else since,
            flags=int(flags),
            limit=limit,
            timeout_ms=700,
        )
        self.hub.open(sink, request)


@pytest.fixture
def s() -> Setup:
    return Setup()


def kinds(replies: list[ClientReply]) -> list[tuple[str, int]]:
    return [(message_kind(r.body).name, r.revision) for r in replies]


def event_list(replies: list[ClientReply]) -> list[tuple[int, bytes]]:
    """(revision, key) of every event in ``replies``, in order."""
    return [
        (event.revision, event.key)
        for reply in replies
        if message_kind(reply.body) == WatchKind.EVENTS
        for event in decode_events(reply.body)
    ]


# -- starting ---------------------------------------------------------------------------


def test_a_start_revision_catches_up_from_the_history_at_once(s: Setup) -> None:
    s.put(b"a", b"1")
    s.put(b"b")
    s.put(b"a", b"2")
    sink = Sink()
    s.watch(sink, b"a", since=1)
    replies = sink.take()
    assert kinds(replies) == [("START", 1), ("EVENTS", 3)]
    assert all(r.request_id == 1 and r.status == ReplyStatus.OK for r in replies)
    (event,) = decode_events(replies[1].body)
    assert event == WatchEvent(EVENT_PUT, b"a", b"2", 3, 1, 2, None)
    assert s.barriers == []


def test_a_stale_start_is_the_applied_revision(s: Setup) -> None:
    s.put(b"a")
    s.put(b"a")
    sink = Sink()
    s.watch(sink, b"a", flags=Flag.STALE_READ)
    assert kinds(sink.take()) == [("START", 2)]
    assert s.barriers == []
    s.put(b"a")
    assert event_list(sink.take()) == [(3, b"a")]


def test_a_linearizable_start_waits_for_the_read_index(s: Setup) -> None:
    s.put(b"a")
    sink = Sink()
    s.watch(sink, b"a", request_id=5)
    assert sink.sent == []
    ((barrier, answer),) = s.barriers
    assert barrier.op == Op.READ_INDEX
    assert barrier.request_id == 5
    assert barrier.timeout_ms == 700
    # Writes applied while the read index round runs are not sent yet...
    s.put(b"a")
    s.put(b"a")
    assert sink.sent == []
    # ...and the ones after the read index are, as soon as it is answered.
    answer(ClientReply(5, ReplyStatus.OK, index=2))
    replies = sink.take()
    assert kinds(replies) == [("START", 2), ("EVENTS", 3)]
    assert event_list(replies) == [(3, b"a")]


def test_a_failed_read_index_is_the_watch_answer(s: Setup) -> None:
    sink = Sink()
    s.watch(sink, b"a", request_id=4)
    ((_, answer),) = s.barriers
    refusal = ClientReply(4, ReplyStatus.UNAVAILABLE, body=b"no leader")
    answer(refusal)
    assert sink.take() == [refusal]
    assert len(s.hub) == 0
    s.put(b"a")
    assert sink.sent == []


def test_a_watch_cancelled_before_its_read_index_never_starts(s: Setup) -> None:
    sink = Sink()
    s.watch(sink, b"a", request_id=4)
    ((_, answer),) = s.barriers
    s.hub.cancel(sink, ClientRequest(9, Op.WATCH_CANCEL, limit=4))
    replies = sink.take()
    assert [(r.request_id, r.status) for r in replies] == [(4, ReplyStatus.OK), (9, ReplyStatus.OK)]
    assert message_kind(replies[0].body) == WatchKind.END
    answer(ClientReply(4, ReplyStatus.OK, index=0))
    s.put(b"a")
    assert sink.sent == []
    assert len(s.hub) == 0


def test_a_reused_request_id_after_a_cancel_is_a_new_watch(s: Setup) -> None:
    sink = Sink()
    s.watch(sink, b"a", request_id=4)
    s.hub.cancel(sink, ClientRequest(9, Op.WATCH_CANCEL, limit=4))
    s.watch(sink, b"b", request_id=4, flags=Flag.STALE_READ)
    sink.take()
    # The first watch's read index comes back late: it must not start the second one.
    s.barriers[0][1](ClientReply(4, ReplyStatus.OK, index=0))
    assert sink.sent == []
    s.put(b"b")
    assert event_list(sink.take()) == [(1, b"b")]


@pytest.mark.parametrize(
    ("key", "flags", "since", "words"),
    [
        (b"", 0, 0, "needs a key"),
        (b"a", 0, -1, "out of range"),
        (b"a", 0, -5, "out of range"),
    ],
)
def test_bad_watches_are_refused(s: Setup, key: bytes, flags: int, since: int, words: str) -> None:
    sink = Sink()
    request = ClientRequest(
        3, Op.WATCH, key, prev_revision=since, flags=flags | Flag.HAS_PREV_REVISION
    )
    s.hub.open(sink, request)
    (reply,) = sink.take()
    assert reply.request_id == 3
    assert reply.status == ReplyStatus.BAD_REQUEST
    assert words in reply.body.decode()
    assert len(s.hub) == 0


def test_the_largest_start_revision_is_accepted(s: Setup) -> None:
    sink = Sink()
    s.watch(sink, b"a", since=MAX_REVISION)
    assert kinds(sink.take()) == [("START", MAX_REVISION)]


def test_a_request_id_already_watching_is_refused(s: Setup) -> None:
    sink = Sink()
    other = Sink()
    s.watch(sink, b"a", request_id=2, since=0)
    s.watch(other, b"a", request_id=2, since=0)  # another connection: its own ids
    sink.take()
    other.take()
    s.watch(sink, b"b", request_id=2, since=0)
    (reply,) = sink.take()
    assert reply.status == ReplyStatus.BAD_REQUEST
    assert b"already open" in reply.body
    assert len(s.hub) == 2


def test_an_empty_prefix_watches_every_key(s: Setup) -> None:
    sink = Sink()
    s.watch(sink, b"", since=0, flags=Flag.PREFIX)
    s.put(b"x")
    s.put(b"\xff")
    assert event_list(sink.take()[1:]) == [(1, b"x"), (2, b"\xff")]


# -- what is sent -------------------------------------------------------------------------


def test_only_the_watched_range_is_sent(s: Setup) -> None:
    exact = Sink()
    prefix = Sink()
    s.watch(exact, b"p", since=0)
    s.watch(prefix, b"p/", since=0, flags=Flag.PREFIX)
    exact.take()
    prefix.take()
    s.put(b"p/a")
    s.put(b"q")
    s.put(b"p")
    s.put(b"p/b")
    s.put(b"pp")
    assert event_list(exact.take()) == [(3, b"p")]
    assert event_list(prefix.take()) == [(1, b"p/a"), (4, b"p/b")]


def test_events_carry_the_message_revision_and_prev_on_request(s: Setup) -> None:
    plain = Sink()
    with_prev = Sink()
    s.watch(plain, b"k", since=0)
    s.watch(with_prev, b"k", since=0, flags=Flag.WATCH_PREV)
    plain.take()
    with_prev.take()
    s.put(b"k", b"one")
    s.put(b"k", b"two")
    s.apply(Delete(b"k"))
    plain_events = [e for r in plain.sent for e in decode_events(r.body)]
    prev_events = [e for r in with_prev.sent for e in decode_events(r.body)]
    assert [r.revision for r in plain.sent] == [1, 2, 3]
    assert [e.prev for e in plain_events] == [None, None, None]
    assert [e.prev for e in prev_events] == [
        None,
        KeyValue(b"k", b"one", 1, 1, 1),
        KeyValue(b"k", b"two", 1, 2, 2),
    ]
    assert prev_events[2].type == EVENT_DELETE


def test_a_prefix_delete_arrives_as_one_message(s: Setup) -> None:
    sink = Sink()
    s.put(b"d/1")
    s.put(b"d/2")
    s.put(b"e")
    s.watch(sink, b"d/", since=3, flags=Flag.PREFIX)
    sink.take()
    s.apply(DeletePrefix(b""))
    (reply,) = sink.take()
    assert reply.revision == 4
    assert [(e.type, e.key, e.revision) for e in decode_events(reply.body)] == [
        (EVENT_DELETE, b"d/1", 4),
        (EVENT_DELETE, b"d/2", 4),
    ]


def test_the_position_moves_without_events_and_progress_follows_the_interval(
    s: Setup,
) -> None:
    sink = Sink()
    s.watch(sink, b"a", since=0)
    sink.take()
    s.put(b"other")
    s.noop()
    assert sink.sent == []  # nothing in the range, and the interval has not passed
    s.hub.tick()
    assert sink.sent == []
    s.clock.now += PROGRESS_S
    s.hub.tick()
    assert kinds(sink.take()) == [("PROGRESS", 2)]
    s.hub.tick()
    assert sink.sent == []
    # A change after positions that moved silently: only that change, at its revision.
    s.put(b"a")
    assert kinds(sink.sent) == [("EVENTS", 3)]
    assert event_list(sink.take()) == [(3, b"a")]


def test_an_applied_turn_after_the_interval_is_a_progress_message(s: Setup) -> None:
    sink = Sink()
    s.watch(sink, b"a", since=0)
    sink.take()
    s.clock.now += PROGRESS_S
    s.put(b"other")
    assert kinds(sink.take()) == [("PROGRESS", 1)]
    s.put(b"other")
    assert sink.sent == []


def test_the_request_limit_is_the_progress_interval_in_ms(s: Setup) -> None:
    sink = Sink()
    s.watch(sink, b"a", since=0, limit=250)
    sink.take()
    s.clock.now += 0.2
    s.hub.tick()
    assert sink.sent == []
    s.clock.now += 0.05
    s.hub.tick()
    assert kinds(sink.take()) == [("PROGRESS", 0)]


def test_a_future_start_revision_waits_and_never_goes_back(s: Setup) -> None:
    s.put(b"a")
    sink = Sink()
    s.watch(sink, b"a", since=5)
    assert kinds(sink.take()) == [("START", 5)]
    s.put(b"a")
    s.put(b"a")
    assert sink.sent == []
    s.clock.now += PROGRESS_S
    s.hub.tick()
    # Progress says where the watch is: at its start, not back at the applied revision.
    assert kinds(sink.take()) == [("PROGRESS", 5)]
    s.put(b"a")
    s.put(b"a")
    assert sink.sent == []
    s.put(b"a")
    s.put(b"b")
    assert event_list(sink.take()) == [(6, b"a")]


def test_nothing_new_publishes_nothing(s: Setup) -> None:
    sink = Sink()
    s.watch(sink, b"a", since=0)
    sink.take()
    s.hub.publish()
    s.hub.publish()
    assert sink.sent == []
    assert s.hub.events_sent == 0
    s.put(b"a")
    s.hub.publish()
    assert len(sink.take()) == 1
    assert s.hub.events_sent == 1


# -- resyncs ------------------------------------------------------------------------------


def fill(setup: Setup, count: int, value: bytes = b"v") -> None:
    for i in range(count):
        setup.put(b"r/%02d" % i, value)


def test_a_start_older_than_the_history_gets_the_image() -> None:
    s = Setup(history=3)
    fill(s, 6)
    s.apply(Delete(b"r/01"))
    s.put(b"zz")
    assert s.sm.history.floor > 2
    sink = Sink()
    s.watch(sink, b"r/", since=2, flags=Flag.PREFIX)
    replies = sink.take()
    assert kinds(replies) == [("START", 2), ("RESYNC", 8)]
    items, done = decode_resync(replies[1].body)
    assert done
    assert items == s.sm.range(b"r/")
    assert s.hub.resyncs == 1
    # Then live from the image's revision.
    s.put(b"r/01")
    assert event_list(sink.take()) == [(9, b"r/01")]


def test_the_image_of_one_key_is_that_key_or_nothing() -> None:
    s = Setup(history=1)
    s.put(b"a", b"1")
    s.put(b"b")
    s.put(b"c")
    present = Sink()
    absent = Sink()
    s.watch(present, b"a", since=0)
    s.watch(absent, b"nope", since=0)
    assert decode_resync(present.take()[1].body) == ([KeyValue(b"a", b"1", 1, 1, 1)], True)
    assert decode_resync(absent.take()[1].body) == ([], True)


def test_a_large_image_is_split_and_only_the_last_chunk_is_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watch_hub, "MESSAGE_BYTES", 200)
    s = Setup(history=2)
    fill(s, 10, b"x" * 70)  # over 100 bytes an item as the hub counts: two a chunk
    sink = Sink()
    s.watch(sink, b"r/", since=0, flags=Flag.PREFIX)
    replies = sink.take()[1:]
    assert len(replies) == 6
    chunks = [decode_resync(r.body) for r in replies]
    assert [done for _, done in chunks] == [False] * 5 + [True]
    assert [len(items) for items, _ in chunks] == [2, 2, 2, 2, 2, 0]
    assert all(r.revision == 10 for r in replies)
    assert [kv for items, _ in chunks for kv in items] == s.sm.range(b"r/")


def test_no_image_sends_a_reset_instead() -> None:
    s = Setup(history=2)
    fill(s, 5)
    sink = Sink()
    s.watch(sink, b"", since=1, flags=Flag.PREFIX | Flag.NO_IMAGE)
    assert kinds(sink.take()) == [("START", 1), ("RESET", 5)]
    assert s.hub.resyncs == 1
    s.put(b"new")
    assert event_list(sink.take()) == [(6, b"new")]


def test_a_restored_snapshot_resyncs_the_watches_behind_it(s: Setup) -> None:
    sink = Sink()
    s.watch(sink, b"k", since=0)
    sink.take()
    source = Setup()
    source.put(b"k", b"from-the-leader")
    source.put(b"x")
    source.put(b"y")
    s.sm.restore(source.sm.snapshot())
    s.hub.publish()
    replies = sink.take()
    assert kinds(replies) == [("RESYNC", 3)]
    assert decode_resync(replies[0].body) == ([KeyValue(b"k", b"from-the-leader", 1, 1, 1)], True)


# -- back-pressure ------------------------------------------------------------------------


def test_a_full_connection_holds_the_watch_until_it_drains(s: Setup) -> None:
    sink = Sink()
    s.watch(sink, b"a", since=0)
    sink.take()
    sink.backlog = HIGH_WATER_BYTES + 1
    s.put(b"a", b"1")
    s.put(b"b")
    s.put(b"a", b"2")
    assert sink.sent == []
    assert s.hub.holds == 1
    # Still full: no progress either, however long it stays so.
    s.clock.now += 2 * PROGRESS_S
    s.hub.tick()
    assert sink.sent == []
    sink.backlog = HIGH_WATER_BYTES
    s.hub.tick()
    replies = sink.take()
    assert kinds(replies) == [("EVENTS", 3)]
    assert event_list(replies) == [(1, b"a"), (3, b"a")]
    assert s.hub.holds == 1
    s.put(b"a", b"3")
    assert event_list(sink.take()) == [(4, b"a")]


def test_a_held_watch_also_resumes_on_the_next_applied_turn(s: Setup) -> None:
    sink = Sink()
    s.watch(sink, b"a", since=0)
    sink.take()
    sink.backlog = HIGH_WATER_BYTES + 1
    s.put(b"a")
    sink.backlog = 0
    s.put(b"a")
    assert event_list(sink.take()) == [(1, b"a"), (2, b"a")]


def test_a_watch_held_past_the_history_resyncs() -> None:
    s = Setup(history=2)
    image = Sink()
    reset = Sink()
    s.watch(image, b"r/", since=0, flags=Flag.PREFIX)
    s.watch(reset, b"r/", request_id=2, since=0, flags=Flag.PREFIX | Flag.NO_IMAGE)
    image.take()
    reset.take()
    image.backlog = reset.backlog = HIGH_WATER_BYTES + 1
    fill(s, 5)
    assert image.sent == reset.sent == []
    image.backlog = reset.backlog = 0
    s.hub.tick()
    replies = image.take()
    assert kinds(replies) == [("RESYNC", 5)]
    assert decode_resync(replies[0].body)[0] == s.sm.range(b"r/")
    assert kinds(reset.take()) == [("RESET", 5)]


def test_a_large_catch_up_is_split_at_whole_revisions(
    s: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch_hub, "MESSAGE_BYTES", 300)
    for i in range(4):
        s.put(b"p/%d" % i, b"x" * 50)
    s.apply(DeletePrefix(b"p/"))  # four changes at revision 5
    for i in range(3):
        s.put(b"p/%d" % i, b"y" * 50)
    s.put(b"q")
    sink = Sink()
    s.watch(sink, b"p/", since=0, flags=Flag.PREFIX)
    replies = sink.take()[1:]
    assert len(replies) > 2
    through = 0
    delivered: list[tuple[int, bytes]] = []
    for reply in replies[:-1]:
        revisions = [e.revision for e in decode_events(reply.body)]
        # Complete through its last change, and never half of a revision.
        assert reply.revision == revisions[-1]
        assert min(revisions) > through
        through = reply.revision
        delivered += event_list([reply])
    assert replies[-1].revision == 9
    delivered += event_list(replies[-1:])
    assert delivered == [(c.revision, c.key) for c in s.sm.history.after(0) or [] if c.key != b"q"]
    assert 5 in {r.revision for r in replies}  # the prefix delete ended a message


class FillingSink(Sink):
    """A connection whose backlog passes the high-water mark after ``room`` messages."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room
        self.count = 0

    def send_watch(self, reply: ClientReply) -> None:
        super().send_watch(reply)
        self.count += 1

    def write_backlog(self) -> int:
        return HIGH_WATER_BYTES + 1 if self.count >= self.room else 0


def test_a_catch_up_that_fills_the_connection_holds_after_the_last_revision_sent(
    s: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch_hub, "MESSAGE_BYTES", 100)
    for i in range(8):
        s.put(b"k", b"%d" % i * 60)
    sink = FillingSink(room=3)  # the START and two messages of events
    s.watch(sink, b"k", since=0)
    first = sink.take()
    assert kinds(first)[0] == ("START", 0)
    assert len(first) == 3
    assert s.hub.holds == 1
    held_at = first[-1].revision
    assert held_at < 8
    s.hub.tick()
    assert sink.sent == []  # still full
    sink.room = 1000
    s.hub.tick()
    rest = sink.take()
    assert event_list(first + rest) == [(i, b"k") for i in range(1, 9)]
    assert min(r for r, _ in event_list(rest)) == held_at + 1
    assert rest[-1].revision == 8


# -- ending -------------------------------------------------------------------------------


def test_cancel_ends_the_stream(s: Setup) -> None:
    sink = Sink()
    s.put(b"a")
    s.watch(sink, b"a", request_id=7, since=0)
    sink.take()
    s.hub.cancel(sink, ClientRequest(8, Op.WATCH_CANCEL, limit=7))
    end, ok = sink.take()
    assert (end.request_id, end.status, end.revision) == (7, ReplyStatus.OK, 1)
    assert end.body == bytes((WatchKind.END,)) + b"cancelled"
    assert (ok.request_id, ok.status) == (8, ReplyStatus.OK)
    s.put(b"a")
    s.clock.now += PROGRESS_S
    s.hub.tick()
    assert sink.sent == []
    assert len(s.hub) == 0


def test_cancelling_an_unknown_watch_is_not_found(s: Setup) -> None:
    sink = Sink()
    other = Sink()
    s.watch(other, b"a", request_id=7, since=0)
    s.hub.cancel(sink, ClientRequest(8, Op.WATCH_CANCEL, limit=7))  # another connection's
    (reply,) = sink.take()
    assert (reply.request_id, reply.status) == (8, ReplyStatus.NOT_FOUND)
    assert b"7" in reply.body
    assert len(s.hub) == 1


def test_drop_forgets_a_connection_s_watches_only(s: Setup) -> None:
    gone = Sink()
    stays = Sink()
    s.watch(gone, b"a", request_id=1, since=0)
    s.watch(gone, b"b", request_id=2, since=0)
    s.watch(stays, b"a", request_id=1, since=0)
    gone.take()
    stays.take()
    s.hub.drop(gone)
    assert len(s.hub) == 1
    s.put(b"a")
    s.put(b"b")
    assert gone.sent == []
    assert event_list(stays.take()) == [(1, b"a")]


def test_close_all_ends_every_watch(s: Setup) -> None:
    first = Sink()
    second = Sink()
    s.watch(first, b"a", since=0)
    s.watch(second, b"b", request_id=3, flags=Flag.STALE_READ)
    first.take()
    second.take()
    s.put(b"a")
    first.take()
    s.hub.close_all("the node is shutting down")
    assert len(s.hub) == 0
    (end,) = first.take()
    assert (end.request_id, end.revision) == (1, 1)
    assert end.body == bytes((WatchKind.END,)) + b"the node is shutting down"
    (end,) = second.take()
    assert (end.request_id, end.revision) == (3, 0)
    s.put(b"a")
    assert first.sent == []


# -- through the IpcServer ----------------------------------------------------------------


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # A short directory: a Unix socket path must fit in about 100 bytes.
    path = Path(tempfile.mkdtemp(prefix="rkv-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Node:
    """A Raft process in miniature: writes applied at once, the hub published after each."""

    def __init__(self) -> None:
        self.sm = KVStateMachine()
        self.hub = WatchHub(lambda: self.sm, self.submit, asyncio.get_running_loop().time)

    def submit(self, request: ClientRequest, reply: ReplyFn) -> None:
        if request.op in KV_WRITE_OPS:
            result = self.sm.apply(self.sm.applied_index + 1, command_for(request))
            reply(reply_for_result(request.request_id, 1, result))
            self.hub.publish()
        else:
            reply(read_reply(self.sm, request, 1))


async def read_frames(reader: asyncio.StreamReader, decoder: FrameDecoder, count: int) -> list:
    frames: list[object] = []
    async with asyncio.timeout(5):
        while len(frames) < count:
            data = await reader.read(65536)
            assert data, "the server hung up"
            frames.extend(decoder.feed(data))
    assert len(frames) == count
    return frames


def test_watches_through_the_ipc_server(socket_dir: Path) -> None:
    async def scenario() -> None:
        node = Node()
        server = IpcServer(
            socket_dir / "raft.sock", node.submit, max_frame_size=1 << 20, watches=node.hub
        )
        await server.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(server.path))
            decoder = FrameDecoder()
            writer.write(
                encode(Handshake(PROTOCOL_VERSION, 0, 0))
                + encode_batch(
                    [
                        ClientRequest(1, Op.PUT, b"w/a", b"1"),
                        # Linearizable: through the read index (the node's submit).
                        ClientRequest(2, Op.WATCH, b"w/", flags=int(Flag.PREFIX)),
                        ClientRequest(3, Op.WATCH, b"w/a", prev_revision=0, flags=2),
                    ]
                )
            )
            frames = await read_frames(reader, decoder, 5)
            assert isinstance(frames[0], HandshakeReply)
            replies = [f for f in frames[1:] if isinstance(f, ClientReply)]
            by_id: dict[int, list[ClientReply]] = {}
            for reply in replies:
                by_id.setdefault(reply.request_id, []).append(reply)
            assert by_id[1][0].status == ReplyStatus.OK
            assert kinds(by_id[2]) == [("START", 1)]
            assert kinds(by_id[3]) == [("START", 0), ("EVENTS", 1)]

            writer.write(encode(ClientRequest(4, Op.PUT, b"w/b", b"2")))
            # The write's reply and the prefix watch's event; the key watch gets nothing.
            frames = await read_frames(reader, decoder, 2)
            assert sorted(f.request_id for f in frames) == [2, 4]
            assert event_list([f for f in frames if f.request_id == 2]) == [(2, b"w/b")]

            writer.write(
                encode_batch(
                    [
                        ClientRequest(5, Op.WATCH_CANCEL, limit=2),
                        ClientRequest(6, Op.WATCH_CANCEL, limit=99),
                    ]
                )
            )
            frames = await read_frames(reader, decoder, 3)
            assert [(f.request_id, f.status) for f in frames] == [
                (2, ReplyStatus.OK),
                (5, ReplyStatus.OK),
                (6, ReplyStatus.NOT_FOUND),
            ]
            assert message_kind(frames[0].body) == WatchKind.END
            assert len(node.hub) == 1
            (connection,) = server.connections
            assert connection.write_backlog() == 0
            writer.close()
            async with asyncio.timeout(5):
                while server.connections:
                    await asyncio.sleep(0.01)
            assert len(node.hub) == 0  # the connection's watches went with it
        finally:
            await server.stop()

    asyncio.run(scenario())


# -- READ_INDEX, the hub's linearizable "now" -----------------------------------------------


def test_read_index_is_the_applied_index_after_a_read_index_round() -> None:
    driver, _ = single_node()
    elect(driver)
    replies: list[ClientReply] = []
    driver.submit(ClientRequest(1, Op.PUT, b"k", b"v"), replies.append, now=1.0)
    driver.process()
    (put,) = replies
    driver.submit(ClientRequest(2, Op.READ_INDEX), replies.append, now=1.0)
    assert replies == [put]  # a read index round first, in the driver's turn
    driver.process()
    (_, answer) = replies
    assert (answer.request_id, answer.status, answer.body) == (2, ReplyStatus.OK, b"")
    assert answer.index == driver.applied_index >= put.index
    assert read_reply(KVStateMachine(), ClientRequest(3, Op.READ_INDEX), 4).index == 0


def test_a_connection_may_hold_only_so_many_watches(
    s: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch_hub, "MAX_WATCHES_PER_CONNECTION", 2)
    sink, other = Sink(), Sink()
    s.watch(sink, b"a", request_id=1, since=0)
    s.watch(sink, b"b", request_id=2, since=0)
    s.watch(sink, b"c", request_id=3, since=0)
    refused = sink.take()[-1]
    assert (refused.request_id, refused.status) == (3, ReplyStatus.BAD_REQUEST)
    assert b"already has 2 watches" in refused.body
    s.watch(other, b"c", request_id=3, since=0)  # another connection is not affected
    assert other.take()[0].status == ReplyStatus.OK
    s.hub.cancel(sink, ClientRequest(9, Op.WATCH_CANCEL, limit=1))
    s.watch(sink, b"c", request_id=4, since=0)  # a cancelled watch frees its place
    assert sink.take()[-1].status == ReplyStatus.OK
    s.hub.drop(sink)
    for request_id in (5, 6):
        s.watch(sink, b"d", request_id=request_id, since=0)
    assert all(r.status == ReplyStatus.OK for r in sink.take())
