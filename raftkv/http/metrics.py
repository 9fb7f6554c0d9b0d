"""The HTTP workers' metrics, and the ``/metrics`` page of a node.

Every worker counts its own requests. Started by ``kvnode``, the workers of a node
share a directory (prometheus-client's multiprocess mode, see
``raftkv/server/worker_metrics_dir.py``), and the worker that serves a scrape adds up
all of them. ``/metrics`` is then one view of the node: the Raft process's metrics,
which it sends over the IPC socket (``Op.METRICS``), followed by the workers'. Every
family here is named ``raftkv_http_...``, a prefix the Raft process never uses, so no
family appears twice. A worker run alone (no directory) serves its own counts.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.requests import Request
from starlette.responses import Response

from raftkv.node.worker_metrics_dir import MULTIPROCESS_DIR_ENV

__all__ = ["CONTENT_TYPE", "HttpMetrics", "metrics_endpoint"]

# The classic text format, which every Prometheus version reads and which
# prometheus-client writes by default.
CONTENT_TYPE = prometheus_client.exposition.CONTENT_TYPE_PLAIN_0_0_4

# Bounds double from 0.5 ms to 8 s (requests time out after a few seconds).
_DURATION_BUCKETS = tuple(0.0005 * 2**i for i in range(15))

# One labelled child of each metric per (method, route, status).
_Instruments = tuple[Histogram, Counter, Counter]


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
        self._children: dict[tuple[str, str, int], _Instruments] = {}
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
        """One answered request. ``route`` must be a template, never a raw path."""
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self._duration.labels(method, route, str(status)),
                self._received.labels(method, route),
                self._sent.labels(method, route),
            )
        duration, received, sent = children
        duration.observe(seconds)
        if bytes_in:
            received.inc(bytes_in)
        if bytes_out:
            sent.inc(bytes_out)

    def count_rate_limited(self) -> None:
        """One request refused by the rate limit (it is also counted by ``record``)."""
        self._rate_limited.inc()

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self._exposed)


Endpoint = Callable[[Request], Awaitable[Response]]


def metrics_endpoint(
    raft_metrics: Callable[[], Awaitable[bytes]], metrics: HttpMetrics
) -> Endpoint:
    """``GET /metrics``: the Raft process's text, then the workers'. ``raft_metrics``
    raises (an error answer) when the Raft process does not answer: a node without its
    Raft process is down, and a failed scrape says so."""

    async def serve_metrics(request: Request) -> Response:
        raft_text = await raft_metrics()
        return Response(raft_text + metrics.exposition(), 200, media_type=CONTENT_TYPE)

    return serve_metrics
