"""A LogStore in one SQLite database, the alternative to the segment log.

It behaves exactly like ``raftkv_ext.segment_log.SegmentLog`` as far as the LogStore
protocol can tell (the same test suite runs against both). What it trades: every
append goes through SQLite's B-tree, so it is slower than the segment log's single
pwrite, but the file is inspectable with standard tools and SQLite's own recovery
replaces ours.

Layout (``raft_log.sqlite3`` in the store's directory)::

    entries(idx INTEGER PRIMARY KEY, term, type, payload BLOB)
    meta(key TEXT PRIMARY KEY, value INTEGER)   format, boundary_index, boundary_term

``payload`` is the entry's wire encoding, the same bytes the segment log frames, so
``entries()`` decodes stored bytes and nothing is encoded twice. ``idx`` is the rowid,
so range reads are a B-tree walk in index order. Integers are SQLite's signed 64 bits;
terms (u64 in the codec) are stored as their two's complement bit pattern.

Durability: WAL mode with synchronous=FULL, so a COMMIT is durable once it returns.
Writes (append, truncate_after, compact, reset) run inside one open transaction and
``sync()`` commits it: one fsync of the WAL per Ready, however many batches and
truncations it held. Each write is also wrapped in a SAVEPOINT, so a batch that fails
half-way leaves no trace. The connection uses locking_mode=EXCLUSIVE, which keeps a
second process (or a second store in this one) from opening the same log.

The terms of retained entries are cached in an ``array('Q')`` indexed from
first_index, rebuilt on open, so ``term()`` (called for every AppendEntries) never
touches SQLite. Opening checks the database (PRAGMA quick_check), the metadata and
that indexes run without a gap from the boundary; failures raise
StorageCorruptionError naming the database file.

Thread safety: like the segment log, ``sync()`` may be called from another thread
while the owner appends; a lock serializes access to the connection, so a sync commits
everything appended before it took the lock.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Final, Self

from raftkv.storage._fsutil import FILE_MODE, ensure_dir, fsync_dir
from raftkv.storage.errors import StorageCorruptionError
from raftkv.storage.log_store import LogIndexError
from raftkv_ext.entry import Entry, decode_entry
from raftkv_ext.errors import CodecError

DB_NAME: Final = "raft_log.sqlite3"
FORMAT_VERSION: Final = 1

_I64_MAX: Final = (1 << 63) - 1
_U64_MASK: Final = (1 << 64) - 1

_SCHEMA: Final = (
    "CREATE TABLE entries ("
    " idx INTEGER PRIMARY KEY,"
    " term INTEGER NOT NULL,"
    " type INTEGER NOT NULL,"
    " payload BLOB NOT NULL)",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


def _to_sql(value: int) -> int:
    """A u64 as the signed 64-bit integer with the same bits (SQLite has no u64)."""
    return value - (1 << 64) if value > _I64_MAX else value


def _from_sql(value: int) -> int:
    return value & _U64_MASK


class SQLiteLog:
    """Raft's log in SQLite; see the module docstring. Implements LogStore."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._directory = os.fspath(directory)
        self._path = os.path.join(self._directory, DB_NAME)
        self._lock = threading.Lock()
        self._first = 1
        self._last = 0
        self._boundary_term = 0
        self._terms = array("Q")
        # Set when SQLite and the in-memory state may disagree (a failed commit or
        # rollback); the log then refuses writes until it is reopened.
        self._failure: str | None = None
        self._conn: sqlite3.Connection | None = None
        ensure_dir(self._directory)
        self._create_private_file()
        try:
            self._conn = self._connect()
            self._load()
        except BaseException:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            raise

    # -- opening -----------------------------------------------------------------------

    def _create_private_file(self) -> None:
        """Create the database file 0600 before SQLite does, if it is new.

        SQLite creates its WAL with the database file's mode, so this keeps both
        private; it would otherwise use 0644.
        """
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            return
        try:
            os.fchmod(fd, FILE_MODE)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self._directory)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are begun and committed here, explicitly.
        # check_same_thread=False: sync() may run in a worker thread (see above).
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=0)
        try:
            # EXCLUSIVE before WAL: SQLite then keeps the WAL index in private memory
            # and holds the file lock for the connection's lifetime.
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise OSError(errno.EIO, f"cannot put {self._path} in WAL mode: {mode!r}")
            conn.execute("PRAGMA synchronous=FULL")
            # Take the lock now, so a second opener fails here rather than later.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.close()
            raise self._translate(exc, "cannot open database", reading=True) from exc
        except UnicodeDecodeError as exc:
            # SQLite's own message quoted bytes of a damaged file that are not UTF-8.
            conn.close()
            raise self._corruption(f"cannot open database: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _load(self) -> None:
        conn = self._db()
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
            if rows != [("ok",)]:
                problems = "; ".join(str(row[0]) for row in rows[:5])
                raise self._corruption(f"quick_check failed: {problems}")
            tables = {
                row[0]
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if not tables:
                self._create_schema(conn)
            elif tables != {"entries", "meta"}:
                # By repr: a damaged catalogue can name a table with bytes.
                raise self._corruption(f"unexpected tables {sorted(tables, key=repr)}")
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("format") != FORMAT_VERSION:
                raise self._corruption(f"unsupported log format {meta.get('format')!r}")
            boundary = meta.get("boundary_index")
            boundary_term = meta.get("boundary_term")
            if not isinstance(boundary, int) or not isinstance(boundary_term, int):
                raise self._corruption("the log boundary is missing from the meta table")
            if boundary < 0 or (boundary == 0 and boundary_term != 0):
                raise self._corruption(f"invalid boundary ({boundary}, {boundary_term})")
            terms = array("q")
            expected = boundary + 1
            for idx, term in conn.execute("SELECT idx, term FROM entries ORDER BY idx"):
                if not isinstance(idx, int):
                    # Only a damaged schema makes idx anything but the integer rowid.
                    raise self._corruption(f"an entry has an index of type {type(idx).__name__}")
                if idx != expected:
                    raise self._corruption(
                        f"index gap: expected entry {expected}, found {idx}"
                        if idx > expected
                        else f"entry {idx} lies at or below the log boundary {boundary}"
                    )
                if not isinstance(term, int):
                    # SQLite columns take any type: a term that is not an integer is damage.
                    raise self._corruption(f"entry {idx} has a term of type {type(term).__name__}")
                terms.append(term)
                expected += 1
        except sqlite3.Error as exc:
            raise self._translate(exc, "cannot read database", reading=True) from exc
        except UnicodeDecodeError as exc:
            # Text in the file (a name, a message) that is not UTF-8: damage.
            raise self._corruption(f"cannot read database: {exc}") from None
        # Reinterpret the signed column values as the u64 terms they encode.
        self._terms = array("Q", terms.tobytes())
        self._first = boundary + 1
        self._last = boundary + len(terms)
        self._boundary_term = _from_sql(boundary_term)

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("format", FORMAT_VERSION), ("boundary_index", 0), ("boundary_term", 0)],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _corruption(self, reason: str) -> StorageCorruptionError:
        return StorageCorruptionError(self._path, reason)

    def _translate(self, exc: sqlite3.Error, what: str, *, reading: bool = False) -> Exception:
        """The error to raise for a SQLite failure: corruption, a busy file, or as is.

        ``reading``: opening the file or reading it with our own fixed statements, where
        a generic SQL error ("no such column", "unsupported file format") can only mean
        that the file's schema or header is not what this store wrote. An error with no
        SQLite code at all comes from Python's sqlite3 module reading a value it cannot
        convert ("Could not decode to UTF-8"): damage as well.
        """
        # Extended result codes carry the primary code in their low byte.
        raw_code = getattr(exc, "sqlite_errorcode", None)
        code = (raw_code or 0) & 0xFF
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or (
            reading and (code == sqlite3.SQLITE_ERROR or raw_code is None)
        ):
            return self._corruption(f"{what}: {exc}")
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return OSError(errno.EBUSY, f"{what}: the log is open in another process", self._path)
        return exc

    # -- state checks --------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError("operation on a closed SQLiteLog")
        return self._conn

    def _writable(self) -> sqlite3.Connection:
        conn = self._db()
        if self._failure is not None:
            raise OSError(
                errno.EIO, f"SQLiteLog is unusable until reopened: {self._failure}", self._path
            )
        return conn

    @contextmanager
    def _write(self, conn: sqlite3.Connection, what: str) -> Iterator[None]:
        """One write, atomic within the transaction that the next sync() commits."""
        if not conn.in_transaction:
            conn.execute("BEGIN IMMEDIATE")
        conn.execute("SAVEPOINT write")
        try:
            yield
            conn.execute("RELEASE write")
        except BaseException:
            try:
                conn.execute("ROLLBACK TO write")
                conn.execute("RELEASE write")
            except sqlite3.Error as exc:
                self._failure = f"{what} failed and could not be rolled back: {exc}"
            raise

    # -- properties ----------------------------------------------------------------------

    @property
    def directory(self) -> str:
        return self._directory

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    @property
    def first_index(self) -> int:
        self._db()
        return self._first

    @property
    def last_index(self) -> int:
        self._db()
        return self._last

    # -- reads ---------------------------------------------------------------------------

    def term(self, index: int) -> int:
        """Term of entry ``index`` (first_index - 1 <= index <= last_index, or 0)."""
        self._db()
        if self._first <= index <= self._last:
            return self._terms[index - self._first]
        if index == self._first - 1:
            return self._boundary_term
        if index == 0:
            return 0
        raise LogIndexError(
            f"index {index} is outside the log (terms known for {self._first - 1}..{self._last})"
        )

    def terms(self, lo: int, hi: int) -> list[int]:
        """Terms of entries lo .. hi-1, each under the same rules as term()."""
        self._db()
        if lo >= hi:
            return []
        if self._first <= lo and hi - 1 <= self._last:
            return self._terms[lo - self._first : hi - self._first].tolist()
        return [self.term(i) for i in range(lo, hi)]

    def entries(self, lo: int, hi: int, max_bytes: int = 0) -> list[Entry]:
        """Entries lo <= index < hi, stopping before max_bytes of wire size (>= 1 entry)."""
        out: list[Entry] = []
        with self._lock:
            conn = self._db()
            if lo >= hi:
                return out
            if lo < self._first or hi > self._last + 1:
                raise LogIndexError(f"entries({lo}, {hi}): log holds {self._first}..{self._last}")
            total = 0
            expected = lo
            full = True
            # Rows are fetched as the loop goes, so a small max_bytes reads few of them.
            try:
                cursor = conn.execute(
                    "SELECT payload FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx", (lo, hi)
                )
            except sqlite3.Error as exc:
                raise self._translate(exc, "cannot read entries", reading=True) from exc
            try:
                for (payload,) in cursor:
                    if not isinstance(payload, bytes):
                        # SQLite columns take any type: text, a number or NULL is damage.
                        kind = type(payload).__name__
                        raise self._corruption(
                            f"row {expected} holds a value of type {kind}, not an entry"
                        )
                    size = len(payload)
                    if max_bytes > 0 and out and total + size > max_bytes:
                        full = False
                        break
                    try:
                        entry = decode_entry(payload)
                    except CodecError as exc:
                        raise self._corruption(f"row {expected} is not an entry: {exc}") from None
                    want_term = self._terms[expected - self._first]
                    if entry.index != expected or entry.term != want_term:
                        raise self._corruption(
                            f"row {expected} holds entry {entry.index} of term {entry.term}, "
                            f"expected term {want_term}"
                        )
                    out.append(entry)
                    total += size
                    expected += 1
            except sqlite3.Error as exc:
                raise self._translate(exc, "cannot read entries", reading=True) from exc
            except UnicodeDecodeError as exc:
                raise self._corruption(f"cannot read entries: {exc}") from None
            finally:
                cursor.close()
            if full and expected != hi:
                raise self._corruption(f"entries {expected}..{hi - 1} are missing")
        return out

    # -- writes --------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries continuing at last_index + 1. Durable after sync()."""
        batch = list(entries)
        if not batch:
            self._db()
            return
        with self._lock:
            conn = self._writable()
            base = self._last + 1
            # Validate the whole batch before touching the database.
            rows: list[tuple[int, int, int, bytes]] = []
            for k, entry in enumerate(batch):
                if not isinstance(entry, Entry):
                    raise TypeError(f"entries[{k}] is {type(entry).__name__}, not Entry")
                if entry.index != base + k:
                    raise ValueError(
                        f"entries[{k}] has index {entry.index}, expected {base + k}: "
                        "entries must continue at last_index + 1"
                    )
                rows.append((entry.index, _to_sql(entry.term), entry.type, entry.encode()))
            if rows[-1][0] > _I64_MAX:
                raise ValueError(f"index {rows[-1][0]} does not fit a signed 64-bit integer")
            with self._write(conn, "append"):
                conn.executemany(
                    "INSERT INTO entries (idx, term, type, payload) VALUES (?, ?, ?, ?)", rows
                )
            self._terms.extend(entry.term for entry in batch)
            self._last += len(batch)

    def sync(self) -> None:
        """Commit the open transaction: with synchronous=FULL the commit is durable."""
        with self._lock:
            conn = self._db()
            if self._failure is not None:
                raise OSError(
                    errno.EIO,
                    f"SQLiteLog is unusable until reopened: {self._failure}",
                    self._path,
                )
            if not conn.in_transaction:
                return
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                # SQLite may have rolled the transaction back, so memory no longer
                # matches the file; only reopening can say what survived.
                self._failure = f"commit failed: {exc}"
                raise OSError(errno.EIO, f"cannot sync log: {exc}", self._path) from exc

    def truncate_after(self, index: int) -> None:
        """Drop every entry above ``index`` (a conflicting suffix). Durable after sync()."""
        with self._lock:
            conn = self._writable()
            if index >= self._last:
                return
            if index < self._first - 1:
                raise LogIndexError(
                    f"cannot truncate after {index}: entries up to {self._first - 1} are compacted"
                )
            with self._write(conn, "truncate_after"):
                conn.execute("DELETE FROM entries WHERE idx > ?", (index,))
            del self._terms[index + 1 - self._first :]
            self._last = index

    def compact(self, index: int, term: int) -> None:
        """A snapshot covers everything up to ``index``: drop the entries it covers.

        Unlike the segment log, which drops whole segments only, every covered entry
        goes (there are no segments); the driver keeps entries for slow followers by
        compacting below the snapshot's index. If the stored term at ``index`` is not
        ``term`` the log beyond it conflicts with the snapshot and is dropped too
        (Raft §7: a log that disagrees with a snapshot is discarded).
        """
        _check_position("compact", index, term)
        with self._lock:
            conn = self._writable()
            if index >= self._last or (
                index >= self._first and self._terms[index - self._first] != term
            ):
                self._reset(conn, index, term)
                return
            if index < self._first:
                return
            boundary_term = self._terms[index - self._first]
            with self._write(conn, "compact"):
                conn.execute("DELETE FROM entries WHERE idx <= ?", (index,))
                self._set_boundary(conn, index, boundary_term)
            del self._terms[: index + 1 - self._first]
            self._first = index + 1
            self._boundary_term = boundary_term

    def reset(self, index: int, term: int) -> None:
        """Drop every entry: the log now starts after a snapshot at (index, term)."""
        _check_position("reset", index, term)
        with self._lock:
            self._reset(self._writable(), index, term)

    def _reset(self, conn: sqlite3.Connection, index: int, term: int) -> None:
        with self._write(conn, "reset"):
            conn.execute("DELETE FROM entries")
            self._set_boundary(conn, index, term)
        self._terms = array("Q")
        self._first = index + 1
        self._last = index
        self._boundary_term = term

    def _set_boundary(self, conn: sqlite3.Connection, index: int, term: int) -> None:
        conn.executemany(
            "UPDATE meta SET value = ? WHERE key = ?",
            [(index, "boundary_index"), (_to_sql(term), "boundary_term")],
        )

    def close(self) -> None:
        """Release the database. Closing twice is harmless.

        Writes not yet synced are committed first when the log is healthy, so a clean
        close keeps them as the segment log's page cache does (nothing depends on it).
        """
        with self._lock:
            conn = self._conn
            if conn is None:
                return
            self._conn = None
            self._terms = array("Q")
            self._first, self._last = 1, 0
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK" if self._failure is not None else "COMMIT")
            finally:
                conn.close()

    def __enter__(self) -> Self:
        self._db()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._conn is None:
            return f"<SQLiteLog {self._path!r} closed>"
        return f"<SQLiteLog {self._path!r} first={self._first} last={self._last}>"


def _check_position(what: str, index: int, term: int) -> None:
    # The same rule as the segment log: a snapshot position is non-negative, and
    # index 0 (the empty log) has term 0.
    if (
        index < 0
        or term < 0
        or index >= _I64_MAX - 1
        or term > _U64_MASK
        or (index == 0 and term != 0)
    ):
        raise ValueError(
            f"{what}({index}, {term}): index and term must be >= 0, and index 0 has term 0"
        )
