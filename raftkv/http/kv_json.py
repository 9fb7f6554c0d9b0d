"""How keys, values and key-values appear in JSON answers: text when they are UTF-8,
else base64 under a ``_base64`` name (docs/api.md)."""

from __future__ import annotations

import base64
from typing import Any

from raftkv.kv.results import KeyValue

__all__ = ["json_type", "kv_json", "text_or_base64"]


def text_or_base64(name: str, data: bytes) -> dict[str, str]:
    """``{name: text}`` when ``data`` is UTF-8, else ``{name_base64: ...}``."""
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(data).decode("ascii")}


def kv_json(kv: KeyValue) -> dict[str, Any]:
    doc: dict[str, Any] = text_or_base64("key", kv.key)
    doc.update(text_or_base64("value", kv.value))
    doc["create_revision"] = kv.create_revision
    doc["mod_revision"] = kv.mod_revision
    doc["version"] = kv.version
    return doc


def json_type(value: object) -> str:
    """How an error message names the JSON type of a value a request sent."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a string"
