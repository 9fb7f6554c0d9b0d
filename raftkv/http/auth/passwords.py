"""Password hashes: salted scrypt, with its parameters stored alongside the hash.

A stored hash reads ``scrypt$<n>$<r>$<p>$<salt, base64>$<hash, base64>``, so the cost can
be raised later without breaking the hashes already stored. Hashing happens in the worker
that receives the password (never in the state machine, which must stay deterministic and
cheap); verification costs the same tens of milliseconds, which is why the worker caches
successful verifications (see :mod:`raftkv.http.auth.credentials`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Final

__all__ = ["MAX_PASSWORD_BYTES", "hash_password", "verify_password"]

SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_SALT_BYTES: Final = 16
_HASH_BYTES: Final = 32
# scrypt needs 128 * n * r bytes; allow the stored parameters up to 4 times the default.
_MAX_MEMORY: Final = 4 * 128 * SCRYPT_N * SCRYPT_R + (1 << 20)
MAX_PASSWORD_BYTES: Final = 1024
"""Longer passwords are refused: hashing attacker-sized input costs the worker."""


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=_MAX_MEMORY, dklen=_HASH_BYTES)


def hash_password(password: str) -> str:
    """A new salted hash of ``password`` in the stored format."""
    secret = password.encode("utf-8")
    if not secret:
        raise ValueError("password must not be empty")
    if len(secret) > MAX_PASSWORD_BYTES:
        raise ValueError(f"password longer than {MAX_PASSWORD_BYTES} bytes")
    salt = os.urandom(_SALT_BYTES)
    digest = _scrypt(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    encode = base64.b64encode
    return (
        f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}$"
        f"{encode(salt).decode('ascii')}${encode(digest).decode('ascii')}"
    )


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; False for a malformed or empty hash."""
    secret = password.encode("utf-8", "surrogatepass")
    if not stored or len(secret) > MAX_PASSWORD_BYTES:
        return False
    try:
        scheme, n_text, r_text, p_text, salt_text, hash_text = stored.split("$")
        n, r, p = int(n_text), int(r_text), int(p_text)
        salt = base64.b64decode(salt_text, validate=True)
        expected = base64.b64decode(hash_text, validate=True)
    except (ValueError, binascii.Error):
        return False
    if scheme != "scrypt" or n < 2 or n & (n - 1) or not 0 < r <= 64 or not 0 < p <= 16:
        return False
    try:
        actual = _scrypt(secret, salt, n, r, p)
    except (ValueError, MemoryError):
        return False
    return len(expected) == _HASH_BYTES and hmac.compare_digest(actual, expected)
