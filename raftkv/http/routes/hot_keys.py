"""The worker's hot key path: ``GET``, ``PUT``, ``POST`` and ``DELETE /kv/{key}`` answered
from the HTTP protocol itself, without the ASGI layers.

Nearly all of a store's load is these four requests. Through the Starlette app each one
crossed five middleware (metrics, rate limit, auth, CORS and the router's own layers),
each wrapping ``receive`` and ``send``, then built a ``Request`` and a ``Response`` and
sent the answer as two ASGI messages whose headers uvicorn checks again; a profile of
``POST /kv/{key}`` at 64 connections put more of the worker's CPU there than in the
handler and the IPC together. Here the worker's protocol (``serving/connection_limits.py``)
hands such a request to ``HotKeyRoutes.serve`` instead of the app, which does what the
middleware did, in the same order and with the same objects:

1. the rate limit (the same ``RateLimiter`` as the middleware's, so one bucket per
   client whichever way it came in; a 401 to a request with credentials is charged);
2. authentication and authorization (the same ``AccessCheck`` as the auth gate's);
3. the same handler (``routes/keys.py``) with a ``KeyRequest`` read from the protocol's
   scope, answering an ``Answer``;
4. the answer written as one buffer: uvicorn's status line and default headers, then the
   fields in the order Starlette would send them, so both paths answer byte for byte
   alike (``tests/http/routes/test_hot_keys.py`` compares them);
5. the request counted in the same metrics, under the route ``/kv/{key}``.

Everything else, ``HEAD`` included, and any request under a root path, goes to the app.
The request's cycle is uvicorn's own, so pipelining, flow control, keep-alive, the read
timeout and shutdown work as for any request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, cast
from urllib.parse import unquote_to_bytes

from starlette.types import Message, Scope
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from raftkv.http.errors import ApiError
from raftkv.http.key_request import KeyRequest, header_map
from raftkv.http.key_route import KV_PREFIX
from raftkv.http.middleware.auth_gate import AccessCheck
from raftkv.http.middleware.metrics import HttpMetrics
from raftkv.http.middleware.rate_limit import RateLimiter
from raftkv.http.responses import Answer, json_answer

__all__ = ["HotKeyRoutes", "KeyHandler"]

log = logging.getLogger("raftkv.http.routes")

KeyHandler = Callable[[KeyRequest], Awaitable[Answer]]

_ROUTE: Final = "/kv/{key}"
_PREFIX_LENGTH: Final = len(KV_PREFIX)
_INTERNAL_ERROR: Final = json_answer({"error": "internal server error"}, 500)


class HotKeyRoutes:
    """What the worker's protocol needs to answer the key routes itself."""

    def __init__(
        self,
        handlers: dict[str, KeyHandler],
        access: AccessCheck,
        limiter: RateLimiter | None,
        metrics: HttpMetrics,
    ) -> None:
        self._handlers = handlers
        """By method: the key routes' handlers (``routes/keys.py``)."""
        self._access = access
        self._limiter = limiter
        self._metrics = metrics

    def handler_for(self, scope: Mapping[str, object]) -> KeyHandler | None:
        """The handler that answers this request here; None to leave it to the app."""
        raw_path = scope.get("raw_path")
        if not isinstance(raw_path, bytes) or not raw_path.startswith(KV_PREFIX):
            return None
        if scope.get("root_path"):
            return None
        method = scope.get("method")
        return self._handlers.get(method) if isinstance(method, str) else None

    async def serve(self, cycle: RequestResponseCycle, handler: KeyHandler) -> None:
        """Answer the request of ``cycle`` (a task of its own, as uvicorn runs an app)."""
        scope = cast(Scope, cycle.scope)
        started = time.perf_counter()
        received = 0

        async def receive() -> Message:
            nonlocal received
            message = await cycle.receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return cast(Message, message)

        charged: str | None = None
        try:
            limiter = self._limiter
            if limiter is not None:
                refusal, charged = limiter.admit(scope)
                if refusal is not None:
                    raise refusal
            if not self._access.known_off():
                await self._access.check(scope)
            request = KeyRequest(
                unquote_to_bytes(scope["raw_path"][_PREFIX_LENGTH:]),
                scope["query_string"],
                header_map(scope["headers"]),
                receive,
            )
            answer = await handler(request)
        except ApiError as exc:
            answer = exc.to_answer()
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            answer = _INTERNAL_ERROR
        finally:
            # As uvicorn's own run_asgi: once this request is done with, its cycle must
            # not start the next one again.
            on_response = cycle.on_response
            cycle.on_response = _nothing
        if charged is not None and answer.status == 401 and self._limiter is not None:
            self._limiter.unauthorized(charged)
        if await _write(cycle, answer):
            on_response()
        self._metrics.record(
            scope["method"],
            _ROUTE,
            answer.status,
            time.perf_counter() - started,
            received,
            len(answer.body),
        )


def _nothing() -> None:
    pass


async def _write(cycle: RequestResponseCycle, answer: Answer) -> bool:
    """Write the whole answer in one go, as uvicorn's ``send`` would write it in two;
    False when the client is gone (then nothing is written)."""
    if cycle.flow.write_paused and not cycle.disconnected:
        await cycle.flow.drain()
    if cycle.disconnected or cycle.response_started:
        return False
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    parts = [STATUS_LINE[answer.status]]
    for name, value in cycle.default_headers:
        parts.append(b"%s: %s\r\n" % (name, value))
    parts.extend(answer.head_fields())
    if not cycle.keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    parts.append(answer.body)
    cycle.transport.write(b"".join(parts))
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    return True
