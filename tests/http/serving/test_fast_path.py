"""KvFastPath: which requests skip the full application, and how its errors are answered."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from raftkv.http.errors import ApiError
from raftkv.http.serving.fast_path import KvFastPath


def _scope(method: str, raw_path: bytes, **extra: Any) -> Scope:
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": raw_path.decode(),
        "raw_path": raw_path,
        "root_path": "",
        "query_string": b"",
        "headers": [],
    }
    scope.update(extra)
    return scope


def _serve(scope: Scope) -> tuple[str, list[dict[str, Any]]]:
    """Run one request through a KvFastPath; which side answered, and what was sent."""
    answered: list[str] = []

    async def full_app(scope: Scope, receive: Receive, send: Send) -> None:
        answered.append("app")
        await PlainTextResponse("from the app")(scope, receive, send)

    async def get(request: Request) -> Response:
        answered.append("get")
        return PlainTextResponse("from get")

    async def put(request: Request) -> Response:
        answered.append("put")
        if request.url.path == "/kv/crash":
            raise RuntimeError("not an ApiError")
        raise ApiError(409, f"refused {request.url.path}", extra={"current_revision": 7})

    middleware = KvFastPath(full_app, handlers={"GET": get, "PUT": put})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    assert len(answered) == 1
    return answered[0], sent


def test_get_and_put_on_a_key_go_to_their_handlers() -> None:
    assert _serve(_scope("GET", b"/kv/a%2Fb"))[0] == "get"
    assert _serve(_scope("PUT", b"/kv/"))[0] == "put"


def test_everything_else_goes_through_the_full_app() -> None:
    for scope in (
        _scope("HEAD", b"/kv/a"),
        _scope("DELETE", b"/kv/a"),
        _scope("POST", b"/kv/a"),
        _scope("GET", b"/kv"),
        _scope("GET", b"/kvx/a"),
        _scope("GET", b"/health"),
        _scope("GET", b"/kv/a", root_path="/api"),
        {"type": "lifespan"},
    ):
        assert _serve(scope)[0] == "app", scope


def test_an_api_error_is_answered_as_the_app_answers_it() -> None:
    side, sent = _serve(_scope("PUT", b"/kv/a"))
    assert side == "put"
    assert sent[0]["status"] == 409
    assert (b"content-type", b"application/json") in sent[0]["headers"]
    assert orjson.loads(sent[1]["body"]) == {"error": "refused /kv/a", "current_revision": 7}


def test_any_other_error_goes_up_to_the_app_s_error_handling() -> None:
    with pytest.raises(RuntimeError, match="not an ApiError"):
        _serve(_scope("PUT", b"/kv/crash"))
