"""JSON answers: every answer of the HTTP API that is not a key's raw value, a file or
the dashboard page is a JSON document, serialised the same way everywhere."""

from __future__ import annotations

from typing import Any, Final

import orjson
from starlette.responses import Response

__all__ = ["JSON_MEDIA_TYPE", "RETRY_LATER", "json_response"]

JSON_MEDIA_TYPE: Final = "application/json"

RETRY_LATER: Final = {"Retry-After": "1"}
"""The headers of an answer that asks the client to try again (every 503)."""


def json_response(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status_code, headers, media_type=JSON_MEDIA_TYPE)
