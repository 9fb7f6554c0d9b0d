"""Hostile input: whatever the SQLite log's database holds (rows of the wrong type or
value, damaged pages, a file that is not a database), opening the store and reading
every entry either works or raises StorageCorruptionError naming the file."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftkv.storage.errors import StorageCorruptionError
from raftkv.storage.sqlite_log import DB_NAME, SQLiteLog
from raftkv_ext.entry import ENTRY_NORMAL, Entry

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
COLUMN_VALUES = (
    st.integers(-(2**63), 2**63 - 1)
    | st.integers(0, 6)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=40)
    | st.builds(
        lambda i, t, d: Entry(i, t, ENTRY_NORMAL, d).encode(),
        st.integers(1, 6),
        st.integers(0, 3),
        st.binary(max_size=8),
    )
)


def _sample_database() -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        log = SQLiteLog(directory)
        try:
            log.append([Entry(i, 1 + i // 3, ENTRY_NORMAL, bytes([i]) * i) for i in range(1, 7)])
            log.sync()
        finally:
            log.close()
        return (Path(directory) / DB_NAME).read_bytes()


SAMPLE = _sample_database()


def open_or_refuse(directory: str) -> None:
    try:
        log = SQLiteLog(directory)
    except StorageCorruptionError as exc:
        assert exc.path == str(Path(directory) / DB_NAME)
        return
    try:
        first, last = log.first_index, log.last_index
        entries = log.entries(first, last + 1) if last >= first else []
    except StorageCorruptionError as exc:
        assert exc.path == str(Path(directory) / DB_NAME)
        return
    finally:
        log.close()
    assert [e.index for e in entries] == list(range(first, last + 1))


@FUZZ
@given(raw=st.binary(max_size=600) | st.just(b"SQLite format 3\x00") | st.just(SAMPLE[:2000]))
def test_a_file_that_is_not_a_whole_database(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / DB_NAME).write_bytes(raw)
        open_or_refuse(directory)


@FUZZ
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["term", "type", "payload", "idx", "meta"]),
            st.integers(0, 7),
            COLUMN_VALUES,
        ),
        min_size=1,
        max_size=3,
    )
)
def test_rows_of_any_type_and_value(edits: list[tuple[str, int, object]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / DB_NAME
        path.write_bytes(SAMPLE)
        with sqlite3.connect(path) as conn:
            for column, row, value in edits:
                try:
                    if column == "meta":
                        key = ("format", "boundary_index", "boundary_term", "other")[row % 4]
                        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
                    else:
                        conn.execute(f"UPDATE entries SET {column} = ? WHERE idx = ?", (value, row))
                except sqlite3.IntegrityError:
                    pass  # a duplicate idx: not something the file can hold
        conn.close()
        open_or_refuse(directory)


@FUZZ
@given(data=st.data())
def test_damaged_pages(data: st.DataObject) -> None:
    raw = bytearray(SAMPLE)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] ^= data.draw(st.integers(1, 255))
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / DB_NAME).write_bytes(bytes(raw))
        open_or_refuse(directory)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("payload", b"\x00" * 5, "row 2 is not an entry"),
        ("payload", "text, not a blob", "row 2 holds a value of type str"),
        ("payload", 42, "row 2 holds a value of type int"),
        ("term", "three", "entry 2 has a term of type str"),
        ("term", 2.5, "entry 2 has a term of type float"),
    ],
    ids=["short-payload", "text-payload", "integer-payload", "text-term", "real-term"],
)
def test_regressions_are_corruption(column: str, value: object, message: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / DB_NAME
        path.write_bytes(SAMPLE)
        with sqlite3.connect(path) as conn:
            conn.execute(f"UPDATE entries SET {column} = ? WHERE idx = 2", (value,))
        conn.close()
        with pytest.raises(StorageCorruptionError, match=message):
            log = SQLiteLog(directory)
            try:
                log.entries(1, 7)
            finally:
                log.close()


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            [
                "CREATE TABLE entries (idx INTEGER PRIMARY KEY, term INTEGER, type INTEGER)",
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER)",
                "INSERT INTO entries VALUES (1, 1, 0)",
            ],
            "no such column: payload",
        ),
        (
            [
                "CREATE TABLE entries (idx, term, type, payload)",
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER)",
                "INSERT INTO entries VALUES (NULL, 1, 0, x'00')",
            ],
            "an entry has an index of type NoneType",
        ),
        (
            [
                "CREATE TABLE entries (idx INTEGER PRIMARY KEY, term, type, payload)",
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER)",
                "CREATE TABLE [\xe9] (x)",
            ],
            "unexpected tables",
        ),
    ],
    ids=["missing-column", "index-not-a-rowid", "extra-table"],
)
def test_a_foreign_schema_is_corruption(schema: list[str], message: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        conn = sqlite3.connect(Path(directory) / DB_NAME)
        for statement in schema:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("format", 1), ("boundary_index", 0), ("boundary_term", 0)],
        )
        conn.commit()
        conn.close()
        with pytest.raises(StorageCorruptionError, match=message):
            log = SQLiteLog(directory)
            try:
                log.entries(log.first_index, log.last_index + 1)
            finally:
                log.close()


def test_text_that_is_not_utf8_is_corruption() -> None:
    # Found by the damaged-pages fuzzer: one flipped byte in a meta key.
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / DB_NAME
        path.write_bytes(SAMPLE)
        with sqlite3.connect(path) as conn:
            conn.execute(
                "UPDATE meta SET key = CAST(x'ff6f756e646172795f7465726d' AS TEXT) "
                "WHERE key = 'boundary_term'"
            )
        conn.close()
        with pytest.raises(StorageCorruptionError, match="Could not decode to UTF-8"):
            SQLiteLog(directory).close()
