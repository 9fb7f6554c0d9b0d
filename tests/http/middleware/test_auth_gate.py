"""Authentication and authorization in the worker, against a fake Raft process that
keeps real access-control tables: 401 without or with bad credentials, 403 without the
permission, 200 with it, on every class of endpoint, the fast path included."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

import httpx
import pytest
from fake_raft import FakeRaft
from starlette.testclient import TestClient

from raftkv.wire.protocol import Op


def basic(user: str, password: str) -> dict[str, str]:
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


ROOT = basic("root", "root-secret")
READER = basic("reader", "reader-secret")


def check_error(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    message = response.json()["error"]
    assert isinstance(message, str)
    for word in words:
        assert word in message, message
    return message


def setup_users(client: TestClient) -> None:
    """While auth is off anyone may manage it, as in etcd."""
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
        response = client.request(method, path, json=body)
        assert response.status_code == 200, (path, response.text)


@pytest.fixture
def secured(client: TestClient, fake: FakeRaft) -> TestClient:
    setup_users(client)
    assert client.post("/auth/enable").status_code == 200
    fake.put_direct(b"app/a", b"in")
    fake.put_direct(b"other/b", b"out")
    return client


# -- off until enabled ------------------------------------------------------------------


def test_open_while_auth_is_off(client: TestClient, fake: FakeRaft) -> None:
    fake.put_direct(b"k", b"v")
    assert client.get("/kv/k").content == b"v"
    assert client.put("/kv/k", content=b"w").status_code == 200
    status = client.get("/auth/status").json()
    assert status["enabled"] is False
    assert fake.auth_polls >= 1


def test_enable_refused_without_an_admin_user(client: TestClient) -> None:
    assert client.post("/auth/users", json={"name": "u", "password": "p"}).status_code == 200
    check_error(client.post("/auth/enable"), 400, "admin")
    assert client.get("/auth/status").json()["enabled"] is False


# -- 401: no or bad credentials ---------------------------------------------------------

EVERY_CLASS = [
    ("GET", "/kv/app/a"),
    ("PUT", "/kv/app/a"),
    ("POST", "/kv/app/a"),
    ("DELETE", "/kv/app/a"),
    ("GET", "/kv?prefix=app/"),
    ("DELETE", "/kv?prefix=app/"),
    ("GET", "/cluster/status"),
    ("GET", "/cluster/nodes"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/dashboard"),
    ("POST", "/cluster/snapshot"),
    ("POST", "/cluster/leader"),
    ("GET", "/auth/status"),
    ("GET", "/auth/users"),
    ("POST", "/auth/disable"),
]


@pytest.mark.parametrize(("method", "path"), EVERY_CLASS)
def test_no_credentials_is_401_with_a_challenge(
    secured: TestClient, fake: FakeRaft, method: str, path: str
) -> None:
    before = len(fake.requests)
    response = secured.request(method, path, content=b"x" if method in ("PUT", "POST") else None)
    check_error(response, 401, "authentication required")
    challenge = response.headers["www-authenticate"]
    assert "Basic" in challenge
    assert "Bearer" in challenge
    assert len(fake.requests) == before  # refused before reaching the Raft process


def test_health_needs_no_credentials(secured: TestClient) -> None:
    assert secured.get("/health").status_code == 200


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        (basic("root", "wrong"), ("invalid user name or password",)),
        (basic("nobody", "root-secret"), ("invalid user name or password",)),
        ({"Authorization": "Bearer rkv_0000_nope"}, ("invalid or revoked token",)),
        ({"Authorization": "Basic !!!"}, ("malformed Basic",)),
        ({"Authorization": "Digest x"}, ("unsupported", "Basic or Bearer")),
    ],
)
def test_bad_credentials_are_401(
    secured: TestClient, headers: dict[str, str], words: tuple[str, ...]
) -> None:
    response = secured.get("/kv/app/a", headers=headers)
    check_error(response, 401, *words)
    assert "Basic" in response.headers["www-authenticate"]


# -- 403: valid credentials without the permission --------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "words"),
    [
        ("GET", "/kv/other/b", ("reader", "read", "'other/b'")),
        # An encoded slash routes to the same key: it is checked as that key.
        ("GET", "/kv%2Fother/b", ("'other/b'",)),
        ("PUT", "/kv/app/a", ("readwrite", "'app/a'")),
        ("POST", "/kv/app/a", ("readwrite",)),
        ("DELETE", "/kv/app/a", ("readwrite",)),
        ("GET", "/kv?prefix=ap", ("the whole prefix 'ap'",)),
        ("GET", "/kv", ("the whole prefix ''",)),
        ("DELETE", "/kv?prefix=app/", ("readwrite", "'app/'")),
        ("POST", "/cluster/snapshot", ("admin",)),
        ("POST", "/cluster/members", ("admin",)),
        ("GET", "/cluster/backup", ("admin",)),
        ("GET", "/auth/users", ("admin",)),
        ("POST", "/auth/users/reader/tokens", ("admin",)),
    ],
)
def test_reader_without_the_permission_is_403(
    secured: TestClient, fake: FakeRaft, method: str, path: str, words: tuple[str, ...]
) -> None:
    before = len(fake.requests)
    body = b'{"value": "x"}' if method in ("PUT", "POST") else None
    response = secured.request(method, path, headers=READER, content=body)
    check_error(response, 403, *words)
    assert response.json()["user"] == "reader"
    assert len(fake.requests) == before


def test_reader_with_the_permission(secured: TestClient) -> None:
    assert secured.get("/kv/app/a", headers=READER).content == b"in"  # the fast path
    assert secured.head("/kv/app/a", headers=READER).status_code == 200
    listing = secured.get("/kv?prefix=app/", headers=READER)
    assert [item["key"] for item in listing.json()["items"]] == ["app/a"]
    assert secured.get("/kv?prefix=app/a", headers=READER).status_code == 200
    assert secured.get("/cluster/status", headers=READER).status_code == 200
    assert secured.get("/metrics", headers=READER).status_code == 200
    assert secured.get("/auth/status", headers=READER).json()["enabled"] is True


def test_admin_may_do_everything(secured: TestClient, fake: FakeRaft) -> None:
    assert secured.put("/kv/other/b", content=b"new", headers=ROOT).status_code == 200
    assert fake.data[b"other/b"].value == b"new"
    assert secured.get("/kv/other/b", headers=ROOT).content == b"new"
    assert secured.delete("/kv?prefix=other/", headers=ROOT).json()["deleted"] == 1
    users = secured.get("/auth/users", headers=ROOT).json()["users"]
    assert [u["name"] for u in users] == ["reader", "root"]
    assert "password_hash" not in str(users)
    roles = secured.get("/auth/roles", headers=ROOT).json()["roles"]
    assert {"name": "app-read", "permissions": [{"access": "read", "prefix": "app/"}]} in roles
    # An operation passes the gate and reaches the Raft process.
    secured.post("/cluster/snapshot", headers=ROOT)
    assert fake.requests_of(Op.SNAPSHOT)


def test_grant_readwrite_then_write(secured: TestClient) -> None:
    grant = {"access": "readwrite", "prefix": "app/w/"}
    assert secured.put("/auth/roles/app-read/permissions", json=grant, headers=ROOT).is_success
    assert secured.put("/kv/app/w/1", content=b"x", headers=READER).status_code == 200
    assert secured.put("/kv/app/other", content=b"x", headers=READER).status_code == 403
    revoke = "/auth/roles/app-read/permissions?access=readwrite&prefix=app/w/"
    assert secured.delete(revoke, headers=ROOT).status_code == 200
    # A removed permission stops working on the worker's next request.
    check_error(secured.put("/kv/app/w/1", content=b"y", headers=READER), 403, "readwrite")


# -- tokens and passwords -----------------------------------------------------------------


def test_token_works_until_revoked(secured: TestClient) -> None:
    created = secured.post("/auth/users/reader/tokens", headers=ROOT).json()
    token, token_id = created["token"], created["id"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert secured.get("/kv/app/a", headers=bearer).content == b"in"
    check_error(secured.get("/kv/other/b", headers=bearer), 403, "reader")
    listed = secured.get("/auth/users", headers=ROOT).json()["users"]
    assert token_id in next(u for u in listed if u["name"] == "reader")["tokens"]
    assert token not in str(listed)
    assert secured.delete(f"/auth/tokens/{token_id}", headers=ROOT).status_code == 200
    check_error(secured.get("/kv/app/a", headers=bearer), 401, "revoked")
    check_error(secured.delete(f"/auth/tokens/{token_id}", headers=ROOT), 404, token_id)


def test_password_change_takes_effect_at_once(secured: TestClient) -> None:
    assert secured.get("/kv/app/a", headers=READER).status_code == 200  # now cached
    changed = secured.put("/auth/users/reader/password", json={"password": "fresh"}, headers=ROOT)
    assert changed.status_code == 200
    check_error(secured.get("/kv/app/a", headers=READER), 401, "invalid user name or password")
    assert secured.get("/kv/app/a", headers=basic("reader", "fresh")).status_code == 200


def test_the_last_admin_is_kept(secured: TestClient) -> None:
    check_error(secured.delete("/auth/users/root", headers=ROOT), 400, "admin")
    check_error(secured.delete("/auth/users/root/roles/admins", headers=ROOT), 400, "admin")
    check_error(secured.delete("/auth/users/ghost", headers=ROOT), 404, "ghost")


def test_bad_management_input_is_400(secured: TestClient) -> None:
    check_error(secured.post("/auth/users", json={"name": "a b"}, headers=ROOT), 400, "name")
    check_error(
        secured.post("/auth/users", json={"name": "x", "password": 5}, headers=ROOT),
        400,
        "password",
    )
    check_error(
        secured.put("/auth/roles/admins/permissions", json={"access": "all"}, headers=ROOT),
        400,
        "access",
    )
    check_error(secured.post("/auth/roles", content=b"[", headers=ROOT), 400, "JSON")


def test_change_made_elsewhere_reaches_the_worker_by_polling(
    secured: TestClient, fake: FakeRaft, make_client: Callable[..., TestClient]
) -> None:
    created = secured.post("/auth/users/reader/tokens", headers=ROOT).json()
    bearer = {"Authorization": f"Bearer {created['token']}"}
    other_worker = make_client()
    assert other_worker.get("/kv/app/a", headers=bearer).status_code == 200
    assert secured.delete(f"/auth/tokens/{created['id']}", headers=ROOT).status_code == 200
    # The other worker learns of the revocation from its next poll.
    deadline = time.monotonic() + 10
    while other_worker.get("/kv/app/a", headers=bearer).status_code == 200:
        assert time.monotonic() < deadline, "the revocation never reached the other worker"
        time.sleep(0.05)
    check_error(other_worker.get("/kv/app/a", headers=bearer), 401, "revoked")


def test_disable_opens_everything_again(secured: TestClient) -> None:
    assert secured.post("/auth/disable", headers=ROOT).status_code == 200
    assert secured.get("/kv/other/b").content == b"out"
    assert secured.get("/auth/status").json()["enabled"] is False
