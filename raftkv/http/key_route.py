"""The route parameter for keys: any characters at all, newlines included.

Starlette's ``path`` parameter is the regular expression ``.*``, which stops at a newline,
so ``POST /kv/a%0Ab`` (a key holding a newline, which is a valid key: keys are bytes)
matched no route and was answered 404. Keys are read from the raw path anyway (see
``_Api._key``); this parameter only has to let every key reach its handler.
"""

from __future__ import annotations

from typing import Final

from starlette.convertors import Convertor, register_url_convertor

__all__ = ["KEY_PARAM"]

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
