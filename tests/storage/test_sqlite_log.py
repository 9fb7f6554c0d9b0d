"""What only the SQLite log store has: its schema, durability mode, locking and checks.

The LogStore behaviour it shares with the segment log is covered by test_log_store.py.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from raftkv.storage.errors import StorageCorruptionError
from raftkv.storage.log_store import LogIndexError, LogStore
from raftkv.storage.open_log import STORE_KINDS, open_log_store
from raftkv.storage.sqlite_log import DB_NAME, SQLiteLog
from raftkv_ext.entry import ENTRY_CONFIG, ENTRY_NORMAL, Entry
from raftkv_ext.segment_log import SegmentLog

U64_MAX = 2**64 - 1


def entries(first: int, count: int, term: int, size: int = 20) -> list[Entry]:
    return [
        Entry(i, term, ENTRY_NORMAL, bytes([i % 251]) * size) for i in range(first, first + count)
    ]


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "log"


@pytest.fixture
def store(log_dir: Path) -> Iterator[SQLiteLog]:
    opened = SQLiteLog(log_dir)
    yield opened
    opened.close()


@contextmanager
def raw_connection(log_dir: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection to a closed store's database, for inspecting or damaging it."""
    conn = sqlite3.connect(log_dir / DB_NAME, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def filled_and_closed(log_dir: Path, count: int = 30) -> None:
    with SQLiteLog(log_dir) as log:
        log.append(entries(1, count, term=2))
        log.sync()


def assert_corrupt(log_dir: Path, reason: str | None = None) -> StorageCorruptionError:
    with pytest.raises(StorageCorruptionError) as caught:
        SQLiteLog(log_dir)
    error = caught.value
    assert error.path == str(log_dir / DB_NAME)
    assert str(log_dir / DB_NAME) in str(error)
    if reason is not None:
        assert reason in error.reason
    return error


# -- the database itself --------------------------------------------------------------


def test_rows_hold_the_wire_encoding_and_the_meta_holds_the_boundary(log_dir: Path) -> None:
    written = [Entry(1, 1, ENTRY_CONFIG, b"members"), *entries(2, 9, term=3)]
    with SQLiteLog(log_dir) as log:
        log.append(written)
        log.compact(4, 3)
        log.sync()
    with raw_connection(log_dir) as conn:
        rows = conn.execute("SELECT idx, term, type, payload FROM entries ORDER BY idx").fetchall()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    assert rows == [(e.index, e.term, e.type, e.encode()) for e in written[4:]]
    assert meta == {"format": 1, "boundary_index": 4, "boundary_term": 3}


def test_the_database_is_in_wal_mode_with_full_sync(store: SQLiteLog, log_dir: Path) -> None:
    conn = store._conn  # white box: the pragmas are per connection
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    store.close()
    # WAL mode is recorded in the file itself.
    with raw_connection(log_dir) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_second_opener_is_refused_while_the_log_is_open(store: SQLiteLog, log_dir: Path) -> None:
    # Refused as soon as the first store is open, before it has written anything.
    with pytest.raises(OSError) as caught:
        SQLiteLog(log_dir)
    assert caught.value.errno == errno.EBUSY
    store.append(entries(1, 3, term=1))
    store.sync()
    with pytest.raises(OSError) as caught:
        SQLiteLog(log_dir)
    assert caught.value.errno == errno.EBUSY
    store.close()
    with SQLiteLog(log_dir) as again:
        assert again.last_index == 3


def test_terms_beyond_signed_64_bits_round_trip(log_dir: Path) -> None:
    with SQLiteLog(log_dir) as log:
        log.append([Entry(1, 2**63, ENTRY_NORMAL, b"a"), Entry(2, U64_MAX, ENTRY_NORMAL, b"b")])
        log.sync()
        assert [log.term(1), log.term(2)] == [2**63, U64_MAX]
    with SQLiteLog(log_dir) as log:
        assert [log.term(1), log.term(2)] == [2**63, U64_MAX]
        assert log.entries(1, 3)[1] == Entry(2, U64_MAX, ENTRY_NORMAL, b"b")
        log.reset(10, U64_MAX)
        log.sync()
    with SQLiteLog(log_dir) as log:
        assert (log.first_index, log.term(10)) == (11, U64_MAX)


def test_terms_lists_a_range(store: SQLiteLog) -> None:
    store.append(entries(1, 10, term=4))
    store.compact(3, 4)
    assert store.terms(3, 8) == [4] * 5
    assert store.terms(0, 1) == [0]
    assert store.terms(5, 5) == []
    with pytest.raises(LogIndexError):
        store.terms(2, 5)
    with pytest.raises(LogIndexError):
        store.terms(9, 12)


# -- durability ------------------------------------------------------------------------


def _run_child(script: str) -> None:
    result = subprocess.run(
        [sys.executable, "-P", "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_a_crash_keeps_what_was_synced_and_drops_the_rest(log_dir: Path) -> None:
    # The child dies without closing: only the committed transaction survives.
    _run_child(
        f"""
        import os
        from raftkv.storage.sqlite_log import SQLiteLog
        from raftkv_ext.entry import Entry
        log = SQLiteLog({str(log_dir)!r})
        log.append([Entry(i, 1, 0, b"synced") for i in range(1, 6)])
        log.sync()
        log.append([Entry(i, 1, 0, b"lost") for i in range(6, 11)])
        log.truncate_after(2)
        os._exit(0)
        """
    )
    with SQLiteLog(log_dir) as log:
        assert (log.first_index, log.last_index) == (1, 5)
        assert [e.data for e in log.entries(1, 6)] == [b"synced"] * 5


def test_close_commits_unsynced_writes(log_dir: Path) -> None:
    log = SQLiteLog(log_dir)
    log.append(entries(1, 4, term=1))
    log.close()
    with SQLiteLog(log_dir) as again:
        assert again.last_index == 4


def test_sync_may_run_in_another_thread_while_appending(store: SQLiteLog, log_dir: Path) -> None:
    errors: list[BaseException] = []
    done = threading.Event()

    def syncer() -> None:
        try:
            while not done.is_set():
                store.sync()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=syncer)
    thread.start()
    try:
        for first in range(1, 500, 10):
            store.append(entries(first, 10, term=1))
            assert store.entries(first, first + 10)[-1].index == first + 9
    finally:
        done.set()
        thread.join()
    assert errors == []
    store.sync()
    store.close()
    with SQLiteLog(log_dir) as again:
        assert again.last_index == 500


# -- failures leave no trace -------------------------------------------------------------


def test_a_batch_failing_in_the_database_leaves_no_trace(store: SQLiteLog) -> None:
    store.append(entries(1, 5, term=1))
    conn = store._conn  # white box: plant a row the store does not know about
    assert conn is not None
    conn.execute("INSERT INTO entries (idx, term, type, payload) VALUES (8, 1, 0, x'00')")
    with pytest.raises(sqlite3.IntegrityError):
        store.append(entries(6, 5, term=1))
    assert store.last_index == 5
    assert conn.execute("SELECT max(idx) FROM entries WHERE idx < 8").fetchone() == (5,)
    # The rest of the open transaction (entries 1..5) is intact and still commits.
    conn.execute("DELETE FROM entries WHERE idx = 8")
    store.append(entries(6, 2, term=1))
    store.sync()
    assert store.entries(1, 8) == entries(1, 7, term=1)


def test_compact_with_a_conflicting_term_discards_the_log(store: SQLiteLog) -> None:
    # Raft §7: a log that disagrees with the snapshot at its last index is discarded.
    store.append(entries(1, 10, term=2))
    store.compact(6, 3)
    assert (store.first_index, store.last_index) == (7, 6)
    assert store.term(6) == 3


def test_closed_store_refuses_use(log_dir: Path) -> None:
    log = SQLiteLog(log_dir)
    log.close()
    log.close()
    with pytest.raises(ValueError):
        _ = log.last_index
    with pytest.raises(ValueError):
        log.term(0)
    with pytest.raises(ValueError):
        log.append(entries(1, 1, term=1))
    with pytest.raises(ValueError):
        log.sync()


def test_append_rejects_what_is_not_an_entry(store: SQLiteLog) -> None:
    with pytest.raises(TypeError):
        store.append([b"not an entry"])  # type: ignore[list-item]
    assert store.last_index == 0


@pytest.mark.parametrize(("index", "term"), [(-1, 0), (0, 1), (5, -1)])
def test_compact_and_reset_reject_invalid_positions(
    store: SQLiteLog, index: int, term: int
) -> None:
    store.append(entries(1, 3, term=1))
    with pytest.raises(ValueError):
        store.compact(index, term)
    with pytest.raises(ValueError):
        store.reset(index, term)
    assert store.entries(1, 4) == entries(1, 3, term=1)


# -- corruption ------------------------------------------------------------------------


def test_a_gap_in_the_indexes_is_corruption(log_dir: Path) -> None:
    filled_and_closed(log_dir)
    with raw_connection(log_dir) as conn:
        conn.execute("DELETE FROM entries WHERE idx = 17")
    assert_corrupt(log_dir, "gap: expected entry 17, found 18")


def test_entries_at_or_below_the_boundary_are_corruption(log_dir: Path) -> None:
    filled_and_closed(log_dir)
    with raw_connection(log_dir) as conn:
        conn.execute("UPDATE meta SET value = 5 WHERE key = 'boundary_index'")
    assert_corrupt(log_dir, "at or below the log boundary 5")


def test_a_missing_boundary_is_corruption(log_dir: Path) -> None:
    filled_and_closed(log_dir)
    with raw_connection(log_dir) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'boundary_term'")
    assert_corrupt(log_dir, "boundary")


def test_an_unknown_format_is_refused(log_dir: Path) -> None:
    filled_and_closed(log_dir)
    with raw_connection(log_dir) as conn:
        conn.execute("UPDATE meta SET value = 2 WHERE key = 'format'")
    assert_corrupt(log_dir, "unsupported log format 2")


def test_a_foreign_database_is_refused(log_dir: Path) -> None:
    log_dir.mkdir()
    with raw_connection(log_dir) as conn:
        conn.execute("CREATE TABLE something_else (x)")
    assert_corrupt(log_dir, "unexpected tables")


def test_a_file_that_is_not_a_database_is_corruption(log_dir: Path) -> None:
    log_dir.mkdir()
    (log_dir / DB_NAME).write_bytes(b"this is not an SQLite database, " * 200)
    assert_corrupt(log_dir)


def test_damaged_pages_are_caught_on_open(log_dir: Path) -> None:
    filled_and_closed(log_dir, count=2000)
    with open(log_dir / DB_NAME, "r+b") as f:
        f.seek(3 * 4096)  # a B-tree page of the entries table
        f.write(b"\xff" * 64)
    assert_corrupt(log_dir)


def test_a_row_whose_payload_disagrees_is_reported_on_read(log_dir: Path) -> None:
    filled_and_closed(log_dir)
    other = Entry(12, 2, ENTRY_NORMAL, b"misplaced").encode()
    with raw_connection(log_dir) as conn:
        conn.execute("UPDATE entries SET payload = ? WHERE idx = 11", (other,))
    with SQLiteLog(log_dir) as log:
        assert log.entries(1, 11) == entries(1, 10, term=2)
        with pytest.raises(StorageCorruptionError) as caught:
            log.entries(5, 20)
    assert caught.value.path == str(log_dir / DB_NAME)
    assert "row 11 holds entry 12" in caught.value.reason


# -- files -------------------------------------------------------------------------------


def test_new_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        log_dir = tmp_path / "data" / "log"
        with SQLiteLog(log_dir) as log:
            log.append(entries(1, 50, term=1))
            log.sync()
            names = sorted(os.listdir(log_dir))
            modes = {name: stat.S_IMODE(os.stat(log_dir / name).st_mode) for name in names}
    finally:
        os.umask(old)
    assert names == [DB_NAME, DB_NAME + "-wal"]
    assert modes == {DB_NAME: 0o600, DB_NAME + "-wal": 0o600}
    assert stat.S_IMODE(os.stat(log_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "data").st_mode) == 0o700


# -- open_log_store ----------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "cls"), [("segment", SegmentLog), ("sqlite", SQLiteLog)])
def test_open_log_store_opens_each_kind(tmp_path: Path, kind: str, cls: type) -> None:
    log: LogStore = open_log_store(kind, str(tmp_path / kind), 4096)
    try:
        assert isinstance(log, cls)
        log.append(entries(1, 3, term=1))
        log.sync()
    finally:
        log.close()
    reopened = open_log_store(kind, str(tmp_path / kind), 4096)
    try:
        assert reopened.entries(1, 4) == entries(1, 3, term=1)
    finally:
        reopened.close()


def test_open_log_store_passes_the_segment_size(tmp_path: Path) -> None:
    log = open_log_store("segment", str(tmp_path), 256)
    try:
        assert isinstance(log, SegmentLog)
        # A segment rolls between batches once it has reached the size.
        for first in range(1, 41, 5):
            log.append(entries(first, 5, term=1, size=50))
        assert log.segment_count > 1
    finally:
        log.close()


def test_open_log_store_rejects_unknown_kinds(tmp_path: Path) -> None:
    assert STORE_KINDS == ("segment", "sqlite")
    with pytest.raises(ValueError, match="unknown log store kind 'rocksdb'"):
        open_log_store("rocksdb", str(tmp_path), 4096)
    assert not os.listdir(tmp_path)
