"""What the key routes read of a request, whichever way it came in.

The key routes (``routes/keys.py``) are served two ways: through the Starlette app, like
every route, and through the worker's hot key path (``routes/hot_keys.py``), which
answers ``/kv/{key}`` straight from the HTTP protocol without the ASGI layers. Both hand
the routes a ``KeyRequest``: the key as the route takes it, the raw query string, the
headers as a mapping of lower-case names to their first value (as Starlette's
``Headers`` look them up), and the ASGI ``receive`` the body comes from.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote_to_bytes

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.types import Receive

from raftkv.http.key_route import KV_PREFIX

__all__ = ["KeyRequest", "header_map"]


def header_map(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """``{name: value}`` of an ASGI header list (names already in lower case), the first
    value of a repeated name winning, as Starlette's ``Headers.get`` does."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(raw)}


class KeyRequest:
    __slots__ = ("_query_params", "headers", "path_key", "query_string", "receive")

    def __init__(
        self,
        path_key: bytes,
        query_string: bytes,
        headers: Mapping[str, str],
        receive: Receive,
    ) -> None:
        self.path_key = path_key
        """The key named by the path (percent-decoded bytes); empty for ``/kv``."""
        self.query_string = query_string
        self.headers = headers
        self.receive = receive
        self._query_params: QueryParams | None = None

    @property
    def query_params(self) -> QueryParams:
        """Parsed as Starlette parses them (the last value of a repeated name wins)."""
        if self._query_params is None:
            self._query_params = QueryParams(self.query_string)
        return self._query_params

    @classmethod
    def from_starlette(cls, request: Request) -> KeyRequest:
        scope = request.scope
        return cls(
            _path_key(request),
            scope.get("query_string", b""),
            request.headers,
            request.receive,
        )


def _path_key(request: Request) -> bytes:
    """The key: the request path after ``/kv/``, percent-decoded, as bytes, taken from the
    raw path so that a key that is not UTF-8 keeps its bytes (the route parameter when
    the raw path does not have that form)."""
    scope = request.scope
    raw = scope.get("raw_path")
    root = scope.get("root_path", "").encode("utf-8")
    if isinstance(raw, bytes) and raw.startswith(root + KV_PREFIX):
        return unquote_to_bytes(raw[len(root) + len(KV_PREFIX) :])
    key = request.path_params.get("key")
    return b"" if key is None else str(key).encode("utf-8")
