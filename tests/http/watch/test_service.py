"""The worker's watch service: admitting streams (the per-client limit), the stream's
response (handed to its connection, and cut off when its client reads nothing; or an
ordinary ASGI response under another server), and long polls."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Message
from uvicorn.protocols.http.flow_control import FlowControl
from watch_fakes import MemoryRaft, run, settle, until

from raftkv.http.errors import ApiError
from raftkv.http.middleware.metrics import HttpMetrics
from raftkv.http.serving.stream_handover import STREAM_SCOPE_KEY, ConnectionStream
from raftkv.http.watch import feed as feed_module
from raftkv.http.watch import service as service_module
from raftkv.http.watch import watcher as watcher_module
from raftkv.http.watch.feed import WatchRange
from raftkv.http.watch.messages import NDJSON, SSE, MessageFormat
from raftkv.http.watch.service import WatchRequest, WatchService
from raftkv.wire.watch_limits import WatchLimits

PREFIX = WatchRange(b"p/", is_prefix=True)


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed_module, "_RECONNECT_MIN_S", 0.0)
    monkeypatch.setattr(watcher_module, "_RETRY_S", 0.0)


def request(
    *,
    since: int | None = None,
    stale: bool = False,
    wait_s: float | None = None,
    with_prev: bool = False,
    form: MessageFormat = NDJSON,
    watch_range: WatchRange = PREFIX,
) -> WatchRequest:
    return WatchRequest(
        watch_range,
        since=since,
        stale=stale,
        with_prev=with_prev,
        form=form,
        progress_s=3600.0,
        wait_s=wait_s,
    )


class Setup:
    def __init__(
        self,
        raft: MemoryRaft | None = None,
        *,
        now: Callable[[], Awaitable[int]] | None = None,
        **limits: Any,
    ) -> None:
        self.raft = raft or MemoryRaft()
        self.metrics = HttpMetrics(None)
        self.service = WatchService(
            self.raft,  # type: ignore[arg-type]
            WatchLimits(**limits),
            self.metrics,
            now or self.linearizable_now,
        )

    async def linearizable_now(self) -> int:
        self.raft.read_indexes += 1
        return self.raft.sm.applied_index

    def metric(self, name: str) -> float:
        text = self.metrics.exposition().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    return sample.value
        raise AssertionError(f"no metric {name}")


class FakeTransport:
    """The connection a stream is handed: what was written, and how it ended."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.aborted = False
        self.backlog: Callable[[], int] = lambda: 0
        self.on_abort: Callable[[], None] = lambda: None

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.data += data

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        self.write(b"".join(parts))

    def get_write_buffer_size(self) -> int:
        return self.backlog()

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True
        self.on_abort()

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    def chunks(self) -> tuple[bytes, bool]:
        """The chunked body's content, and whether its last chunk was written."""
        data, content = bytes(self.data), bytearray()
        while data:
            size_text, _, rest = data.partition(b"\r\n")
            size = int(size_text, 16)
            if size == 0:
                assert rest == b"\r\n"
                return bytes(content), True
            content += rest[:size]
            assert rest[size : size + 2] == b"\r\n"
            data = rest[size + 2 :]
        return bytes(content), False


class HandedOverStream(ConnectionStream):
    """The real stream, which also keeps the task the service runs it in (the one a
    lost connection cancels), so that a test can wait for it to end."""

    task: asyncio.Task[None] | None = None

    def when_lost(self, callback: Callable[[], object]) -> None:
        self.task = getattr(callback, "__self__", None)
        super().when_lost(callback)


class Exchange:
    """One HTTP exchange as the server sees it: the scope, receive and send; with
    ``handover`` the server is the worker's own, which hands the stream its connection."""

    def __init__(self, *, handover: bool = True) -> None:
        self.scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/watch"}
        self.transport = FakeTransport()
        self.flow = FlowControl(self.transport)  # type: ignore[arg-type]
        self.stream: HandedOverStream | None = None
        if handover:
            self.scope[STREAM_SCOPE_KEY] = self._take_over
        self.sent: list[Message] = []
        self.gone = asyncio.Event()
        self.reading = asyncio.Event()
        self.reading.set()
        self._asked = False

    def _take_over(self) -> ConnectionStream:
        assert self.sent and self.sent[0]["type"] == "http.response.start"
        self.stream = HandedOverStream(self.transport, self.flow)  # type: ignore[arg-type]
        # As the protocol would: an aborted connection is lost right after.
        self.transport.on_abort = self.stream.connection_lost
        return self.stream

    def leave(self) -> None:
        """The client closes the connection."""
        self.gone.set()
        if self.stream is not None and not self.stream.lost:
            self.transport.closed = True
            self.stream.connection_lost()
            self.flow.resume_writing()

    async def ended(self, task: asyncio.Task[None]) -> None:
        """Until the response is over: its ASGI call, and the stream it handed over."""
        await task
        if self.stream is not None:
            assert self.stream.task is not None
            await asyncio.wait({self.stream.task})  # cancelled, when the connection went

    async def receive(self) -> Message:
        if not self._asked:
            self._asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            await self.reading.wait()
        self.sent.append(message)

    def body(self) -> bytes:
        through_asgi = b"".join(
            m.get("body", b"") for m in self.sent if m["type"] == "http.response.body"
        )
        return through_asgi + self.transport.chunks()[0]

    def messages(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.body().splitlines()]


async def open_stream(
    s: Setup, client: str, exchange: Exchange, **options: Any
) -> asyncio.Task[None]:
    response = await s.service.stream(request(**options), client)
    return asyncio.ensure_future(response(exchange.scope, exchange.receive, exchange.send))


# -- admitting streams ----------------------------------------------------------------------


def test_streams_are_limited_per_client() -> None:
    async def scenario() -> None:
        s = Setup(max_per_client=2)
        exchanges = [Exchange() for _ in range(3)]
        try:
            first = await open_stream(s, "10.0.0.1", exchanges[0], stale=True)
            await open_stream(s, "10.0.0.1", exchanges[1], stale=True)
            await until(lambda: s.service.feed.watchers == 2)
            with pytest.raises(ApiError) as refused:
                await s.service.stream(request(stale=True), "10.0.0.1")
            assert refused.value.status == 429
            assert "--watch-max-per-client" in refused.value.message
            # Another client is not affected.
            other = await open_stream(s, "10.0.0.2", exchanges[2], stale=True)
            await until(lambda: s.metric("raftkv_http_watchers") == 3)
            # One closes: its client may open one again.
            exchanges[0].leave()
            await exchanges[0].ended(first)
            assert s.metric("raftkv_http_watchers") == 2
            again = Exchange()
            exchanges.append(again)
            await open_stream(s, "10.0.0.1", again, stale=True)
            await until(lambda: s.service.feed.watchers == 3)
            exchanges[2].leave()
            await exchanges[2].ended(other)
        finally:
            for exchange in exchanges:
                exchange.leave()
            await settle()
            await s.service.close()
        assert s.service._per_client == {}
        assert s.metric("raftkv_http_watchers") == 0

    run(scenario)


def test_concurrent_streams_of_one_client_cannot_pass_its_limit() -> None:
    async def scenario() -> None:
        read_index: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def now() -> int:
            return await read_index  # the read index round takes a while

        s = Setup(max_per_client=1, now=now)
        try:
            first = asyncio.ensure_future(s.service.stream(request(), "10.0.0.1"))
            second = asyncio.ensure_future(s.service.stream(request(), "10.0.0.1"))
            await settle()
            read_index.set_result(0)
            outcomes = await asyncio.gather(first, second, return_exceptions=True)
            refusals = [o for o in outcomes if isinstance(o, ApiError)]
            assert [r.status for r in refusals] == [429]
        finally:
            await s.service.close()

    run(scenario)


def test_a_stream_that_fails_to_start_frees_its_place() -> None:
    async def scenario() -> None:
        async def no_leader() -> int:
            raise ApiError.retry_later("no leader")

        s = Setup(max_per_client=1, now=no_leader)
        exchange = Exchange()
        try:
            with pytest.raises(ApiError) as refused:
                await s.service.stream(request(), "10.0.0.1")
            assert refused.value.status == 503
            task = await open_stream(s, "10.0.0.1", exchange, since=0)
            await until(lambda: s.service.feed.watchers == 1)
            exchange.leave()
            await exchange.ended(task)
        finally:
            exchange.leave()
            await s.service.close()

    run(scenario)


def test_no_feed_no_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "_FEED_WAIT_S", 0.001)

    async def scenario() -> None:
        s = Setup()
        s.raft.unavailable = True
        try:
            with pytest.raises(ApiError) as refused:
                await s.service.stream(request(since=0), "10.0.0.1")
            assert refused.value.status == 503
            assert s.service._per_client == {}
        finally:
            await s.service.close()

    run(scenario)


# -- the stream's response --------------------------------------------------------------------


@pytest.mark.parametrize("handover", [True, False], ids=["on-connection", "asgi"])
@pytest.mark.parametrize("form", [NDJSON, SSE], ids=["ndjson", "sse"])
def test_a_stream_response(form: MessageFormat, handover: bool) -> None:
    async def scenario() -> None:
        s = Setup()
        s.raft.put(b"p/a")
        exchange = Exchange(handover=handover)
        try:
            task = await open_stream(s, "10.0.0.1", exchange, form=form)
            assert s.raft.read_indexes == 1  # a linearizable start
            s.raft.put(b"p/b")
            s.raft.put(b"q")
            await until(lambda: b"p/b" in exchange.body())
            start = exchange.sent[0]
            assert start["type"] == "http.response.start"
            assert start["status"] == 200
            expected = {
                b"content-type": form.media_type.encode(),
                b"cache-control": b"no-cache",
                b"x-accel-buffering": b"no",
            }
            if handover:
                expected[b"connection"] = b"close"  # nothing can follow it
            assert dict(start["headers"]) == expected
            if handover:
                # The ASGI call is over: the body goes straight to the connection.
                await task
                assert exchange.sent == [start]
            else:
                assert all(m.get("more_body") for m in exchange.sent[1:])
                assert exchange.transport.data == b""
            if form.sse:
                assert exchange.body().startswith(b"event: start\nid: 1\n")
            else:
                assert exchange.messages()[0] == {"kind": "start", "revision": 1}
                assert exchange.messages()[1]["events"][0]["key"] == "p/b"
            await until(lambda: s.metric("raftkv_http_watch_events_sent_total") == 1)
            exchange.leave()
            await exchange.ended(task)
            assert s.service.feed.watchers == 0
            assert s.metric("raftkv_http_watchers") == 0
            assert s.service._per_client == {}
        finally:
            exchange.leave()
            await s.service.close()

    run(scenario)


def test_a_stream_on_its_connection_ends_with_its_last_chunk_when_the_worker_stops() -> None:
    async def scenario() -> None:
        s = Setup()
        exchange = Exchange()
        task = await open_stream(s, "10.0.0.1", exchange, since=0)
        await task
        await until(lambda: exchange.body() != b"", "the start message")
        await s.service.close()
        body, complete = exchange.transport.chunks()
        assert complete and exchange.transport.closed and not exchange.transport.aborted
        assert orjson.loads(body) == {"kind": "start", "revision": 0}
        assert s.metric("raftkv_http_watchers") == 0
        assert s.service._per_client == {}

    run(scenario)


@pytest.mark.parametrize("why", ["head", "refused"])
def test_a_stream_with_nothing_to_stream_to_gives_its_place_back(why: str) -> None:
    """A HEAD request, or a connection the server will not hand over (the client left
    before the head, a request pipelined behind, a server stopping): the head and an
    empty body, and the client's place is free again."""

    async def scenario() -> None:
        s = Setup(max_per_client=1)
        exchange = Exchange()
        if why == "head":
            exchange.scope["method"] = "HEAD"
        else:

            def refuse() -> ConnectionStream:
                raise RuntimeError("only a started chunked response can be handed over")

            exchange.scope[STREAM_SCOPE_KEY] = refuse
        try:
            for _ in range(3):  # past the limit of 1 if a place leaked
                response = await s.service.stream(request(since=0), "10.0.0.1")
                exchange.sent.clear()
                await response(exchange.scope, exchange.receive, exchange.send)
                assert [m["type"] for m in exchange.sent] == [
                    "http.response.start",
                    "http.response.body",
                ]
                assert exchange.sent[1]["more_body"] is False
            assert s.service._per_client == {}
            assert s.service.feed.watchers == 0
        finally:
            await s.service.close()

    run(scenario)


def test_a_failed_stream_is_cut_rather_than_ended_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(self: object, send: object, write_now: object = None) -> None:
        raise ValueError("a bug")

    monkeypatch.setattr(watcher_module.Watcher, "run", broken)

    async def scenario() -> None:
        s = Setup()
        exchange = Exchange()
        try:
            task = await open_stream(s, "10.0.0.1", exchange, since=0)
            await exchange.ended(task)
            assert exchange.transport.aborted
            assert exchange.transport.chunks() == (b"", False)  # no last chunk
            assert s.service._per_client == {}
        finally:
            await s.service.close()

    run(scenario)


def test_a_client_that_reads_nothing_is_cut_off() -> None:
    async def scenario() -> None:
        s = Setup(slow_timeout_s=0.001)
        exchange = Exchange()
        exchange.transport.backlog = lambda: 70_000  # it never goes down
        exchange.flow.pause_writing()  # above the transport's high-water mark
        try:
            task = await open_stream(s, "10.0.0.1", exchange, since=0)
            await exchange.ended(task)
            assert exchange.transport.aborted
            assert s.metric("raftkv_http_watch_cut_off_total") == 1
            assert exchange.body() == b""
            assert s.service._per_client == {}
            assert s.service.feed.watchers == 0
        finally:
            exchange.leave()
            await s.service.close()

    run(scenario)


def test_a_connection_with_room_takes_each_send_at_once() -> None:
    """Below the transport's high-water mark a send does not wait, so even a zero
    timeout cuts nobody off."""

    async def scenario() -> None:
        s = Setup(slow_timeout_s=0.001)
        exchange = Exchange()
        exchange.transport.backlog = lambda: 60_000
        try:
            task = await open_stream(s, "10.0.0.1", exchange, since=0)
            s.raft.put(b"p/x")
            await until(lambda: len(exchange.messages()) == 2)
            assert not exchange.transport.aborted
            exchange.leave()
            await exchange.ended(task)
        finally:
            exchange.leave()
            await s.service.close()

    run(scenario)


def test_a_slow_client_that_still_reads_is_not_cut_off() -> None:
    async def scenario() -> None:
        s = Setup(slow_timeout_s=0.001)
        waiting = [90_000, 80_000, 70_000]  # above the high-water mark, and draining

        def backlog() -> int:
            # Each look finds less waiting: the client reads, slowly; after the
            # third, the connection drains below its low-water mark.
            if len(waiting) == 1:
                exchange.flow.resume_writing()
                return waiting[0]
            return waiting.pop(0)

        exchange = Exchange()
        exchange.transport.backlog = backlog
        exchange.flow.pause_writing()
        try:
            task = await open_stream(s, "10.0.0.1", exchange, since=0)
            await until(lambda: exchange.body() != b"", "the start message to go through")
            assert exchange.messages() == [{"kind": "start", "revision": 0}]
            assert not exchange.transport.aborted
            assert s.metric("raftkv_http_watch_cut_off_total") == 0
            s.raft.put(b"p/x")
            await until(lambda: len(exchange.messages()) == 2)
            exchange.leave()
            await exchange.ended(task)
        finally:
            exchange.leave()
            await s.service.close()

    run(scenario)


# -- long polls -----------------------------------------------------------------------------


def poll(s: Setup, **options: Any) -> Awaitable[dict[str, Any]]:
    options.setdefault("wait_s", 0.0)
    return s.service.long_poll(request(**options))


def keys(answer: dict[str, Any]) -> list[tuple[int, str]]:
    return [(e["revision"], e["key"]) for e in answer["events"]]


def test_a_long_poll_answers_the_changes_at_once() -> None:
    async def scenario() -> None:
        s = Setup()
        try:
            s.raft.put(b"p/a", b"1")
            await s.service._ready()
            s.raft.put(b"q")
            s.raft.put(b"p/a", b"2")
            await until(lambda: s.service.feed.revision == 3)
            answer = await poll(s, since=1, with_prev=True)
            assert answer["revision"] == 3
            assert keys(answer) == [(3, "p/a")]
            assert answer["events"][0]["prev"]["value"] == "1"
            assert s.metric("raftkv_http_watch_events_sent_total") == 1
        finally:
            await s.service.close()

    run(scenario)


def test_a_long_poll_with_nothing_new() -> None:
    async def scenario() -> None:
        s = Setup()
        try:
            s.raft.put(b"q")
            await s.service._ready()
            s.raft.put(b"q")
            s.raft.put(b"q")
            await until(lambda: s.service.feed.revision == 3)
            assert await poll(s, since=1) == {"revision": 3, "events": []}
            # A future revision: itself.
            assert await poll(s, since=9) == {"revision": 9, "events": []}
            # Without since: now (linearizable, or the feed's revision).
            assert await poll(s) == {"revision": 3, "events": []}
            assert s.raft.read_indexes == 1
            assert await poll(s, stale=True) == {"revision": 3, "events": []}
            assert s.raft.read_indexes == 1
        finally:
            await s.service.close()

    run(scenario)


def test_a_long_poll_waits_for_a_change() -> None:
    async def scenario() -> None:
        s = Setup()
        try:
            s.raft.put(b"p/a")
            waiting = asyncio.ensure_future(poll(s, since=1, wait_s=60.0))
            await settle()
            assert not waiting.done()
            s.raft.put(b"q")
            await settle()
            assert not waiting.done()
            s.raft.put(b"p/b")
            answer = await waiting
            assert answer == {
                "revision": 3,
                "events": [
                    {
                        "type": "put",
                        "key": "p/b",
                        "value": "v",
                        "revision": 3,
                        "create_revision": 3,
                        "mod_revision": 3,
                        "version": 1,
                    }
                ],
            }
        finally:
            await s.service.close()

    run(scenario)


def test_a_long_poll_gives_whole_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "LONG_POLL_EVENTS", 2)

    async def scenario() -> None:
        s = Setup()
        try:
            await s.service._ready()
            s.raft.put(b"p/1")
            s.raft.put(b"p/2")
            s.raft.put(b"p/3")
            s.raft.delete_prefix(b"p/")
            await until(lambda: s.service.feed.revision == 4)
            first = await poll(s, since=0)
            assert (first["revision"], keys(first)) == (2, [(1, "p/1"), (2, "p/2")])
            second = await poll(s, since=2)
            # A revision is never split, whatever the limit.
            assert keys(second) == [(3, "p/3"), (4, "p/1"), (4, "p/2"), (4, "p/3")]
            assert second["revision"] == 4
        finally:
            await s.service.close()

    run(scenario)


def test_a_long_poll_behind_the_ring_reads_the_raft_process_history() -> None:
    async def scenario() -> None:
        raft = MemoryRaft()
        raft.put(b"p/a", b"1")
        s = Setup(raft)
        s.service.feed._ring_events = 1
        try:
            await s.service._ready()
            raft.put(b"p/a", b"2")
            for _ in range(3):
                raft.put(b"q")
            await until(lambda: s.service.feed.revision == 5)
            assert not s.service.feed.covers(0)
            answer = await poll(s, since=0, with_prev=True)
            assert keys(answer) == [(1, "p/a"), (2, "p/a")]
            assert "prev" not in answer["events"][0]
            assert answer["events"][1]["prev"]["value"] == "1"
            assert answer["revision"] == 5
            assert all(stream.ended for stream in raft.streams[1:])
        finally:
            await s.service.close()

    run(scenario)


def test_a_long_poll_older_than_the_history_is_a_resync() -> None:
    async def scenario() -> None:
        raft = MemoryRaft(history=2)
        s = Setup(raft)
        s.service.feed._ring_events = 1
        try:
            await s.service._ready()
            for i in range(5):
                raft.put(b"p/%d" % i, b"x")
            raft.put(b"q")
            await until(lambda: s.service.feed.revision == 6)
            answer = await poll(s, since=0)
            assert answer["revision"] == 6
            assert answer["events"] == []
            assert [item["key"] for item in answer["resync"]] == ["p/0", "p/1", "p/2", "p/3", "p/4"]
            assert answer["resync"][0] == {
                "key": "p/0",
                "value": "x",
                "create_revision": 1,
                "mod_revision": 1,
                "version": 1,
            }
            assert s.metric("raftkv_http_watch_resyncs_total") == 1
        finally:
            await s.service.close()

    run(scenario)


def test_a_long_poll_continues_from_the_ring_once_the_raft_process_brought_it_there() -> None:
    async def scenario() -> None:
        raft = MemoryRaft()
        # Time passes between readings: the Raft process's watch reports progress at once.
        raft.clock.step = 1.0
        raft.put(b"p/a")
        s = Setup(raft)
        s.service.feed._ring_events = 1
        try:
            await s.service._ready()
            for _ in range(3):
                raft.put(b"q")
            await until(lambda: s.service.feed.revision == 4)
            waiting = asyncio.ensure_future(poll(s, since=1, wait_s=60.0))
            await settle()
            # One watch of its own brought it to revision 4, which the ring covers: it
            # waits there, without asking the Raft process again and again from 1.
            assert len(raft.streams) == 2
            assert not waiting.done()
            raft.put(b"p/b")
            answer = await waiting
            assert (answer["revision"], keys(answer)) == (5, [(5, "p/b")])
            assert len(raft.streams) == 2  # from the ring
        finally:
            if not waiting.done():
                waiting.cancel()
            await s.service.close()

    run(scenario)


def test_a_long_poll_at_its_deadline_misses_nothing_the_ring_has() -> None:
    async def scenario() -> None:
        raft = MemoryRaft()
        raft.clock.step = 1.0
        raft.put(b"p/a")
        s = Setup(raft)
        s.service.feed._ring_events = 1
        try:
            await s.service._ready()
            for _ in range(3):
                raft.put(b"q")
            await until(lambda: s.service.feed.revision == 4)
            answer = asyncio.ensure_future(poll(s, since=1, wait_s=0.0))
            # The poll's own watch has told it of revision 4 (no change in its range);
            # then a change comes, into the ring, before the poll reads that message.
            await until(lambda: len(raft.streams) == 2)
            raft.put(b"p/b")
            result = await answer
            # Either the change, or an answer that does not claim to be past it.
            assert result["revision"] < 5 or keys(result) == [(5, "p/b")], result
        finally:
            await s.service.close()

    run(scenario)


def test_a_long_poll_without_waiting_still_takes_what_the_raft_process_has() -> None:
    async def scenario() -> None:
        raft = MemoryRaft()
        raft.put(b"p/a")
        s = Setup(raft)
        s.service.feed._ring_events = 1
        try:
            await s.service._ready()
            raft.put(b"q")
            raft.put(b"q")
            await until(lambda: s.service.feed.revision == 3)
            # From now on the Raft process's messages take a round trip to arrive.
            raft.latency = 0.01
            answer = await poll(s, since=0, wait_s=0.0)
            assert keys(answer) == [(1, "p/a")]
        finally:
            await s.service.close()

    run(scenario)
