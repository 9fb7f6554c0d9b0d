"""Client credentials: the Authorization header from arguments or the environment."""

from __future__ import annotations

import base64

import httpx
import pytest

from raftkv.client.auth_header import authorization_header
from raftkv.client.http_client import AuthenticationError, Client, PermissionDeniedError


def test_token_wins_and_basic_is_encoded() -> None:
    assert authorization_header("u", "p", "tok", environ={}) == "Bearer tok"
    header = authorization_header("u", "p:w", environ={})
    assert header is not None
    assert base64.b64decode(header.removeprefix("Basic ")) == b"u:p:w"
    assert authorization_header(environ={}) is None


def test_environment_is_read_only_without_arguments() -> None:
    env = {"RAFTKV_USER": "e", "RAFTKV_PASSWORD": "pw"}
    assert authorization_header(environ=env) == authorization_header("e", "pw", environ={})
    assert authorization_header(environ={**env, "RAFTKV_TOKEN": "t"}) == "Bearer t"
    assert authorization_header("a", "b", environ={"RAFTKV_TOKEN": "t"}) != "Bearer t"


@pytest.mark.parametrize(
    ("user", "password", "word"),
    [("u", None, "needs a password"), (None, "p", "needs a user"), ("a:b", "p", "':'")],
)
def test_incomplete_credentials_refused(user: str | None, password: str | None, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        authorization_header(user, password, environ={})


def test_client_sends_the_header_and_maps_401_and_403() -> None:
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        if request.url.path == "/kv/secret":
            return httpx.Response(403, json={"error": "user 'u' lacks read permission"})
        return httpx.Response(401, json={"error": "invalid or revoked token"})

    with Client(
        "http://node:1", token="tok", transport=httpx.MockTransport(answer), retry_for=0
    ) as client:
        with pytest.raises(PermissionDeniedError, match="lacks read"):
            client.get("secret", consistency="stale")
        with pytest.raises(AuthenticationError, match="revoked"):
            client.get("other", consistency="stale")
    assert seen == ["Bearer tok", "Bearer tok"]
