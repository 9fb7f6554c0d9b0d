"""How leases and TTLs appear in JSON requests and answers: seconds (a JSON number, with
millisecond precision) where the log and the Raft process count milliseconds; lease ids
as integers (docs/api.md, "Leases")."""

from __future__ import annotations

import math

from raftkv.http.errors import ApiError
from raftkv.http.kv_json import json_type
from raftkv.kv.leases import MAX_LEASE_ID, MAX_TTL_MS

__all__ = ["MAX_TTL_S", "MIN_TTL_S", "parse_lease_id", "parse_ttl", "seconds"]

MIN_TTL_S = 1.0
"""The shortest TTL a client may ask for: shorter ones would not outlast a leader
change (a new leader adds an election timeout before it expires anything)."""
MAX_TTL_S = MAX_TTL_MS / 1000


def parse_ttl(value: object, where: str) -> int:
    """A TTL in seconds (a JSON number) as milliseconds; 400 unless within bounds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, f"{where} must be a number of seconds, got {json_type(value)}")
    if not math.isfinite(value) or not MIN_TTL_S <= value <= MAX_TTL_S:
        raise ApiError(400, f"{where} must be between {MIN_TTL_S:g} and {MAX_TTL_S:g} seconds")
    return round(value * 1000)


def parse_lease_id(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{where} must be an integer lease id, got {json_type(value)}")
    if not 1 <= value <= MAX_LEASE_ID:
        raise ApiError(400, f"{where} must be between 1 and {MAX_LEASE_ID}")
    return value


def seconds(ms: int) -> float:
    return ms / 1000
