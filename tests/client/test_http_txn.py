"""``Client.txn`` and ``AsyncClient.txn``, and the builder of ``raftkv.client.txn``: the
documents it makes, then transactions through the real HTTP worker in front of a fake
Raft process that applies them to a real state machine (both branches, every compare and
operation, binary keys, a retry whose first answer was lost, the errors), and the
routing and retries against mocked nodes."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from served_worker import ServedWorker, served_worker

from raftkv.client import (
    AsyncClient,
    BadRequestError,
    Client,
    Compare,
    KeyValue,
    RaftkvError,
    TxnDeletePrefixResult,
    TxnDeleteResult,
    TxnGetResult,
    TxnListResult,
    TxnOp,
    TxnPutResult,
    TxnResponse,
    UnavailableError,
)
from raftkv.client.txn import parse_txn_response, txn_document
from raftkv.wire.protocol import Op


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def is_txn(request: httpx.Request) -> bool:
    return request.method == "POST" and request.url.path == "/txn"


def tag_of(request: httpx.Request) -> tuple[int, int, int]:
    headers = request.headers
    return (
        int(headers["x-raftkv-client-id"]),
        int(headers["x-raftkv-seq"]),
        int(headers["x-raftkv-first-incomplete"]),
    )


# -- the builder ----------------------------------------------------------------------------


def test_the_document_names_every_compare_and_operation() -> None:
    document = txn_document(
        [
            Compare.value("a", "==", "1"),
            Compare.version("a", ">", 2),
            Compare.create_revision("a", "!=", 0),
            Compare.mod_revision("a", "<", 5),
            Compare.exists("b", False),
            Compare.exists(b"c"),
        ],
        [
            TxnOp.put("a", "2"),
            TxnOp.delete("b"),
            TxnOp.delete_prefix("tmp/"),
            TxnOp.get("a"),
            TxnOp.list("p/", limit=10),
            TxnOp.list(),
        ],
        [TxnOp.get("a")],
    )
    assert document == {
        "compare": [
            {"key": "a", "target": "value", "op": "==", "value": "1"},
            {"key": "a", "target": "version", "op": ">", "value": 2},
            {"key": "a", "target": "create_revision", "op": "!=", "value": 0},
            {"key": "a", "target": "mod_revision", "op": "<", "value": 5},
            {"key": "b", "target": "exists", "op": "==", "value": False},
            {"key": "c", "target": "exists", "op": "==", "value": True},
        ],
        "success": [
            {"put": {"key": "a", "value": "2"}},
            {"delete": {"key": "b"}},
            {"delete_prefix": {"prefix": "tmp/"}},
            {"get": {"key": "a"}},
            {"list": {"prefix": "p/", "limit": 10}},
            {"list": {"prefix": "", "limit": 1000}},
        ],
        "failure": [{"get": {"key": "a"}}],
    }
    assert txn_document() == {"compare": [], "success": [], "failure": []}


def test_bytes_that_are_not_utf8_go_as_base64() -> None:
    # A key listed from the store that is not UTF-8 comes back as a str with surrogates:
    # it names the same bytes again.
    listed = b"k\xff".decode("utf-8", "surrogateescape")
    document = txn_document(
        [Compare.value(b"\xfe", "<", b"\x80\x81"), Compare.value("ключ", "==", b"text")],
        [
            TxnOp.put(listed, b"\x00\xff"),
            TxnOp.put(bytearray(b"plain"), "ünïcode"),
            TxnOp.delete_prefix(b"\xc3"),
            TxnOp.list(b"\xc3", limit=1),
        ],
    )
    assert document["compare"] == [
        {
            "key_base64": b64(b"\xfe"),
            "target": "value",
            "op": "<",
            "value_base64": b64(b"\x80\x81"),
        },
        {"key": "ключ", "target": "value", "op": "==", "value": "text"},
    ]
    assert document["success"] == [
        {"put": {"key_base64": b64(b"k\xff"), "value_base64": b64(b"\x00\xff")}},
        {"put": {"key": "plain", "value": "ünïcode"}},
        {"delete_prefix": {"prefix_base64": b64(b"\xc3")}},
        {"list": {"prefix_base64": b64(b"\xc3"), "limit": 1}},
    ]


@pytest.mark.parametrize(
    ("make", "error", "fragment"),
    [
        (lambda: Compare.value("a", "<=", "1"), ValueError, "operator must be one of"),
        (lambda: Compare.mod_revision("a", "==", -1), ValueError, "non-negative"),
        (lambda: Compare.version("a", "==", True), ValueError, "non-negative"),
        (lambda: Compare.create_revision("a", "==", "3"), ValueError, "non-negative"),
        (lambda: Compare.exists("a", 1), TypeError, "exists must be a bool"),
        (lambda: Compare.value(3, "==", "1"), TypeError, "key must be str or bytes"),
        (lambda: TxnOp.put("a", 3), TypeError, "value must be str or bytes"),
        (lambda: TxnOp.delete_prefix(None), TypeError, "prefix must be str or bytes"),
        (lambda: TxnOp.list("p/", limit="5"), TypeError, "limit must be an int"),
        (lambda: txn_document(success=[{"put": {}}]), TypeError, "success must hold TxnOp"),
        (lambda: txn_document([TxnOp.get("a")]), TypeError, "compares must hold Compare"),
        (lambda: txn_document(failure=TxnOp.get("a")), TypeError, "failure must be a sequence"),
    ],
)
def test_the_builder_refuses_what_it_can_see_is_wrong(
    make: Any, error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match=fragment):
        make()


def test_a_transaction_the_builder_refuses_sends_nothing() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    with Client("http://n1:8001", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(TypeError):
            client.txn(success=[{"get": {"key": "a"}}])
        with pytest.raises(TypeError):
            client.txn_json([{"get": {"key": "a"}}])
    assert sent == []


# -- the answer -----------------------------------------------------------------------------


def kv_json(key: str, value: str, revision: int, version: int = 1) -> dict[str, Any]:
    return {
        "key": key,
        "value": value,
        "create_revision": revision,
        "mod_revision": revision,
        "version": version,
    }


def test_the_answer_is_typed_by_operation() -> None:
    binary_prev = kv_json("", "", 4)
    del binary_prev["key"]
    binary_prev["key_base64"] = b64(b"\xff")
    answer = {
        "succeeded": False,
        "revision": 9,
        "index": 9,
        "term": 2,
        "results": [
            {"put": {"prev": kv_json("a", "1", 3)}},
            {"put": {}},
            {"delete": {"deleted": 1, "prev": binary_prev}},
            {"delete": {"deleted": 0}},
            {"delete_prefix": {"deleted": 3}},
            {"get": {"found": True, "kv": kv_json("a", "2", 9, 2)}},
            {"get": {"found": False}},
            {"list": {"items": [kv_json("p/x", "x", 5)], "more": True}},
        ],
    }
    failure = [
        TxnOp.put("a", "2"),
        TxnOp.put("b", "2"),
        TxnOp.delete(b"\xff"),
        TxnOp.delete("gone"),
        TxnOp.delete_prefix("tmp/"),
        TxnOp.get("a"),
        TxnOp.get("missing"),
        TxnOp.list("p/", limit=1),
    ]
    response = parse_txn_response(answer, [TxnOp.get("a")], failure)
    binary_key = b"\xff".decode("utf-8", "surrogateescape")
    assert response == TxnResponse(
        succeeded=False,
        revision=9,
        index=9,
        term=2,
        results=(
            TxnPutResult(KeyValue("a", b"1", 3, 3, 1)),
            TxnPutResult(None),
            TxnDeleteResult(1, KeyValue(binary_key, b"", 4, 4, 1)),
            TxnDeleteResult(0, None),
            TxnDeletePrefixResult(3),
            TxnGetResult(KeyValue("a", b"2", 9, 9, 2)),
            TxnGetResult(None),
            TxnListResult((KeyValue("p/x", b"x", 5, 5, 1),), more=True),
        ),
    )
    assert [r.found for r in response.results if isinstance(r, TxnGetResult)] == [True, False]


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        ({"succeeded": True, "revision": 1, "index": 1, "term": 1}, "no list of results"),
        ({"succeeded": "yes", "results": []}, "'succeeded' is not a boolean"),
        (
            {"succeeded": True, "revision": 1, "index": 1, "term": 1, "results": [{"get": {}}]},
            "'found' is not a boolean",
        ),
        (
            {"succeeded": True, "revision": 1, "index": 1, "term": 1, "results": [{"cas": {}}]},
            "unknown result 'cas'",
        ),
        (
            {"succeeded": True, "revision": 1, "index": 1, "term": 1, "results": [{"put": {}}]},
            "do not match the operations of the success branch",
        ),
    ],
)
def test_an_answer_unlike_a_transactions_is_an_error(answer: dict[str, Any], fragment: str) -> None:
    with pytest.raises(RaftkvError, match=fragment):
        parse_txn_response(answer, [TxnOp.get("a")], [])


# -- on the worker, with a real state machine -----------------------------------------------


class LoseTxnAnswers(httpx.BaseTransport):
    """Sends every request over the network, but loses the answer of the first ``count``
    transactions: the server has acted, and the client sees the connection break."""

    def __init__(self, count: int = 1) -> None:
        self.inner = httpx.HTTPTransport()
        self.remaining = count
        self.requests: list[httpx.Request] = []
        self.lost: list[httpx.Response] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self.inner.handle_request(request)
        if is_txn(request) and self.remaining:
            self.remaining -= 1
            response.read()
            response.close()
            self.lost.append(response)
            raise httpx.ReadError("connection reset before the answer arrived", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncLoseTxnAnswers(httpx.AsyncBaseTransport):
    """LoseTxnAnswers for the AsyncClient."""

    def __init__(self, count: int = 1) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.remaining = count
        self.requests: list[httpx.Request] = []
        self.lost: list[httpx.Response] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = await self.inner.handle_async_request(request)
        if is_txn(request) and self.remaining:
            self.remaining -= 1
            await response.aread()
            await response.aclose()
            self.lost.append(response)
            raise httpx.ReadError("connection reset before the answer arrived", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture(scope="module")
def worker() -> Iterator[ServedWorker]:
    # Small limits, so that a 413 needs no megabytes.
    with served_worker(max_key_bytes=64, max_value_bytes=256) as served:
        yield served


def test_the_success_branch_runs_every_operation_at_one_revision(worker: ServedWorker) -> None:
    with Client(worker.url) as client:
        a = client.put("ok/a", "1")
        client.put("ok/a", "1")  # version 2
        gone = client.put("ok/gone", "bye")
        for name in ("x", "y", "z"):
            client.put(f"ok/tmp/{name}", name)
        client.put("ok/p/1", "one")
        client.put("ok/p/2", "two")

        response = client.txn(
            compares=[
                Compare.value("ok/a", "==", "1"),
                Compare.value("ok/a", ">", "0"),
                Compare.version("ok/a", "==", 2),
                Compare.create_revision("ok/a", "==", a.revision),
                Compare.mod_revision("ok/a", ">", a.revision),
                Compare.exists("ok/gone"),
                Compare.exists("ok/new", False),
            ],
            success=[
                TxnOp.put("ok/a", "2"),
                TxnOp.put("ok/new", b"\x00new"),
                TxnOp.delete("ok/gone"),
                TxnOp.delete("ok/never"),
                TxnOp.delete_prefix("ok/tmp/"),
                TxnOp.get("ok/a"),
                TxnOp.get("ok/tmp/x"),
                TxnOp.list("ok/p/", limit=1),
                TxnOp.list("ok/p/"),
            ],
            failure=[TxnOp.put("ok/failed", "yes")],
        )

        assert response.succeeded is True
        revision = response.revision
        assert revision == response.index == worker.raft.index and response.term == 3
        put_a, put_new, delete_gone, delete_never, cleaned, get_a, get_x, first, both = (
            response.results
        )
        a_before = KeyValue("ok/a", b"1", a.revision, a.revision + 1, 2)
        assert put_a == TxnPutResult(a_before)
        assert put_new == TxnPutResult(None)
        assert delete_gone == TxnDeleteResult(
            1, KeyValue("ok/gone", b"bye", gone.revision, gone.revision, 1)
        )
        assert delete_never == TxnDeleteResult(0, None)
        assert cleaned == TxnDeletePrefixResult(3)
        # A get sees what the operations before it did, at the transaction's revision.
        assert get_a == TxnGetResult(KeyValue("ok/a", b"2", a.revision, revision, 3))
        assert get_x == TxnGetResult(None) and not get_x.found
        assert isinstance(first, TxnListResult) and first.more is True
        assert [kv.key for kv in first.items] == ["ok/p/1"]
        assert isinstance(both, TxnListResult) and both.more is False
        assert [(kv.key, kv.text) for kv in both.items] == [("ok/p/1", "one"), ("ok/p/2", "two")]

        assert client.get("ok/a").mod_revision == revision
        assert client.get("ok/new") == KeyValue("ok/new", b"\x00new", revision, revision, 1)
        assert client.get_value("ok/gone") is None
        assert client.list("ok/tmp/") == []
        assert client.get_value("ok/failed") is None


def test_the_failure_branch_runs_when_a_compare_does_not_hold(worker: ServedWorker) -> None:
    with Client(worker.url) as client:
        held = client.put("fail/lock", "someone")
        response = client.txn(
            compares=[
                Compare.exists("fail/lock", False),  # does not hold
                Compare.value("fail/lock", "!=", "me"),  # holds
            ],
            success=[TxnOp.put("fail/lock", "me"), TxnOp.put("fail/owned", "me")],
            failure=[TxnOp.get("fail/lock"), TxnOp.put("fail/attempts", "1")],
        )
        assert response.succeeded is False
        assert response.results == (
            TxnGetResult(KeyValue("fail/lock", b"someone", held.revision, held.revision, 1)),
            TxnPutResult(None),
        )
        # The failure branch's writes happened at the transaction's revision; the success
        # branch's did not.
        assert client.get("fail/attempts").mod_revision == response.revision
        assert client.get_value("fail/lock") == b"someone"
        assert client.get_value("fail/owned") is None

        # A value compare never holds for a key that does not exist, not even "!=";
        # its version and revisions are 0.
        absent = client.txn(compares=[Compare.value("fail/absent", "!=", "x")])
        assert absent.succeeded is False and absent.results == ()
        zeros = client.txn(
            compares=[
                Compare.version("fail/absent", "==", 0),
                Compare.create_revision("fail/absent", "==", 0),
                Compare.mod_revision("fail/absent", "<", 1),
            ]
        )
        assert zeros.succeeded is True


def test_binary_keys_and_values_go_as_base64(worker: ServedWorker) -> None:
    transport = httpx.HTTPTransport()
    sent: list[bytes] = []

    class Recording(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if is_txn(request):
                sent.append(request.read())
            return transport.handle_request(request)

        def close(self) -> None:
            transport.close()

    key = b"bin/\xff\x00"
    with Client(worker.url, transport=Recording()) as client:
        written = client.txn(success=[TxnOp.put(key, b"\x80\x81"), TxnOp.put("bin/text", "t")])
        read = client.txn(
            compares=[Compare.value(key, "==", b"\x80\x81")],
            success=[TxnOp.get(key), TxnOp.list(b"bin/\xff")],
        )
        assert read.succeeded is True
        got, listed = read.results
        assert isinstance(got, TxnGetResult) and got.kv is not None
        assert got.kv.value == b"\x80\x81" and got.kv.mod_revision == written.revision
        # The key comes back as the clients return keys that are not UTF-8, and names the
        # same key again, in a transaction as in the other calls.
        assert got.kv.key == key.decode("utf-8", "surrogateescape")
        assert isinstance(listed, TxnListResult) and listed.items == (got.kv,)
        assert client.get(got.kv.key).value == b"\x80\x81"
        again = client.txn(success=[TxnOp.delete(got.kv.key)])
        assert again.results == (TxnDeleteResult(1, got.kv),)

    assert worker.raft.data.get(key) is None
    first = json.loads(sent[0])
    assert first["success"][0] == {
        "put": {"key_base64": b64(key), "value_base64": b64(b"\x80\x81")}
    }
    assert first["success"][1] == {"put": {"key": "bin/text", "value": "t"}}
    assert json.loads(sent[1])["compare"][0]["key_base64"] == b64(key)


def test_a_transaction_whose_answer_was_lost_is_applied_once(worker: ServedWorker) -> None:
    transport = LoseTxnAnswers()
    with Client(worker.url, transport=transport) as client:
        # Applied twice, the second run would find the key and run the failure branch.
        response = client.txn(
            compares=[Compare.exists("once/lock", False)],
            success=[TxnOp.put("once/lock", "me"), TxnOp.get("once/lock")],
            failure=[TxnOp.get("once/lock")],
        )
        assert client.get("once/lock").version == 1

    (lost,) = transport.lost
    assert response == parse_txn_response(lost.json())
    assert response.succeeded is True
    txns = [r for r in transport.requests if is_txn(r)]
    assert len(txns) == 2 and tag_of(txns[0]) == tag_of(txns[1])
    # The worker sent both attempts on with the client's tag; the store applied one.
    client_id, seq, _ = tag_of(txns[0])
    sent = [(r.client_id, r.seq) for r in worker.raft.requests_of(Op.TXN)]
    assert sent.count((client_id, seq)) == 2
    assert worker.raft.data[b"once/lock"].mod_revision == response.revision


def test_the_async_client_runs_both_branches_and_retries_once(worker: ServedWorker) -> None:
    async def scenario() -> tuple[int, TxnResponse, TxnResponse, TxnResponse]:
        transport = AsyncLoseTxnAnswers()
        async with AsyncClient(worker.url, transport=transport) as client:
            first = await client.put("async/n", "1")
            bumped = await client.txn(
                compares=[Compare.value("async/n", "==", "1")],
                success=[TxnOp.put("async/n", "2"), TxnOp.delete_prefix("async/none/")],
                failure=[TxnOp.get("async/n")],
            )
            stale = await client.txn(
                compares=[Compare.value("async/n", "==", "1")],
                success=[TxnOp.put("async/n", "2")],
                failure=[TxnOp.get("async/n"), TxnOp.list("async/")],
            )
            raw = await client.txn_json({"success": [{"get": {"key": "async/n"}}]})
            assert len(transport.lost) == 1
            return first.revision, bumped, stale, parse_txn_response(raw)

    created, bumped, stale, raw = asyncio.run(scenario())
    # The first answer was lost; its retry was answered, not applied again (a second run
    # would have found "2" and run the failure branch).
    assert bumped.succeeded is True
    before = KeyValue("async/n", b"1", created, created, 1)
    assert bumped.results == (TxnPutResult(before), TxnDeletePrefixResult(0))
    assert stale.succeeded is False
    current = KeyValue("async/n", b"2", created, bumped.revision, 2)
    assert stale.results == (TxnGetResult(current), TxnListResult((current,), more=False))
    assert raw.succeeded is True and raw.results == (TxnGetResult(current),)


def test_txn_json_sends_a_document_as_it_is(worker: ServedWorker) -> None:
    with Client(worker.url) as client:
        answer = client.txn_json(
            {
                "compare": [{"key": "raw/k", "target": "exists", "value": False}],
                "success": [{"put": {"key_base64": b64(b"raw/\xfe"), "value": "v"}}],
            }
        )
    assert answer["succeeded"] is True and answer["results"] == [{"put": {}}]
    assert worker.raft.data[b"raw/\xfe"].value == b"v"


@pytest.mark.parametrize(
    ("kwargs", "status", "fragment"),
    [
        (
            {"success": [TxnOp.put("err/k", "1"), TxnOp.delete("err/k")]},
            400,
            "written twice",
        ),
        (
            {"failure": [TxnOp.delete_prefix("err/"), TxnOp.put("err/k", "1")]},
            400,
            "also under deleted prefix",
        ),
        ({"success": [TxnOp.list("err/", limit=0)]}, 400, "limit must be between 1 and 10000"),
        ({"compares": [Compare.exists("")]}, 400, "key must not be empty"),
        ({"success": [TxnOp.put("err/" + "k" * 64, "1")]}, 413, "the limit is 64 bytes"),
        ({"success": [TxnOp.put("err/k", b"v" * 257)]}, 413, "the limit is 256 bytes"),
    ],
)
def test_refused_transactions_raise_bad_request_at_once(
    worker: ServedWorker, kwargs: dict[str, Any], status: int, fragment: str
) -> None:
    transport = LoseTxnAnswers(count=0)
    before = worker.raft.index
    client = Client(worker.url, transport=transport)
    with client, pytest.raises(BadRequestError) as refused:
        client.txn(**kwargs)
    assert refused.value.status == status
    assert fragment in refused.value.message
    assert len([r for r in transport.requests if is_txn(r)]) == 1  # not retried
    assert worker.raft.index == before  # nothing applied


# -- routing and retries, against mocked nodes ----------------------------------------------


ANSWER = {"succeeded": True, "revision": 7, "index": 7, "term": 2, "results": [{"put": {}}]}


def test_a_transaction_goes_to_the_leader_and_is_retried_with_one_tag() -> None:
    requests: list[httpx.Request] = []
    unavailable = [
        httpx.Response(503, json={"error": "no leader in time; the write was not applied"})
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.url.path == "/cluster/status":
            return httpx.Response(200, json={"leader": 2, "leaderHttpAddr": "n2:8001"})
        if unavailable:
            return unavailable.pop()
        return httpx.Response(200, json=ANSWER)

    with Client(
        "http://n1:8001,http://n2:8001", transport=httpx.MockTransport(handler), client_id=77
    ) as client:
        response = client.txn(success=[TxnOp.put("k", "v")])
        assert response.results == (TxnPutResult(None),)
        client.txn(success=[TxnOp.put("k", "v")])

    txns = [r for r in requests if is_txn(r)]
    assert [r.url.host for r in txns] == ["n2", "n2", "n2"]
    assert [tag_of(r) for r in txns] == [(77, 1, 1), (77, 1, 1), (77, 2, 2)]
    assert txns[0].headers["content-type"] == "application/json"
    assert json.loads(txns[0].content) == {
        "compare": [],
        "success": [{"put": {"key": "k", "value": "v"}}],
        "failure": [],
    }


def test_a_transaction_given_up_says_whether_it_may_have_been_applied() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/cluster/status":
            return httpx.Response(200, json={"leader": None})
        return httpx.Response(503, json={"error": "no leader in time; the write was not applied"})

    def lost(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/cluster/status":
            return httpx.Response(200, json={"leader": None})
        raise httpx.ReadTimeout("no answer", request=request)

    for answer, may_have_applied in ((handler, False), (lost, True)):
        with (
            Client(
                "http://n1:8001", transport=httpx.MockTransport(answer), retry_for=0.2
            ) as client,
            pytest.raises(UnavailableError) as exc,
        ):
            client.txn(success=[TxnOp.delete("k")])
        assert exc.value.may_have_applied is may_have_applied


def test_puts_with_a_ttl_or_lease_and_lease_compares_in_the_document() -> None:
    document = txn_document(
        [Compare.lease("k", "==", 0)],
        [TxnOp.put("k", "v", lease=7), TxnOp.put("t", "v", ttl=2.5)],
        [],
    )
    assert document["compare"] == [{"key": "k", "target": "lease", "op": "==", "value": 0}]
    assert document["success"] == [
        {"put": {"key": "k", "value": "v", "lease": 7}},
        {"put": {"key": "t", "value": "v", "ttl": 2.5}},
    ]
    with pytest.raises(ValueError, match="not both"):
        TxnOp.put("k", "v", ttl=2, lease=7)
    with pytest.raises(ValueError, match="at least"):
        TxnOp.put("k", "v", ttl=0.5)
    with pytest.raises(ValueError, match="lease id"):
        TxnOp.put("k", "v", lease=0)
