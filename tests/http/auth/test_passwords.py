"""Password hashes (scrypt, parameters stored with the hash) and the cache of successful
verifications that spares a repeated request the scrypt cost."""

from __future__ import annotations

import asyncio

import pytest

from raftkv.http.auth import credentials
from raftkv.http.auth.access import AccessTables, Grants, Need, token_digest
from raftkv.http.auth.credentials import BadCredentials, PasswordCache, authenticate
from raftkv.http.auth.passwords import MAX_PASSWORD_BYTES, hash_password, verify_password


def test_hash_is_salted_and_verifies() -> None:
    first, second = hash_password("s3cret"), hash_password("s3cret")
    assert first != second  # a fresh salt each time
    assert first.startswith("scrypt$16384$8$1$")
    assert verify_password("s3cret", first)
    assert verify_password("s3cret", second)
    assert not verify_password("s3cret!", first)
    assert not verify_password("", first)


@pytest.mark.parametrize(
    "stored",
    ["", "scrypt$x", "md5$1$2$3$AA==$AA==", "scrypt$3$8$1$AA==$AA==", "scrypt$16$8$1$!!$AA=="],
)
def test_malformed_stored_hash_never_verifies(stored: str) -> None:
    assert not verify_password("anything", stored)


def test_empty_or_huge_password_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        hash_password("")
    with pytest.raises(ValueError, match="longer"):
        hash_password("x" * (MAX_PASSWORD_BYTES + 1))


def test_cache_remembers_successes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    stored = hash_password("pw")
    calls: list[str] = []

    def counting(password: str, stored_hash: str) -> bool:
        calls.append(password)
        return verify_password(password, stored_hash)

    monkeypatch.setattr(credentials, "verify_password", counting)
    cache = PasswordCache()

    async def run() -> list[bool]:
        return [
            await cache.verify("u", "pw", stored),
            await cache.verify("u", "pw", stored),
            await cache.verify("u", "bad", stored),
            await cache.verify("u", "bad", stored),
            # A new stored hash (a changed password) is a different cache entry.
            await cache.verify("u", "pw", hash_password("other")),
        ]

    assert asyncio.run(run()) == [True, True, False, False, False]
    assert calls == ["pw", "bad", "bad", "pw"]


def test_authenticate_basic_and_bearer() -> None:
    tables = AccessTables(
        enabled=True,
        revision=1,
        password_hashes={"alice": hash_password("pw")},
        grants={"alice": Grants(read=(b"app/",))},
        token_users={token_digest("tok"): "alice"},
    )
    cache = PasswordCache()

    async def run(header: str | None) -> str:
        return (await authenticate(header, tables, cache)).user

    assert asyncio.run(run("Basic YWxpY2U6cHc=")) == "alice"  # alice:pw
    assert asyncio.run(run("bearer tok")) == "alice"
    for header, word in [
        (None, "required"),
        ("Basic YWxpY2U6bm8=", "invalid"),  # alice:no
        ("Basic YWxpY2U=", "malformed"),  # no colon
        ("Bearer other", "revoked"),
        ("Negotiate abc", "unsupported"),
    ]:
        with pytest.raises(BadCredentials, match=word):
            asyncio.run(run(header))


def test_grants_cover_keys_and_whole_prefixes() -> None:
    grants = Grants(read=(b"app/", b"cfg/"), write=(b"app/w/",))
    assert grants.allows(Need.READ, b"app/x")
    assert grants.allows(Need.READ, b"app/")
    assert not grants.allows(Need.READ, b"ap")
    assert not grants.allows(Need.READ, b"")
    assert grants.allows(Need.WRITE, b"app/w/1")
    assert not grants.allows(Need.WRITE, b"app/x")
    assert grants.allows(Need.NOTHING, b"")
    assert not grants.allows(Need.ADMIN, b"")
    admin = Grants(admin=True)
    assert admin.allows(Need.ADMIN, b"") and admin.allows(Need.WRITE, b"anything")
