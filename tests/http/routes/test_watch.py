"""``GET /watch/{key}`` and ``GET /watch?prefix=`` through the whole worker app, against a
fake Raft process that serves watches with the real WatchHub: parameters and their 400s,
streams (NDJSON and SSE), long polls, the per-client limit, and the auth gate."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient
from watch_fakes import WatchFakeRaft

from raftkv.http.auth.access import Need
from raftkv.http.middleware.auth_gate import Requirement, requirement
from raftkv.http.routes.app import create_app
from raftkv.http.serving.settings import WorkerSettings
from raftkv.kv import KVStateMachine
from raftkv.wire.protocol import MAX_REVISION, Op
from raftkv.wire.watch_limits import WatchLimits


@pytest.fixture
def raft(socket_dir: Path) -> Iterator[WatchFakeRaft]:
    fake = WatchFakeRaft(str(socket_dir / "raft.sock"))
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def make_client(raft: WatchFakeRaft) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        options: dict[str, Any] = {
            "ipc_path": raft.path,
            "node_id": 1,
            "request_timeout_s": 2.0,
            "connect_timeout_s": 1.0,
        }
        options.update(overrides)
        client = TestClient(create_app(WorkerSettings(**options)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def check_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for word in words:
        assert word in message, message


def keys(answer: dict[str, Any]) -> list[tuple[int, str]]:
    return [(e["revision"], e["key"]) for e in answer["events"]]


# -- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("since=abc", ("since", "non-negative integer")),
        ("since=-1", ("since",)),
        ("since=1.5", ("since",)),
        ("since=", ("since",)),
        (f"since={MAX_REVISION + 1}", ("since", "too large")),
        ("since=1" + "0" * 30, ("too large",)),
        ("progress=soon", ("progress", "number of seconds")),
        ("progress=0.05", ("progress", "between 0.1 and 3600")),
        ("progress=3601", ("progress", "between")),
        ("progress=nan", ("progress", "between")),
        ("progress=inf", ("progress", "between")),
        ("wait=-1", ("wait", "between 0 and 300")),
        ("wait=301", ("wait", "between")),
        ("wait=x", ("wait", "number of seconds")),
        ("consistency=serializable", ("consistency", "'linearizable' or 'stale'")),
        ("prev=maybe", ("prev", "true or false")),
    ],
)
def test_bad_parameters_are_400(
    client: TestClient, raft: WatchFakeRaft, query: str, words: tuple[str, ...]
) -> None:
    for path in (f"/watch/k?{query}", f"/watch?prefix=p/&{query}"):
        check_error(client.get(path), 400, *words)
    assert raft.requests_of(Op.WATCH) == []  # refused before any watch was asked for


@pytest.mark.parametrize("value", ["x", "-3", "1e3", str(MAX_REVISION + 1)])
def test_a_bad_last_event_id_is_400(client: TestClient, value: str) -> None:
    check_error(client.get("/watch/k", headers={"Last-Event-ID": value}), 400, "Last-Event-ID")


def test_an_empty_key_or_a_missing_prefix_is_400(client: TestClient) -> None:
    check_error(client.get("/watch/"), 400, "key must not be empty", "/watch?prefix=")
    check_error(client.get("/watch"), 400, "prefix is required")
    check_error(client.get("/watch?since=0"), 400, "prefix is required")


def test_an_oversized_key_or_prefix_is_413(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_key_bytes=8)
    check_error(client.get("/watch/" + "k" * 9 + "?wait=0"), 413, "key is 9 bytes", "limit is 8")
    check_error(client.get("/watch?prefix=" + "p" * 9), 413, "prefix is 9 bytes")
    assert client.get("/watch/" + "k" * 8 + "?wait=0&since=0").status_code == 200


def test_good_parameters_are_accepted(client: TestClient, raft: WatchFakeRaft) -> None:
    raft.write(b"k", b"1")
    for query in (
        "since=0&wait=0&progress=0.1",
        "since=0&wait=300&progress=3600",
        "since=00&wait=0.5&prev=true",
        "since=0&wait=0&prev=&consistency=linearizable",
        "since=0&wait=0&prev=no&consistency=stale",
    ):
        response = client.get(f"/watch/k?{query}")
        assert response.status_code == 200, (query, response.text)
        assert keys(response.json()) == [(1, "k")]


# -- long polls ---------------------------------------------------------------------------


def test_a_long_poll(client: TestClient, raft: WatchFakeRaft) -> None:
    raft.write(b"p/a", b"1")
    raft.write(b"q", b"x")
    raft.write(b"p/a", b"2")
    answer = client.get("/watch?prefix=p/&since=0&wait=0&prev=true").json()
    assert answer["revision"] == 3
    assert keys(answer) == [(1, "p/a"), (3, "p/a")]
    assert answer["events"][1]["prev"] == {
        "value": "1",
        "create_revision": 1,
        "mod_revision": 1,
        "version": 1,
    }
    assert client.get("/watch/p/a?since=3&wait=0").json() == {"revision": 3, "events": []}
    # A future revision: the answer is that revision, not the node's.
    assert client.get("/watch/p/a?since=50&wait=0").json() == {"revision": 50, "events": []}


def test_a_long_poll_of_a_key_that_is_not_utf8(client: TestClient, raft: WatchFakeRaft) -> None:
    raft.write(b"\xff\x01", b"\xfe")
    answer = client.get("/watch/%FF%01?since=0&wait=0").json()
    assert answer["events"] == [
        {
            "type": "put",
            "key_base64": base64.b64encode(b"\xff\x01").decode(),
            "value_base64": base64.b64encode(b"\xfe").decode(),
            "revision": 1,
            "create_revision": 1,
            "mod_revision": 1,
            "version": 1,
        }
    ]
    by_prefix = client.get("/watch?prefix=%FF&since=0&wait=0").json()["events"]
    assert [e["key_base64"] for e in by_prefix] == [answer["events"][0]["key_base64"]]
    assert client.get("/watch?prefix=%FF%02&since=0&wait=0").json()["events"] == []


def test_a_long_poll_older_than_the_history_is_a_resync(
    socket_dir: Path, make_client: Callable[..., TestClient], raft: WatchFakeRaft
) -> None:
    raft.sm = KVStateMachine(max_clients=raft.max_clients, watch_history=2)
    for i in range(5):
        raft.write(b"p/%d" % i, b"v")
    client = make_client()
    answer = client.get("/watch?prefix=p/&since=0&wait=0").json()
    assert answer["revision"] == 5
    assert answer["events"] == []
    assert [item["key"] for item in answer["resync"]] == ["p/0", "p/1", "p/2", "p/3", "p/4"]


# -- streams ------------------------------------------------------------------------------


def test_a_stream(client: TestClient, raft: WatchFakeRaft) -> None:
    raft.write(b"p/a", b"1")
    with client.stream("GET", "/watch?prefix=p/&since=0") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        assert response.headers["cache-control"] == "no-cache"
        lines = response.iter_lines()
        assert json.loads(next(lines)) == {"kind": "start", "revision": 0}
        first = json.loads(next(lines))
        assert (first["kind"], keys(first)) == ("events", [(1, "p/a")])
        raft.write(b"q", b"x")
        raft.write(b"p/b", b"2")
        second = json.loads(next(lines))
        assert (second["kind"], second["revision"], keys(second)) == ("events", 3, [(3, "p/b")])
    # Closed: the worker forgets the watcher.
    check_metric(client, "raftkv_http_watchers", 0.0)


def check_metric(client: TestClient, name: str, value: float) -> None:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            assert float(line.split()[1]) == value, line
            return
    raise AssertionError(f"no {name} in /metrics")


def test_a_linearizable_stream_starts_at_the_read_index(
    client: TestClient, raft: WatchFakeRaft
) -> None:
    raft.write(b"k", b"1")
    raft.write(b"k", b"2")
    with client.stream("GET", "/watch/k") as response:
        lines = response.iter_lines()
        assert json.loads(next(lines)) == {"kind": "start", "revision": 2}
        raft.write(b"k", b"3")
        assert keys(json.loads(next(lines))) == [(3, "k")]
    assert raft.requests_of(Op.READ_INDEX)


def sse_events(lines: Iterator[str], count: int) -> list[dict[str, str]]:
    events: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    while len(events) < count:
        line = next(lines)
        if line == "":
            events.append(fields)
            fields = {}
            continue
        name, _, value = line.partition(": ")
        fields[name] = value
    return events


def test_server_sent_events_resume_from_last_event_id(
    client: TestClient, raft: WatchFakeRaft
) -> None:
    for value in (b"1", b"2", b"3"):
        raft.write(b"k", value)
    headers = {"Accept": "text/event-stream", "Last-Event-ID": "2"}
    with client.stream("GET", "/watch/k", headers=headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        start, events = sse_events(response.iter_lines(), 2)
        assert start == {"event": "start", "id": "2", "data": '{"kind":"start","revision":2}'}
        assert events["event"] == "events"
        assert events["id"] == "3"
        assert keys(json.loads(events["data"])) == [(3, "k")]
    # since wins over the header.
    with client.stream("GET", "/watch/k?since=1", headers=headers) as response:
        (start,) = sse_events(response.iter_lines(), 1)
        assert start["id"] == "1"


def test_streams_beyond_the_per_client_limit_are_429(
    make_client: Callable[..., TestClient], raft: WatchFakeRaft
) -> None:
    client = make_client(watch=WatchLimits(max_per_client=1))
    with client.stream("GET", "/watch/a?since=0") as response:
        assert json.loads(next(response.iter_lines()))["kind"] == "start"
        check_error(client.get("/watch/b?since=0"), 429, "--watch-max-per-client")
        # A long poll is not a stream: not counted.
        assert client.get("/watch/b?since=0&wait=0").status_code == 200
    with client.stream("GET", "/watch/b?since=0") as response:
        assert response.status_code == 200


# -- the auth gate --------------------------------------------------------------------------


def scope(path: str, raw: bytes | None = None, query: bytes = b"") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "http", "method": "GET", "path": path, "query_string": query}
    if raw is not None:
        out["raw_path"] = raw
    return out


def test_a_watch_needs_read_permission_on_what_it_watches() -> None:
    assert requirement(scope("/watch/app/x", b"/watch/app/x")) == Requirement(
        Need.READ, b"app/x", "key"
    )
    # The key as the route takes it: from the raw path, percent-decoded to bytes.
    assert requirement(scope("/watch/a b", b"/watch/a%20b%FF")) == Requirement(
        Need.READ, b"a b\xff", "key"
    )
    assert requirement(scope("/watch/k")) == Requirement(Need.READ, b"k", "key")
    assert requirement(scope("/watch", b"/watch", b"prefix=app%2F&since=3")) == Requirement(
        Need.READ, b"app/", "the whole prefix"
    )
    # No prefix at all (a 400 later) or an empty one: the whole keyspace.
    assert requirement(scope("/watch", b"/watch")) == Requirement(
        Need.READ, b"", "the whole prefix"
    )
    mounted = scope("/api/watch/k", b"/api/watch/k")
    mounted["root_path"] = "/api"
    assert requirement(mounted) == Requirement(Need.READ, b"k", "key")


def basic(user: str, password: str) -> dict[str, str]:
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


def test_the_auth_gate_guards_watches(client: TestClient, raft: WatchFakeRaft) -> None:
    steps: list[tuple[str, str, dict[str, str] | None]] = [
        ("POST", "/auth/users", {"name": "root", "password": "root-secret"}),
        ("POST", "/auth/roles", {"name": "admins"}),
        ("PUT", "/auth/roles/admins/permissions", {"access": "admin"}),
        ("PUT", "/auth/users/root/roles/admins", None),
        ("POST", "/auth/users", {"name": "reader", "password": "reader-secret"}),
        ("POST", "/auth/roles", {"name": "app-read"}),
        ("PUT", "/auth/roles/app-read/permissions", {"access": "read", "prefix": "app/"}),
        ("PUT", "/auth/users/reader/roles/app-read", None),
    ]
    for method, path, body in steps:
        assert client.request(method, path, json=body).status_code == 200, path
    assert client.post("/auth/enable").status_code == 200
    reader = basic("reader", "reader-secret")
    written = raft.write(b"app/x", b"1")
    watches_before = len(raft.requests_of(Op.WATCH))
    check_error(client.get("/watch/app/x?since=0&wait=0"), 401, "authentication required")
    check_error(client.get("/watch/other?since=0&wait=0", headers=reader), 403, "read")
    check_error(client.get("/watch?prefix=ap&since=0&wait=0", headers=reader), 403, "prefix")
    check_error(client.get("/watch?prefix=&since=0&wait=0", headers=reader), 403, "prefix")
    assert len(raft.requests_of(Op.WATCH)) == watches_before
    answer = client.get("/watch/app/x?since=0&wait=0", headers=reader).json()
    assert keys(answer) == [(written, "app/x")]
    answer = client.get("/watch?prefix=app/&since=0&wait=0", headers=reader).json()
    assert keys(answer) == [(written, "app/x")]
