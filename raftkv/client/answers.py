"""What the HTTP API answers, as the HTTP clients return it: ``KeyValue`` and
``WriteResult``, and the reading of the fields of the JSON answers (docs/api.md).

A module of its own so that ``http_client`` (the clients) and ``txn`` (the transaction
builder and its results) share one ``KeyValue`` and one way of reading a key, a value
or a revision, without importing each other.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from raftkv.wire.errors import RaftkvError

__all__ = [
    "KeyValue",
    "WriteResult",
    "bool_field",
    "bytes_field",
    "int_field",
    "key_field",
    "key_value",
    "write_result",
]


@dataclass(frozen=True)
class KeyValue:
    """A key as stored: its value and revisions (``mod_revision`` is the index of the
    entry that last wrote it, ``create_revision`` the one that created it, ``version``
    the number of writes since it was created)."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0
    """The lease the key is attached to (0: none); from a single-key read only."""
    ttl: float | None = None
    """Seconds that lease has left, on the node that answered."""

    @property
    def text(self) -> str:
        """The value decoded as UTF-8 (UnicodeDecodeError if it is not)."""
        return self.value.decode("utf-8")


@dataclass(frozen=True)
class WriteResult:
    """A write's answer: the Raft ``index`` and ``term`` of its entry and the key's new
    ``revision`` (for a delete, the revision of the delete)."""

    key: str
    index: int
    term: int
    revision: int
    lease: int = 0
    """A write with a TTL or lease: the lease the key is now attached to."""
    ttl: float | None = None
    """That lease's TTL in seconds."""


def int_field(document: dict[str, Any], name: str) -> int:
    value = document.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RaftkvError(f"unexpected answer: field {name!r} is not an integer: {value!r}")
    return value


def bool_field(document: dict[str, Any], name: str) -> bool:
    value = document.get(name)
    if not isinstance(value, bool):
        raise RaftkvError(f"unexpected answer: field {name!r} is not a boolean: {value!r}")
    return value


def bytes_field(document: dict[str, Any], name: str) -> bytes:
    """``name`` as text, or ``name_base64`` for bytes that are not UTF-8."""
    text = document.get(name)
    if isinstance(text, str):
        return text.encode("utf-8")
    encoded = document.get(f"{name}_base64")
    if isinstance(encoded, str):
        try:
            return base64.b64decode(encoded, validate=True)
        except ValueError:
            pass
    raise RaftkvError(f"unexpected answer: no valid {name!r} field")


def key_field(document: dict[str, Any]) -> str:
    # surrogateescape: a key that is not UTF-8 keeps its bytes as surrogates, and a
    # client given that str back sends the same bytes.
    return bytes_field(document, "key").decode("utf-8", "surrogateescape")


def _lease_fields(document: dict[str, Any]) -> tuple[int, float | None]:
    if "lease" not in document:
        return 0, None
    ttl = document.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
        raise RaftkvError(f"unexpected answer: field 'ttl' is not a number: {ttl!r}")
    return int_field(document, "lease"), None if ttl is None else float(ttl)


def key_value(document: dict[str, Any]) -> KeyValue:
    lease, ttl = _lease_fields(document)
    return KeyValue(
        key=key_field(document),
        value=bytes_field(document, "value"),
        create_revision=int_field(document, "create_revision"),
        mod_revision=int_field(document, "mod_revision"),
        version=int_field(document, "version"),
        lease=lease,
        ttl=ttl,
    )


def write_result(document: dict[str, Any]) -> WriteResult:
    lease, ttl = _lease_fields(document)
    return WriteResult(
        key=key_field(document),
        index=int_field(document, "index"),
        term=int_field(document, "term"),
        revision=int_field(document, "revision"),
        lease=lease,
        ttl=ttl,
    )
