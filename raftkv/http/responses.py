"""JSON answers: every answer of the HTTP API that is not a key's raw value, a file or
the dashboard page is a JSON document, serialised the same way everywhere.

An ``Answer`` is a response as plain data (status, body, media type, extra headers).
The key routes return one, so that the same answer can leave through Starlette (a
``Response``) or be written as bytes by the worker's hot key path
(``routes/hot_keys.py``), with the same head either way (``Answer.head_fields``
lists its fields as Starlette's ``Response`` does: the extra headers, then
``content-length``, then ``content-type``).
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from starlette.responses import Response

__all__ = ["JSON_MEDIA_TYPE", "RETRY_LATER", "Answer", "json_answer", "json_response"]

JSON_MEDIA_TYPE: Final = "application/json"

RETRY_LATER: Final = {"Retry-After": "1"}
"""The headers of an answer that asks the client to try again (every 503)."""


class Answer:
    """A whole response with a body whose length is known."""

    __slots__ = ("body", "headers", "media_type", "status")

    def __init__(
        self,
        body: bytes,
        status: int = 200,
        headers: dict[str, str] | None = None,
        media_type: str = JSON_MEDIA_TYPE,
    ) -> None:
        self.body = body
        self.status = status
        self.headers = headers
        self.media_type = media_type

    def to_response(self) -> Response:
        return Response(self.body, self.status, self.headers, media_type=self.media_type)

    def head_fields(self) -> list[bytes]:
        """The header fields, each ``name: value\\r\\n`` with the name in lower case,
        in the order ``to_response`` sends them."""
        fields: list[bytes] = []
        names: set[bytes] = set()
        if self.headers:
            for name, value in self.headers.items():
                raw_name = name.lower().encode("latin-1")
                names.add(raw_name)
                fields.append(b"%s: %s\r\n" % (raw_name, value.encode("latin-1")))
        if b"content-length" not in names and not (self.status < 200 or self.status in (204, 304)):
            fields.append(b"content-length: %d\r\n" % len(self.body))
        if b"content-type" not in names:
            media_type = self.media_type
            if media_type.startswith("text/") and "charset=" not in media_type.lower():
                media_type += "; charset=utf-8"
            fields.append(b"content-type: %s\r\n" % media_type.encode("latin-1"))
        return fields


def json_answer(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Answer:
    return Answer(orjson.dumps(content), status_code, headers)


def json_response(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status_code, headers, media_type=JSON_MEDIA_TYPE)
