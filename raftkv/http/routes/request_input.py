"""What the routes read from a request besides its path: the body, within a size limit,
a revision named in a parameter or header, and the client's own exactly-once tag from
its session headers. Each refuses what it cannot use with an ``ApiError``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from starlette.types import Receive

from raftkv.http.errors import ApiError
from raftkv.wire.decimals import bounded_decimal
from raftkv.wire.protocol import MAX_REVISION, Flag
from raftkv.wire.sessions import SessionHeaderError, SessionTag, parse_session_headers

__all__ = [
    "RequestParts",
    "consistency_flags",
    "parse_revision",
    "read_body",
    "receive_body",
    "session_tag",
]


class RequestParts(Protocol):
    """What these helpers read: Starlette's ``Request`` has it, and so does the key
    routes' ``KeyRequest``."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def query_params(self) -> Mapping[str, str]: ...

    @property
    def receive(self) -> Receive: ...


def parse_revision(text: str, where: str) -> int:
    """A revision given as decimal text: 0 to MAX_REVISION, else 400 naming ``where``."""
    value = bounded_decimal(text, MAX_REVISION)
    if value is None:
        raise ApiError(400, f"{where} must be a non-negative integer, got {text!r}")
    if value > MAX_REVISION:
        raise ApiError(400, f"{where} is too large (at most {MAX_REVISION})")
    return value


async def read_body(request: RequestParts, limit: int, what: str) -> bytes:
    """The whole body, refusing (413) one above ``limit`` bytes: at once from its
    Content-Length, else as soon as more than ``limit`` bytes have arrived."""
    return await receive_body(request.headers.get("content-length"), request.receive, limit, what)


async def receive_body(declared: str | None, receive: Receive, limit: int, what: str) -> bytes:
    """``read_body`` from the Content-Length header's value and an ASGI ``receive``."""
    if declared is not None:
        if not declared.isascii() or not declared.strip().isdigit():
            raise ApiError(400, f"Content-Length is not a number: {declared!r}")
        if int(declared) > limit:
            raise ApiError(413, f"{what} is {int(declared)} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # The client left, or was cut off for sending too slowly (--read-timeout):
            # nobody will read this answer, but it must not become a 500 and a traceback.
            raise ApiError(408, f"the {what} did not arrive whole")
        if message["type"] != "http.request":
            continue
        chunk: bytes = message.get("body", b"")
        if chunk:
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"{what} exceeds the limit of {limit} bytes")
        if not message.get("more_body", False):
            # Almost every body arrives in one message: kept as it came, not copied.
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def session_tag(request: RequestParts) -> SessionTag | None:
    """The tag the client sent in its session headers; None when it sent none."""
    try:
        return parse_session_headers(request.headers)
    except SessionHeaderError as exc:
        raise ApiError(400, str(exc)) from None


def consistency_flags(request: RequestParts) -> int:
    """The read flags of ``?consistency=linearizable|stale`` (linearizable by default)."""
    level = request.query_params.get("consistency", "linearizable")
    if level == "linearizable":
        return 0
    if level == "stale":
        return int(Flag.STALE_READ)
    raise ApiError(
        400, f"query parameter consistency must be 'linearizable' or 'stale', got {level!r}"
    )
