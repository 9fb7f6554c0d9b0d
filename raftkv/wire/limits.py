"""The limits that protect a node's HTTP port: their flags, defaults and checks.

``kvnode`` and each HTTP worker take the same flags. ``kvnode`` states them for the
node; it hands every worker its share of the rate limit (``worker_arguments``), because
each worker counts only the requests it serves. The other limits are per worker
(connections) or per connection (timeouts, header sizes) and pass through unchanged.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

__all__ = [
    "DEFAULT_IDLE_TIMEOUT_S",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_READ_TIMEOUT_S",
    "MIN_HEADER_BYTES",
    "HttpLimits",
    "add_http_limit_flags",
    "http_limits_from_args",
]

DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_IDLE_TIMEOUT_S = 30.0
DEFAULT_READ_TIMEOUT_S = 30.0
# Room for a request line with the largest key percent-encoded (3 x 4096 bytes) and for
# credentials and the usual headers; what nginx and Go allow is of the same order.
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_HEADERS = 100
MIN_HEADER_BYTES = 1024
"""Below this even an ordinary request with a few headers would be refused."""


@dataclass(frozen=True, slots=True)
class HttpLimits:
    rate_limit: float | None = None
    """Requests per second per client (None: no rate limit). For ``kvnode`` the node's
    limit; for a worker its share."""
    rate_burst: float | None = None
    """Requests a client may make at once after being idle (None: one second's worth)."""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    """Open client connections per worker; one more is answered 503 and closed."""
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    """A connection with no request under way is closed after this long."""
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    """A request must arrive whole (headers and body) within this long of its first
    byte, or it is answered 408 and the connection closed."""
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    """Largest request line plus headers; above it: 431 (414 for the request line)."""
    max_headers: int = DEFAULT_MAX_HEADERS
    """Most header fields in one request; above it: 431."""
    max_body_bytes: int | None = None
    """Largest request body; above it: 413 (None: the worker's default, the largest
    value plus room for its JSON wrapping)."""

    def __post_init__(self) -> None:
        if self.rate_limit is not None and not self.rate_limit > 0:
            raise ValueError(f"--rate-limit must be positive, got {self.rate_limit}")
        if self.rate_burst is not None:
            if self.rate_limit is None:
                raise ValueError("--rate-burst needs --rate-limit")
            if not self.rate_burst >= 1:
                raise ValueError(f"--rate-burst must be at least 1, got {self.rate_burst}")
        if self.max_connections < 1:
            raise ValueError(f"--max-connections must be positive, got {self.max_connections}")
        if not self.idle_timeout_s > 0 or not self.read_timeout_s > 0:
            raise ValueError("--idle-timeout and --read-timeout must be positive")
        if self.max_header_bytes < MIN_HEADER_BYTES:
            raise ValueError(
                f"--max-header-bytes must be at least {MIN_HEADER_BYTES}, "
                f"got {self.max_header_bytes}"
            )
        if self.max_headers < 1:
            raise ValueError(f"--max-headers must be positive, got {self.max_headers}")
        if self.max_body_bytes is not None and self.max_body_bytes < 1:
            raise ValueError(f"--max-body-bytes must be positive, got {self.max_body_bytes}")

    @property
    def burst(self) -> float:
        """The bucket size in effect (meaningful only with a rate limit)."""
        if self.rate_burst is not None:
            return self.rate_burst
        return max(1.0, self.rate_limit or 1.0)

    def for_workers(self, workers: int) -> HttpLimits:
        """The limits one of ``workers`` workers enforces so that together they enforce
        these: each gets an equal share of the rate and the burst (at least one request,
        or a small burst split many ways would refuse everything)."""
        if self.rate_limit is None or workers == 1:
            return self
        return HttpLimits(
            rate_limit=self.rate_limit / workers,
            rate_burst=max(1.0, self.burst / workers),
            max_connections=self.max_connections,
            idle_timeout_s=self.idle_timeout_s,
            read_timeout_s=self.read_timeout_s,
            max_header_bytes=self.max_header_bytes,
            max_headers=self.max_headers,
            max_body_bytes=self.max_body_bytes,
        )

    def worker_arguments(self, workers: int) -> list[str]:
        """The flags that give each of ``workers`` workers its share of these limits."""
        share = self.for_workers(workers)
        args = [
            "--max-connections",
            str(share.max_connections),
            "--idle-timeout",
            repr(share.idle_timeout_s),
            "--read-timeout",
            repr(share.read_timeout_s),
            "--max-header-bytes",
            str(share.max_header_bytes),
            "--max-headers",
            str(share.max_headers),
        ]
        if share.max_body_bytes is not None:
            args += ["--max-body-bytes", str(share.max_body_bytes)]
        if share.rate_limit is not None:
            args += ["--rate-limit", repr(share.rate_limit), "--rate-burst", repr(share.burst)]
        return args


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def add_http_limit_flags(parser: argparse.ArgumentParser, *, for_worker: bool = False) -> None:
    """The limit flags, on ``kvnode`` (``for_worker=False``) or on a worker."""
    whose = "this worker's share" if for_worker else "for the whole node, shared among --workers"
    parser.add_argument(
        "--rate-limit",
        type=_positive_float,
        default=None,
        metavar="PER_SECOND",
        help=f"requests per second per client ({whose}); a client is its credentials, "
        "else its address; over the limit: 429 with Retry-After (default: no limit)",
    )
    parser.add_argument(
        "--rate-burst",
        type=_positive_float,
        default=None,
        metavar="REQUESTS",
        help="requests a client may make at once after being idle, with --rate-limit "
        "(default: one second's worth)",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive_int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="open client connections per HTTP worker; one more is answered 503 "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=_positive_float,
        default=DEFAULT_IDLE_TIMEOUT_S,
        metavar="SECONDS",
        help="close a client connection idle this long (default: %(default)s)",
    )
    parser.add_argument(
        "--read-timeout",
        type=_positive_float,
        default=DEFAULT_READ_TIMEOUT_S,
        metavar="SECONDS",
        help="a request's headers and body must arrive within this long, else 408 "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-header-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_HEADER_BYTES,
        help="largest request line plus headers; above it: 431 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-headers",
        type=_positive_int,
        default=DEFAULT_MAX_HEADERS,
        help="most header fields in a request; above it: 431 (default: %(default)s)",
    )
    if not for_worker:
        # A worker has its own --max-body-bytes, with the same meaning.
        parser.add_argument(
            "--max-body-bytes",
            type=_positive_int,
            default=None,
            help="largest request body; above it: 413 (default: --max-value-bytes plus "
            "64 KiB for the JSON around a value)",
        )


def http_limits_from_args(args: argparse.Namespace) -> HttpLimits:
    """The limits the flags of ``add_http_limit_flags`` give; ValueError says which flag
    is wrong."""
    return HttpLimits(
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        max_connections=args.max_connections,
        idle_timeout_s=args.idle_timeout,
        read_timeout_s=args.read_timeout,
        max_header_bytes=args.max_header_bytes,
        max_headers=args.max_headers,
        max_body_bytes=args.max_body_bytes,
    )
