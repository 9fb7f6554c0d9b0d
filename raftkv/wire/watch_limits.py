"""The watch flags: how much history a node keeps and what each watcher may cost.

``kvnode`` takes them all; the history size is the Raft process's, the rest pass
unchanged to every HTTP worker (each enforces them on its own watchers), and the
progress interval is also the default of native watches.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from raftkv.kv.watch_history import DEFAULT_MAX_CHANGES

__all__ = ["WatchLimits", "add_watch_flags", "watch_limits_from_args"]

DEFAULT_BUFFER_BYTES = 256 * 1024
DEFAULT_SLOW_TIMEOUT_S = 30.0
DEFAULT_MAX_PER_CLIENT = 4096
DEFAULT_PROGRESS_S = 10.0


@dataclass(frozen=True, slots=True)
class WatchLimits:
    history: int = DEFAULT_MAX_CHANGES
    """Changes the Raft process keeps for watches to resume from."""
    buffer_bytes: int = DEFAULT_BUFFER_BYTES
    """Bytes one HTTP watcher may have waiting to be sent; past it the watcher is
    behind and continues from its last delivered revision once it reads again."""
    slow_timeout_s: float = DEFAULT_SLOW_TIMEOUT_S
    """A watcher whose client reads nothing for this long while data waits is cut off."""
    max_per_client: int = DEFAULT_MAX_PER_CLIENT
    """Open watch streams per client address, per worker; one more is answered 429."""
    progress_s: float = DEFAULT_PROGRESS_S
    """How often an idle watch gets a progress message."""

    def __post_init__(self) -> None:
        if self.history < 1:
            raise ValueError(f"--watch-history must be positive, got {self.history}")
        if self.buffer_bytes < 1024:
            raise ValueError(f"--watch-buffer-bytes must be at least 1024, got {self.buffer_bytes}")
        if not self.slow_timeout_s > 0 or not self.progress_s > 0:
            raise ValueError("--watch-slow-timeout and --watch-progress-interval must be positive")
        if self.max_per_client < 1:
            raise ValueError(f"--watch-max-per-client must be positive, got {self.max_per_client}")

    def worker_arguments(self) -> list[str]:
        return [
            "--watch-buffer-bytes",
            str(self.buffer_bytes),
            "--watch-slow-timeout",
            repr(self.slow_timeout_s),
            "--watch-max-per-client",
            str(self.max_per_client),
            "--watch-progress-interval",
            repr(self.progress_s),
        ]


def add_watch_flags(parser: argparse.ArgumentParser, *, for_worker: bool = False) -> None:
    """The watch flags, on ``kvnode`` or (without the history size) on a worker."""
    if not for_worker:
        parser.add_argument(
            "--watch-history",
            type=int,
            default=DEFAULT_MAX_CHANGES,
            metavar="CHANGES",
            help="changes kept for watches to resume from; a watch that resumes from "
            "further back gets a resync (default: %(default)s)",
        )
    parser.add_argument(
        "--watch-buffer-bytes",
        type=int,
        default=DEFAULT_BUFFER_BYTES,
        help="bytes one watcher may have waiting to be sent before it is held back "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--watch-slow-timeout",
        type=float,
        default=DEFAULT_SLOW_TIMEOUT_S,
        metavar="SECONDS",
        help="disconnect a watcher that reads nothing this long while data waits "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--watch-max-per-client",
        type=int,
        default=DEFAULT_MAX_PER_CLIENT,
        help="open watch streams per client address and worker; one more: 429 "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--watch-progress-interval",
        type=float,
        default=DEFAULT_PROGRESS_S,
        metavar="SECONDS",
        help="how often an idle watch gets a progress message (default: %(default)s)",
    )


def watch_limits_from_args(args: argparse.Namespace) -> WatchLimits:
    """The limits the flags give; ValueError says which flag is wrong."""
    return WatchLimits(
        history=getattr(args, "watch_history", DEFAULT_MAX_CHANGES),
        buffer_bytes=args.watch_buffer_bytes,
        slow_timeout_s=args.watch_slow_timeout,
        max_per_client=args.watch_max_per_client,
        progress_s=args.watch_progress_interval,
    )
