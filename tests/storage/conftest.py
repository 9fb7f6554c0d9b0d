"""Fixtures shared by the log store tests.

``log_store_factory`` is parametrized over every store kind, so each generic test runs
once per implementation of the LogStore protocol.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from raftkv.storage.log_store import LogStore

DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024


class LogStoreFactory(Protocol):
    """Opens a store over a directory. Stores without segments ignore segment_size."""

    def __call__(self, directory: Path, segment_size: int = DEFAULT_SEGMENT_SIZE) -> LogStore: ...


STORE_KINDS = ["segment", "sqlite"]


def _open_segment(directory: Path, segment_size: int = DEFAULT_SEGMENT_SIZE) -> LogStore:
    from raftkv_ext.segment_log import SegmentLog

    return SegmentLog(str(directory), segment_size)


def _open_sqlite(directory: Path, segment_size: int = DEFAULT_SEGMENT_SIZE) -> LogStore:
    from raftkv.storage.sqlite_log import SQLiteLog

    return SQLiteLog(str(directory))


_OPENERS: dict[str, LogStoreFactory] = {"segment": _open_segment, "sqlite": _open_sqlite}


@pytest.fixture(params=STORE_KINDS)
def log_store_factory(request: pytest.FixtureRequest) -> Iterator[LogStoreFactory]:
    """A callable that opens a store; every store it opened is closed afterwards."""
    opener = _OPENERS[request.param]
    opened: list[LogStore] = []

    def factory(directory: Path, segment_size: int = DEFAULT_SEGMENT_SIZE) -> LogStore:
        store = opener(directory, segment_size)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()
