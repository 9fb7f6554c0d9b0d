"""uvicorn's httptools protocol with the limits a server on an open network needs.

As shipped, the protocol leaves a connection that never sends a byte, or sends half a
request and stops (slowloris), open forever; lets the parser buffer a header of any size
(llhttp has no limit and httptools joins the pieces of a header in memory); and answers
its concurrency limit with plain text, counting the connection itself among the open
ones. This subclass, one per worker, adds:

- connections: at most ``max_connections`` admitted at once; one over that is answered
  503 (JSON, ``Retry-After: 1``, ``Connection: close``) to its first request;
- idle connections: a connection with no request under way, a new one included, is
  closed after ``idle_timeout_s`` (uvicorn's keep-alive timer, also armed on accept);
- slow clients: once the first byte of a request has arrived, the whole request
  (headers and body) must arrive within ``read_timeout_s``; else 408 and close;
- headers: a request line plus headers above ``max_header_bytes`` is answered 431 (414
  when the request line alone is too long), and more than ``max_headers`` fields 431;
- streams: a response that has started may take its connection over and go on without
  its ASGI call (stream_handover.py), as each watch stream does;
- the key routes: ``GET``/``PUT``/``POST``/``DELETE /kv/{key}`` are answered by the hot
  key path (routes/hot_keys.py) instead of the ASGI app, under the same limits.

Every refusal is a JSON ``{"error": ...}`` with ``Connection: close`` and one log line
naming the client, at most one per second per kind (``ThrottledLog``).
"""

from __future__ import annotations

import asyncio
import functools
import http
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

import httptools
import orjson
from starlette.types import Receive, Scope, Send
from uvicorn._types import HTTPScope
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from raftkv.http.serving.stream_handover import (
    LONG_BODY_SCOPE_KEY,
    STREAM_SCOPE_KEY,
    ConnectionStream,
)
from raftkv.wire.limits import HttpLimits

__all__ = ["HotPath", "ThrottledLog", "limited_http_protocol"]

# The name operators filter on since the limits came in (raftkv.http.limits then).
log = logging.getLogger("raftkv.http.limits")


class ThrottledLog:
    """Logs one warning per kind of event per ``interval_s``, and how many were left
    out: a flood of bad requests must not turn into a flood of log lines."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval_s:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        self._last[kind] = now
        skipped = self._skipped.pop(kind, 0)
        if skipped:
            message += " (and %d more like it since the last line)"
            args = (*args, skipped)
        self._logger.warning(message, *args)


def _error_response(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 response that ends the connection."""
    body = orjson.dumps({"error": message})
    head = [
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


# How long a refused connection is kept half-open to drain what the client still sends.
_LINGER_S = 2.0


class HotPath(Protocol):
    """Answers some requests without the ASGI app (``routes/hot_keys.py``)."""

    def handler_for(self, scope: Mapping[str, object]) -> Any:
        """What answers this request (passed back to ``serve``); None for the app."""

    async def serve(self, cycle: RequestResponseCycle, handler: Any) -> None:
        """Answer the request of ``cycle`` with ``handler``."""


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that is refused."""


def limited_http_protocol(
    limits: HttpLimits, hot: HotPath | None = None
) -> type[HttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` that enforces ``limits``, and
    answers the key routes itself with ``hot`` (``routes/hot_keys.py``) when given.

    A class per call: its connection count is shared by the connections of one server
    (one worker), and only by them.
    """
    throttled = ThrottledLog(log)
    admitted: set[HttpToolsProtocol] = set()
    too_many_body = orjson.dumps(
        {
            "error": f"this worker has {limits.max_connections} connections open, its "
            "limit; retry later or reuse a connection"
        }
    )

    async def too_many_connections(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(too_many_body)).encode("ascii")),
                    (b"retry-after", b"1"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": too_many_body})

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(
            self,
            config: Config,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            super().__init__(config, server_state, app_state, _loop)
            # uvicorn's keep-alive timer is the idle limit.
            self.timeout_keep_alive = limits.idle_timeout_s  # type: ignore[assignment]
            # Between requests (and before the first), until a request's headers are
            # complete: the bytes received meanwhile count against max_header_bytes.
            self._awaiting_head = True
            self._head_bytes_received = 0
            self._head_bytes_parsed = 0
            self._header_count = 0
            self._read_timer: asyncio.TimerHandle | None = None
            self._refusal: tuple[int, str] | None = None
            self._lingering = False
            self._stream: ConnectionStream | None = None
            self._shutting_down = False
            self._request_number = 0
            # Set when a request is started on the hot key path (read right after, in
            # on_headers_complete, for the request whose headers just completed).
            self._hot_handler: Any = None
            """Counts the requests whose headers are complete: names the latest one."""

        # -- connections ---------------------------------------------------------------

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(admitted) >= limits.max_connections:
                throttled.warning(
                    "connections",
                    "refusing a connection from %s: this worker has %d connections open "
                    "(--max-connections)",
                    self._client_text(),
                    len(admitted),
                )
                # Answered at its first request rather than at once: a client that
                # is still sending would see a reset instead of the answer.
                self.app = too_many_connections
            else:
                admitted.add(self)
            # A connection that never sends a request is idle from the start.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

        def connection_lost(self, exc: Exception | None) -> None:
            admitted.discard(self)
            self._stop_read_timer()
            if self._stream is not None:
                self._stream.connection_lost()
            super().connection_lost(exc)

        def shutdown(self) -> None:
            self._shutting_down = True
            if self._stream is not None:
                # uvicorn would close it mid-body; a stream ends with its last chunk,
                # and whoever writes it is told the connection is going.
                self._stream.end(tell=True)
                return
            super().shutdown()

        # -- handing a response over to the connection (stream_handover.py) ------------

        def _take_over_stream(self, request_number: int) -> ConnectionStream:
            cycle = self.cycle
            if (
                request_number != self._request_number  # another request came in behind it
                or cycle is None
                or self._shutting_down
                or cycle.disconnected
                or not cycle.response_started
                or cycle.response_complete
                or not cycle.chunked_encoding
            ):
                raise RuntimeError("only a started chunked response can be handed over")
            # uvicorn is done with the request: its ASGI call may now return with the
            # body unfinished, and the connection is never reused.
            cycle.response_complete = True
            cycle.keep_alive = False
            self._stop_read_timer()
            self._unset_keepalive_if_required()
            # Nothing of the request is needed any more; the stream outlives it.
            self.cycle = None  # type: ignore[assignment]  # as uvicorn starts it
            self.scope = cast(HTTPScope, {})
            self.headers = []
            self.pipeline.clear()
            self.flow.resume_reading()  # to learn when the client goes
            self._stream = ConnectionStream(self.transport, self.flow)
            return self._stream

        # -- answering -----------------------------------------------------------------

        def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
            # Called by uvicorn for each request in turn, a pipelined one once the one
            # before is answered: the hot key routes are answered here, in the same order.
            handler = None
            if hot is not None and app is not too_many_connections:
                handler = hot.handler_for(cycle.scope)
            if handler is None:
                super()._start_asgi_task(cycle, app)
                return
            self._hot_handler = handler
            task = self.loop.create_task(hot.serve(cycle, handler))  # type: ignore[union-attr]
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)

        # -- receiving -----------------------------------------------------------------

        def data_received(self, data: bytes) -> None:
            if self._lingering or self._stream is not None:
                return  # the rest of a refused request, or anything after a stream's
            self._unset_keepalive_if_required()
            if self._awaiting_head:
                if self._read_timer is None:
                    self._read_timer = self.loop.call_later(
                        limits.read_timeout_s, self._read_timed_out
                    )
                self._head_bytes_received += len(data)
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            except httptools.HttpParserError as exc:
                if self._refusal is not None:
                    self._refuse(*self._refusal)
                    return
                throttled.warning(
                    "invalid", "invalid HTTP request from %s: %s", self._client_text(), exc
                )
                self._refuse(400, f"invalid HTTP request: {exc}")
                return
            # A header still incomplete has not reached the callbacks below yet: count
            # the raw bytes, so that an endless header is refused too.
            if self._awaiting_head and self._head_bytes_received > limits.max_header_bytes:
                self._refuse_head(431, "request line and headers exceed")

        def on_message_begin(self) -> None:
            self._head_bytes_parsed = 0
            self._header_count = 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._head_bytes_parsed += len(url)
            if self._head_bytes_parsed > limits.max_header_bytes:
                self._refusal = self._head_refusal(414, "request target exceeds")
                raise _Refused
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_count += 1
            # ": " and CRLF around each field, as it was on the wire (near enough).
            self._head_bytes_parsed += len(name) + len(value) + 4
            if self._header_count > limits.max_headers:
                self._refusal = (
                    431,
                    f"the request has more than {limits.max_headers} header fields, the limit",
                )
                throttled.warning(
                    "headers",
                    "refused a request from %s: more than %d header fields",
                    self._client_text(),
                    limits.max_headers,
                )
                raise _Refused
            if self._head_bytes_parsed > limits.max_header_bytes:
                self._refusal = self._head_refusal(431, "request line and headers exceed")
                raise _Refused
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._awaiting_head = False
            self._head_bytes_received = 0
            self._request_number += 1
            self._hot_handler = None
            super().on_headers_complete()
            if self._hot_handler is not None:
                # Started on the hot key path, which neither streams nor reads a long body.
                return
            # A long response (a watch) may take the connection over once it started;
            # the offer is bound to this request (a pipelined one may follow). By its
            # number, not its cycle: the cycle holds the scope, and a scope holding the
            # cycle would make every request garbage that only the collector frees.
            if self.cycle is not None and self.scope.get("method") != "HEAD":
                self.scope[STREAM_SCOPE_KEY] = functools.partial(  # type: ignore[literal-required]
                    self._take_over_stream, self._request_number
                )
            if self.cycle is not None:
                self.scope[LONG_BODY_SCOPE_KEY] = functools.partial(  # type: ignore[literal-required]
                    self._allow_long_body, self._request_number
                )

        def on_message_complete(self) -> None:
            self._stop_read_timer()
            self._awaiting_head = True
            super().on_message_complete()

        # -- refusing ------------------------------------------------------------------

        def _head_refusal(self, status: int, what_exceeds: str) -> tuple[int, str]:
            throttled.warning(
                "header-bytes",
                "refused a request from %s: its %s %d bytes (--max-header-bytes)",
                self._client_text(),
                what_exceeds,
                limits.max_header_bytes,
            )
            return status, f"the {what_exceeds} the limit of {limits.max_header_bytes} bytes"

        def _refuse_head(self, status: int, what_exceeds: str) -> None:
            self._refuse(*self._head_refusal(status, what_exceeds))

        def _read_timed_out(self) -> None:
            self._read_timer = None
            if self.transport.is_closing():
                return
            part = "headers" if self._awaiting_head else "body"
            throttled.warning(
                "read-timeout",
                "closing a connection from %s: the request's %s did not arrive within "
                "%g s (--read-timeout)",
                self._client_text(),
                part,
                limits.read_timeout_s,
            )
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                if cycle.response_started:
                    self.transport.close()  # too late for an answer of our own
                    return
                # The application is still at work (most likely waiting for the rest
                # of the body): it is told the client is gone, and what it answers is
                # dropped, so that it cannot interleave with the 408.
                cycle.disconnected = True
                cycle.message_event.set()
            self._refuse(
                408,
                f"the request's {part} did not arrive within {limits.read_timeout_s:g} s",
            )

        def _refuse(self, status: int, message: str) -> None:
            """Answer and end the connection. The client may still be sending (the rest
            of a header or a body): closing at once with its data unread would make the
            kernel reset the connection, and the client could lose the answer before
            reading it. So only our side is shut, what still arrives is dropped, and the
            connection is closed when the client closes it or after ``_LINGER_S``."""
            self._stop_read_timer()
            self._unset_keepalive_if_required()
            self._lingering = True
            transport = self.transport
            if transport.is_closing():
                return
            transport.write(_error_response(status, message))
            if transport.can_write_eof():
                transport.write_eof()
                self.loop.call_later(_LINGER_S, transport.close)
            else:
                transport.close()

        def _allow_long_body(self, request_number: int) -> bool:
            """The route streams its request body for as long as it likes: stop timing
            it (only for the request still being read)."""
            if request_number != self._request_number or self._awaiting_head:
                return False
            self._stop_read_timer()
            return True

        def _stop_read_timer(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def _client_text(self) -> str:
            if self.client is None:
                return "an unknown client"
            host, port = self.client
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    return LimitedHttpToolsProtocol
