"""A response body that outlives its ASGI call: a watch stream handed to its connection.

A watch stream may stay open for days. Served as an ordinary ASGI response, each one
holds its whole call chain for that time: uvicorn's request task, Starlette's routing
and exception layers and every middleware's frame, about half of the worker's memory per
idle stream (docs/benchmarks.md, "Watches"). So once such a response has passed every
middleware (authentication, rate limits, metrics, CORS) and its head has gone out with
chunked encoding, the worker's protocol takes the body over: uvicorn counts the response
as complete, the ASGI call returns and frees its frames, and the stream writes its
chunks straight to the connection, which it owns until either side ends it. The
connection is not used for another request: what the client sends after the stream's
request is dropped, as no answer could ever follow an endless response.

Only the worker's own protocol (connection_limits.py) offers the handover, through the
scope entry ``STREAM_SCOPE_KEY``; under any other server a stream stays an ASGI
response.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from uvicorn.protocols.http.flow_control import FlowControl

__all__ = ["LONG_BODY_SCOPE_KEY", "STREAM_SCOPE_KEY", "ConnectionStream"]

STREAM_SCOPE_KEY = "raftkv.take_over_stream"
LONG_BODY_SCOPE_KEY = "raftkv.long_body"
"""The scope entry a route calls (no arguments; True when it took effect) to say its
request body is a stream with no end in sight (the streaming keep-alive): the worker's
protocol then stops timing the body against ``--read-timeout``, and the route times
its own silences instead."""
"""The scope entry holding a function that hands the request's connection over to a
``ConnectionStream``; it may be called once the response's head has been sent with
chunked encoding (no Content-Length)."""

_LAST_CHUNK = b"0\r\n\r\n"
_END_GRACE_S = 10.0
"""How long a client has to read the end of a stream before its connection is cut."""


class ConnectionStream:
    """A chunked response body written straight to its connection."""

    __slots__ = ("_flow", "_on_lost", "_transport", "ended", "lost")

    def __init__(self, transport: asyncio.Transport, flow: FlowControl) -> None:
        self._transport = transport
        self._flow = flow
        self._on_lost: Callable[[], object] | None = None
        self.lost = False
        """The connection is gone: nothing more can be written."""
        self.ended = False
        """The last chunk was written: nothing more may be."""

    def when_lost(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` once the connection is gone (at once if it already is)."""
        if self.lost:
            callback()
        else:
            self._on_lost = callback

    @property
    def writable(self) -> bool:
        """Below the transport's high-water mark: a write now is taken without waiting."""
        return not self._flow.write_paused and not self.ended and not self.lost

    @property
    def backlog(self) -> int:
        """Bytes written but not yet taken by the client's side of the connection."""
        return self._transport.get_write_buffer_size()

    async def wait_writable(self) -> None:
        """Until the transport drains below its low-water mark (or the connection is
        lost, which releases the wait as well)."""
        await self._flow.drain()

    def write(self, data: bytes) -> None:
        """One chunk; an empty one would end the body, so it is not written."""
        if data and not self.lost and not self.ended:
            self._transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))

    def end(self, *, tell: bool = False) -> None:
        """The last chunk, then close once it is written: the response is complete.
        With ``tell`` (the server is stopping) the writer's lost-callback runs, as if the
        connection were gone; else whoever ends the stream is not told of the loss that
        follows. A client that does not read the rest is cut off after a grace period."""
        callback, self._on_lost = self._on_lost, None
        if not self.lost and not self.ended and not self._transport.is_closing():
            self._transport.write(_LAST_CHUNK)
            self._transport.close()
            asyncio.get_running_loop().call_later(_END_GRACE_S, self._transport.abort)
        self.ended = True
        if tell and callback is not None:
            callback()

    def abort(self) -> None:
        """Drop the connection at once, with whatever is still unsent. Whoever aborts
        the stream is not told of the loss that follows."""
        self._on_lost = None
        self._transport.abort()

    def connection_lost(self) -> None:
        """Called by the protocol when the connection is gone."""
        self.lost = True
        callback, self._on_lost = self._on_lost, None
        if callback is not None:
            callback()
