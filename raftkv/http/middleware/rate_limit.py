"""ASGI middleware that limits the request rate of each client of a worker.

A client is its credentials when the request carries an ``Authorization`` header (a
hash of the header's raw value, so the secret is not kept in memory and the limit does
not depend on how credentials are checked), else its remote address. Each client has a
token bucket (``token_bucket.py``); a request over the limit is answered 429 with
``Retry-After`` and never reaches the application. ``/health`` is never limited: load
balancers and orchestrators poll it, and a node must not look dead because it is busy.

Credentials are chosen by the client, so a client could send a new made-up
``Authorization`` header with every request to get a new bucket each time. Once
authentication is on, such requests are answered 401; every 401 also costs a token from
a second bucket kept per remote address, and while that bucket is empty, requests with
credentials from that address are refused too. Clients that authenticate correctly never
touch it, so many users behind one address do not share a limit.

The worker's hot key path (``routes/hot_keys.py``) answers ``/kv/{key}`` without the
middleware, and asks the same ``RateLimiter`` first, so both paths are limited, at the
cost of one dictionary lookup per request.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from raftkv.http.errors import ApiError
from raftkv.http.middleware.token_bucket import TokenBuckets
from raftkv.wire.limits import HttpLimits

__all__ = [
    "UNLIMITED_PATHS",
    "RateLimitMiddleware",
    "RateLimiter",
    "client_key",
    "rate_limiter",
    "rate_limiting",
    "retry_after_seconds",
]

UNLIMITED_PATHS = frozenset({"/health"})

_AUTHORIZATION = b"authorization"
_UNAUTHORIZED = 401


def client_key(scope: Scope) -> tuple[bytes | None, str]:
    """(a hash of the Authorization header or None, the remote address)."""
    credentials: bytes | None = None
    for name, value in scope.get("headers", ()):
        if name == _AUTHORIZATION:
            credentials = hashlib.blake2b(value, digest_size=16).digest()
            break
    client = scope.get("client")
    address = str(client[0]) if client else ""
    return credentials, address


def retry_after_seconds(wait_s: float) -> int:
    """The Retry-After value for a wait: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait_s))


class RateLimiter:
    """The buckets of one worker, shared by the middleware and the hot key path
    (``routes/hot_keys.py``), so a client has one limit whichever way it came in."""

    def __init__(
        self,
        *,
        rate: float,
        burst: float,
        on_refused: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        credentials_checked: Callable[[], bool] = lambda: True,
    ) -> None:
        self._requests = TokenBuckets(rate, burst, clock=clock)
        # Tokens taken by 401 answers to requests with credentials, per address.
        self._failed_auth = TokenBuckets(rate, burst, clock=clock)
        self._on_refused = on_refused
        # Credentials name the client only while something checks them (authentication
        # is on): otherwise a made-up header per request would get a fresh bucket each
        # time, and no 401 would ever charge its address.
        self._credentials_checked = credentials_checked

    def admit(self, scope: Scope) -> tuple[ApiError | None, str | None]:
        """(the 429 that refuses the request, or None to let it go on; the address a 401
        answer must be charged to with ``unauthorized``, None when no 401 is charged)."""
        credentials, address = client_key(scope)
        if credentials is not None and not self._credentials_checked():
            credentials = None
        if credentials is None:
            wait = self._requests.take(address)
        else:
            wait = self._failed_auth.wait(address) or self._requests.take(credentials)
        if wait:
            self._on_refused()
            return _refusal(wait), None
        return None, None if credentials is None else address

    def unauthorized(self, address: str) -> None:
        """A request with credentials from ``address`` was answered 401."""
        self._failed_auth.take(address)


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, *, limiter: RateLimiter) -> None:
        self._app = app
        self._limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self._app(scope, receive, send)
            return
        refusal, charged = self._limiter.admit(scope)
        if refusal is not None:
            await refusal.to_response()(scope, receive, send)
            return
        if charged is None:
            await self._app(scope, receive, send)
            return
        limiter = self._limiter

        async def send_and_watch(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == _UNAUTHORIZED:
                limiter.unauthorized(charged)
            await send(message)

        await self._app(scope, receive, send_and_watch)


def _refusal(wait_s: float) -> ApiError:
    seconds = retry_after_seconds(wait_s)
    return ApiError(
        429,
        f"too many requests from this client; retry in {seconds} s",
        extra={"retry_after": seconds},
        headers={"Retry-After": str(seconds)},
    )


def rate_limiter(
    limits: HttpLimits,
    on_refused: Callable[[], None],
    credentials_checked: Callable[[], bool],
) -> RateLimiter | None:
    """The limiter that enforces ``limits``' rate limit: None when there is none."""
    if limits.rate_limit is None:
        return None
    return RateLimiter(
        rate=limits.rate_limit,
        burst=limits.burst,
        on_refused=on_refused,
        credentials_checked=credentials_checked,
    )


def rate_limiting(limiter: RateLimiter | None) -> list[Middleware]:
    """The middleware that enforces ``limiter``: none when there is none."""
    return [] if limiter is None else [Middleware(RateLimitMiddleware, limiter=limiter)]
