"""The transaction flags: how many operations and how many bytes one transaction may
carry. ``kvnode`` takes them and passes them to every HTTP worker, which refuses a
transaction past either with 400 (operations) or 413 (bytes) before it reaches the log.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

__all__ = ["TxnLimits", "add_txn_flags", "txn_limits_from_args"]

DEFAULT_MAX_OPS = 128
"""Compares and operations of both branches together, as etcd's ``--max-txn-ops``."""
DEFAULT_MAX_BYTES = 1536 * 1024
"""Keys, values and compared values together: a largest value with room beside it."""


@dataclass(frozen=True, slots=True)
class TxnLimits:
    max_ops: int = DEFAULT_MAX_OPS
    """Compares plus the operations of both branches; one more is answered 400."""
    max_bytes: int = DEFAULT_MAX_BYTES
    """Bytes of keys, prefixes and values in all of them; more is answered 413."""

    def __post_init__(self) -> None:
        if self.max_ops < 1:
            raise ValueError(f"--max-txn-ops must be positive, got {self.max_ops}")
        if self.max_bytes < 1024:
            raise ValueError(f"--max-txn-bytes must be at least 1024, got {self.max_bytes}")

    def worker_arguments(self) -> list[str]:
        return ["--max-txn-ops", str(self.max_ops), "--max-txn-bytes", str(self.max_bytes)]


def add_txn_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-txn-ops",
        type=int,
        default=DEFAULT_MAX_OPS,
        help="compares and operations one transaction may hold; more: 400 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-txn-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        help="bytes of keys and values one transaction may hold; more: 413 (default: %(default)s)",
    )


def txn_limits_from_args(args: argparse.Namespace) -> TxnLimits:
    """The limits the flags give; ValueError says which flag is wrong."""
    return TxnLimits(max_ops=args.max_txn_ops, max_bytes=args.max_txn_bytes)
