"""The one error type of the HTTP layer.

A handler, a middleware or a helper that refuses a request raises ``ApiError``. The app's
exception handler and the middleware outside the app (the auth gate, the rate limit)
answer it with ``to_response``, the hot key path with ``to_answer``, so every error is the
same JSON object ``{"error": message, **extra}``. (Only the connection limits, which refuse a
request before it is parsed into one, write theirs at the protocol level.) Which HTTP
status a reply of the Raft process becomes is decided by the table in
``raftkv.wire.errors``.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from raftkv.http.responses import RETRY_LATER, Answer, json_answer

__all__ = ["ApiError"]


class ApiError(Exception):
    """An error answered as ``{"error": message, **extra}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra or {}
        self.headers = headers

    @classmethod
    def retry_later(cls, message: str) -> ApiError:
        """A 503 with ``Retry-After``: the request may succeed if sent again."""
        return cls(503, message, headers=dict(RETRY_LATER))

    def to_answer(self) -> Answer:
        return json_answer({"error": self.message, **self.extra}, self.status, self.headers)

    def to_response(self) -> Response:
        return self.to_answer().to_response()
