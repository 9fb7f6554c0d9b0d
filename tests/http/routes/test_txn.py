"""``POST /txn`` through the whole worker app, against a fake Raft process that applies
real commands to a real state machine: both branches, every operation and compare, the
answers, the 400s and 413s with their messages, the limits' flags, retries with a
client's own session, and authorization key by key."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fake_raft import FakeRaft
from starlette.testclient import TestClient

from raftkv.wire.txn_limits import TxnLimits


def check_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for word in words:
        assert word in message, message


def txn(client: TestClient, doc: Any, **kwargs: Any) -> httpx.Response:
    return client.post("/txn", json=doc, **kwargs)


def test_the_success_branch_writes_and_reads_at_one_revision(client: TestClient) -> None:
    assert client.post("/kv/a", json={"value": "1"}).status_code == 200
    client.post("/kv/p/x", json={"value": "x"})
    client.post("/kv/p/y", json={"value": "y"})
    answer = txn(
        client,
        {
            "compare": [
                {"key": "a", "target": "value", "op": "==", "value": "1"},
                {"key": "a", "target": "version", "op": ">", "value": 0},
                {"key": "nope", "target": "exists", "value": False},
                {"key": "a", "target": "mod_revision", "op": "<", "value": 1000},
                {"key": "a", "target": "create_revision", "op": "!=", "value": 0},
            ],
            "success": [
                {"put": {"key": "a", "value": "2"}},
                {"put": {"key_base64": base64.b64encode(b"\xff").decode(), "value": "bin"}},
                {"delete_prefix": {"prefix": "p/"}},
                {"get": {"key": "a"}},
                {"get": {"key": "missing"}},
                {"list": {"prefix": "", "limit": 1}},
                {"delete": {"key": "gone"}},
            ],
            "failure": [{"get": {"key": "a"}}],
        },
    )
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc["succeeded"] is True
    revision = doc["revision"]
    assert revision == doc["index"] and doc["term"] >= 1
    results = doc["results"]
    assert results[0] == {
        "put": {
            "prev": {
                "key": "a",
                "value": "1",
                "create_revision": 1,
                "mod_revision": 1,
                "version": 1,
            }
        }
    }
    assert results[1] == {"put": {}}
    assert results[2] == {"delete_prefix": {"deleted": 2}}
    assert results[3]["get"]["kv"]["value"] == "2"
    assert results[3]["get"]["kv"]["mod_revision"] == revision
    assert results[4] == {"get": {"found": False}}
    assert results[5]["list"]["more"] is True
    assert [kv["key"] for kv in results[5]["list"]["items"]] == ["a"]
    assert results[6] == {"delete": {"deleted": 0}}
    listing = client.get("/kv", params={"prefix": ""}).json()
    assert [(kv.get("key"), kv["mod_revision"]) for kv in listing["items"]] == [
        ("a", revision),
        (None, revision),
    ]
    assert listing["items"][1]["key_base64"] == base64.b64encode(b"\xff").decode()


def test_a_failed_compare_runs_the_failure_branch(client: TestClient) -> None:
    client.post("/kv/lock", json={"value": "holder-1"})
    answer = txn(
        client,
        {
            "compare": [{"key": "lock", "target": "exists", "op": "==", "value": False}],
            "success": [{"put": {"key": "lock", "value": "holder-2"}}],
            "failure": [{"get": {"key": "lock"}}, {"delete": {"key": "lock"}}],
        },
    )
    doc = answer.json()
    assert doc["succeeded"] is False
    assert doc["results"][0]["get"]["kv"]["value"] == "holder-1"
    assert doc["results"][1]["delete"]["deleted"] == 1
    assert doc["results"][1]["delete"]["prev"]["value"] == "holder-1"
    assert client.get("/kv/lock").status_code == 404


def test_an_empty_transaction_is_applied_and_answered(client: TestClient) -> None:
    doc = txn(client, {}).json()
    assert doc["succeeded"] is True and doc["results"] == []


@pytest.mark.parametrize(
    ("doc", "status", "words"),
    [
        ([1], 400, ("JSON object",)),
        ({"compare": [], "extra": 1}, 400, ("unknown field", "extra")),
        ({"compare": {}}, 400, ("compare must be an array",)),
        ({"compare": [{"key": "k", "target": "size"}]}, 400, ("compare[0]", "target")),
        ({"compare": [{"key": "k", "target": "value", "op": "~"}]}, 400, ("op must be",)),
        ({"compare": [{"key": "k", "target": "value"}]}, 400, ("value is missing",)),
        ({"compare": [{"key": "", "target": "version", "value": 1}]}, 400, ("not be empty",)),
        ({"compare": [{"target": "version", "value": 1}]}, 400, ("key is missing",)),
        ({"compare": [{"key": "k", "target": "version", "value": "1"}]}, 400, ("integer",)),
        ({"compare": [{"key": "k", "target": "version", "value": -1}]}, 400, ("between",)),
        ({"compare": [{"key": "k", "target": "exists", "value": 1}]}, 400, ("true or false",)),
        (
            {"compare": [{"key": "k", "target": "exists", "op": "<", "value": True}]},
            400,
            ("== or !=",),
        ),
        ({"success": [{}]}, 400, ("success[0]", "one of")),
        ({"success": [{"put": {}, "get": {}}]}, 400, ("success[0]",)),
        ({"success": [{"merge": {}}]}, 400, ('unknown operation "merge"',)),
        ({"success": [{"put": {"key": "k"}}]}, 400, ("success[0].put", "value is missing")),
        ({"success": [{"put": {"key": "k", "value": 5}}]}, 400, ("must be a string",)),
        ({"success": [{"put": {"key": "k", "value": "v", "expires": 5}}]}, 400, ("unknown field",)),
        (
            {"success": [{"put": {"key": "k", "value": "v", "ttl": 5, "lease": 1}}]},
            400,
            ("ttl or a lease",),
        ),
        ({"success": [{"put": {"key": "k", "value": "v", "ttl": 0.5}}]}, 400, ("ttl",)),
        ({"success": [{"put": {"key": "k", "value": "v", "lease": 0}}]}, 400, ("lease",)),
        ({"success": [{"put": {"key": "k", "value": "v", "lease": 5}}]}, 404, ("lease 5",)),
        (
            {"compare": [{"key": "k", "target": "lease", "value": "x"}]},
            400,
            ("integer value",),
        ),
        ({"failure": [{"get": {"key": "k", "key_base64": "aw=="}}]}, 400, ("not both",)),
        ({"failure": [{"get": {"key_base64": "***"}}]}, 400, ("not valid base64",)),
        ({"success": [{"list": {"prefix": "p", "limit": 0}}]}, 400, ("between 1 and",)),
        ({"success": [{"list": {"prefix": "p", "limit": True}}]}, 400, ("integer",)),
        (
            {"success": [{"put": {"key": "k", "value": "1"}}, {"delete": {"key": "k"}}]},
            400,
            ("success", "'k' is written twice", "each key once"),
        ),
        (
            {
                "failure": [
                    {"delete_prefix": {"prefix": "d/"}},
                    {"put": {"key": "d/x", "value": "1"}},
                ]
            },
            400,
            ("failure", "deleted prefix 'd/'"),
        ),
    ],
)
def test_bad_transactions_are_refused_with_a_message(
    client: TestClient, doc: Any, status: int, words: tuple[str, ...]
) -> None:
    check_error(txn(client, doc), status, *words)


def test_malformed_json_is_a_400(client: TestClient) -> None:
    check_error(client.post("/txn", content=b"{not json"), 400, "not valid JSON")


def test_the_limits_have_flags(make_client: Callable[..., TestClient]) -> None:
    client = make_client(
        txn=TxnLimits(max_ops=3, max_bytes=1024), max_key_bytes=16, max_value_bytes=600
    )
    three = {
        "compare": [{"key": "k", "target": "exists", "value": True}],
        "success": [{"get": {"key": "a"}}, {"get": {"key": "b"}}],
    }
    assert txn(client, three).status_code == 200
    four = {**three, "failure": [{"get": {"key": "c"}}]}
    check_error(txn(client, four), 400, "4 compares and operations", "limit is 3", "--max-txn-ops")
    check_error(
        txn(client, {"success": [{"get": {"key": "k" * 17}}]}), 413, "key is 17 bytes", "16"
    )
    check_error(
        txn(client, {"success": [{"put": {"key": "k", "value": "v" * 601}}]}),
        413,
        "value is 601 bytes",
    )
    many = {"success": [{"put": {"key": f"k{i}", "value": "v" * 500}} for i in range(3)]}
    check_error(txn(client, many), 413, "exceed 1024 bytes", "--max-txn-bytes")


def test_a_retry_with_the_clients_own_session_is_applied_once(client: TestClient) -> None:
    headers = {"X-Raftkv-Client-Id": "77", "X-Raftkv-Seq": "1", "X-Raftkv-First-Incomplete": "1"}
    doc = {
        "compare": [{"key": "counter", "target": "exists", "value": False}],
        "success": [{"put": {"key": "counter", "value": "1"}}],
        "failure": [{"get": {"key": "counter"}}],
    }
    first = txn(client, doc, headers=headers).json()
    again = txn(client, doc, headers=headers).json()
    assert first == again  # the same answer, not the failure branch of a second run
    assert first["succeeded"] is True
    assert client.get("/kv/counter").headers["X-Raftkv-Version"] == "1"


# -- authorization, key by key --------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


@pytest.fixture
def secured(client: TestClient, fake: FakeRaft) -> TestClient:
    steps: list[tuple[str, str, dict[str, str] | None]] = [
        ("POST", "/auth/users", {"name": "root", "password": "root-secret"}),
        ("POST", "/auth/roles", {"name": "admins"}),
        ("PUT", "/auth/roles/admins/permissions", {"access": "admin"}),
        ("PUT", "/auth/users/root/roles/admins", None),
        ("POST", "/auth/users", {"name": "app", "password": "app-secret"}),
        ("POST", "/auth/roles", {"name": "app"}),
        ("PUT", "/auth/roles/app/permissions", {"access": "readwrite", "prefix": "app/"}),
        ("PUT", "/auth/roles/app/permissions", {"access": "read", "prefix": "shared/"}),
        ("PUT", "/auth/users/app/roles/app", None),
    ]
    for method, path, body in steps:
        response = client.request(method, path, json=body)
        assert response.status_code == 200, (path, response.text)
    assert client.post("/auth/enable").status_code == 200
    fake.put_direct(b"shared/config", b"c")
    return client


APP = basic("app", "app-secret")


def test_a_transaction_needs_credentials_once_auth_is_on(secured: TestClient) -> None:
    response = txn(secured, {"success": [{"get": {"key": "app/a"}}]})
    assert response.status_code == 401
    assert "WWW-Authenticate" in response.headers


def test_each_key_is_checked_for_what_the_transaction_does_with_it(secured: TestClient) -> None:
    allowed = {
        "compare": [{"key": "shared/config", "target": "value", "value": "c"}],
        "success": [{"put": {"key": "app/a", "value": "1"}}, {"list": {"prefix": "app/"}}],
        "failure": [{"delete_prefix": {"prefix": "app/tmp/"}}],
    }
    assert txn(secured, allowed, headers=APP).status_code == 200
    # A write where the user may only read, even in the branch that will not run.
    refused = {**allowed, "failure": [{"put": {"key": "shared/config", "value": "x"}}]}
    check_error(txn(secured, refused, headers=APP), 403, "'app'", "write", "shared/config")
    # A compare, a get and a list outside the user's prefixes.
    for doc in (
        {"compare": [{"key": "secret", "target": "exists", "value": True}]},
        {"success": [{"get": {"key": "secret"}}]},
        {"success": [{"list": {"prefix": "app"}}]},
    ):
        check_error(txn(secured, doc, headers=APP), 403, "read")
    # Nothing was applied by the refused ones.
    assert secured.get("/kv/shared/config", headers=APP).content == b"c"
    root = basic("root", "root-secret")
    assert txn(secured, {"success": [{"get": {"key": "secret"}}]}, headers=root).status_code == 200


def test_a_seq_already_used_by_another_request_is_a_409(client: TestClient) -> None:
    headers = {"X-Raftkv-Client-Id": "88", "X-Raftkv-Seq": "1", "X-Raftkv-First-Incomplete": "1"}
    assert client.post("/kv/k", json={"value": "v"}, headers=headers).status_code == 200
    check_error(
        txn(client, {"success": [{"get": {"key": "k"}}]}, headers=headers),
        409,
        "seq 1 of client 88 was used by another request",
    )


def test_an_overwritten_value_is_shown_only_to_who_may_read_it() -> None:
    from raftkv.http.txn_json import txn_result_json
    from raftkv.kv.results import KeyValue, TxnOpKind, TxnOpResult, TxnResult

    old = KeyValue(b"w/k", b"secret", 1, 1, 1)
    result = TxnResult(
        True,
        (TxnOpResult(TxnOpKind.PUT, prev=old), TxnOpResult(TxnOpKind.DELETE, prev=old, deleted=1)),
    )
    hidden = txn_result_json(result, 5, 2, lambda key: False)["results"]
    assert hidden == [{"put": {}}, {"delete": {"deleted": 1}}]
    shown = txn_result_json(result, 5, 2, lambda key: True)["results"]
    assert shown[0]["put"]["prev"]["value"] == "secret"


def test_auth_turned_on_after_the_gate_let_a_transaction_pass_is_a_401() -> None:
    import asyncio

    from raftkv.http.errors import ApiError
    from raftkv.http.middleware.auth_gate import check_access

    class Tables:
        enabled = True

    class Cache:
        async def current(self) -> Tables:
            return Tables()

    with pytest.raises(ApiError) as refused:
        asyncio.run(check_access({"type": "http"}, Cache(), []))  # type: ignore[arg-type]
    assert refused.value.status == 401


def test_puts_with_a_ttl_or_lease_and_lease_compares(client: TestClient) -> None:
    granted = client.post("/lease", json={"ttl": 30, "id": 12})
    assert granted.status_code == 200, granted.text
    doc = {
        "compare": [{"key": "k", "target": "lease", "value": 0}],
        "success": [
            {"put": {"key": "k", "value": "v", "lease": 12}},
            {"put": {"key": "t", "value": "v", "ttl": 5}},
        ],
    }
    answer = txn(client, doc)
    assert answer.status_code == 200, answer.text
    assert answer.json()["succeeded"] is True
    assert client.get("/kv/k", headers={"accept": "application/json"}).json()["lease"] == 12
    assert client.get("/kv/t", headers={"accept": "application/json"}).json()["lease"] > 0
    # Now the key has lease 12: the same compare fails.
    again = txn(client, {**doc, "failure": [{"get": {"key": "k"}}]})
    assert again.json()["succeeded"] is False
