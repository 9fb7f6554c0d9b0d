"""``Client.watch`` and ``AsyncClient.watch`` against ``httpx.MockTransport`` nodes that
serve scripted NDJSON streams and break them where a test says: the requests sent
(route, query, ``since`` of each reconnection, timeouts), the events yielded, and the
errors raised."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from raftkv.client import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    PermissionDeniedError,
    RaftkvError,
    UnavailableError,
    WatchEvent,
)
from raftkv.kv.results import KeyValue


def msg(kind: str, revision: int, **fields: Any) -> bytes:
    return json.dumps({"kind": kind, "revision": revision, **fields}).encode() + b"\n"


def put_json(key: str, value: str, revision: int, version: int = 1) -> dict[str, Any]:
    return {
        "type": "put",
        "key": key,
        "value": value,
        "revision": revision,
        "create_revision": revision,
        "mod_revision": revision,
        "version": version,
    }


def put(key: bytes, value: bytes, revision: int, version: int = 1) -> WatchEvent:
    return WatchEvent("put", revision, key, value, revision, revision, version)


@dataclass
class Stream:
    """One answer: a status, the chunks of its body, then ``error`` raised (a broken
    connection) or a clean end. A chunk may be cut anywhere, even inside a line."""

    chunks: list[bytes]
    error: Exception | None = None
    status: int = 200
    gate: threading.Event | None = None
    """When given, the chunks after the first wait for it (a node that is quiet), and
    ``waiting`` is set once the reader waits."""
    waiting: threading.Event = field(default_factory=threading.Event)
    hang: bool = False
    """Async only: after the chunks, wait for ever instead of ending."""
    closed: bool = False


class _Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    def __iter__(self) -> Iterator[bytes]:
        for index, chunk in enumerate(self.stream.chunks):
            if index and self.stream.gate is not None:
                self.stream.waiting.set()
                self.stream.gate.wait()
            yield chunk
        if self.stream.error is not None:
            raise self.stream.error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.stream.chunks:
            yield chunk
        if self.stream.hang:
            await asyncio.Event().wait()
        if self.stream.error is not None:
            raise self.stream.error

    def close(self) -> None:
        self.stream.closed = True

    async def aclose(self) -> None:
        self.stream.closed = True


@dataclass
class Nodes:
    """Nodes n1 and n2: each request is answered by the next of ``answers`` (a Stream,
    or an exception to raise as the transport's) and recorded."""

    answers: list[Stream | Exception]
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.answers:
            # The script is over: a node that is down from now on.
            raise httpx.ConnectError("no more answers", request=request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if answer.status != 200:
            return httpx.Response(answer.status, json={"error": f"status {answer.status}"})
        headers = {"Content-Type": "application/x-ndjson"}
        return httpx.Response(200, headers=headers, stream=_Body(answer))

    def client(self, retry_for: float = 5.0) -> Client:
        return Client(
            "http://n1:8001,http://n2:8001",
            transport=httpx.MockTransport(self),
            retry_for=retry_for,
        )

    def async_client(self, retry_for: float = 5.0) -> AsyncClient:
        return AsyncClient(
            "http://n1:8001,http://n2:8001",
            transport=httpx.MockTransport(self),
            retry_for=retry_for,
        )

    def sent(self) -> list[tuple[str | None, str | None]]:
        """(host, since) of each request."""
        return [(r.url.host, r.url.params.get("since")) for r in self.requests]


def take(events: Iterator[WatchEvent], count: int) -> list[WatchEvent]:
    return [next(events) for _ in range(count)]


# -- the stream and its resumption --------------------------------------------------------


def test_a_broken_stream_resumes_on_the_next_node_after_the_last_full_message() -> None:
    first = Stream(
        [
            msg("start", 10),
            msg("events", 11, events=[put_json("app/a", "1", 11)]),
            # Two changes at 12 and 13, in one message; the chunk cuts the next line.
            msg("events", 13, events=[put_json("app/b", "2", 12), put_json("app/c", "3", 13)])
            + msg("events", 14, events=[put_json("app/d", "lost", 14)])[:25],
        ],
        error=httpx.ReadError("connection reset"),
    )
    second = Stream(
        [msg("start", 13), msg("events", 14, events=[put_json("app/d", "4", 14)])],
    )
    nodes = Nodes([first, second])
    with nodes.client() as client, client.watch(prefix="app/") as watch:
        assert watch.revision == 10
        assert take(watch, 4) == [
            put(b"app/a", b"1", 11),
            put(b"app/b", b"2", 12),
            put(b"app/c", b"3", 13),
            put(b"app/d", b"4", 14),
        ]
        assert watch.revision == 14
    # The message cut by the break was not taken: the resume asked for what follows 13.
    assert nodes.sent() == [("n1", None), ("n2", "13")]
    assert first.closed and second.closed
    request = nodes.requests[0]
    assert request.url.path == "/watch"
    assert request.url.params["prefix"] == "app/"
    assert request.url.params["progress"] == "5"
    assert "prev" not in request.url.params
    assert request.headers["accept"] == "application/x-ndjson"
    # The read timeout is three progress intervals: silence that long is a dead node.
    assert request.extensions["timeout"]["read"] == 15.0


def test_a_stream_that_ends_or_falls_silent_is_replaced() -> None:
    nodes = Nodes(
        [
            Stream([msg("start", 3), msg("progress", 7)]),  # ends cleanly
            Stream([msg("start", 7)], error=httpx.ReadTimeout("silent")),
            Stream([msg("start", 7), msg("events", 8, events=[put_json("k", "v", 8)])]),
        ]
    )
    with nodes.client() as client, client.watch("k", progress_interval=0.5) as watch:
        assert next(watch) == put(b"k", b"v", 8)
    assert nodes.sent() == [("n1", None), ("n2", "7"), ("n1", "7")]
    assert nodes.requests[0].url.path == "/watch/k"
    assert nodes.requests[0].url.params["progress"] == "0.5"
    assert nodes.requests[0].extensions["timeout"]["read"] == 1.5


def test_events_a_node_sends_again_are_not_yielded_twice() -> None:
    nodes = Nodes(
        [
            Stream(
                [msg("start", 1), msg("events", 2, events=[put_json("k", "a", 2)])],
                error=httpx.RemoteProtocolError("peer closed"),
            ),
            # A node that (against the protocol) repeats the change at 2.
            Stream(
                [
                    msg("start", 1),
                    msg("events", 2, events=[put_json("k", "a", 2)]),
                    msg("events", 3, events=[put_json("k", "a", 2), put_json("k", "b", 3, 2)]),
                ]
            ),
        ]
    )
    with nodes.client() as client, client.watch("k") as watch:
        assert take(watch, 2) == [put(b"k", b"a", 2), put(b"k", b"b", 3, 2)]
    assert nodes.sent() == [("n1", None), ("n2", "2")]


def test_a_resync_is_one_event_even_when_the_stream_breaks_inside_it() -> None:
    item_a = {"key": "a", "value": "1", "create_revision": 4, "mod_revision": 4, "version": 1}
    item_b = {
        "key_base64": "/w==",
        "value": "2",
        "create_revision": 5,
        "mod_revision": 9,
        "version": 3,
    }
    nodes = Nodes(
        [
            Stream(
                [msg("start", 2), msg("resync", 40, items=[item_a], done=False)],
                error=httpx.ReadError("reset"),
            ),
            Stream(
                [
                    msg("start", 2),
                    msg("resync", 41, items=[item_a], done=False),
                    msg("resync", 41, items=[item_b], done=True),
                    msg("events", 42, events=[{"type": "delete", "key": "a", "revision": 42}]),
                ]
            ),
        ]
    )
    with nodes.client() as client, client.watch(prefix="", since=2) as watch:
        resync = next(watch)
        assert resync == WatchEvent(
            "resync",
            41,
            items=(KeyValue(b"a", b"1", 4, 4, 1), KeyValue(b"\xff", b"2", 5, 9, 3)),
        )
        assert watch.revision == 41
        assert next(watch) == WatchEvent("delete", 42, b"a")
    # Half an image is no position to resume from: the second stream still asks after 2.
    assert nodes.sent() == [("n1", "2"), ("n2", "2")]
    assert nodes.requests[0].url.params["prefix"] == ""


def test_progress_always_moves_the_revision_and_is_yielded_when_asked() -> None:
    def script() -> list[Stream | Exception]:
        return [
            Stream(
                [
                    msg("start", 5),
                    msg("progress", 9),
                    msg("events", 10, events=[put_json("k", "v", 10)]),
                    msg("progress", 12),
                ],
            )
        ]

    with Nodes(script()).client() as client, client.watch("k") as watch:
        assert next(watch) == put(b"k", b"v", 10)
        assert watch.revision == 10
    with Nodes(script()).client() as client, client.watch("k", with_progress=True) as watch:
        assert take(watch, 3) == [
            WatchEvent("progress", 9),
            put(b"k", b"v", 10),
            WatchEvent("progress", 12),
        ]
        assert watch.revision == 12


def test_keys_and_options_go_into_the_url() -> None:
    nodes = Nodes([Stream([msg("start", 1)]), Stream([msg("start", 1)])])
    with nodes.client() as client:
        client.watch("dir/a b/..", prev=True, since=0).close()
        client.watch(prefix="ü&x/").close()
    key_request, prefix_request = nodes.requests
    assert key_request.url.raw_path == b"/watch/dir/a%20b/%2E%2E?prev=true&progress=5&since=0"
    assert prefix_request.url.raw_path == b"/watch?prefix=%C3%BC%26x%2F&progress=5"


def test_arguments_are_checked_before_anything_is_sent() -> None:
    nodes = Nodes([])
    with nodes.client() as client:
        with pytest.raises(ValueError, match="exactly one of key and prefix"):
            client.watch()
        with pytest.raises(ValueError, match="exactly one of key and prefix"):
            client.watch("k", prefix="p")
        with pytest.raises(ValueError, match="must not be empty"):
            client.watch("")
        with pytest.raises(ValueError, match="since"):
            client.watch("k", since=-1)
        with pytest.raises(ValueError, match="progress_interval"):
            client.watch("k", progress_interval=0)
    assert nodes.requests == []


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (429, RaftkvError),
    ],
)
def test_a_refusal_raises_at_once(status: int, error: type[RaftkvError]) -> None:
    nodes = Nodes([Stream([], status=status)])
    with nodes.client() as client, pytest.raises(RaftkvError) as raised:
        client.watch("k")
    assert type(raised.value) is error and raised.value.status == status
    assert raised.value.message == f"status {status}"
    assert len(nodes.requests) == 1


def test_a_refusal_on_reconnection_ends_the_iteration_with_it() -> None:
    nodes = Nodes(
        [
            Stream([msg("start", 1)], error=httpx.ReadError("reset")),
            Stream([], status=403),
        ]
    )
    with nodes.client() as client, client.watch("k") as watch:
        with pytest.raises(PermissionDeniedError):
            next(watch)
        with pytest.raises(StopIteration):
            next(watch)


def test_failing_nodes_are_tried_in_turn_until_retry_for_runs_out() -> None:
    nodes = Nodes(
        [
            Stream([], status=503),
            httpx.ConnectError("refused"),
            Stream([], status=500),
            Stream([msg("start", 4)]),
        ]
    )
    with nodes.client() as client, client.watch("k") as watch:
        assert watch.revision == 4
    assert [host for host, _ in nodes.sent()] == ["n1", "n2", "n1", "n2"]

    down = Nodes([Stream([], status=503)])  # then nothing but connection errors
    with down.client(retry_for=0.2) as client, pytest.raises(UnavailableError) as raised:
        client.watch("k")
    assert "no node could serve it within 0.2s" in raised.value.message
    assert len(down.requests) >= 2


def test_a_malformed_message_is_an_error() -> None:
    nodes = Nodes([Stream([msg("start", 1), b'{"kind": "events"}\n'])])
    with (
        nodes.client() as client,
        client.watch("k") as watch,
        pytest.raises(RaftkvError, match="malformed watch message"),
    ):
        next(watch)


# -- closing ------------------------------------------------------------------------------


def test_closing_from_another_thread_stops_the_iteration_at_the_next_message() -> None:
    gate = threading.Event()
    stream = Stream([msg("start", 1), msg("progress", 2), msg("progress", 3)], gate=gate)
    nodes = Nodes([stream])
    outcome: list[object] = []
    with nodes.client() as client:
        watch = client.watch("k")

        def iterate() -> None:
            outcome.extend(watch)  # blocks in the quiet stream

        thread = threading.Thread(target=iterate)
        thread.start()
        assert stream.waiting.wait(30)  # the thread is inside next(), reading
        watch.close()
        assert not stream.closed  # not from this thread: the reading one closes it
        gate.set()  # the node's next message wakes the iterating thread, which stops
        thread.join(30)
        assert not thread.is_alive()
    assert outcome == []
    assert stream.closed
    assert len(nodes.requests) == 1


# -- AsyncClient --------------------------------------------------------------------------


def run(scenario: Callable[[], Any]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), 30))


def test_the_async_watch_resumes_like_the_blocking_one() -> None:
    first = Stream(
        [msg("start", 10), msg("events", 11, events=[put_json("a", "1", 11)]) + b'{"kind"'],
        error=httpx.ReadError("reset"),
    )
    second = Stream(
        [msg("start", 11), msg("events", 12, events=[put_json("b", "2", 12)])],
        error=httpx.RemoteProtocolError("incomplete chunked read"),
    )
    third = Stream([msg("start", 12), msg("events", 15, events=[put_json("c", "3", 15)])])
    nodes = Nodes([first, second, third])

    async def scenario() -> tuple[list[WatchEvent], int]:
        async with nodes.async_client() as client:
            seen = []
            async with await client.watch(prefix="") as watch:
                async for event in watch:
                    seen.append(event)
                    if len(seen) == 3:
                        break
                return seen, watch.revision

    seen, revision = run(scenario)
    assert seen == [put(b"a", b"1", 11), put(b"b", b"2", 12), put(b"c", b"3", 15)]
    assert revision == 15
    assert nodes.sent() == [("n1", None), ("n2", "11"), ("n1", "12")]
    assert first.closed and second.closed and third.closed


def test_a_cancelled_read_resumes_the_async_watch_where_it_was() -> None:
    quiet = Stream([msg("start", 1), msg("events", 2, events=[put_json("k", "a", 2)])], hang=True)
    nodes = Nodes(
        [quiet, Stream([msg("start", 2), msg("events", 3, events=[put_json("k", "b", 3, 2)])])]
    )

    async def scenario() -> list[WatchEvent]:
        async with nodes.async_client() as client, await client.watch("k") as watch:
            seen = [await anext(watch)]
            # A caller giving up on waiting: the read is cancelled mid-stream.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(anext(watch), 0.1)
            seen.append(await anext(watch))
            return seen

    assert run(scenario) == [put(b"k", b"a", 2), put(b"k", b"b", 3, 2)]
    assert nodes.sent() == [("n1", None), ("n2", "2")]
    assert quiet.closed


def test_the_async_watch_raises_refusals_and_closes() -> None:
    refused = Nodes([Stream([], status=401)])
    stream = Stream([msg("start", 1), msg("progress", 2)])
    quiet = Nodes([stream])

    async def scenario() -> tuple[RaftkvError, list[WatchEvent]]:
        async with refused.async_client() as client:
            with pytest.raises(AuthenticationError) as raised:
                await client.watch("k")
        async with quiet.async_client() as client:
            watch = await client.watch("k")
            await watch.aclose()
            return raised.value, [event async for event in watch]

    error, after_close = run(scenario)
    assert error.status == 401
    assert after_close == []
    assert stream.closed
