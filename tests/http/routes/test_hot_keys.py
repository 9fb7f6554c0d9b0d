"""The hot key path answers exactly as the Starlette app does.

Two workers are served on real ports by uvicorn with the worker's own protocol, each in
front of its own fake Raft process: one with the hot key path, one without it (every
request through the app). The same raw requests go to both, in the same order, and the
raw answers must be the same bytes (the ``date`` header masked): statuses, headers in
their order, bodies, keep-alive and pipelining, errors, the rate limit and
authentication.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fake_raft import FakeRaft

from raftkv.http.routes.app import create_app
from raftkv.http.routes.hot_keys import HotKeyRoutes
from raftkv.http.serving.connection_limits import limited_http_protocol
from raftkv.http.serving.settings import WorkerSettings
from raftkv.testing.cluster import free_ports, wait_until
from raftkv.wire.limits import HttpLimits

_DATE = re.compile(rb"\r\ndate: [^\r]*")


class _Served:
    """One worker on a real port; ``hot_served`` counts the requests its hot path took."""

    def __init__(self, port: int, hot: HotKeyRoutes | None) -> None:
        self.port = port
        self.hot_served = 0
        if hot is not None:
            serve = hot.serve

            async def counting(*args: Any) -> None:
                self.hot_served += 1
                await serve(*args)

            hot.serve = counting  # type: ignore[method-assign]

    def exchange(self, request: bytes, answers: int = 1) -> bytes:
        """Send ``request`` (one or several pipelined) on a new connection and read
        ``answers`` whole answers, the date masked."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(request)
            data = b""
            bodiless = request.startswith(b"HEAD ")
            while _complete_answers(data, bodiless) < answers:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        return _DATE.sub(b"\r\ndate: -", data)


def _complete_answers(data: bytes, bodiless: bool) -> int:
    count = 0
    while True:
        head_end = data.find(b"\r\n\r\n")
        if head_end < 0:
            return count
        head = data[:head_end].lower()
        match = re.search(rb"content-length: (\d+)", head)
        length = int(match.group(1)) if match and not bodiless else 0
        if len(data) < head_end + 4 + length:
            return count
        data = data[head_end + 4 + length :]
        count += 1


@contextlib.contextmanager
def _worker(directory: Path, name: str, *, hot: bool, limits: HttpLimits) -> Iterator[_Served]:
    raft = FakeRaft(str(directory / f"{name}.sock"))
    raft.start()
    try:
        settings = WorkerSettings(
            ipc_path=raft.path, node_id=1, request_timeout_s=2.0, limits=limits
        )
        app = create_app(settings)
        hot_routes = app.state.hot_routes if hot else None
        (port,) = free_ports(1)
        served = _Served(port, hot_routes)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            http=limited_http_protocol(limits, hot_routes),
            proxy_headers=False,
            server_header=False,
            access_log=False,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"worker-{name}", daemon=True)
        thread.start()
        try:
            wait_until(lambda: server.started, 10.0, what="the worker to start")
            yield served
        finally:
            server.should_exit = True
            thread.join(10)
    finally:
        raft.stop()


@contextlib.contextmanager
def _both(directory: Path, limits: HttpLimits | None = None) -> Iterator[tuple[_Served, _Served]]:
    limits = limits or HttpLimits()
    with (
        _worker(directory, "hot", hot=True, limits=limits) as hot,
        _worker(directory, "app", hot=False, limits=limits) as app,
    ):
        yield hot, app


@pytest.fixture
def directory() -> Iterator[Path]:
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="rkv-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _request(
    method: str, target: str, body: bytes | None = None, *headers: str, version: str = "1.1"
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: test", *headers]
    if body is not None and not any(h.lower().startswith("transfer-encoding") for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


_SESSION = ("X-Raftkv-Client-Id: 77", "X-Raftkv-Seq: 1", "X-Raftkv-First-Incomplete: 1")

# Every form of the four key requests, good and bad, in an order that gives each a
# state to act on.
_CORPUS: list[tuple[bytes, int]] = [
    (_request("GET", "/kv/missing"), 1),
    (_request("POST", "/kv/a", b'{"value": "one"}', "Content-Type: application/json"), 1),
    (_request("PUT", "/kv/b", b"raw \x00\xff bytes"), 1),
    (_request("PUT", "/kv/b?prev_revision=1", b"cas loses"), 1),
    (_request("PUT", "/kv/b?prev_revision=2", b"cas wins"), 1),
    (_request("POST", "/kv/a", b'{"value": "two", "prev_revision": 0}'), 1),
    (_request("POST", "/kv/c", b'{"value": "leased", "ttl": 30}'), 1),
    (_request("PUT", "/kv/d?ttl=5", b"ttl by query"), 1),
    (_request("PUT", "/kv/e?lease=99", b"no such lease"), 1),
    (_request("GET", "/kv/a"), 1),
    (_request("GET", "/kv/a", None, "Accept: application/json"), 1),
    (_request("GET", "/kv/b", None, "Accept: text/html, application/json;q=0.5"), 1),
    (_request("GET", "/kv/b?consistency=stale"), 1),
    (_request("GET", "/kv/b?consistency=eventual"), 1),
    (_request("GET", "/kv/c", None, "Accept: application/json"), 1),
    (_request("GET", "/kv/%E2%82%AC%20sp%2Fslash"), 1),
    (_request("PUT", "/kv/%E2%82%AC%20sp%2Fslash", b"euro"), 1),
    (_request("GET", "/kv/%E2%82%AC%20sp%2Fslash", None, "Accept: application/json"), 1),
    (_request("PUT", "/kv/%FF%FE", b"not utf-8 key"), 1),
    (_request("GET", "/kv/%FF%FE", None, "Accept: application/json"), 1),
    (_request("PUT", "/kv/", b"empty key"), 1),
    (_request("PUT", "/kv/" + "k" * 5000, b"long key"), 1),
    (_request("POST", "/kv/a", b"{not json"), 1),
    (_request("POST", "/kv/a", b'["list"]'), 1),
    (_request("POST", "/kv/a", b'{"value": 3}'), 1),
    (_request("POST", "/kv/a", b'{"valeu": "x"}'), 1),
    (_request("POST", "/kv/a", b'{"value": "x", "ttl": 1, "lease": 2}'), 1),
    (_request("POST", "/kv/a", b'{"value": "x", "prev_revision": -1}'), 1),
    (_request("PUT", "/kv/a", b"x" * 2_000_000), 1),
    (_request("PUT", "/kv/a", b"", "Content-Length: twelve"), 1),
    (_request("PUT", "/kv/s", b"tagged", *_SESSION), 1),
    (_request("PUT", "/kv/s", b"tagged again", *_SESSION), 1),
    (_request("PUT", "/kv/s", b"half a session", "X-Raftkv-Client-Id: 5"), 1),
    (_request("PUT", "/kv/s", b"zero", "X-Raftkv-Client-Id: 0", *_SESSION[1:]), 1),
    (_request("DELETE", "/kv/missing"), 1),
    (_request("DELETE", "/kv/b?prev_revision=1"), 1),
    (_request("DELETE", "/kv/b"), 1),
    (_request("GET", "/kv/b"), 1),
    (
        _request(
            "PUT",
            "/kv/chunked",
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            "Transfer-Encoding: chunked",
        ),
        1,
    ),
    (_request("GET", "/kv/chunked"), 1),
    (_request("PUT", "/kv/continue", b"after 100", "Expect: 100-continue"), 1),
    (_request("GET", "/kv/a", None, "Connection: close"), 1),
    (_request("GET", "/kv/a", version="1.0"), 1),
    # Pipelined: three answers in order on one connection, a slow-path one between.
    (
        _request("PUT", "/kv/p", b"1")
        + _request("GET", "/health")
        + _request("GET", "/kv/p", None, "Accept: application/json"),
        3,
    ),
    # Not the hot path's: HEAD, the prefix routes, an unknown method.
    (_request("HEAD", "/kv/a"), 1),
    (_request("GET", "/kv?prefix=", None), 1),
    (_request("PATCH", "/kv/a", b"x"), 1),
]


def test_every_key_request_is_answered_alike(directory: Path) -> None:
    with _both(directory) as (hot, app):
        for request, answers in _CORPUS:
            assert hot.exchange(request, answers) == app.exchange(request, answers), request
        # Everything but HEAD, the prefix routes and PATCH took the hot path.
        assert hot.hot_served == sum(answers for _, answers in _CORPUS) - 4 - 1
        assert app.hot_served == 0
        metrics = hot.exchange(_request("GET", "/metrics")).decode()
        assert 'method="POST",route="/kv/{key}",status="200"' in metrics
        assert 'method="PUT",route="/kv/{key}",status="413"' in metrics


def test_the_rate_limit_is_shared_and_answered_alike(directory: Path) -> None:
    limits = HttpLimits(rate_limit=0.001, rate_burst=3)
    with _both(directory, limits) as (hot, app):
        # The bucket is the client's, whichever path: two key requests and one prefix
        # listing use it up, and then both paths refuse.
        for request in (
            _request("PUT", "/kv/r", b"1"),
            _request("GET", "/kv?prefix=r"),
            _request("GET", "/kv/r"),
            _request("GET", "/kv/r"),
            _request("GET", "/kv?prefix=r"),
        ):
            assert hot.exchange(request) == app.exchange(request), request
        assert b" 429 " in hot.exchange(_request("GET", "/kv/r"))
        metrics = hot.exchange(_request("GET", "/health"))
        assert b"200" in metrics


def _basic(user: str, password: str) -> str:
    import base64

    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Authorization: Basic {token}"


def test_authentication_is_checked_alike(directory: Path) -> None:
    setup = [
        ("POST", "/auth/users", b'{"name": "root", "password": "root-secret"}'),
        ("POST", "/auth/roles", b'{"name": "admins"}'),
        ("PUT", "/auth/roles/admins/permissions", b'{"access": "admin"}'),
        ("PUT", "/auth/users/root/roles/admins", b""),
        ("POST", "/auth/users", b'{"name": "reader", "password": "reader-secret"}'),
        ("POST", "/auth/roles", b'{"name": "app-read"}'),
        ("PUT", "/auth/roles/app-read/permissions", b'{"access": "read", "prefix": "app/"}'),
        ("PUT", "/auth/users/reader/roles/app-read", b""),
        ("PUT", "/kv/app/x", b"visible"),
        ("POST", "/auth/enable", b""),
    ]
    root = _basic("root", "root-secret")
    reader = _basic("reader", "reader-secret")
    checks = [
        _request("GET", "/kv/app/x"),
        _request("GET", "/kv/app/x", None, _basic("reader", "wrong")),
        _request("GET", "/kv/app/x", None, reader),
        _request("GET", "/kv/other", None, reader),
        _request("PUT", "/kv/app/x", b"no", reader),
        _request("PUT", "/kv/app/x", b"yes", root),
        _request("DELETE", "/kv/app/x", None, root),
    ]
    with _both(directory) as (hot, app):
        for method, target, body in setup:
            request = _request(method, target, body)
            assert hot.exchange(request) == app.exchange(request), request
        for request in checks:
            answer = hot.exchange(request)
            assert answer == app.exchange(request), request
        assert b"401" in hot.exchange(checks[0]).split(b"\r\n")[0]
        assert b"403" in hot.exchange(checks[3]).split(b"\r\n")[0]


def test_a_request_leaves_no_garbage_for_the_collector(directory: Path) -> None:
    """Refcounting frees every request's objects: a request that left a reference cycle
    (its scope holding its own cycle) made the collector run all the time under load.
    A connection is a cycle of its own (protocol and transport), freed by the collector
    once it is closed: that much is expected, once per connection."""
    import gc

    with _both(directory) as (hot, app):
        batch = [
            _request("PUT", "/kv/g", b"1"),
            _request("GET", "/kv/g"),
            _request("GET", "/kv?prefix=g"),
        ] * 20
        for served in (hot, app):
            served.exchange(batch[0])
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for served in (hot, app):
                served.exchange(b"".join(batch), len(batch))  # one connection each
            gc.collect()
            left = [type(o).__name__ for o in gc.garbage]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        # At most the last request of each connection (its protocol holds it): the
        # pipelined one and the one before it of each worker.
        assert left.count("RequestResponseCycle") <= 4, left.count("RequestResponseCycle")
        assert "KeyRequest" not in left
