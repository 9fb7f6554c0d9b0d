"""ASGI middleware that counts every HTTP request of a worker into ``HttpMetrics``.

It sits outside the ``/kv/{key}`` fast path and the Starlette router, so both are
measured the same way: the time to answer, the status, and the body bytes each way.

The route label is the route's template (``/kv/{key}``), never the path itself: one
series per key would grow without bound. The router leaves the route it matched in the
scope; a request the fast path answered has none, and is under ``/kv/``, which only the
``/kv/{key}`` route serves; anything else matched no route.
"""

from __future__ import annotations

import re
import time
from typing import Final

from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from raftkv.http.key_route import KV_PREFIX
from raftkv.http.metrics import HttpMetrics

__all__ = ["HttpMetricsMiddleware"]

_KV_ROUTE: Final = "/kv/{key}"
_UNMATCHED: Final = "unmatched"
_KNOWN_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
# "{key:path}" -> "{key}": the template as the API documentation writes it.
_CONVERTOR = re.compile(r"\{(\w+):\w+\}")


class _Exchange:
    """Wraps one request's receive and send to see its status and body sizes."""

    __slots__ = ("_receive", "_send", "bytes_in", "bytes_out", "status")

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.bytes_in += len(message.get("body", b""))
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            self.bytes_out += len(message.get("body", b""))
        elif kind == "http.response.start":
            self.status = message["status"]
        await self._send(message)


class HttpMetricsMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics) -> None:
        self._app = app
        self._metrics = metrics
        self._templates: dict[str, str] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        exchange = _Exchange(receive, send)
        started = time.perf_counter()
        try:
            await self._app(scope, exchange.receive, exchange.send)
        except Exception:
            # The server answers 500 for what escaped, unless the answer had begun.
            if not exchange.status:
                exchange.status = 500
            raise
        finally:
            # A request cancelled before any answer (the client left) has no status.
            if exchange.status:
                self._metrics.record(
                    self._method(scope["method"]),
                    self._route(scope),
                    exchange.status,
                    time.perf_counter() - started,
                    exchange.bytes_in,
                    exchange.bytes_out,
                )

    @staticmethod
    def _method(method: str) -> str:
        # Any token is a valid method; only the ones the API knows get a series each.
        return method if method in _KNOWN_METHODS else "other"

    def _route(self, scope: Scope) -> str:
        route: BaseRoute | None = scope.get("route")
        if isinstance(route, Route):
            template = self._templates.get(route.path)
            if template is None:
                template = self._templates[route.path] = _CONVERTOR.sub(r"{\1}", route.path)
            return template
        raw_path = scope.get("raw_path")
        if isinstance(raw_path, bytes) and raw_path.startswith(KV_PREFIX):
            return _KV_ROUTE
        return _UNMATCHED
