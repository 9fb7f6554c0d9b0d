"""Who is asking: the ``Authorization`` header, checked against the access tables.

Two schemes: HTTP Basic (``user:password``) and ``Bearer <token>``. A password check
runs scrypt, tens of milliseconds of CPU, so a successful one is remembered for a short
while, keyed by a hash of (user, password, stored hash): a repeated request with the same
credentials costs one SHA-256, and a changed password (a new stored hash) misses the
cache at once. Failed checks are never cached, so a wrong guess always costs the full
scrypt: that is the point of scrypt. scrypt runs in a thread (it releases the GIL), so a
burst of logins does not stall the requests already authenticated.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from raftkv.http.auth.access import AccessTables, token_digest
from raftkv.http.auth.passwords import hash_password, verify_password

__all__ = ["Authenticated", "BadCredentials", "PasswordCache", "authenticate"]

VERIFIED_TTL_S: Final = 60.0
VERIFIED_MAX: Final = 10_000


@functools.cache
def _unknown_user_hash() -> str:
    """A hash no password is checked against but to spend the same time."""
    return hash_password(secrets.token_urlsafe(16))


class BadCredentials(Exception):
    """Credentials missing, malformed or wrong: answered 401 with this message."""


@dataclass(frozen=True, slots=True)
class Authenticated:
    user: str
    how: str  # "password" or "token", for messages


class PasswordCache:
    """Recently verified (user, password, stored hash) triples, by SHA-256."""

    def __init__(self, ttl_s: float = VERIFIED_TTL_S, max_entries: int = VERIFIED_MAX) -> None:
        self._ttl = ttl_s
        self._max = max_entries
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    @staticmethod
    def _key(user: str, password: str, stored: str) -> bytes:
        material = "\x00".join((user, password, stored)).encode("utf-8", "surrogatepass")
        return hashlib.sha256(material).digest()

    async def verify(self, user: str, password: str, stored: str) -> bool:
        key = self._key(user, password, stored)
        now = time.monotonic()
        expiry = self._expiry.get(key)
        if expiry is not None and expiry > now:
            return True
        if not await asyncio.to_thread(verify_password, password, stored):
            return False
        self._expiry[key] = time.monotonic() + self._ttl
        self._expiry.move_to_end(key)
        while len(self._expiry) > self._max:
            self._expiry.popitem(last=False)
        return True


def _basic(encoded: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise BadCredentials(
            "malformed Basic credentials (expected base64 of user:password)"
        ) from None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise BadCredentials("malformed Basic credentials (expected base64 of user:password)")
    return user, password


def _check_unknown_user(password: str) -> None:
    # In the thread: the first call also hashes the stand-in password (a full scrypt),
    # which must not run on the event loop.
    verify_password(password, _unknown_user_hash())


async def authenticate(
    header: str | None, tables: AccessTables, passwords: PasswordCache
) -> Authenticated:
    """The user behind ``header`` (the Authorization header's value); BadCredentials if
    there is none or the credentials are not valid."""
    if not header:
        raise BadCredentials(
            "authentication required: send HTTP Basic credentials or a Bearer token"
        )
    scheme, _, rest = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "basic":
        user, password = _basic(rest)
        stored = tables.password_hashes.get(user)
        if stored is None:
            # As slow as a wrong password, so the time of the answer does not tell
            # which user names exist.
            await asyncio.to_thread(_check_unknown_user, password)
            raise BadCredentials("invalid user name or password")
        if not await passwords.verify(user, password, stored):
            raise BadCredentials("invalid user name or password")
        return Authenticated(user, "password")
    if scheme == "bearer":
        token = rest.strip()
        owner = tables.token_users.get(token_digest(token)) if token else None
        if owner is None:
            raise BadCredentials("invalid or revoked token")
        return Authenticated(owner, "token")
    raise BadCredentials(f"unsupported authorization scheme {scheme!r} (use Basic or Bearer)")
