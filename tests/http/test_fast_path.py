"""KvFastPath: which requests skip the full application, and how its errors are answered."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from raftkv.http.fast_path import KvFastPath


class _Refused(Exception):
    pass


def _render(exc: Exception) -> Response:
    return PlainTextResponse(f"refused: {exc}", 418)


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
        raise _Refused(request.url.path)

    middleware = KvFastPath(
        full_app, handlers={"GET": get, "PUT": put}, error_type=_Refused, render_error=_render
    )
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


def test_a_handler_error_of_the_given_type_is_rendered() -> None:
    side, sent = _serve(_scope("PUT", b"/kv/a"))
    assert side == "put"
    assert sent[0]["status"] == 418
    assert sent[1]["body"] == b"refused: /kv/a"
