"""``AsyncNativeClient.watch`` and ``NativeClient.watch`` against a fake node: a TCP
server speaking the native protocol, whose answers to each WATCH a test scripts (a
stream of replies with the request's id, a dropped connection, an error status)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from raftkv.client import native
from raftkv.client.native import AsyncNativeClient, NativeClient, WatchEvent
from raftkv.kv.results import KeyValue
from raftkv.wire.errors import BadRequestError, RaftkvError, UnavailableError
from raftkv.wire.protocol import Flag, Op, ReplyStatus
from raftkv.wire.watch_frames import (
    EVENT_DELETE,
    EVENT_PUT,
    WatchKind,
    encode_events,
    encode_message,
    encode_resync,
)
from raftkv.wire.watch_frames import WatchEvent as WireEvent
from raftkv_ext.codec import (
    ClientReply,
    ClientRequest,
    FrameDecoder,
    Handshake,
    HandshakeReply,
    encode,
)

NODE = 3
_T = TypeVar("_T")


def run(scenario: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(asyncio.wait_for(scenario, 30))


@dataclass
class Link:
    """One client connection, as the fake node sees it."""

    number: int
    writer: asyncio.StreamWriter

    def send(self, request: ClientRequest, revision: int, body: bytes) -> None:
        self.writer.write(
            encode(ClientReply(request.request_id, ReplyStatus.OK, 0, 0, revision, body))
        )

    def fail(self, request: ClientRequest, status: ReplyStatus, message: str) -> None:
        self.writer.write(encode(ClientReply(request.request_id, status, body=message.encode())))

    def hang_up(self) -> None:
        self.writer.close()


Script = Callable[[Link, ClientRequest, int], None]
"""Answers the ``n``-th WATCH (from 0) on ``link``."""


@dataclass
class FakeNode:
    script: Script
    requests: list[tuple[int, ClientRequest]] = field(default_factory=list)
    port: int = 0

    def watches(self) -> list[ClientRequest]:
        return [request for _, request in self.requests if request.op == Op.WATCH]

    def cancels(self) -> list[ClientRequest]:
        return [request for _, request in self.requests if request.op == Op.WATCH_CANCEL]

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[FakeNode]:
        links = 0

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal links
            link = Link(links, writer)
            links += 1
            decoder = FrameDecoder()
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(1 << 16):
                    for frame in decoder.feed(data):
                        self._answer(link, frame)
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()

    def _answer(self, link: Link, frame: object) -> None:
        if isinstance(frame, Handshake):
            link.writer.write(encode(HandshakeReply(True, NODE)))
            return
        assert isinstance(frame, ClientRequest)
        self.requests.append((link.number, frame))
        if frame.op == Op.WATCH:
            self.script(link, frame, len(self.watches()) - 1)
        elif frame.op == Op.WATCH_CANCEL:
            watch = next(r for _, r in self.requests if r.request_id == frame.limit)
            link.send(frame, 0, b"")
            link.send(watch, 0, encode_message(WatchKind.END, "cancelled"))


def events(*items: WireEvent, with_prev: bool = False) -> bytes:
    return encode_events(items, with_prev=with_prev)


def wire_put(key: bytes, value: bytes, revision: int, prev: KeyValue | None = None) -> WireEvent:
    return WireEvent(EVENT_PUT, key, value, revision, revision, 1, prev)


def put(key: bytes, value: bytes, revision: int, prev: KeyValue | None = None) -> WatchEvent:
    return WatchEvent("put", revision, key, value, revision, revision, 1, prev)


START = encode_message(WatchKind.START)
PROGRESS = encode_message(WatchKind.PROGRESS)


@contextlib.asynccontextmanager
async def connected(script: Script) -> AsyncIterator[tuple[FakeNode, AsyncNativeClient]]:
    """A fake node answering with ``script``, and a client connected to it."""
    async with (
        FakeNode(script).serving() as node,
        AsyncNativeClient("127.0.0.1", node.port) as kv,
    ):
        yield node, kv


async def take(watch: AsyncIterator[WatchEvent], count: int) -> list[WatchEvent]:
    return [await anext(watch) for _ in range(count)]


# -- streams ------------------------------------------------------------------------------


def test_a_watch_takes_every_message_of_its_stream() -> None:
    prev = KeyValue(b"app/k", b"old", 3, 9, 4)
    image = [KeyValue(b"app/a", b"1", 15, 15, 1), KeyValue(b"app/\xff", b"\x00", 16, 18, 2)]

    def script(link: Link, request: ClientRequest, n: int) -> None:
        link.send(request, 10, START)
        link.send(
            request,
            12,
            events(
                wire_put(b"app/k", b"new", 11, prev),
                WireEvent(EVENT_DELETE, b"app/j", b"", 12, 0, 0, None),
                with_prev=True,
            ),
        )
        link.send(request, 14, PROGRESS)
        link.send(request, 20, encode_resync(image[:1], done=False))
        link.send(request, 20, encode_resync(image[1:], done=True))
        link.send(request, 21, events(wire_put(b"app/z", b"z", 21)))

    async def scenario() -> tuple[FakeNode, list[WatchEvent], int, int, list[WatchEvent]]:
        async with connected(script) as (node, kv):
            watch = await kv.watch(prefix="app/", prev=True)
            started = watch.revision
            seen = await take(watch, 4)
            await watch.close()
            return node, seen, started, watch.revision, [e async for e in watch]

    node, seen, started, revision, after_close = run(scenario())
    assert started == 10
    assert seen == [
        put(b"app/k", b"new", 11, prev),
        WatchEvent("delete", 12, b"app/j"),
        WatchEvent("resync", 20, items=tuple(image)),
        put(b"app/z", b"z", 21),
    ]
    assert revision == 21
    assert after_close == []
    (request,) = node.watches()
    assert (request.key, request.flags) == (b"app/", Flag.PREFIX | Flag.WATCH_PREV)
    assert request.prev_revision == -1  # from now: the node picks the start
    assert request.limit == 5000  # the progress interval, in ms
    (cancel,) = node.cancels()
    assert cancel.limit == request.request_id


def test_a_lost_connection_is_resumed_after_the_last_full_message() -> None:
    def script(link: Link, request: ClientRequest, n: int) -> None:
        if n == 0:
            link.send(request, 5, START)
            link.send(request, 7, events(wire_put(b"k", b"a", 6), wire_put(b"k", b"b", 7)))
            link.send(request, 30, encode_resync([KeyValue(b"k", b"x", 1, 1, 1)], done=False))
            link.hang_up()
        else:
            link.send(request, request.prev_revision, START)
            # The change at 7 again (a node should not): dropped.
            link.send(request, 8, events(wire_put(b"k", b"b", 7), wire_put(b"k", b"c", 8)))

    async def scenario() -> tuple[FakeNode, list[WatchEvent], int]:
        async with connected(script) as (node, kv):
            async with await kv.watch("k", since=5) as watch:
                seen = await take(watch, 3)
            return node, seen, kv.connections_made

    node, seen, connections = run(scenario())
    assert seen == [put(b"k", b"a", 6), put(b"k", b"b", 7), put(b"k", b"c", 8)]
    assert connections == 2
    first, second = node.watches()
    assert (first.flags, first.prev_revision) == (Flag.HAS_PREV_REVISION, 5)
    # Half a resync is not a position: the watch resumes after 7.
    assert (second.flags, second.prev_revision) == (Flag.HAS_PREV_REVISION, 7)
    assert [link for link, request in node.requests if request.op == Op.WATCH] == [0, 1]


def test_an_end_the_client_did_not_ask_for_is_resumed() -> None:
    def script(link: Link, request: ClientRequest, n: int) -> None:
        if n == 0:
            link.send(request, 1, START)
            link.send(request, 2, events(wire_put(b"k", b"a", 2)))
            link.send(request, 2, encode_message(WatchKind.END, "history compacted"))
        else:
            link.send(request, 2, START)
            link.send(request, 3, events(wire_put(b"k", b"b", 3)))

    async def scenario() -> tuple[FakeNode, list[WatchEvent], int]:
        async with connected(script) as (node, kv), await kv.watch("k") as watch:
            return node, await take(watch, 2), kv.connections_made

    node, seen, connections = run(scenario())
    assert seen == [put(b"k", b"a", 2), put(b"k", b"b", 3)]
    assert connections == 1  # the same connection, a new request id
    first, second = node.watches()
    assert second.request_id != first.request_id
    assert second.prev_revision == 2


def test_a_silent_node_is_left_and_the_watch_resumed() -> None:
    def script(link: Link, request: ClientRequest, n: int) -> None:
        link.send(request, 4, START)
        if n == 1:
            link.send(request, 5, events(wire_put(b"k", b"v", 5)))
        # n == 0: nothing more, not even progress: a node gone without a FIN

    async def scenario() -> tuple[FakeNode, list[WatchEvent], int]:
        async with (
            connected(script) as (node, kv),
            await kv.watch("k", progress_interval=0.1) as watch,
        ):
            return node, await take(watch, 1), kv.connections_made

    node, seen, connections = run(scenario())
    assert seen == [put(b"k", b"v", 5)]
    assert connections == 2
    assert [request.limit for request in node.watches()] == [100, 100]
    assert node.watches()[1].prev_revision == 4


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [(ReplyStatus.BAD_REQUEST, BadRequestError), (ReplyStatus.UNAVAILABLE, UnavailableError)],
)
def test_an_error_reply_to_a_new_watch_raises(
    status: ReplyStatus, error: type[RaftkvError]
) -> None:
    def script(link: Link, request: ClientRequest, n: int) -> None:
        link.fail(request, status, "no leader for the read index")

    async def scenario() -> tuple[FakeNode, RaftkvError]:
        async with connected(script) as (node, kv):
            with pytest.raises(RaftkvError) as raised:
                await kv.watch("k")
            return node, raised.value

    node, raised = run(scenario())
    assert type(raised) is error
    assert "no leader for the read index" in raised.message
    assert len(node.watches()) == 1  # starting is not retried: the caller decides


def test_an_unavailable_node_is_retried_once_the_watch_has_started() -> None:
    def script(link: Link, request: ClientRequest, n: int) -> None:
        if n == 0:
            link.send(request, 1, START)
            link.hang_up()
        elif n == 1:
            link.fail(request, ReplyStatus.UNAVAILABLE, "shutting down")
        else:
            link.send(request, 1, START)
            link.send(request, 2, events(wire_put(b"k", b"v", 2)))

    async def scenario() -> tuple[FakeNode, list[WatchEvent]]:
        async with connected(script) as (node, kv), await kv.watch("k") as watch:
            return node, await take(watch, 1)

    node, seen = run(scenario())
    assert seen == [put(b"k", b"v", 2)]
    assert [request.prev_revision for request in node.watches()] == [-1, 1, 1]


def test_a_watch_that_cannot_be_resumed_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "WATCH_RESUME_FOR", 0.2)

    def script(link: Link, request: ClientRequest, n: int) -> None:
        if n == 0:
            link.send(request, 1, START)
            link.hang_up()
        else:
            link.fail(request, ReplyStatus.UNAVAILABLE, "no leader")

    async def scenario() -> tuple[FakeNode, UnavailableError, list[WatchEvent]]:
        async with connected(script) as (node, kv):
            watch = await kv.watch("k")
            with pytest.raises(UnavailableError) as raised:
                await anext(watch)
            return node, raised.value, [e async for e in watch]

    node, error, after = run(scenario())
    assert "could not resume the watch" in error.message and "no leader" in error.message
    assert error.status == 503
    assert after == []
    assert len(node.watches()) >= 3  # the first, then at least two attempts to resume
    assert node.cancels() == []  # the node had no watch left to cancel


def test_a_malformed_message_ends_the_watch_with_an_error() -> None:
    def script(link: Link, request: ClientRequest, n: int) -> None:
        link.send(request, 1, START)
        link.send(request, 2, b"\x02\x01")

    async def scenario() -> tuple[FakeNode, RaftkvError, list[WatchEvent]]:
        async with connected(script) as (node, kv):
            watch = await kv.watch("k")
            with pytest.raises(RaftkvError, match="malformed watch message") as raised:
                await anext(watch)
            return node, raised.value, [e async for e in watch]

    node, _, after = run(scenario())
    assert after == []
    assert len(node.cancels()) == 1  # the node is told to stop it


def test_arguments_are_checked_before_anything_is_sent() -> None:
    async def scenario() -> None:
        kv = AsyncNativeClient("127.0.0.1", 1)
        with pytest.raises(ValueError, match="exactly one of key and prefix"):
            await kv.watch()
        with pytest.raises(ValueError, match="exactly one of key and prefix"):
            await kv.watch("k", prefix="p")
        with pytest.raises(ValueError, match="key must not be empty"):
            await kv.watch(b"")
        with pytest.raises(ValueError, match="since"):
            await kv.watch("k", since=2**63)
        with pytest.raises(ValueError, match="progress_interval"):
            await kv.watch("k", progress_interval=-1)
        assert kv.connections_made == 0

    run(scenario())


# -- closing ------------------------------------------------------------------------------


def test_closing_wakes_a_task_waiting_for_the_next_event() -> None:
    def script(link: Link, request: ClientRequest, n: int) -> None:
        link.send(request, 1, START)  # then a quiet stream

    async def scenario() -> tuple[FakeNode, list[WatchEvent]]:
        async with connected(script) as (node, kv):
            watch = await kv.watch(prefix=b"", progress_interval=60)
            waiting = asyncio.create_task(take_all(watch))
            await asyncio.sleep(0)  # let it wait
            await watch.close()
            return node, await waiting

    async def take_all(watch: AsyncIterator[WatchEvent]) -> list[WatchEvent]:
        return [event async for event in watch]

    node, seen = run(scenario())
    assert seen == []
    assert len(node.cancels()) == 1


def test_the_blocking_client_watches_too() -> None:
    def script(link: Link, request: ClientRequest, n: int) -> None:
        link.send(request, 3, START)
        link.send(request, 4, events(wire_put(b"k", b"v", 4)))

    async def scenario() -> tuple[FakeNode, list[WatchEvent], int]:
        async with FakeNode(script).serving() as node:
            # The blocking client runs its own loop: drive it from a thread.
            def use() -> tuple[list[WatchEvent], int]:
                with NativeClient("127.0.0.1", node.port) as kv, kv.watch("k") as watch:
                    assert watch.revision == 3
                    return [next(watch)], watch.revision

            seen, revision = await asyncio.to_thread(use)
            return node, seen, revision

    node, seen, revision = run(scenario())
    assert seen == [put(b"k", b"v", 4)]
    assert revision == 4
    assert len(node.cancels()) == 1
