"""kvctl auth|user|role in-process, with a fake client: each command calls the right
/auth route with the right body, prints what it should, takes credentials from flags,
the environment or a prompt, and maps 401/403 to exit code 7."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kvctl_fakes import FakeClient
from raftkv.cli import context, kvctl

from raftkv.client.http_client import AuthenticationError, PermissionDeniedError


class AuthFakeClient(FakeClient):
    """Answers the /auth routes with canned documents and records the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[tuple[str, str], dict[str, Any]] = {}

    def auth_request(
        self, method: str, path: str, document: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        self._record("auth_request", method, path, document)
        return self.answers.get((method, path), {"ok": True, "revision": 7})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> AuthFakeClient:
    client = AuthFakeClient()
    monkeypatch.setattr(context, "Client", client)
    for name in ("RAFTKV_ENDPOINTS", "RAFTKV_USER", "RAFTKV_PASSWORD", "RAFTKV_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return client


def call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = kvctl.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def routes(fake: AuthFakeClient) -> list[tuple[Any, ...]]:
    return [args for name, args, _ in fake.calls if name == "auth_request"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["auth", "enable"], ("POST", "/auth/enable", None)),
        (["auth", "disable"], ("POST", "/auth/disable", None)),
        (
            ["user", "add", "alice", "--new-password", "pw"],
            ("POST", "/auth/users", {"name": "alice", "password": "pw"}),
        ),
        (["user", "add", "bot", "--no-password"], ("POST", "/auth/users", {"name": "bot"})),
        (["user", "delete", "alice"], ("DELETE", "/auth/users/alice", None)),
        (
            ["user", "passwd", "alice", "--new-password", "new"],
            ("PUT", "/auth/users/alice/password", {"password": "new"}),
        ),
        (["user", "grant-role", "alice", "ops"], ("PUT", "/auth/users/alice/roles/ops", None)),
        (
            ["user", "revoke-role", "alice", "ops"],
            ("DELETE", "/auth/users/alice/roles/ops", None),
        ),
        (["user", "token", "revoke", "abcd1234"], ("DELETE", "/auth/tokens/abcd1234", None)),
        (["role", "add", "ops"], ("POST", "/auth/roles", {"name": "ops"})),
        (["role", "delete", "ops"], ("DELETE", "/auth/roles/ops", None)),
        (
            ["role", "grant", "ops", "--readwrite", "app/"],
            ("PUT", "/auth/roles/ops/permissions", {"access": "readwrite", "prefix": "app/"}),
        ),
        (
            ["role", "grant", "ops", "--admin"],
            ("PUT", "/auth/roles/ops/permissions", {"access": "admin", "prefix": ""}),
        ),
        (
            ["role", "revoke", "ops", "--read", "a b/"],
            ("DELETE", "/auth/roles/ops/permissions?access=read&prefix=a+b%2F", None),
        ),
    ],
)
def test_each_command_calls_its_route(
    fake: AuthFakeClient,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    expected: tuple[Any, ...],
) -> None:
    code, out, err = call(capsys, *argv)
    assert (code, err) == (0, "")
    assert out.strip()
    assert routes(fake) == [expected]


def test_token_create_prints_the_secret(
    fake: AuthFakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.answers[("POST", "/auth/users/app/tokens")] = {
        "ok": True,
        "id": "0a1b2c3d",
        "token": "rkv_0a1b2c3d_secret",
        "user": "app",
    }
    code, out, _ = call(capsys, "user", "token", "create", "app")
    assert code == 0
    assert out.splitlines()[0] == "rkv_0a1b2c3d_secret"
    assert "0a1b2c3d" in out
    code, out, _ = call(capsys, "--json", "user", "token", "create", "app")
    assert json.loads(out)["token"] == "rkv_0a1b2c3d_secret"


def test_lists_and_status_are_readable(
    fake: AuthFakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.answers[("GET", "/auth/users")] = {
        "users": [{"name": "app", "roles": ["rw"], "has_password": False, "tokens": ["0a1b"]}]
    }
    fake.answers[("GET", "/auth/roles")] = {
        "roles": [
            {
                "name": "rw",
                "permissions": [{"access": "readwrite", "prefix": "app/"}, {"access": "admin"}],
            }
        ]
    }
    fake.answers[("GET", "/auth/status")] = {
        "enabled": True,
        "revision": 9,
        "users": 1,
        "roles": 1,
        "admin_users": ["root"],
    }
    assert call(capsys, "user", "list")[1] == "app\troles: rw\tpassword: no\ttokens: 0a1b\n"
    assert call(capsys, "role", "list")[1] == "rw\treadwrite 'app/', admin\n"
    status = call(capsys, "auth", "status")[1]
    assert "authentication: enabled" in status
    assert "admin users: root" in status


def test_permission_needs_exactly_one_kind(
    fake: AuthFakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = call(capsys, "role", "grant", "ops", "--read", "a/", "--admin")
    assert code == 2
    assert "exactly one" in err
    assert routes(fake) == []


def test_credentials_from_flags_environment_and_prompt(
    fake: AuthFakeClient, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert call(capsys, "--token", "t0k", "auth", "status")[0] == 0
    assert call(capsys, "--user", "root", "--password", "pw", "auth", "status")[0] == 0
    monkeypatch.setenv("RAFTKV_USER", "envuser")
    monkeypatch.setenv("RAFTKV_PASSWORD", "envpw")
    assert call(capsys, "auth", "status")[0] == 0
    monkeypatch.delenv("RAFTKV_PASSWORD")
    monkeypatch.setattr("click.prompt", lambda *args, **kwargs: "typed")
    assert call(capsys, "auth", "status")[0] == 0
    assert fake.credentials == [
        (None, None, "t0k"),
        ("root", "pw", None),
        ("envuser", "envpw", None),
        ("envuser", "typed", None),
    ]


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (AuthenticationError("invalid or revoked token", status=401), "authentication failed"),
        (PermissionDeniedError("user 'a' lacks the admin permission", status=403), "denied"),
    ],
)
def test_401_and_403_exit_with_code_7(
    fake: AuthFakeClient, capsys: pytest.CaptureFixture[str], error: Exception, message: str
) -> None:
    fake.fail["auth_request"] = error
    code, _, err = call(capsys, "user", "list")
    assert code == 7
    assert message in err
