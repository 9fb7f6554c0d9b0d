"""ASGI middleware that enforces authentication and authorization on every request.

It sits in front of the routes, and the worker's hot key path (``routes/hot_keys.py``)
asks the same ``AccessCheck``, so no request reaches a handler without passing it. While
auth is off (the tables say so) it costs two attribute reads. While it is on, every path
but ``/health`` needs credentials:

* none, malformed or wrong ones: **401** with ``WWW-Authenticate`` (Basic and Bearer);
* valid ones whose roles do not grant what the request needs: **403**.

Both answer ``{"error": "..."}`` naming what was missing. What a request needs is
decided from its method and path alone (see :func:`requirement`), before any handler
runs, so a refused write never reaches the Raft process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send

from raftkv.http.auth.access import Need
from raftkv.http.auth.credentials import BadCredentials, PasswordCache, authenticate
from raftkv.http.auth.tables_cache import AuthTablesCache, AuthTablesUnavailable
from raftkv.http.errors import ApiError
from raftkv.http.key_route import KV_PREFIX, WATCH_PREFIX, query_bytes

__all__ = [
    "USER_SCOPE_KEY",
    "AccessCheck",
    "AuthGate",
    "Requirement",
    "check_access",
    "requirement",
]

CHALLENGE: Final = 'Basic realm="raftkv", Bearer realm="raftkv"'
_OPEN_PATHS: Final = frozenset({"/health"})
_ADMIN_PATHS: Final = (
    "/cluster/members",
    "/cluster/leader",
    "/cluster/snapshot",
    "/cluster/backup",
)
_READ_METHODS: Final = frozenset({"GET", "HEAD"})
USER_SCOPE_KEY: Final = "raftkv.user"
"""The scope entry naming the authenticated user, while auth is on: for a route whose
needs depend on its body (a transaction), which checks them with ``check_access``."""


@dataclass(frozen=True, slots=True)
class Requirement:
    need: Need
    key: bytes = b""
    subject: str = ""
    """What the message names: "key", "the whole prefix" (with ``key`` shown after it),
    or the operation itself."""

    @property
    def what(self) -> str:
        """For a refusal's message only, so the text is not built for every request."""
        if self.subject in ("key", "the whole prefix"):
            return f"{self.subject} {_shown(self.key)}"
        return self.subject


def _shown(data: bytes) -> str:
    return repr(data.decode("utf-8", "backslashreplace"))


def requirement(scope: Scope) -> Requirement | None:
    """What the request needs; None for the paths open to anyone."""
    # Paths as the router sees them: without the root path the app may be mounted at.
    root: str = scope.get("root_path", "")
    path: str = scope.get("path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    if path in _OPEN_PATHS:
        return None
    method: str = scope.get("method", "GET")
    raw = scope.get("raw_path")
    if not isinstance(raw, bytes):
        raw = path.encode("utf-8")
    elif root and raw.startswith(root.encode("utf-8")):
        raw = raw[len(root.encode("utf-8")) :]
    reading = method in _READ_METHODS
    # The router matches the decoded path; the key is taken as the handlers take it (from
    # the raw path when it has the /kv/ form, else from the decoded one), so that the key
    # checked here is the key served.
    if path.startswith("/kv/"):
        key = (
            unquote_to_bytes(raw[len(KV_PREFIX) :])
            if raw.startswith(KV_PREFIX)
            else path[4:].encode("utf-8")
        )
        return Requirement(Need.READ if reading else Need.WRITE, key, "key")
    if path == "/kv":
        prefix = query_bytes(scope.get("query_string", b""), b"prefix") or b""
        need = Need.READ if reading else Need.WRITE
        return Requirement(need, prefix, "the whole prefix")
    # A watch reads what it watches: the key, or the whole prefix.
    if path.startswith("/watch/"):
        key = (
            unquote_to_bytes(raw[len(WATCH_PREFIX) :])
            if raw.startswith(WATCH_PREFIX)
            else path[len("/watch/") :].encode("utf-8")
        )
        return Requirement(Need.READ, key, "key")
    if path == "/watch":
        prefix = query_bytes(scope.get("query_string", b""), b"prefix") or b""
        return Requirement(Need.READ, prefix, "the whole prefix")
    if path.startswith(_ADMIN_PATHS):
        return Requirement(Need.ADMIN, subject=f"{method} {path}")
    if path.startswith("/auth"):
        if path == "/auth/status" and reading:
            return Requirement(Need.NOTHING)
        return Requirement(Need.ADMIN, subject=f"{method} {path}")
    return Requirement(Need.NOTHING)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class AccessCheck:
    """The gate's decision, shared by the middleware and the hot key path
    (``routes/hot_keys.py``), so that no request reaches a handler without it."""

    def __init__(self, cache: AuthTablesCache, passwords: PasswordCache) -> None:
        self._cache = cache
        self._passwords = passwords

    def known_off(self) -> bool:
        """Auth is off, as of tables this worker has (then nothing needs checking)."""
        tables = self._cache.tables
        return tables.revision >= 0 and not tables.enabled

    async def check(self, scope: Scope) -> None:
        """Return if the request may go on; else raise the ApiError that refuses it."""
        needed = requirement(scope)
        if needed is None:
            return
        try:
            tables = await self._cache.current()
        except AuthTablesUnavailable as exc:
            raise ApiError.retry_later(str(exc)) from None
        if not tables.enabled:
            return
        try:
            who = await authenticate(_header(scope, b"authorization"), tables, self._passwords)
        except BadCredentials as exc:
            raise ApiError(401, str(exc), headers={"WWW-Authenticate": CHALLENGE}) from None
        scope[USER_SCOPE_KEY] = who.user
        grants = tables.grants.get(who.user)
        if grants is None or not grants.allows(needed.need, needed.key):
            raise _forbidden(who.user, needed)


class AuthGate:
    def __init__(self, app: ASGIApp, *, access: AccessCheck) -> None:
        self._app = app
        self._access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._access.known_off() or scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        try:
            await self._access.check(scope)
        except ApiError as refusal:
            # Answered here: the gate is outside the app, whose handlers never see it.
            await refusal.to_response()(scope, receive, send)
            return
        await self._app(scope, receive, send)


async def check_access(
    scope: Scope, cache: AuthTablesCache, needs: list[Requirement]
) -> Callable[[bytes], bool] | None:
    """Raise the 403 for the first of ``needs`` the request's user lacks, when auth is
    on (the gate has then authenticated the user). The route calls it with what its
    body asks for, before anything reaches the Raft process. Returns whether the user
    may read a given key (None: anyone may, auth is off), for what the answer shows."""
    try:
        tables = await cache.current()
    except AuthTablesUnavailable as exc:
        raise ApiError.retry_later(str(exc)) from None
    if not tables.enabled:
        return None
    user = scope.get(USER_SCOPE_KEY)
    if user is None:
        # Auth came on while this request was on its way, after the gate let it pass.
        raise ApiError(
            401,
            "authentication is enabled: send credentials",
            headers={"WWW-Authenticate": CHALLENGE},
        )
    grants = tables.grants.get(user)
    for needed in needs:
        if grants is None or not grants.allows(needed.need, needed.key):
            raise _forbidden(user, needed)
    assert grants is not None or not needs

    def may_read(key: bytes) -> bool:
        return grants is not None and grants.allows(Need.READ, key)

    return may_read


def _forbidden(user: str, needed: Requirement) -> ApiError:
    if needed.need is Need.ADMIN:
        message = f"user {user!r} lacks the admin permission needed for {needed.what}"
    else:
        message = (
            f"user {user!r} lacks {needed.need.value} permission on a prefix covering {needed.what}"
        )
    return ApiError(403, message, extra={"user": user, "needed": needed.need.value})
