"""Handing a started response over to its connection (serving/stream_handover.py),
through the worker's own protocol on a real uvicorn server and a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from raftkv.http.serving.connection_limits import limited_http_protocol
from raftkv.http.serving.stream_handover import STREAM_SCOPE_KEY, ConnectionStream
from raftkv.wire.limits import HttpLimits

Handler = Callable[[ConnectionStream], Awaitable[None]]


class StreamingApp:
    """Answers ``GET /stream`` by handing the response over to ``handler``, and every
    other path with a short ordinary response."""

    def __init__(self, handler: Handler, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.handler = handler
        self.headers = headers or [(b"content-type", b"application/x-ndjson")]
        self.returned = asyncio.Event()
        self.streams: list[ConnectionStream] = []
        self.errors: list[BaseException] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"other"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        try:
            stream = scope[STREAM_SCOPE_KEY]()
        except RuntimeError as exc:
            self.errors.append(exc)
            body = b"not handed over"
            if (b"content-length", b"5") in self.headers:
                body = body[:5]
            await send({"type": "http.response.body", "body": body})
            return
        self.streams.append(stream)
        task = asyncio.ensure_future(self.handler(stream))
        self.tasks.add(task)
        self.returned.set()


@contextlib.asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[tuple[int, uvicorn.Server]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        http=limited_http_protocol(HttpLimits()),
        lifespan="off",
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1], server
    finally:
        server.should_exit = True
        await task
        handlers = app.tasks if isinstance(app, StreamingApp) else set()
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


async def open_stream(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    return reader, writer, head


async def read_chunk(reader: asyncio.StreamReader) -> bytes:
    size = int((await reader.readline()).strip(), 16)
    data = await reader.readexactly(size + 2)
    assert data.endswith(b"\r\n")
    return data[:-2]


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(20):
            await scenario()

    asyncio.run(bounded())


def test_a_handed_over_stream_writes_chunks_after_its_asgi_call_returned() -> None:
    written = asyncio.Event()

    async def handler(stream: ConnectionStream) -> None:
        stream.write(b"one\n")
        stream.write(b"")  # would end a chunked body: not written
        await written.wait()
        stream.write(b"two\n")

    async def scenario() -> None:
        app = StreamingApp(handler)
        async with serving(app) as (port, server):
            reader, writer, head = await open_stream(port)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"transfer-encoding: chunked" in head
            assert b"application/x-ndjson" in head
            assert await read_chunk(reader) == b"one\n"
            await app.returned.wait()
            # uvicorn counts the request as done: no task of its own holds it.
            await asyncio.sleep(0.05)
            assert not server.server_state.tasks
            # A request after the stream's gets no answer; the stream goes on.
            writer.write(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            written.set()
            assert await read_chunk(reader) == b"two\n"
            assert app.streams[0].writable and not app.streams[0].lost
            writer.close()

    run(scenario)


def test_a_stream_learns_when_its_client_goes() -> None:
    lost = asyncio.Event()

    async def handler(stream: ConnectionStream) -> None:
        stream.when_lost(lost.set)
        stream.write(b"hello\n")

    async def scenario() -> None:
        app = StreamingApp(handler)
        async with serving(app) as (port, _):
            reader, writer, _ = await open_stream(port)
            assert await read_chunk(reader) == b"hello\n"
            writer.close()
            await lost.wait()
            stream = app.streams[0]
            assert stream.lost
            stream.write(b"after\n")  # nowhere to go, and no error
            called: list[bool] = []
            stream.when_lost(lambda: called.append(True))
            assert called == [True]

    run(scenario)


def test_a_stopping_server_ends_each_stream_with_its_last_chunk() -> None:
    """The writer is told (its lost-callback runs), and nothing it writes afterwards
    reaches the connection after the last chunk."""
    told = asyncio.Event()

    async def handler(stream: ConnectionStream) -> None:
        stream.when_lost(told.set)
        stream.write(b"hello\n")
        await told.wait()
        assert stream.ended and not stream.writable
        stream.write(b"too late\n")

    async def scenario() -> None:
        app = StreamingApp(handler)
        async with serving(app) as (port, server):
            reader, writer, _ = await open_stream(port)
            assert await read_chunk(reader) == b"hello\n"
            server.should_exit = True
            assert await reader.readline() == b"0\r\n"
            assert await reader.read() == b"\r\n"  # then the connection is closed
            assert told.is_set()
            writer.close()

    run(scenario)


def test_an_aborted_stream_drops_the_connection_and_is_not_told_of_it() -> None:
    told: list[bool] = []

    async def handler(stream: ConnectionStream) -> None:
        stream.when_lost(lambda: told.append(True))
        stream.write(b"hello\n")
        await asyncio.sleep(0.05)
        stream.abort()

    async def scenario() -> None:
        app = StreamingApp(handler)
        async with serving(app) as (port, _):
            reader, writer, _ = await open_stream(port)
            assert await read_chunk(reader) == b"hello\n"
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
            await asyncio.sleep(0.05)
            assert app.streams[0].lost
            assert told == []
            writer.close()

    run(scenario)


def test_a_client_that_reads_nothing_makes_the_stream_wait() -> None:
    """Past the transport's high-water mark a stream is not writable; ``wait_writable``
    returns once the client reads again."""
    waited = asyncio.Event()

    async def handler(stream: ConnectionStream) -> None:
        while stream.writable:
            stream.write(b"x" * 65536)
            await asyncio.sleep(0)
        assert stream.backlog > 0
        await stream.wait_writable()
        waited.set()

    async def scenario() -> None:
        app = StreamingApp(handler)
        async with serving(app) as (port, _):
            reader, writer, _ = await open_stream(port)
            await app.returned.wait()
            await asyncio.sleep(0.2)
            assert not waited.is_set()
            while not waited.is_set():
                await reader.read(1 << 20)
            writer.close()

    run(scenario)


def test_a_request_pipelined_behind_a_stream_keeps_it_from_being_handed_over() -> None:
    async def handler(stream: ConnectionStream) -> None:
        raise AssertionError("not handed over")

    async def scenario() -> None:
        app = StreamingApp(handler)
        async with serving(app) as (port, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\nGET /other HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert await read_chunk(reader) == b"not handed over"
            assert await reader.readline() == b"0\r\n"
            await reader.readline()
            # The pipelined request is answered after it, on the same connection.
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            writer.close()
        assert [str(e) for e in app.errors] == [
            "only a started chunked response can be handed over"
        ]

    run(scenario)


def test_no_handover_is_offered_for_head() -> None:
    offered: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        offered.append(STREAM_SCOPE_KEY in scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        async with serving(app) as (port, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            writer.close()
        assert offered == [False, True]

    run(scenario)


def test_a_response_with_a_content_length_cannot_be_handed_over() -> None:
    async def handler(stream: ConnectionStream) -> None:
        raise AssertionError("not handed over")

    async def scenario() -> None:
        app = StreamingApp(handler, [(b"content-length", b"5")])
        async with serving(app) as (port, _):
            reader, writer, head = await open_stream(port)
            assert b"content-length: 5" in head
            assert await reader.readexactly(5) == b"not h"
            writer.close()
        assert [str(e) for e in app.errors] == [
            "only a started chunked response can be handed over"
        ]

    run(scenario)


def test_a_response_not_yet_started_cannot_be_handed_over() -> None:
    errors: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            scope[STREAM_SCOPE_KEY]()
        except RuntimeError as exc:
            errors.append(exc)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        async with serving(app) as (port, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 204")
            writer.close()
        assert [str(e) for e in errors] == ["only a started chunked response can be handed over"]

    run(scenario)
