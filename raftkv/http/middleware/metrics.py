"""A worker's HTTP metrics: the counters and histograms, and the ASGI middleware that
records every request into them.

Every worker counts its own requests. Started by ``kvnode``, the workers of a node
share a directory (prometheus-client's multiprocess mode, see
``raftkv/node/worker_metrics_dir.py``), and the worker that serves a scrape adds up all
of them (``HttpMetrics.exposition``; the ``/metrics`` route puts the Raft process's own
metrics first). Every family here is named ``raftkv_http_...``, a prefix the Raft
process never uses, so no family appears twice. A worker run alone (no directory)
serves its own counts.

The middleware sits outside the Starlette router, and the hot key path
(``routes/hot_keys.py``) records its requests with the same ``record``, so both are
measured the same way: the time to answer, the status, and the body bytes each
way. The route label is the route's template (``/kv/{key}``), never the path itself: one
series per key would grow without bound. The router leaves the route it matched in the
scope; a request that has none but is under ``/kv/`` is counted under ``/kv/{key}``, the
only route there; anything else matched no route.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import os
import re
import time
from typing import Final

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from raftkv.http.key_route import KV_PREFIX
from raftkv.node.worker_metrics_dir import MULTIPROCESS_DIR_ENV

__all__ = ["CONTENT_TYPE", "HttpMetrics", "HttpMetricsMiddleware"]

# The classic text format, which every Prometheus version reads and which
# prometheus-client writes by default.
CONTENT_TYPE = prometheus_client.exposition.CONTENT_TYPE_PLAIN_0_0_4

# Bounds double from 0.5 ms to 8 s (requests time out after a few seconds).
_DURATION_BUCKETS = tuple(0.0005 * 2**i for i in range(15))

FLUSH_INTERVAL_S = 0.1
"""How long a worker's request counts may wait before they are written where every
worker's scrape sees them."""


class _Pending:
    """The requests of one (method, route, status) not yet written to the metrics."""

    __slots__ = ("buckets", "bytes_in", "bytes_out", "seconds")

    def __init__(self, bucket_count: int) -> None:
        self.buckets = [0] * bucket_count
        self.seconds = 0.0
        self.bytes_in = 0
        self.bytes_out = 0


class HttpMetrics:
    """The counters and histograms of one worker, and the text of all workers' sums."""

    def __init__(self, multiprocess_dir: str | None) -> None:
        # prometheus-client decides at import time, from the environment, whether its
        # values live in shared files; the directory must be the one it saw then.
        self._registry = CollectorRegistry(auto_describe=False)
        self._duration = Histogram(
            "raftkv_http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route template and status.",
            ["method", "route", "status"],
            buckets=_DURATION_BUCKETS,
            registry=self._registry,
        )
        self._received = Counter(
            "raftkv_http_request_body_bytes",
            "Bytes of HTTP request bodies received.",
            ["method", "route"],
            registry=self._registry,
        )
        self._sent = Counter(
            "raftkv_http_response_body_bytes",
            "Bytes of HTTP response bodies sent.",
            ["method", "route"],
            registry=self._registry,
        )
        self._rate_limited = Counter(
            "raftkv_http_rate_limited",
            "HTTP requests refused with 429 because their client was over its rate limit.",
            registry=self._registry,
        )
        self._watchers = Gauge(
            "raftkv_http_watchers",
            "Open HTTP watch streams.",
            registry=self._registry,
            multiprocess_mode="livesum",
        )
        self._watch_events = Counter(
            "raftkv_http_watch_events_sent",
            "Change events sent to HTTP watchers.",
            registry=self._registry,
        )
        self._watch_resyncs = Counter(
            "raftkv_http_watch_resyncs",
            "Resyncs (images of a watched range) sent because a watcher's revision was "
            "older than the history kept.",
            registry=self._registry,
        )
        self._watch_behind = Counter(
            "raftkv_http_watch_slow",
            "Times a watcher's buffer overflowed because its client read too slowly (it "
            "then catches up from its last delivered revision).",
            registry=self._registry,
        )
        self._watch_cut_off = Counter(
            "raftkv_http_watch_cut_off",
            "Watch streams disconnected because their client read nothing for "
            "--watch-slow-timeout.",
            registry=self._registry,
        )
        self._events_unrecorded = 0
        self._upper_bounds = [*_DURATION_BUCKETS, math.inf]
        self._pending: dict[tuple[str, str, int], _Pending] = {}
        self._flush_scheduled = False
        if multiprocess_dir:
            self._exposed = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(self._exposed, path=multiprocess_dir)  # type: ignore[no-untyped-call]
        else:
            self._exposed = self._registry

    @classmethod
    def from_environment(cls) -> HttpMetrics:
        return cls(os.environ.get(MULTIPROCESS_DIR_ENV))

    def record(
        self,
        method: str,
        route: str,
        status: int,
        seconds: float,
        bytes_in: int,
        bytes_out: int,
    ) -> None:
        """One answered request. ``route`` must be a template, never a raw path.

        Added up here and written to the shared values at most every
        ``FLUSH_INTERVAL_S`` (and before every exposition): in multiprocess mode each
        increment takes a lock, asks the kernel for the process id and writes a mapped
        file, four times per request, which cost 8% of a worker's CPU under load.
        """
        key = (method, route, status)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(len(self._upper_bounds))
        pending.buckets[bisect.bisect_left(self._upper_bounds, seconds)] += 1
        pending.seconds += seconds
        pending.bytes_in += bytes_in
        pending.bytes_out += bytes_out
        if not self._flush_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._flush_scheduled = True
            loop.call_later(FLUSH_INTERVAL_S, self.flush)

    def flush(self) -> None:
        """Write what ``record`` added up since the last flush."""
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for (method, route, status), sums in pending.items():
            duration = self._duration.labels(method, route, str(status))
            # The histogram's own parts: its public ``observe`` adds one observation a
            # call, and so costs what this saves (tests/http/middleware checks the
            # exposition these writes give).
            duration._sum.inc(sums.seconds)
            for bucket, count in zip(duration._buckets, sums.buckets, strict=True):
                if count:
                    bucket.inc(count)
            if sums.bytes_in:
                self._received.labels(method, route).inc(sums.bytes_in)
            if sums.bytes_out:
                self._sent.labels(method, route).inc(sums.bytes_out)

    def count_rate_limited(self) -> None:
        """One request refused by the rate limit (it is also counted by ``record``)."""
        self._rate_limited.inc()

    # -- watches (the WatchMetricsSink of raftkv/http/watch/watcher.py) ---------------

    def watcher_opened(self) -> None:
        self._watchers.inc()

    def watcher_closed(self) -> None:
        self._watchers.dec()

    def events_sent(self, count: int) -> None:
        if not count:
            return
        if not self._events_unrecorded:
            # Added up and recorded once per turn of the event loop: a turn sends a
            # message to each of hundreds of watchers, and each increment of a shared
            # counter (a write to its file) cost more than the message.
            try:
                asyncio.get_running_loop().call_soon(self._record_events)
            except RuntimeError:
                self._watch_events.inc(count)
                return
        self._events_unrecorded += count

    def _record_events(self) -> None:
        if self._events_unrecorded:
            self._watch_events.inc(self._events_unrecorded)
            self._events_unrecorded = 0

    def resynced(self) -> None:
        self._watch_resyncs.inc()

    def fell_behind(self) -> None:
        self._watch_behind.inc()

    def cut_off(self) -> None:
        self._watch_cut_off.inc()

    def exposition(self) -> bytes:
        self._record_events()
        self.flush()
        return prometheus_client.generate_latest(self._exposed)


# -- the middleware -------------------------------------------------------------

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
