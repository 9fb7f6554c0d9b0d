"""Exceptions raised by the native modules.

They live in a plain Python module so that Python code can import and catch them
without depending on which compiled module raised them.
"""

from __future__ import annotations


class CodecError(ValueError):
    """Bytes that are not a valid encoding: truncated, oversized, unknown type or garbage."""


class LogCorruptionError(Exception):
    """A log segment holds a record that cannot be trusted.

    Raised for damage that a crash cannot explain (a bad checksum, an index gap or a
    truncated record anywhere but the tail of the last segment). ``path`` and
    ``offset`` name the file and the byte at which the bad record starts.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt record at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason
