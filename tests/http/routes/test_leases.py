"""The lease routes through the whole worker app, against a fake Raft process that
applies real commands to a real state machine: grant, keep alive, revoke, look up and
list, leased and TTL writes on ``/kv``, every 400 with its message, the 404s and 409s,
and authorization (revoking needs write on every attached key; a lookup shows only the
keys the user may read).

The fake has no lease clock, so every time left ("remaining", a key's "ttl" and the
X-Raftkv-Ttl header) is what a node that has not timed a lease answers: null, or
absent. The timing itself is tested on real processes (tests/cluster/test_lease_cluster.py).
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
from fake_raft import FakeRaft
from starlette.testclient import TestClient

from raftkv.http.lease_json import MAX_TTL_S
from raftkv.kv.leases import MAX_LEASE_ID
from raftkv.wire.protocol import Op

JSON = {"Accept": "application/json"}
TOO_BIG_ID = str(MAX_LEASE_ID + 1)


def check_error(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    doc: dict[str, Any] = response.json()
    for word in words:
        assert word in doc["error"], doc["error"]
    return doc


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


def grant(client: TestClient, ttl: float = 10, lease_id: int | None = None, **kw: Any) -> int:
    body: dict[str, Any] = {"ttl": ttl}
    if lease_id is not None:
        body["id"] = lease_id
    return int(ok(client.post("/lease", json=body, **kw))["id"])


def put(client: TestClient, key: str, value: str = "v", **fields: Any) -> dict[str, Any]:
    return ok(client.post(f"/kv/{key}", json={"value": value, **fields}))


# -- grant ----------------------------------------------------------------------------------


def test_grant_picks_the_next_free_id_or_takes_the_one_given(
    client: TestClient, fake: FakeRaft
) -> None:
    first = ok(client.post("/lease", json={"ttl": 10}))
    assert first["id"] == 1 and first["ttl"] == 10.0
    assert first["index"] == fake.index and first["term"] == 3
    assert ok(client.post("/lease", json={"ttl": 2.5, "id": 7})) == {
        "id": 7,
        "ttl": 2.5,
        "index": fake.index,
        "term": 3,
    }
    # An explicit null id is no id; the counter goes on after the last id it gave.
    assert ok(client.post("/lease", json={"ttl": 1, "id": None}))["id"] == 2
    # The bounds themselves are accepted.
    assert (
        ok(client.post("/lease", json={"ttl": MAX_TTL_S, "id": MAX_LEASE_ID}))["ttl"] == MAX_TTL_S
    )
    assert [r.op for r in fake.requests] == [Op.LEASE_GRANT] * 4


def test_granting_an_existing_id_is_a_409(client: TestClient) -> None:
    grant(client, 5, lease_id=42)
    check_error(client.post("/lease", json={"ttl": 9, "id": 42}), 409, "lease 42 already exists")
    # The first grant is untouched.
    assert ok(client.get("/lease/42"))["ttl"] == 5.0


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, ('missing the "ttl" field',)),
        ({"id": 3}, ('missing the "ttl" field',)),
        ({"ttl": None}, ('"ttl" must be a number of seconds', "null")),
        ({"ttl": "10"}, ('"ttl" must be a number of seconds', "string")),
        ({"ttl": "NaN"}, ('"ttl" must be a number of seconds', "string")),
        ({"ttl": "Infinity"}, ('"ttl" must be a number of seconds', "string")),
        ({"ttl": True}, ('"ttl" must be a number of seconds', "boolean")),
        ({"ttl": [10]}, ('"ttl" must be a number of seconds',)),
        ({"ttl": 0}, ('"ttl" must be between 1 and', "seconds")),
        ({"ttl": 0.999}, ('"ttl" must be between 1 and',)),
        ({"ttl": -5}, ('"ttl" must be between 1 and',)),
        ({"ttl": MAX_TTL_S + 1}, ('"ttl" must be between 1 and', f"{MAX_TTL_S:g}")),
        ({"ttl": 1e308}, ('"ttl" must be between 1 and',)),
        ({"ttl": 10, "id": 0}, ('"id" must be between 1 and', str(MAX_LEASE_ID))),
        ({"ttl": 10, "id": -1}, ('"id" must be between 1 and',)),
        ({"ttl": 10, "id": MAX_LEASE_ID + 1}, ('"id" must be between 1 and',)),
        ({"ttl": 10, "id": 1.5}, ('"id" must be an integer lease id',)),
        ({"ttl": 10, "id": 2.0}, ('"id" must be an integer lease id',)),
        ({"ttl": 10, "id": "5"}, ('"id" must be an integer lease id', "string")),
        ({"ttl": 10, "id": True}, ('"id" must be an integer lease id', "boolean")),
        ({"ttl": 10, "keys": []}, ("unknown field(s)", "keys")),
        ({"ttl": 10, "lease": 1, "name": "x"}, ("unknown field(s)", "lease, name")),
    ],
)
def test_a_bad_grant_is_a_400_with_a_message(
    client: TestClient, fake: FakeRaft, body: dict[str, Any], words: tuple[str, ...]
) -> None:
    check_error(client.post("/lease", json=body), 400, *words)
    assert fake.requests_of(Op.LEASE_GRANT) == []  # refused before the Raft process


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"", ("not valid JSON",)),
        (b"{ttl: 5}", ("not valid JSON",)),
        (b'{"ttl": NaN}', ("not valid JSON",)),
        (b'{"ttl": Infinity}', ("not valid JSON",)),
        (b'{"ttl": 1e999}', ("not valid JSON",)),
        (b"[10]", ("must be a JSON object",)),
        (b"10", ("must be a JSON object",)),
        (b'{"ttl": 10, "id": 100000000000000000000000}', ('"id"',)),
    ],
)
def test_a_grant_body_that_is_not_a_usable_object_is_a_400(
    client: TestClient, raw: bytes, words: tuple[str, ...]
) -> None:
    check_error(client.post("/lease", content=raw), 400, *words)


# -- keep-alive -----------------------------------------------------------------------------


def test_keep_alive_answers_the_ttl_at_a_new_index(client: TestClient, fake: FakeRaft) -> None:
    lease = grant(client, 4)
    granted_at = fake.index
    answer = ok(client.post(f"/lease/{lease}/keepalive"))
    assert answer == {"id": lease, "ttl": 4.0, "index": granted_at + 1, "term": 3}
    assert fake.requests_of(Op.LEASE_KEEP_ALIVE)[-1].limit == lease


def test_keep_alive_of_a_missing_lease_is_a_404(client: TestClient) -> None:
    doc = check_error(client.post("/lease/99/keepalive"), 404, "lease 99 not found")
    assert doc["id"] == 99


# -- bad path ids, on every route that takes one ---------------------------------------------


@pytest.mark.parametrize(
    "bad", ["abc", "0", "-1", "+1", "1.0", "1e3", " 1", TOO_BIG_ID, "9" * 5000]
)
@pytest.mark.parametrize(
    ("method", "suffix"), [("GET", ""), ("DELETE", ""), ("POST", "/keepalive")]
)
def test_a_bad_lease_id_in_the_path_is_a_400(
    client: TestClient, fake: FakeRaft, method: str, suffix: str, bad: str
) -> None:
    response = client.request(method, f"/lease/{bad}{suffix}")
    check_error(response, 400, "lease id must be an integer between 1 and", str(MAX_LEASE_ID))
    assert fake.requests == []


def test_the_largest_lease_id_is_a_valid_path(client: TestClient) -> None:
    check_error(client.get(f"/lease/{MAX_LEASE_ID}"), 404, f"lease {MAX_LEASE_ID} not found")
    grant(client, 3, lease_id=MAX_LEASE_ID)
    assert ok(client.post(f"/lease/{MAX_LEASE_ID}/keepalive"))["id"] == MAX_LEASE_ID
    # Leading zeros are the same number.
    assert ok(client.get(f"/lease/0{MAX_LEASE_ID}"))["id"] == MAX_LEASE_ID


def test_methods_a_lease_route_does_not_take_are_a_405(client: TestClient) -> None:
    assert client.put("/lease").status_code == 405
    assert client.patch("/lease/1").status_code == 405
    assert client.get("/lease/1/keepalive").status_code == 405


# -- writes with a lease or a TTL -----------------------------------------------------------


def test_a_put_with_a_lease_attaches_the_key_and_says_so(client: TestClient) -> None:
    lease = grant(client, 30)
    answer = put(client, "app/a", lease=lease)
    assert answer["lease"] == lease and answer["ttl"] == 30.0
    assert answer["key"] == "app/a" and answer["revision"] == answer["index"]
    raw = ok(client.put("/kv/app/b", content=b"raw", params={"lease": str(lease)}))
    assert raw["lease"] == lease and raw["ttl"] == 30.0
    doc = ok(client.get("/kv/app/a", headers=JSON))
    assert doc["value"] == "v" and doc["lease"] == lease
    # No lease clock in the fake: the time left is unknown, shown as null.
    assert "ttl" in doc and doc["ttl"] is None
    plain = client.get("/kv/app/b")
    assert plain.content == b"raw"
    assert plain.headers["X-Raftkv-Lease"] == str(lease)
    assert "X-Raftkv-Ttl" not in plain.headers


def test_a_put_with_a_ttl_gets_a_private_lease_until_rewritten_without_one(
    client: TestClient,
) -> None:
    shared = grant(client, 60)
    answer = put(client, "session", ttl=3)
    private = answer["lease"]
    assert private != shared and answer["ttl"] == 3.0
    raw = ok(client.put("/kv/other", content=b"x", params={"ttl": "2.5"}))
    assert raw["ttl"] == 2.5 and raw["lease"] not in (shared, private)
    assert ok(client.get("/kv/session", headers=JSON))["lease"] == private
    listed = ok(client.get("/lease"))
    assert [item["id"] for item in listed["leases"]] == sorted([shared, private, raw["lease"]])
    assert {"key": "session"} in ok(client.get(f"/lease/{private}"))["keys"]
    # A private lease takes no other key.
    check_error(client.post("/kv/x", json={"value": "v", "lease": private}), 404, "own TTL")
    # Rewritten without a ttl or lease: permanent again, and the private lease is gone.
    plain = put(client, "session", "again")
    assert "lease" not in plain and "ttl" not in plain
    doc = ok(client.get("/kv/session", headers=JSON))
    assert "lease" not in doc and "ttl" not in doc
    assert "X-Raftkv-Lease" not in client.get("/kv/session").headers
    check_error(client.get(f"/lease/{private}"), 404, f"lease {private} not found")
    # Deleting the other key ends its private lease too.
    assert client.delete("/kv/other").status_code == 200
    listed = ok(client.get("/lease"))
    assert [item["id"] for item in listed["leases"]] == [shared]


def test_moving_a_key_to_another_lease_detaches_it_from_the_first(client: TestClient) -> None:
    first, second = grant(client, 10), grant(client, 20)
    put(client, "k", lease=first)
    assert put(client, "k", lease=second)["ttl"] == 20.0
    assert ok(client.get(f"/lease/{first}"))["keys"] == []
    assert ok(client.get(f"/lease/{second}"))["keys"] == [{"key": "k"}]
    # Revoking the first no longer deletes the key.
    assert ok(client.delete(f"/lease/{first}"))["deleted"] == 0
    assert client.get("/kv/k").status_code == 200


def test_a_put_naming_a_missing_lease_is_a_404_and_writes_nothing(
    client: TestClient, fake: FakeRaft
) -> None:
    doc = check_error(
        client.post("/kv/k", json={"value": "v", "lease": 5}), 404, "lease 5 not found"
    )
    assert doc["lease"] == 5
    doc = check_error(client.put("/kv/k", content=b"v", params={"lease": "6"}), 404, "lease 6")
    assert doc["lease"] == 6
    assert b"k" not in fake.data


def test_a_leased_compare_and_set_that_fails_is_a_409(client: TestClient) -> None:
    lease = grant(client, 10)
    put(client, "k")
    body = {"value": "new", "lease": lease, "prev_revision": 0}
    check_error(client.post("/kv/k", json=body), 409, "already exists")
    assert ok(client.get(f"/lease/{lease}"))["keys"] == []


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"ttl": 5, "lease": 1}, ('"lease" and "ttl" cannot both be given',)),
        ({"ttl": "5"}, ('"ttl" must be a number of seconds', "string")),
        ({"ttl": "nan"}, ('"ttl" must be a number of seconds',)),
        ({"ttl": 0.5}, ('"ttl" must be between 1 and',)),
        ({"ttl": MAX_TTL_S * 2}, ('"ttl" must be between 1 and',)),
        ({"lease": 0}, ('"lease" must be between 1 and',)),
        ({"lease": -3}, ('"lease" must be between 1 and',)),
        ({"lease": MAX_LEASE_ID + 1}, ('"lease" must be between 1 and',)),
        ({"lease": "1"}, ('"lease" must be an integer lease id', "string")),
        ({"lease": 1.5}, ('"lease" must be an integer lease id',)),
        ({"lease": False}, ('"lease" must be an integer lease id', "boolean")),
        ({"expires": 5}, ("unknown field(s)", "expires")),
    ],
)
def test_a_bad_lease_or_ttl_in_a_json_put_is_a_400(
    client: TestClient, fake: FakeRaft, fields: dict[str, Any], words: tuple[str, ...]
) -> None:
    check_error(client.post("/kv/k", json={"value": "v", **fields}), 400, *words)
    assert fake.requests_of(Op.PUT) == []


def test_null_ttl_and_lease_in_a_json_put_mean_neither(client: TestClient) -> None:
    answer = put(client, "k", ttl=None, lease=None)
    assert "lease" not in answer and "ttl" not in answer


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"lease": "1", "ttl": "5"}, ("query parameter lease and query parameter ttl",)),
        ({"lease": "abc"}, ("query parameter lease must be an integer", "'abc'")),
        ({"lease": "-1"}, ("query parameter lease must be an integer",)),
        ({"lease": "1.5"}, ("query parameter lease must be an integer",)),
        ({"lease": ""}, ("query parameter lease must be an integer",)),
        ({"lease": "0"}, ("query parameter lease must be between 1 and",)),
        ({"lease": TOO_BIG_ID}, ("query parameter lease must be between 1 and",)),
        ({"lease": "9" * 5000}, ("query parameter lease must be between 1 and",)),
        ({"ttl": "abc"}, ("query parameter ttl must be a number", "'abc'")),
        ({"ttl": ""}, ("query parameter ttl must be a number",)),
        ({"ttl": "nan"}, ("query parameter ttl must be a number",)),
        ({"ttl": "NaN"}, ("query parameter ttl must be a number",)),
        ({"ttl": "inf"}, ("query parameter ttl must be a number",)),
        ({"ttl": "-inf"}, ("query parameter ttl must be a number",)),
        ({"ttl": "1e999"}, ("query parameter ttl must be a number",)),
        ({"ttl": "0.5"}, ("query parameter ttl must be between 1 and",)),
        ({"ttl": "999999999"}, ("query parameter ttl must be between 1 and",)),
        ({"ttl": "1_0"}, ("query parameter ttl must be a number",)),
        ({"ttl": " 5 "}, ("query parameter ttl must be a number",)),
        ({"ttl": "-3"}, ("query parameter ttl must be a number",)),
        ({"ttl": "1e12"}, ("query parameter ttl must be a number",)),
    ],
)
def test_a_bad_lease_or_ttl_on_a_raw_put_is_a_400(
    client: TestClient, fake: FakeRaft, params: dict[str, str], words: tuple[str, ...]
) -> None:
    check_error(client.put("/kv/k", content=b"v", params=params), 400, *words)
    assert fake.requests_of(Op.PUT) == []


# -- revoke ---------------------------------------------------------------------------------


def test_revoke_deletes_every_key_of_the_lease_at_one_revision(
    client: TestClient, fake: FakeRaft
) -> None:
    lease = grant(client, 30)
    other = grant(client, 30)
    for key in ("r/a", "r/b", "r/c"):
        put(client, key, lease=lease)
    put(client, "r/other", lease=other)
    put(client, "r/plain")
    answer = ok(client.delete(f"/lease/{lease}"))
    assert answer == {
        "id": lease,
        "revoked": True,
        "deleted": 3,
        "index": fake.index,
        "term": 3,
        "revision": fake.index,
    }
    for key in ("r/a", "r/b", "r/c"):
        check_error(client.get(f"/kv/{key}"), 404, "key not found")
    assert client.get("/kv/r/other").status_code == 200
    assert client.get("/kv/r/plain").status_code == 200
    listing = ok(client.get("/kv", params={"prefix": "r/"}))
    assert [item["key"] for item in listing["items"]] == ["r/other", "r/plain"]
    check_error(client.get(f"/lease/{lease}"), 404, f"lease {lease} not found")
    assert [item["id"] for item in ok(client.get("/lease"))["leases"]] == [other]


def test_revoking_a_lease_without_keys_deletes_nothing(client: TestClient, fake: FakeRaft) -> None:
    lease = grant(client, 30)
    answer = ok(client.delete(f"/lease/{lease}"))
    assert answer["revoked"] is True and answer["deleted"] == 0
    assert answer["index"] == fake.index and answer["revision"] == 0  # nothing changed


def test_revoking_a_missing_lease_is_a_404(client: TestClient) -> None:
    doc = check_error(client.delete("/lease/12"), 404, "lease 12 not found")
    assert doc["id"] == 12
    lease = grant(client, 30)
    ok(client.delete(f"/lease/{lease}"))
    check_error(client.delete(f"/lease/{lease}"), 404, f"lease {lease} not found")
    check_error(client.post(f"/lease/{lease}/keepalive"), 404, f"lease {lease} not found")
    check_error(client.post("/kv/k", json={"value": "v", "lease": lease}), 404, "not found")


# -- look up and list -----------------------------------------------------------------------


def test_lookup_shows_the_ttl_the_keys_in_order_and_base64_for_binary_keys(
    client: TestClient, fake: FakeRaft
) -> None:
    lease = grant(client, 12.5)
    put(client, "b", lease=lease)
    ok(client.put("/kv/%FF%00", content=b"bin", params={"lease": str(lease)}))
    put(client, "a", lease=lease)
    doc = ok(client.get(f"/lease/{lease}"))
    assert doc == {
        "id": lease,
        "ttl": 12.5,
        "remaining": None,  # the fake times no lease
        "index": fake.index,
        "keys": [
            {"key": "a"},
            {"key": "b"},
            {"key_base64": base64.b64encode(b"\xff\x00").decode()},
        ],
        "more": False,
    }


def test_lookup_can_leave_the_keys_out_or_cut_them_short(client: TestClient) -> None:
    lease = grant(client, 10)
    for key in ("k1", "k2", "k3"):
        put(client, key, lease=lease)
    bare = ok(client.get(f"/lease/{lease}", params={"keys": "false"}))
    assert "keys" not in bare and "more" not in bare and bare["remaining"] is None
    cut = ok(client.get(f"/lease/{lease}", params={"limit": "2"}))
    assert cut["keys"] == [{"key": "k1"}, {"key": "k2"}] and cut["more"] is True
    whole = ok(client.get(f"/lease/{lease}", params={"limit": "3", "keys": "true"}))
    assert len(whole["keys"]) == 3 and whole["more"] is False
    assert ok(client.get(f"/lease/{lease}", params={"limit": "10000"}))["more"] is False
    stale = ok(client.get(f"/lease/{lease}", params={"consistency": "stale"}))
    assert stale["keys"] == whole["keys"]


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"keys": "yes"}, ("keys must be true or false", "'yes'")),
        ({"keys": "1"}, ("keys must be true or false",)),
        ({"keys": "True"}, ("keys must be true or false",)),
        ({"keys": ""}, ("keys must be true or false",)),
        ({"limit": "0"}, ("limit must be between 1 and 10000", "'0'")),
        ({"limit": "-1"}, ("limit must be between 1 and 10000",)),
        ({"limit": "abc"}, ("limit must be between 1 and 10000",)),
        ({"limit": "1.5"}, ("limit must be between 1 and 10000",)),
        ({"limit": ""}, ("limit must be between 1 and 10000",)),
        ({"limit": "10001"}, ("limit must be between 1 and 10000", "'10001'")),
        ({"limit": "9" * 100}, ("limit must be between 1 and 10000",)),
        ({"consistency": "eventual"}, ("consistency",)),
    ],
)
def test_bad_lookup_parameters_are_a_400(
    client: TestClient, params: dict[str, str], words: tuple[str, ...]
) -> None:
    lease = grant(client, 10)
    check_error(client.get(f"/lease/{lease}", params=params), 400, *words)


def test_lookup_of_a_missing_lease_is_a_404(client: TestClient) -> None:
    doc = check_error(client.get("/lease/3"), 404, "lease 3 not found")
    assert doc["id"] == 3


def test_list_shows_every_lease_in_id_order(client: TestClient, fake: FakeRaft) -> None:
    empty = ok(client.get("/lease"))
    assert empty == {"leases": [], "count": 0, "index": fake.index}
    grant(client, 9, lease_id=50)
    grant(client, 3, lease_id=5)
    grant(client, 4)  # the counter's first id: 1
    put(client, "own", ttl=2)  # a private lease, listed with the others
    doc = ok(client.get("/lease"))
    assert doc["count"] == 4 and doc["index"] == fake.index
    assert doc["leases"] == [
        {"id": 1, "ttl": 4.0, "remaining": None},
        {"id": 2, "ttl": 2.0, "remaining": None},
        {"id": 5, "ttl": 3.0, "remaining": None},
        {"id": 50, "ttl": 9.0, "remaining": None},
    ]
    assert ok(client.get("/lease", params={"consistency": "stale"}))["leases"] == doc["leases"]
    check_error(client.get("/lease", params={"consistency": "x"}), 400, "consistency")


def test_a_lease_route_answers_503_when_the_raft_process_has_no_leader(
    client: TestClient, fake: FakeRaft
) -> None:
    fake.unavailable = True
    for response in (
        client.post("/lease", json={"ttl": 5}),
        client.post("/lease/1/keepalive"),
        client.delete("/lease/1"),
        client.get("/lease/1"),
        client.get("/lease"),
    ):
        assert response.status_code == 503, response.text
        assert "Retry-After" in response.headers


# -- authorization --------------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


ROOT = basic("root", "root-secret")
APP = basic("app", "app-secret")


@pytest.fixture
def secured(client: TestClient) -> TestClient:
    """Auth on: ``root`` may do anything; ``app`` may read and write ``app/`` and read
    ``shared/``."""
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
    return client


def test_lease_routes_need_credentials_once_auth_is_on(secured: TestClient) -> None:
    for response in (
        secured.post("/lease", json={"ttl": 5}),
        secured.get("/lease"),
        secured.get("/lease/1"),
        secured.post("/lease/1/keepalive"),
        secured.delete("/lease/1"),
    ):
        assert response.status_code == 401, response.text
        assert "WWW-Authenticate" in response.headers


def test_any_user_may_grant_keep_alive_and_list(secured: TestClient) -> None:
    lease = grant(secured, 10, headers=APP)
    assert ok(secured.post(f"/lease/{lease}/keepalive", headers=APP))["id"] == lease
    assert [item["id"] for item in ok(secured.get("/lease", headers=APP))["leases"]] == [lease]
    # Attaching a key needs write on the key, as any write does.
    assert (
        secured.post("/kv/app/a", json={"value": "v", "lease": lease}, headers=APP).json()["lease"]
        == lease
    )
    check_error(
        secured.post("/kv/shared/x", json={"value": "v", "lease": lease}, headers=APP),
        403,
        "write",
    )
    check_error(secured.put("/kv/elsewhere", content=b"v", params={"ttl": "5"}, headers=APP), 403)


def test_revoke_is_refused_unless_the_user_may_write_every_attached_key(
    secured: TestClient, fake: FakeRaft
) -> None:
    lease = grant(secured, 30, headers=ROOT)
    for key in ("app/a", "app/b", "shared/config", "zzz/secret"):
        ok(secured.post(f"/kv/{key}", json={"value": "v", "lease": lease}, headers=ROOT))
    revokes_before = len(fake.requests_of(Op.LEASE_REVOKE))
    doc = check_error(
        secured.delete(f"/lease/{lease}", headers=APP), 403, "'app'", "write", "shared/config"
    )
    assert doc["user"] == "app" and doc["needed"] == "readwrite"
    assert len(fake.requests_of(Op.LEASE_REVOKE)) == revokes_before  # never sent
    for key in ("app/a", "shared/config", "zzz/secret"):
        assert secured.get(f"/kv/{key}", headers=ROOT).status_code == 200
    # Once only keys the user may write are attached, the user may revoke it.
    for key in ("shared/config", "zzz/secret"):
        assert secured.delete(f"/kv/{key}", headers=ROOT).status_code == 200
    answer = ok(secured.delete(f"/lease/{lease}", headers=APP))
    assert answer["deleted"] == 2
    assert secured.get("/kv/app/a", headers=APP).status_code == 404
    # A missing lease is a 404 for anyone.
    check_error(secured.delete(f"/lease/{lease}", headers=APP), 404, "not found")


def test_revoke_of_a_lease_with_more_keys_than_are_checked_needs_write_on_everything(
    secured: TestClient, fake: FakeRaft
) -> None:
    """Past the keys the route reads, the rest cannot be checked one by one: a key the
    user may not write, sorted after 10,001 keys the user may write, must not be deleted
    by that user's revoke."""
    lease = grant(secured, 30, headers=ROOT)
    for i in range(10_001):
        fake.put_direct(b"app/%05d" % i, b"v", lease=lease)
    fake.put_direct(b"zzz/secret", b"v", lease=lease)
    check_error(secured.delete(f"/lease/{lease}", headers=APP), 403, "'app'", "every key")
    assert secured.get("/kv/zzz/secret", headers=ROOT).status_code == 200
    assert ok(secured.delete(f"/lease/{lease}", headers=ROOT))["deleted"] == 10_002


def test_lookup_shows_only_the_keys_the_user_may_read(secured: TestClient) -> None:
    lease = grant(secured, 30, headers=ROOT)
    for key in ("app/a", "other/x", "shared/config", "zzz/secret"):
        ok(secured.post(f"/kv/{key}", json={"value": "v", "lease": lease}, headers=ROOT))
    shown = ok(secured.get(f"/lease/{lease}", headers=APP))
    assert shown["keys"] == [{"key": "app/a"}, {"key": "shared/config"}]
    assert shown["ttl"] == 30.0 and shown["remaining"] is None
    everything = ok(secured.get(f"/lease/{lease}", headers=ROOT))
    assert [k["key"] for k in everything["keys"]] == [
        "app/a",
        "other/x",
        "shared/config",
        "zzz/secret",
    ]
    # Reading a leased key still needs read permission on it.
    check_error(secured.get("/kv/zzz/secret", headers={**APP, **JSON}), 403, "read")
    assert ok(secured.get("/kv/app/a", headers={**APP, **JSON}))["lease"] == lease
