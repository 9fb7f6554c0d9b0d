"""How a key or a prefix is read from a request: the key route's parameter (any
characters at all, newlines included), the raw path's prefix and raw query values.

The route parameter:

Starlette's ``path`` parameter is the regular expression ``.*``, which stops at a newline,
so ``POST /kv/a%0Ab`` (a key holding a newline, which is a valid key: keys are bytes)
matched no route and was answered 404. Keys are read from the raw path anyway (see
``KeyRoutes._key`` in ``routes/keys.py``); this parameter only has to let every key reach
its handler.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote_to_bytes

from starlette.convertors import Convertor, register_url_convertor

__all__ = ["KEY_PARAM", "KV_PREFIX", "WATCH_PREFIX", "query_bytes"]

KV_PREFIX: Final = b"/kv/"
"""The raw path of a key's route before the key itself."""

WATCH_PREFIX: Final = b"/watch/"
"""The raw path of a key's watch before the key itself."""

KEY_PARAM: Final = "kvkey"
"""Use as ``{key:kvkey}`` in a route path."""


class _AnyText(Convertor[str]):
    # (?s: ...): the dot matches newlines too.
    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor(KEY_PARAM, _AnyText())


def query_bytes(query: bytes, name: bytes) -> bytes | None:
    """The first value of query parameter ``name`` in a raw query string, percent-decoded
    (``+`` as space) as bytes, so keys and prefixes that are not UTF-8 keep their bytes;
    None when it is absent."""
    for part in query.split(b"&"):
        field, sep, value = part.partition(b"=")
        if unquote_to_bytes(field.replace(b"+", b" ")) == name:
            return unquote_to_bytes(value.replace(b"+", b" ")) if sep else b""
    return None
