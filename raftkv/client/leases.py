"""Leases as the HTTP clients return them (docs/client.md, "Leases"): what a grant or
keep-alive answers, and what a lookup shows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from raftkv.client.answers import bytes_field, int_field
from raftkv.wire.errors import RaftkvError

__all__ = ["LeaseGrant", "LeaseInfo", "check_lease_id", "check_ttl", "lease_grant", "lease_info"]

MIN_TTL_S = 1.0
"""The shortest TTL the store accepts (docs/api.md, "Leases")."""


@dataclass(frozen=True)
class LeaseGrant:
    """A lease just granted or kept alive: its ``id`` and ``ttl`` in seconds."""

    id: int
    ttl: float


@dataclass(frozen=True)
class LeaseInfo:
    """A lease as a lookup or listing shows it. ``remaining``: seconds left on the node
    that answered (None when it has not timed the lease yet); ``keys``: the attached
    keys the user may read (empty in a listing)."""

    id: int
    ttl: float
    remaining: float | None
    keys: tuple[str, ...] = ()
    more: bool = False


def check_ttl(ttl: float) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl):
        raise TypeError(f"ttl must be a number of seconds, got {ttl!r}")
    if ttl < MIN_TTL_S:
        raise ValueError(f"ttl must be at least {MIN_TTL_S:g} s, got {ttl!r}")
    return float(ttl)


def check_lease_id(lease_id: int) -> int:
    if isinstance(lease_id, bool) or not isinstance(lease_id, int):
        raise TypeError(f"a lease id is an int, got {lease_id!r}")
    if not 1 <= lease_id < 2**63:
        raise ValueError(f"a lease id is between 1 and 2**63 - 1, got {lease_id}")
    return lease_id


def _seconds(document: dict[str, Any], name: str, *, nullable: bool = False) -> float | None:
    value = document.get(name)
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RaftkvError(f"unexpected answer: field {name!r} is not a number: {value!r}")
    return float(value)


def lease_grant(document: dict[str, Any]) -> LeaseGrant:
    ttl = _seconds(document, "ttl")
    assert ttl is not None
    return LeaseGrant(int_field(document, "id"), ttl)


def lease_info(document: dict[str, Any]) -> LeaseInfo:
    ttl = _seconds(document, "ttl")
    assert ttl is not None
    keys = document.get("keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise RaftkvError("unexpected answer: keys is not a list of objects")
    return LeaseInfo(
        id=int_field(document, "id"),
        ttl=ttl,
        remaining=_seconds(document, "remaining", nullable=True),
        keys=tuple(bytes_field(k, "key").decode("utf-8", "surrogateescape") for k in keys),
        more=bool(document.get("more", False)),
    )
