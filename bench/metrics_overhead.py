"""CPU per request of the HTTP worker's app with and without its request metrics.

Drives the ASGI app directly (no sockets, no HTTP parsing) with GET and PUT /kv/{key}
against an in-process stand-in for the Raft process, in prometheus-client's
multiprocess mode as under kvnode, and prints the median CPU time per request of each
variant. Leaving out the server and the Raft process makes the relative cost an upper
bound of what a real request sees.

    python bench/metrics_overhead.py [requests per round] [rounds]
"""

from __future__ import annotations

import os
import sys
import tempfile

# As kvnode does for its workers; prometheus-client reads it when first imported.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="raftkv-metrics-")

import asyncio
import itertools
import statistics
import time
from typing import Any, cast

from starlette.applications import Starlette

from raftkv.http.middleware.metrics import HttpMetricsMiddleware
from raftkv.http.routes.app import create_app
from raftkv.http.serving.ipc_client import IpcClient
from raftkv.http.serving.settings import WorkerSettings
from raftkv.kv.results import KeyValue
from raftkv.wire.protocol import Op, ReplyStatus, encode_key_value
from raftkv_ext.codec import ClientReply, ClientRequest

VALUE = b"v" * 100


class StubRaft:
    """Answers at once, as an IpcClient would after a round trip."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def next_request_id(self) -> int:
        return next(self._ids)

    async def request(self, request: ClientRequest, timeout: float) -> ClientReply:
        if request.op == Op.GET:
            body = encode_key_value(KeyValue(request.key, VALUE, 5, 5, 1))
            return ClientReply(request.request_id, ReplyStatus.OK, 5, 1, 5, body)
        return ClientReply(request.request_id, ReplyStatus.OK, 6, 1, 6, b"")

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None


def build(with_metrics: bool) -> Starlette:
    app = create_app(WorkerSettings(ipc_path="unused"), ipc=cast(IpcClient, StubRaft()))
    if not with_metrics:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not HttpMetricsMiddleware]
    return app


def scope(method: str, body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": "/kv/bench/key",
        "raw_path": b"/kv/bench/key",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench"), (b"content-length", str(len(body)).encode())],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }


async def run(app: Starlette, requests: int) -> float:
    """CPU seconds per request over ``requests`` requests, half GET, half PUT."""
    get_scope, put_scope = scope("GET", b""), scope("PUT", VALUE)

    async def receive_get() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def receive_put() -> dict[str, Any]:
        return {"type": "http.request", "body": VALUE, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    started = time.process_time()
    for i in range(requests):
        if i % 2:
            await app(dict(put_scope), receive_put, send)
        else:
            await app(dict(get_scope), receive_get, send)
    return (time.process_time() - started) / requests


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    apps = {"without metrics": build(False), "with metrics": build(True)}
    results: dict[str, list[float]] = {name: [] for name in apps}
    for app in apps.values():
        asyncio.run(run(app, 2000))  # warm up
    for _ in range(rounds):  # alternate, so that a busy machine hurts both alike
        for name, app in apps.items():
            results[name].append(asyncio.run(run(app, requests)))
    medians = {name: statistics.median(times) * 1e6 for name, times in results.items()}
    for name, micros in medians.items():
        print(f"{name:16} {micros:7.1f} us CPU per request (median of {rounds} rounds)")
    added = medians["with metrics"] - medians["without metrics"]
    share = 100 * added / medians["without metrics"]
    print(f"{'metrics cost':16} {added:7.1f} us per request ({share:.1f}%)")


if __name__ == "__main__":
    main()
