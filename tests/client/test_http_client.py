"""The Python client, raftkv.client.http_client.

Three kinds of test:

* retry, session and encoding logic against ``httpx.MockTransport`` handlers (fast and
  exact: every request the client sends is checked);
* the key API, leader routing, exactly-once retries, sessions the store forgot, threads,
  the AsyncClient and failover against one real 3-node cluster (``LocalCluster``), shared
  by the module;
* the membership, leadership, snapshot and backup calls against a small fake Starlette
  server, since the real endpoints may not be in the server yet.

Every ``python`` block of docs/client.md runs too: the addresses in it
(``http://10.0.0.1:8001`` ... ``http://10.0.0.3:8001``, ``http://127.0.0.1:8001``) are
replaced by the cluster's nodes, or by the fake server's address for a block marked
``<!-- test: fake-server -->``; the native ports ``"127.0.0.1", 7001`` ... ``7003`` by
the nodes' native client ports.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import pickle
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from raftkv.client.http_client import (
    AsyncClient,
    BadRequestError,
    Client,
    ConflictError,
    KeyValue,
    NotFoundError,
    RaftkvError,
    UnavailableError,
    WriteResult,
)
from raftkv.testing.cluster import LocalCluster, free_ports, running_cluster, wait_until

DOCS = Path(__file__).resolve().parents[2] / "docs" / "client.md"
WRITE_METHODS = ("PUT", "POST", "DELETE")


def tag_of(request: httpx.Request) -> tuple[int, int, int]:
    """(client id, seq, first incomplete) of a tagged write."""
    headers = request.headers
    return (
        int(headers["x-raftkv-client-id"]),
        int(headers["x-raftkv-seq"]),
        int(headers["x-raftkv-first-incomplete"]),
    )


def is_key_write(request: httpx.Request) -> bool:
    return request.method in WRITE_METHODS and request.url.path.startswith("/kv")


# -- transports wrapping the network --------------------------------------------------------


class Recorder(httpx.BaseTransport):
    """Sends every request over the network and remembers it."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.requests: list[httpx.Request] = []
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class _Loser:
    """Loses the first answer of each of the first ``count`` key writes (a retry, with the
    same tag, gets through)."""

    def __init__(self, count: int) -> None:
        self.remaining = count
        self.lost_tags: set[tuple[int, int, int]] = set()
        self.lost: list[tuple[httpx.Request, httpx.Response]] = []
        self.requests: list[httpx.Request] = []

    def _lose(self, request: httpx.Request) -> bool:
        if not is_key_write(request) or self.remaining == 0:
            return False
        if tag_of(request)[:2] in {tag[:2] for tag in self.lost_tags}:
            return False
        self.remaining -= 1
        self.lost_tags.add(tag_of(request))
        return True


class LoseAnswers(_Loser, httpx.BaseTransport):
    """Performs each request, but loses the answer of the first ``count`` key writes: the
    server has acted, and the client sees the connection break (ReadError)."""

    def __init__(self, count: int = 1) -> None:
        super().__init__(count)
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self.inner.handle_request(request)
        if self._lose(request):
            response.read()
            response.close()
            self.lost.append((request, response))
            raise httpx.ReadError("connection reset before the answer arrived", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncLoseAnswers(_Loser, httpx.AsyncBaseTransport):
    """LoseAnswers for the AsyncClient."""

    def __init__(self, count: int = 1) -> None:
        super().__init__(count)
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = await self.inner.handle_async_request(request)
        if self._lose(request):
            await response.aread()
            await response.aclose()
            self.lost.append((request, response))
            raise httpx.ReadError("connection reset before the answer arrived", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class ForgetSessionOnce(httpx.BaseTransport):
    """Makes the first key write look like it comes from a session the store has
    forgotten (a client id it does not know, with replies already received: first
    incomplete seq above 1), so that the real server answers 410."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.done = False
        self.requests: list[httpx.Request] = []
        self.statuses: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if is_key_write(request) and not self.done:
            self.done = True
            request.headers["X-Raftkv-Seq"] = "7"
            request.headers["X-Raftkv-First-Incomplete"] = "7"
        self.requests.append(request)
        response = self.inner.handle_request(request)
        self.statuses.append(response.status_code)
        return response

    def close(self) -> None:
        self.inner.close()


# -- mocked nodes ---------------------------------------------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


def status_reply(leader_addr: str | None = "n1:8001") -> httpx.Response:
    return httpx.Response(200, json={"leader": 1, "leaderHttpAddr": leader_addr})


def put_reply(request: httpx.Request, revision: int = 7) -> httpx.Response:
    key = request.url.path.removeprefix("/kv/")
    return httpx.Response(
        200, json={"key": key, "index": revision, "term": 2, "revision": revision}
    )


class Mock:
    """Nodes n1 and n2, answering /cluster/status with ``leader_addr`` and everything
    else with ``handler``; every request is recorded."""

    def __init__(self, handler: Handler, leader_addr: str | None = "n1:8001") -> None:
        self.handler = handler
        self.leader_addr = leader_addr
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/cluster/status" and request.url.params.get("local"):
            return status_reply(self.leader_addr)
        return self.handler(request)

    def client(self, retry_for: float = 0.5, **kwargs: Any) -> Client:
        return Client(
            "http://n1:8001,http://n2:8001",
            transport=httpx.MockTransport(self),
            retry_for=retry_for,
            **kwargs,
        )

    def writes(self) -> list[httpx.Request]:
        return [r for r in self.requests if is_key_write(r)]


# -- endpoints, encoding --------------------------------------------------------------------


def test_endpoints_accept_lists_commas_and_bare_host_port() -> None:
    with Client("n1:8001, http://n2:8001/ ,n1:8001") as client:
        assert client.endpoints == ["http://n1:8001", "http://n2:8001"]
    with Client(["https://n3:443", "10.1.2.3:8001,10.1.2.4:8001"]) as client:
        assert client.endpoints == [
            "https://n3:443",
            "http://10.1.2.3:8001",
            "http://10.1.2.4:8001",
        ]
    with Client() as client:
        assert client.endpoints == ["http://127.0.0.1:8001"]
    for bad in ("", " , ", "ftp://n1:21", "http://n1:8001?x=1"):
        with pytest.raises(ValueError, match="endpoint"):
            Client(bad)
    with pytest.raises(ValueError, match="client_id"):
        Client("n1:8001", client_id=0)
    with Client("n1:8001", client_id=12345) as client:
        assert client.client_id == 12345


def test_keys_are_percent_encoded_per_segment_and_values_sent_raw() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            return put_reply(request)
        if request.url.path == "/kv":
            return httpx.Response(200, json={"items": [], "count": 0, "more": False, "deleted": 0})
        return httpx.Response(
            200,
            json={
                "key_base64": "AP8=",
                "value_base64": "AAEC",
                "create_revision": 3,
                "mod_revision": 5,
                "version": 2,
            },
        )

    mock = Mock(handler)
    with mock.client() as client:
        for key in ("a/b c/é", "x/../y/./z", "q?#%&+", "/lead//double"):
            client.put(key, "v")
        client.put("bin", b"\x00\xff\x10", prev_revision=0)
        client.put("text", "héllo")
        client.list("p q/é", limit=5, consistency="stale")
        client.delete_prefix("")
        kv = client.get("k", consistency="stale")
    writes = [r for r in mock.requests if r.method == "PUT"]
    assert [r.url.raw_path for r in writes[:4]] == [
        b"/kv/a/b%20c/%C3%A9",
        b"/kv/x/%2E%2E/y/%2E/z",
        b"/kv/q%3F%23%25%26%2B",
        b"/kv//lead//double",
    ]
    assert writes[4].url.raw_path == b"/kv/bin?prev_revision=0"
    assert writes[4].content == b"\x00\xff\x10"
    assert writes[4].headers["content-type"] == "application/octet-stream"
    assert writes[5].content == "héllo".encode()
    listing, wipe, get = mock.requests[-3:]
    assert listing.url.raw_path == b"/kv?prefix=p%20q%2F%C3%A9&limit=5&consistency=stale"
    assert (wipe.method, wipe.url.raw_path) == ("DELETE", b"/kv?prefix=")
    assert get.url.raw_path == b"/kv/k?consistency=stale"
    assert get.headers["accept"] == "application/json"
    # base64 fields decode; a key that is not UTF-8 keeps its bytes (as surrogates).
    assert kv == KeyValue("\x00\udcff", b"\x00\x01\x02", 3, 5, 2)
    with pytest.raises(UnicodeDecodeError):
        _ = KeyValue("k", b"\xff", 1, 1, 1).text
    with Client("n1:8001") as client, pytest.raises(ValueError, match="consistency"):
        client.get("k", consistency="eventual")  # type: ignore[arg-type]


# -- retries and sessions -------------------------------------------------------------------


def test_a_retried_write_carries_the_same_tag() -> None:
    answers = iter([503, 503, 200, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        status = next(answers)
        if status == 503:
            return httpx.Response(
                503, json={"error": "no leader in time; the write was not applied"}
            )
        return put_reply(request)

    mock = Mock(handler, leader_addr=None)
    with mock.client(retry_for=5.0) as client:
        result = client.put("k", "v")
        assert result == WriteResult("k", 7, 2, 7)
        client.delete("k")
    first, second, third, fourth = mock.writes()
    assert tag_of(first) == tag_of(second) == tag_of(third) == (client.client_id, 1, 1)
    assert tag_of(fourth) == (client.client_id, 2, 2)  # seq 1 is answered: no longer incomplete


def test_gives_up_after_retry_for_and_says_nothing_was_applied() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    mock = Mock(handler, leader_addr=None)
    with mock.client(retry_for=0.4) as client:
        started = time.monotonic()
        with pytest.raises(UnavailableError) as caught:
            client.put("k", "v")
        elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 2.0
    assert caught.value.may_have_applied is False
    assert caught.value.status is None
    assert "ConnectError" in caught.value.message and "it was not applied" in caught.value.message
    hosts = {r.url.host for r in mock.requests}
    assert hosts == {"n1", "n2"}  # moved on to the other node
    assert len(mock.writes()) >= 3  # retried, with backoff


@pytest.mark.parametrize(
    ("failure", "may_have_applied"),
    [
        ("read-error", True),
        ("503-maybe", True),
        ("503-not-applied", False),
        ("connect-error", False),
    ],
)
def test_may_have_applied_tells_unknown_from_certainly_not(
    failure: str, may_have_applied: bool
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if failure == "read-error":
            raise httpx.ReadError("reset", request=request)
        if failure == "connect-error":
            raise httpx.ConnectError("refused", request=request)
        if failure == "503-maybe":
            message = "no quorum answered in time; the write may or may not have been applied"
        else:
            message = "leadership changed; the write was not applied"
        return httpx.Response(503, json={"error": message}, headers={"Retry-After": "1"})

    mock = Mock(handler, leader_addr=None)
    with mock.client(retry_for=0.2) as client:
        with pytest.raises(UnavailableError) as write_error:
            client.put("k", "v")
        with pytest.raises(UnavailableError) as read_error:
            client.get("k")
    assert write_error.value.may_have_applied is may_have_applied
    assert read_error.value.may_have_applied is False
    if failure.startswith("503"):
        assert write_error.value.status == 503


@pytest.mark.parametrize(
    ("status", "body", "error_type"),
    [
        (400, {"error": "key must not be empty"}, BadRequestError),
        (413, {"error": "value is 2097152 bytes; the limit is 1048576 bytes"}, BadRequestError),
        (404, {"error": "key not found", "key": "k"}, NotFoundError),
        (
            409,
            {
                "error": "prev_revision 3 does not match the key's current revision 9",
                "current_revision": 9,
            },
            ConflictError,
        ),
        (500, {"error": "internal server error"}, RaftkvError),
        (405, {"error": "method PUT is not allowed on /kv"}, RaftkvError),
    ],
)
def test_errors_that_retrying_cannot_fix_are_raised_at_once(
    status: int, body: dict[str, Any], error_type: type[RaftkvError]
) -> None:
    mock = Mock(lambda request: httpx.Response(status, json=body))
    with mock.client(retry_for=5.0) as client, pytest.raises(RaftkvError) as caught:
        client.put("k", "v", prev_revision=3)
    assert type(caught.value) is error_type
    assert caught.value.status == status
    assert caught.value.message == body["error"] == str(caught.value)
    assert len(mock.writes()) == 1
    if status == 409:
        assert isinstance(caught.value, ConflictError)
        assert caught.value.current_revision == 9
    copy = pickle.loads(pickle.dumps(caught.value))  # e.g. out of a process pool
    assert type(copy) is error_type
    assert (copy.status, copy.message) == (status, body["error"])
    assert vars(copy) == vars(caught.value)


def test_a_forgotten_session_is_replaced_and_the_write_sent_again() -> None:
    statuses = iter([410, 200, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        if next(statuses) == 410:
            return httpx.Response(
                410, json={"error": "stale client session", "stale_session": True}
            )
        return put_reply(request)

    mock = Mock(handler)
    with mock.client(client_id=77) as client:
        client.put("k", "v")
        assert client.client_id != 77
        client.put("k", "w")
    refused, resent, following = mock.writes()
    assert tag_of(refused) == (77, 1, 1)
    assert tag_of(resent) == (client.client_id, 1, 1)
    assert tag_of(following) == (client.client_id, 2, 2)


def test_a_forgotten_session_after_a_lost_answer_is_an_unknown_outcome() -> None:
    attempts = iter(["lost", "410"])

    def handler(request: httpx.Request) -> httpx.Response:
        if next(attempts) == "lost":
            raise httpx.ReadError("reset", request=request)
        return httpx.Response(410, json={"error": "stale client session"})

    mock = Mock(handler)
    with mock.client(retry_for=5.0, client_id=5) as client:
        with pytest.raises(UnavailableError) as caught:
            client.put("k", "v")
        assert client.client_id == 5  # not renewed: the first attempt may have been applied
    assert caught.value.may_have_applied is True
    assert caught.value.status == 410
    assert "outcome is unknown" in caught.value.message
    assert len(mock.writes()) == 2


def test_a_write_given_up_is_no_longer_incomplete() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/kv/doomed":
            return httpx.Response(
                503, json={"error": "no leader in time; the write was not applied"}
            )
        return put_reply(request)

    mock = Mock(handler, leader_addr=None)
    with mock.client(retry_for=0.1) as client:
        with pytest.raises(UnavailableError):
            client.put("doomed", "v")
        client.put("fine", "v")
    assert tag_of(mock.writes()[0])[1:] == (1, 1)
    assert tag_of(mock.writes()[-1])[1:] == (2, 2)


def test_pipelined_async_writes_report_the_lowest_unanswered_seq() -> None:
    seen: list[tuple[int, int, int]] = []

    async def scenario() -> None:
        second_arrived = asyncio.Event()

        async def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/cluster/status":
                return status_reply()
            seen.append(tag_of(request))
            if request.url.path == "/kv/first":
                await second_arrived.wait()
            else:
                second_arrived.set()
            return put_reply(request)

        transport = httpx.MockTransport(handler)
        async with AsyncClient("n1:8001", transport=transport, client_id=9) as client:
            await asyncio.gather(client.put("first", "1"), client.put("second", "2"))
            await client.put("third", "3")

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert seen == [(9, 1, 1), (9, 2, 1), (9, 3, 3)]


def test_a_cancelled_async_write_is_no_longer_incomplete() -> None:
    seen: list[tuple[int, int, int]] = []

    async def scenario() -> None:
        async def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/cluster/status":
                return status_reply()
            seen.append(tag_of(request))
            if request.url.path == "/kv/hangs":
                await asyncio.sleep(60)
            return put_reply(request)

        transport = httpx.MockTransport(handler)
        async with AsyncClient("n1:8001", transport=transport, client_id=3) as client:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.put("hangs", "1"), 0.2)
            await client.put("next", "2")

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert seen == [(3, 1, 1), (3, 2, 2)]


def test_writes_and_linearizable_reads_go_to_the_leader() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            return put_reply(request)
        if request.url.path.startswith("/cluster"):
            return httpx.Response(200, json={"leader": 2})
        return httpx.Response(
            200,
            json={"key": "k", "value": "v", "create_revision": 1, "mod_revision": 1, "version": 1},
        )

    mock = Mock(handler, leader_addr="n2:8001")
    with mock.client() as client:
        for _ in range(3):
            client.put("k", "v")
        client.get("k")
        client.get("k", consistency="stale")
        client.status()
    hosts = [(r.method, r.url.path, r.url.host) for r in mock.requests]
    assert hosts == [
        ("GET", "/cluster/status", "n1"),  # discovery, once
        ("PUT", "/kv/k", "n2"),
        ("PUT", "/kv/k", "n2"),
        ("PUT", "/kv/k", "n2"),
        ("GET", "/kv/k", "n2"),
        ("GET", "/kv/k", "n1"),
        ("GET", "/cluster/status", "n1"),
    ]

    # A wildcard bind address is no place to send anything: use the endpoints.
    wildcard = Mock(handler, leader_addr="0.0.0.0:8001")
    with wildcard.client() as client:
        client.put("k", "v")
    assert [r.url.host for r in wildcard.writes()] == ["n1"]


def test_after_the_leader_fails_the_client_waits_for_a_new_one() -> None:
    """A leader that fails twice is presumed gone. While the survivors still name it, a
    write sent to them would be forwarded to it and hang; the client asks again until
    they name a new leader."""
    state = {"n1 dead": False, "n2 names old leader": 2}
    requests: list[tuple[str, str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        requests.append((request.method, request.url.path, host))
        if host == "n1" and state["n1 dead"]:
            raise httpx.ConnectError("refused", request=request)
        if request.url.path == "/cluster/status":
            if host == "n2" and state["n2 names old leader"] > 0:
                state["n2 names old leader"] -= 1
                return status_reply("n1:8001")
            return status_reply("n1:8001" if host == "n1" else "n2:8001")
        return put_reply(request)

    with Client("n1:8001,n2:8001", transport=httpx.MockTransport(handler)) as client:
        client.put("k", "before")
        state["n1 dead"] = True
        client.put("k", "after")
    puts = [host for method, _, host in requests if method == "PUT"]
    assert puts == ["n1", "n1", "n1", "n2"]  # the first failure could be a blip: once more
    assert requests.count(("GET", "/cluster/status", "n2")) == 3


def test_admin_calls_are_retried_only_when_they_certainly_did_not_arrive() -> None:
    events = iter(["refused", "ok"])

    def flaky(request: httpx.Request) -> httpx.Response:
        if next(events) == "refused":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"leader": 3})

    mock = Mock(flaky, leader_addr=None)
    with mock.client(retry_for=5.0) as client:
        assert client.transfer_leader(3) == 3
    posts = [r for r in mock.requests if r.method == "POST"]
    assert len(posts) == 2 and json.loads(posts[1].content) == {"id": 3}

    def lost(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    mock = Mock(lost)
    with mock.client(retry_for=5.0) as client, pytest.raises(UnavailableError) as caught:
        client.remove_member(4)
    assert caught.value.may_have_applied is True
    assert len([r for r in mock.requests if r.method == "DELETE"]) == 1


# -- the real cluster -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # Native ports too, for the docs' raftkv.client.native examples.
    with running_cluster(tmp_path_factory.mktemp("client-cluster"), 3, native=True) as running:
        yield running


def all_urls(cluster: LocalCluster) -> list[str]:
    return [cluster.url(node_id) for node_id in sorted(cluster.nodes)]


def test_key_operations_on_a_cluster(cluster: LocalCluster) -> None:
    with Client(all_urls(cluster)) as client:
        odd = "ops/dir with space/ünïcode/../?#%"
        first = client.put(odd, b"\x00\xffbinary")
        assert first.key == odd and first.revision == first.index > 0 and first.term >= 1
        kv = client.get(odd)
        assert kv == KeyValue(odd, b"\x00\xffbinary", first.revision, first.revision, 1)
        # A stale read is served by whichever node the client talks to: it catches up.
        wait_until(
            lambda: client.get_value(odd, consistency="stale") == b"\x00\xffbinary",
            5.0,
            what="a stale read to see the write",
        )

        second = client.put(odd, "tëxt")
        assert client.get(odd).text == "tëxt" and client.get(odd).version == 2
        assert client.get_value("ops/absent") is None
        assert client.get_value("ops/absent", b"fallback") == b"fallback"
        assert client.get_value(odd) == "tëxt".encode()

        with pytest.raises(NotFoundError) as missing:
            client.get("ops/absent")
        assert (missing.value.status, missing.value.message) == (404, "key not found")

        created = client.cas("ops/lock", "me", 0)
        with pytest.raises(ConflictError) as taken:
            client.cas("ops/lock", "you", 0)
        assert taken.value.current_revision == created.revision
        expected = f"the key already exists (current revision {created.revision})"
        assert taken.value.message == expected
        swapped = client.cas("ops/lock", "you", created.revision)
        assert swapped.revision > created.revision
        with pytest.raises(ConflictError) as stale:
            client.put("ops/lock", "me", prev_revision=created.revision)
        assert stale.value.current_revision == swapped.revision
        with pytest.raises(ConflictError) as absent:
            client.cas("ops/never", "x", 5)
        assert absent.value.current_revision == 0

        with pytest.raises(ConflictError):
            client.delete("ops/lock", prev_revision=created.revision)
        deleted = client.delete("ops/lock", prev_revision=swapped.revision)
        assert deleted.key == "ops/lock" and deleted.revision > swapped.revision
        with pytest.raises(NotFoundError):
            client.delete("ops/lock")

        for name in ("b", "a", "c"):
            client.put(f"ops/list/{name}", name)
        listed = client.list("ops/list/")
        assert [kv.key for kv in listed] == ["ops/list/a", "ops/list/b", "ops/list/c"]
        assert [kv.text for kv in client.list("ops/list/", limit=2)] == ["a", "b"]
        wait_until(
            lambda: client.list("ops/list/", consistency="stale") == listed,
            5.0,
            what="a stale listing to see the writes",
        )
        assert [kv.key for kv in client.list("ops/dir with space/")] == [odd]
        assert client.list("ops/nothing/") == []

        assert client.delete_prefix("ops/list/") == 3
        assert client.list("ops/list/") == []
        assert client.delete_prefix("ops/list/") == 0

        with pytest.raises(BadRequestError) as empty:
            client.put("", "x")
        assert (empty.value.status, empty.value.message) == (400, "key must not be empty")
        with pytest.raises(BadRequestError) as big:
            client.put("ops/big", b"x" * (1024 * 1024 + 1))
        assert big.value.status == 413 and "limit is 1048576 bytes" in big.value.message
        with pytest.raises(BadRequestError, match="limit must be between 1 and 10000"):
            client.list("ops/", limit=0)
        assert second.revision > first.revision


def test_status_and_nodes(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    with Client(cluster.url(cluster.followers()[0])) as client:
        status = client.status()
        nodes = client.nodes()
    assert status["leader"] == leader and status["role"] == "leader"  # a follower asks the leader
    assert status["totalNodes"] == 3
    assert {node["id"] for node in nodes["nodes"]} == set(cluster.nodes)
    assert nodes["leader"] == leader


def test_requests_go_to_the_leader_first(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    follower = cluster.followers()[0]
    recorder = Recorder()
    with Client([cluster.url(follower), cluster.url(leader)], transport=recorder) as client:
        client.put("route/k", "v")
        client.get("route/k")
        client.get("route/k", consistency="stale")
    leader_port, follower_port = cluster.nodes[leader].http_port, cluster.nodes[follower].http_port
    seen = [(r.method, r.url.path, r.url.port) for r in recorder.requests]
    assert seen == [
        ("GET", "/cluster/status", follower_port),
        ("PUT", "/kv/route/k", leader_port),
        ("GET", "/kv/route/k", leader_port),
        ("GET", "/kv/route/k", follower_port),
    ]


def test_a_write_whose_answer_was_lost_is_applied_once(cluster: LocalCluster) -> None:
    transport = LoseAnswers(count=5)
    with Client(all_urls(cluster), transport=transport) as client:
        put = client.put("once/put", "v")
        assert client.get("once/put").version == 1
        created = client.cas("once/created", "mine", 0)  # a second apply would be a 409
        deleted = client.delete("once/put")  # a second apply would be a 404
        client.put("once/p/a", "1")
        assert client.delete_prefix("once/p/") == 1
        assert client.get("once/created").version == 1
        assert client.get_value("once/put") is None

    assert len(transport.lost) == 5
    originals = [response.json() for _, response in transport.lost]
    assert put.revision == originals[0]["revision"]
    assert created.revision == originals[1]["revision"]
    assert deleted.revision == originals[2]["revision"]
    assert originals[4]["deleted"] == 1
    writes = [r for r in transport.requests if is_key_write(r)]
    tags = [tag_of(r) for r in writes]
    # Each write was sent twice: the retry with the same tag as the attempt that was lost.
    assert len(tags) == 10
    for lost_request, _ in transport.lost:
        assert tags.count(tag_of(lost_request)) == 2
    assert sorted({seq for _, seq, _ in tags}) == [1, 2, 3, 4, 5]


def test_a_forgotten_session_on_a_real_cluster(cluster: LocalCluster) -> None:
    transport = ForgetSessionOnce()
    with Client(all_urls(cluster), transport=transport, client_id=424242) as client:
        result = client.put("session/k", "v")
        assert client.client_id != 424242
        assert client.get("session/k").version == 1
    writes = [r for r in transport.requests if is_key_write(r)]
    assert [tag_of(r)[:2] for r in writes] == [(424242, 7), (client.client_id, 1)]
    answered = zip(transport.requests, transport.statuses, strict=True)
    assert [status for request, status in answered if is_key_write(request)] == [410, 200]
    assert result.revision > 0


def test_threads_share_one_session(cluster: LocalCluster) -> None:
    recorder = Recorder()
    with Client(all_urls(cluster), transport=recorder) as client:

        def worker(n: int) -> None:
            for i in range(5):
                client.put(f"threads/{n}/{i}", str(i))

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(client.list("threads/")) == 30
        assert {kv.version for kv in client.list("threads/")} == {1}
    tags = [tag_of(r) for r in recorder.requests if is_key_write(r)]
    assert sorted(seq for _, seq, _ in tags) == list(range(1, 31))
    assert all(first <= seq for _, seq, first in tags)
    assert len({client_id for client_id, _, _ in tags}) == 1


def test_async_client_on_a_cluster(cluster: LocalCluster) -> None:
    urls = all_urls(cluster)

    async def scenario() -> None:
        async with AsyncClient(urls) as client:
            first = await client.put("async/a b/é", b"\x01\x02")
            assert (await client.get("async/a b/é")).value == b"\x01\x02"
            assert await client.get_value("async/none") is None
            with pytest.raises(NotFoundError, match="key not found"):
                await client.get("async/none")
            with pytest.raises(ConflictError) as conflict:
                await client.cas("async/a b/é", "x", 0)
            assert conflict.value.current_revision == first.revision
            swapped = await client.cas("async/a b/é", "x", first.revision)
            await asyncio.gather(*(client.put(f"async/many/{i:02}", str(i)) for i in range(12)))
            listed = await client.list("async/many/")
            assert [kv.key for kv in listed] == [f"async/many/{i:02}" for i in range(12)]
            for _ in range(100):  # a stale listing catches up
                stale = await client.list("async/many/", limit=5, consistency="stale")
                if len(stale) == 5:
                    break
                await asyncio.sleep(0.05)
            assert stale == listed[:5]
            assert await client.delete_prefix("async/many/") == 12
            removed = await client.delete("async/a b/é", prev_revision=swapped.revision)
            assert removed.revision > swapped.revision
            assert (await client.status())["totalNodes"] == 3
            assert len((await client.nodes())["nodes"]) == 3

        lose = AsyncLoseAnswers(count=2)
        async with AsyncClient(urls, transport=lose) as client:
            put = await client.put("async/once", "v")
            created = await client.cas("async/once-created", "v", 0)
            assert (await client.get("async/once")).version == 1
            assert (await client.get("async/once-created")).version == 1
        originals = [response.json() for _, response in lose.lost]
        assert [put.revision, created.revision] == [o["revision"] for o in originals]
        tags = [tag_of(r) for r in lose.requests if is_key_write(r)]
        assert tags[0] == tags[1] and tags[2] == tags[3] and tags[0][1] == 1 and tags[2][1] == 2

    asyncio.run(asyncio.wait_for(scenario(), 60))


# -- the fake server for the membership, leader, snapshot and backup endpoints -------------


class FakeAdmin:
    """The cluster-administration endpoints, with the shapes the server gives them."""

    def __init__(self) -> None:
        self.address = ""
        self.reset()

    def reset(self) -> None:
        self.members = {1: "voter", 2: "voter", 3: "voter"}
        self.leader = 1
        self.index = 100
        self.busy = False
        self.slow_promotion = False
        self.corrupt_backup = False
        self.backup_body = bytes(range(256)) * 4096  # 1 MiB, several chunks
        self.seen: list[tuple[str, str, Any]] = []

    async def _record(self, request: Request) -> Any:
        body = await request.body()
        document = json.loads(body) if body else None
        query = f"?{request.url.query}" if request.url.query else ""
        self.seen.append((request.method, request.url.path + query, document))
        return document

    async def status(self, request: Request) -> Response:
        return JSONResponse({"leader": self.leader, "leaderHttpAddr": self.address})

    async def add_member(self, request: Request) -> Response:
        body = await self._record(request)
        if not isinstance(body, dict) or set(body) != {"id", "rpc_addr", "http_addr"}:
            return JSONResponse({"error": "body must be {id, rpc_addr, http_addr}"}, 400)
        if self.busy:
            return JSONResponse({"error": "a membership change is in progress"}, 409)
        self.index += 1
        answer = {"id": body["id"], "index": self.index, "cluster_id": "c0ffee"}
        if request.query_params.get("wait") == "false":
            self.members[body["id"]] = "learner"
            return JSONResponse({**answer, "membership": "learner"})
        if self.slow_promotion:
            self.members[body["id"]] = "learner"
            return JSONResponse({**answer, "membership": "learner"}, 202)
        self.members[body["id"]] = "voter"
        return JSONResponse({**answer, "membership": "voter"})

    async def remove_member(self, request: Request) -> Response:
        await self._record(request)
        node_id = int(request.path_params["node_id"])
        if self.busy:
            return JSONResponse({"error": "a membership change is in progress"}, 409)
        if node_id not in self.members:
            return JSONResponse({"error": f"node {node_id} is not a member"}, 404)
        del self.members[node_id]
        self.index += 1
        return JSONResponse({"removed": node_id, "index": self.index})

    async def transfer(self, request: Request) -> Response:
        body = await self._record(request)
        target = body.get("id") if isinstance(body, dict) else None
        if target is None:
            voters = [n for n, kind in self.members.items() if kind == "voter"]
            target = min(n for n in voters if n != self.leader)
        if self.members.get(target) != "voter":
            return JSONResponse({"error": f"node {target} is not a voter"}, 400)
        self.leader = target
        return JSONResponse({"leader": target})

    async def snapshot(self, request: Request) -> Response:
        await self._record(request)
        return JSONResponse({"index": self.index, "term": 4, "size": 12345})

    async def backup(self, request: Request) -> Response:
        await self._record(request)
        digest = hashlib.sha256(self.backup_body).hexdigest()
        if self.corrupt_backup:
            digest = hashlib.sha256(b"something else").hexdigest()
        headers = {
            "X-Raftkv-Backup-Index": str(self.index),
            "X-Raftkv-Backup-Term": "4",
            "X-Raftkv-Backup-Sha256": digest,
        }
        return Response(self.backup_body, 200, headers, media_type="application/octet-stream")

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/cluster/status", self.status, methods=["GET"]),
                Route("/cluster/members", self.add_member, methods=["POST"]),
                Route("/cluster/members/{node_id:int}", self.remove_member, methods=["DELETE"]),
                Route("/cluster/leader", self.transfer, methods=["POST"]),
                Route("/cluster/snapshot", self.snapshot, methods=["POST"]),
                Route("/cluster/backup", self.backup, methods=["GET"]),
            ]
        )


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeAdmin]:
    fake = FakeAdmin()
    port = free_ports(1)[0]
    fake.address = f"127.0.0.1:{port}"
    config = uvicorn.Config(fake.app(), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 10.0, what="the fake server to start")
    try:
        yield fake
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def fake(fake_server: FakeAdmin) -> FakeAdmin:
    fake_server.reset()
    return fake_server


def member(node_id: int) -> dict[str, Any]:
    return {
        "id": node_id,
        "rpc_addr": f"10.0.0.{node_id}:9001",
        "http_addr": f"10.0.0.{node_id}:8001",
    }


def test_membership_calls(fake: FakeAdmin) -> None:
    with Client(f"http://{fake.address}") as client:
        joined = client.add_member(4, "10.0.0.4:9001", "10.0.0.4:8001")
        assert joined == {"id": 4, "membership": "voter", "index": 101, "cluster_id": "c0ffee"}
        learner = client.add_member(5, "10.0.0.5:9001", "10.0.0.5:8001", wait=False)
        assert learner["membership"] == "learner"
        fake.slow_promotion = True
        late = client.add_member(6, "10.0.0.6:9001", "10.0.0.6:8001")  # 202: not promoted yet
        assert late["membership"] == "learner"

        assert client.remove_member(5) == {"removed": 5, "index": 104}
        with pytest.raises(NotFoundError) as unknown:
            client.remove_member(9)
        assert unknown.value.message == "node 9 is not a member"
        fake.busy = True
        with pytest.raises(ConflictError) as busy:
            client.remove_member(4)
        with pytest.raises(ConflictError):
            client.add_member(7, "10.0.0.7:9001", "10.0.0.7:8001")
        assert busy.value.message == "a membership change is in progress"
        assert busy.value.current_revision == -1
    assert fake.seen[:3] == [
        ("POST", f"/cluster/members?wait={wait}", member(n))
        for n, wait in ((4, "true"), (5, "false"), (6, "true"))
    ]
    assert fake.seen[3] == ("DELETE", "/cluster/members/5", None)


def test_leader_snapshot_and_backup_calls(fake: FakeAdmin, tmp_path: Path) -> None:
    with Client(f"http://{fake.address}") as client:
        assert client.transfer_leader(3) == 3
        assert client.transfer_leader() == 1  # the server picks
        with pytest.raises(BadRequestError, match="node 8 is not a voter"):
            client.transfer_leader(8)
        assert client.snapshot() == {"index": 100, "term": 4, "size": 12345}

        target = tmp_path / "backup.db"
        info = client.backup(target)
        assert target.read_bytes() == fake.backup_body
        digest = hashlib.sha256(fake.backup_body).hexdigest()
        assert info == {
            "path": str(target),
            "index": 100,
            "term": 4,
            "size": len(fake.backup_body),
            "sha256": digest,
        }

        fake.corrupt_backup = True
        corrupt = tmp_path / "corrupt.db"
        with pytest.raises(RaftkvError, match="corrupt") as caught:
            client.backup(corrupt)
        assert type(caught.value) is RaftkvError
        assert not corrupt.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.db"]  # no partial file
    assert [entry[:3] for entry in fake.seen[:3]] == [
        ("POST", "/cluster/leader", {"id": 3}),
        ("POST", "/cluster/leader", {}),
        ("POST", "/cluster/leader", {"id": 8}),
    ]


def test_async_admin_calls(fake: FakeAdmin, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with AsyncClient(fake.address) as client:
            assert (await client.add_member(4, "h:9", "h:8"))["membership"] == "voter"
            assert (await client.remove_member(4))["removed"] == 4
            with pytest.raises(NotFoundError):
                await client.remove_member(4)
            assert await client.transfer_leader(2) == 2
            assert (await client.snapshot())["term"] == 4
            info = await client.backup(tmp_path / "async.db")
            assert info["size"] == len(fake.backup_body)
            fake.corrupt_backup = True
            with pytest.raises(RaftkvError, match="corrupt"):
                await client.backup(tmp_path / "bad.db")

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert (tmp_path / "async.db").read_bytes() == fake.backup_body
    assert not (tmp_path / "bad.db").exists()


# -- docs/client.md -------------------------------------------------------------------------

FAKE_MARKER = "<!-- test: fake-server -->"
_ADDRESS = re.compile(r"(10\.0\.0\.[123]|127\.0\.0\.1):8001\b")
_NATIVE_ADDRESS = re.compile(r'"127\.0\.0\.1", 700([123])\b')


def doc_examples() -> list[tuple[int, bool, str]]:
    """(line, runs against the fake server, code) of each python block in the doc."""
    lines = DOCS.read_text().splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        if lines[index].strip() == "```python":
            start = index + 1
            end = lines.index("```", start)
            fake = index > 0 and lines[index - 1].strip() == FAKE_MARKER
            blocks.append((start + 1, fake, "\n".join(lines[start:end]) + "\n"))
            index = end
        index += 1
    return blocks


def test_docs_have_examples_of_every_call() -> None:
    code = "".join(block for _, _, block in doc_examples())
    for call in (
        "AsyncClient(", ".put(", ".get(", ".get_value(", ".cas(", ".delete(", ".list(",
        ".delete_prefix(", ".status(", ".nodes(", ".add_member(", ".remove_member(",
        ".transfer_leader(", ".snapshot(", ".backup(", "UnavailableError", "prev_revision=0",
        "AsyncNativeClient(", "NativeClient(", ".watch(", "since=", "ttl=", ".lease_grant(",
        ".lease_keep_alive(", ".lease_revoke(", ".lease_info(", ".leases(", "Lock(",
        "Election(", ".campaign(",
    ):  # fmt: skip
        assert call in code, call
    assert sum(fake for _, fake, _ in doc_examples()) == 1


@pytest.mark.parametrize(
    ("line", "fake", "code"),
    [pytest.param(*example, id=f"line-{example[0]}") for example in doc_examples()],
)
def test_docs_example_runs(
    line: int,
    fake: bool,
    code: str,
    cluster: LocalCluster,
    fake_server: FakeAdmin,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if fake:
        fake_server.reset()
        hosts = ("10.0.0.1", "10.0.0.2", "10.0.0.3", "127.0.0.1")
        mapping = dict.fromkeys(hosts, fake_server.address)
    else:
        ports = [cluster.nodes[n].http_port for n in sorted(cluster.nodes)]
        mapping = {f"10.0.0.{i + 1}": f"127.0.0.1:{port}" for i, port in enumerate(ports)}
        mapping["127.0.0.1"] = f"127.0.0.1:{ports[0]}"
    runnable = _ADDRESS.sub(lambda match: mapping[match.group(1)], code)
    runnable = _NATIVE_ADDRESS.sub(
        lambda match: '"{}", {}'.format(*cluster.client_addr(int(match.group(1)))), runnable
    )
    monkeypatch.chdir(tmp_path)
    exec(compile(runnable, f"{DOCS.name}:{line}", "exec"), {"__name__": "docs_example"})
    if fake:
        assert (tmp_path / "raftkv-backup.db").read_bytes() == fake_server.backup_body


# -- failover (last: it kills a node of the shared cluster, then restarts it) --------------


def test_writes_survive_the_leader_being_killed(cluster: LocalCluster) -> None:
    urls = all_urls(cluster)
    old_leader = cluster.leader()
    results: dict[str, Any] = {}

    async def scenario() -> None:
        async with AsyncClient(urls, retry_for=15.0) as async_client:
            with Client(urls, retry_for=15.0) as client:
                # Both clients know the leader, and have a connection to it.
                before = client.put("failover/before", "1")
                await async_client.put("failover/async-before", "0")
                cluster.kill(old_leader)
                started = time.monotonic()
                results["after"] = client.put("failover/after", "2")
                results["elapsed"] = time.monotonic() - started
                results["async"] = await async_client.put("failover/async-after", "3")
                results["version"] = client.get("failover/after").version
                results["before"] = client.get_value("failover/before")
                assert results["after"].revision > before.revision

    try:
        asyncio.run(asyncio.wait_for(scenario(), 60))
        assert cluster.leader() != old_leader
    finally:
        cluster.start_node(old_leader)
        cluster.wait_ready()
    assert results["elapsed"] < 10.0
    assert results["version"] == 1
    assert results["before"] == b"1"
    assert results["async"].revision > results["after"].revision


def test_gives_up_when_no_node_answers(cluster: LocalCluster) -> None:
    dead = [f"127.0.0.1:{port}" for port in free_ports(2)]
    with Client(dead, retry_for=0.3) as client, pytest.raises(UnavailableError) as caught:
        client.get("k")
    assert caught.value.may_have_applied is False
    assert "ConnectError" in caught.value.message
    # The live cluster is unaffected, and reachable through the last endpoint.
    with Client([*dead, cluster.url(1)]) as client:
        assert client.get_value("failover/before") == b"1"
