"""Snapshot files: the state machine's image at a log position, with its membership.

Files are named ``snapshot-<index:020d>-<term:020d>.snap`` so that name order is age
order. Each one is laid out as::

    header   magic b"RAFTKVSN" | u32 format version (1) | u32 header length
             | u64 index | u64 term | u64 data size | u32 CRC32C of the data
             | u32 block size | u32 membership length | membership (Membership.encode())
             | u32 CRC32C of every header byte before it
    data     data size bytes, exactly as the state machine produced them
    blocks   one u32 CRC32C per block of ``block size`` bytes of data (the last block
             may be short); none when the data is empty

All integers are little-endian. The data is contiguous so a reader serves any range
of it with one pread. The per-block checksums exist to say *where* a file is damaged
(an operator deciding what to do with a corrupt snapshot wants to know whether it is
one flipped bit or a truncated copy); the whole-data checksum in the header tells a
damaged block table apart from damaged data.

A snapshot is written in pieces (``begin`` / ``write`` / ``commit``) because one
received from the leader arrives in chunks and can be larger than memory. The size and
checksums are only known at the end, so the writer leaves a placeholder header, appends
the block table at commit, then rewrites the header in place, fsyncs and renames. The
file is invisible under its final name until then, so no reader ever sees the
placeholder. Rewriting the header was chosen over a trailer because a reader then
finds everything it needs to check the file in its first bytes.

Durability: temp file, fsync, rename, directory fsync; then all but the newest two
snapshots are deleted (the previous one is kept so that a newest file found damaged
leaves the operator a fallback, which is never taken silently). Temp files left by a
crash are removed when the store is opened.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

from raftkv.raft.membership import Membership, MembershipDecodeError
from raftkv.raft.ready import SnapshotMeta
from raftkv.storage._fsutil import (
    FILE_MODE,
    ensure_dir,
    fsync_dir,
    pread_exact,
    write_all,
)
from raftkv.storage.errors import StorageCorruptionError
from raftkv_ext.segment_log import crc32c

MAGIC: Final = b"RAFTKVSN"
FORMAT_VERSION: Final = 1
BLOCK_SIZE: Final = 64 * 1024
KEEP: Final = 2

_NAME = re.compile(r"snapshot-(\d{20})-(\d{20})\.snap")
_TMP_SUFFIX: Final = ".tmp"
_FIXED = struct.Struct("<8sIIQQQIII")
_U32 = struct.Struct("<I")
# Byte offsets of the header fields, for error messages that point at the damage.
_OFF_VERSION: Final = 8
_OFF_HEADER_LEN: Final = 12
_OFF_INDEX: Final = 16
_OFF_BLOCK_SIZE: Final = 44
_OFF_MEMBERSHIP_LEN: Final = 48
# Far above any real membership; a larger length can only be damage.
_MAX_MEMBERSHIP: Final = 16 * 1024 * 1024
_MAX_BLOCK_SIZE: Final = 1 << 30
_MAX_U64: Final = (1 << 64) - 1
# Writes are gathered into buffers of this size (chunks from the network can be small),
# and files are verified in reads of this size.
_IO_SIZE: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    """A snapshot file as named on disk; not yet verified."""

    index: int
    term: int
    path: str


@dataclass(frozen=True, slots=True)
class StoredSnapshot:
    """A verified snapshot: its position and membership, file, and data size."""

    meta: SnapshotMeta
    path: str
    size: int
    data_offset: int


def snapshot_file_name(index: int, term: int) -> str:
    return f"snapshot-{index:020d}-{term:020d}.snap"


class _Checksums:
    """CRC32C of the whole data and of each block, fed in pieces of any size."""

    __slots__ = ("_block_crc", "_fill", "block_size", "blocks", "size", "total")

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.blocks: list[int] = []
        self.size = 0
        self.total = 0
        self._block_crc = 0
        self._fill = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        self.size += len(view)
        self.total = crc32c(view, self.total)
        while view:
            part = view[: self.block_size - self._fill]
            self._block_crc = crc32c(part, self._block_crc)
            self._fill += len(part)
            if self._fill == self.block_size:
                self.blocks.append(self._block_crc)
                self._block_crc = 0
                self._fill = 0
            view = view[len(part) :]

    def finish(self) -> list[int]:
        """The block checksums, including the short last block."""
        if self._fill:
            self.blocks.append(self._block_crc)
            self._block_crc = 0
            self._fill = 0
        return self.blocks


@dataclass(frozen=True, slots=True)
class _Header:
    meta: SnapshotMeta
    header_len: int
    data_size: int
    data_crc: int
    block_size: int

    @property
    def block_count(self) -> int:
        return -(-self.data_size // self.block_size)

    @property
    def table_offset(self) -> int:
        return self.header_len + self.data_size

    @property
    def file_size(self) -> int:
        return self.table_offset + 4 * self.block_count


def _encode_header(meta: SnapshotMeta, membership: bytes, data_size: int, data_crc: int) -> bytes:
    header_len = _FIXED.size + len(membership) + _U32.size
    body = (
        _FIXED.pack(
            MAGIC,
            FORMAT_VERSION,
            header_len,
            meta.index,
            meta.term,
            data_size,
            data_crc,
            BLOCK_SIZE,
            len(membership),
        )
        + membership
    )
    return body + _U32.pack(crc32c(body))


def _read_header(fd: int, path: str) -> _Header:
    """Parse and check a snapshot's header and its file size; the data is not read."""
    file_size = os.fstat(fd).st_size
    fixed = pread_exact(fd, _FIXED.size, 0)
    if len(fixed) < _FIXED.size:
        raise StorageCorruptionError(
            path, f"file is {file_size} bytes, shorter than a snapshot header", file_size
        )
    (magic, version, header_len, index, term, data_size, data_crc, block_size, m_len) = (
        _FIXED.unpack(fixed)
    )
    if magic != MAGIC:
        raise StorageCorruptionError(path, f"bad magic {magic!r}, not a snapshot file", 0)
    if version != FORMAT_VERSION:
        raise StorageCorruptionError(
            path, f"unsupported snapshot format version {version}", _OFF_VERSION
        )
    if m_len > _MAX_MEMBERSHIP:
        raise StorageCorruptionError(
            path, f"membership length {m_len} is implausible", _OFF_MEMBERSHIP_LEN
        )
    if header_len != _FIXED.size + m_len + _U32.size:
        raise StorageCorruptionError(
            path,
            f"header length {header_len} does not match membership length {m_len}",
            _OFF_HEADER_LEN,
        )
    rest = pread_exact(fd, header_len - _FIXED.size, _FIXED.size)
    if len(rest) < header_len - _FIXED.size:
        raise StorageCorruptionError(
            path, f"file ends inside the {header_len}-byte header", file_size
        )
    membership_bytes = rest[:m_len]
    (stored_crc,) = _U32.unpack_from(rest, m_len)
    if crc32c(membership_bytes, crc32c(fixed)) != stored_crc:
        raise StorageCorruptionError(
            path, f"header checksum mismatch (header bytes 0..{header_len - 1})", 0
        )
    # Past the checksum, a bad field means the writer was wrong, not the disk.
    if not 0 < block_size <= _MAX_BLOCK_SIZE:
        raise StorageCorruptionError(path, f"block size {block_size} is invalid", _OFF_BLOCK_SIZE)
    try:
        membership, _context = Membership.decode(membership_bytes)
    except MembershipDecodeError as exc:
        raise StorageCorruptionError(path, f"bad membership: {exc}", _FIXED.size) from exc
    header = _Header(
        SnapshotMeta(index, term, membership), header_len, data_size, data_crc, block_size
    )
    if file_size != header.file_size:
        raise StorageCorruptionError(
            path,
            f"file is {file_size} bytes but its header describes {header.file_size}",
            min(file_size, header.file_size),
        )
    named = _NAME.fullmatch(os.path.basename(path))
    if named is not None and (int(named[1]), int(named[2])) != (index, term):
        raise StorageCorruptionError(
            path, f"header says index {index} term {term}, unlike the file name", _OFF_INDEX
        )
    return header


def _verify_data(fd: int, path: str, header: _Header) -> None:
    """Check the data against the block table and the whole-data checksum."""
    table = struct.unpack(
        f"<{header.block_count}I", pread_exact(fd, 4 * header.block_count, header.table_offset)
    )
    sums = _Checksums(header.block_size)
    # Whole blocks per read, so a block's checksum is finished inside one read.
    step = max(1, _IO_SIZE // header.block_size) * header.block_size
    pos = 0
    while pos < header.data_size:
        chunk = pread_exact(fd, min(step, header.data_size - pos), header.header_len + pos)
        if not chunk:
            raise StorageCorruptionError(path, "file shrank while being read", pos)
        sums.update(chunk)
        pos += len(chunk)
    blocks = sums.finish()
    bad = next(
        (i for i, (got, want) in enumerate(zip(blocks, table, strict=True)) if got != want), None
    )
    if bad is None and sums.total == header.data_crc:
        return
    if bad is None:
        # Every block matches its own checksum, so the header's total is what is wrong;
        # the header checksum makes this all but impossible, but say so if it happens.
        raise StorageCorruptionError(path, "data checksum mismatch", header.header_len)
    if sums.total == header.data_crc:
        # The data is intact (its total matches); the block table entry is damaged.
        raise StorageCorruptionError(
            path, f"block table entry {bad} is damaged", header.table_offset + 4 * bad
        )
    raise StorageCorruptionError(
        path,
        f"data checksum mismatch in block {bad} ({header.block_size}-byte blocks)",
        header.header_len + bad * header.block_size,
    )


class SnapshotWriter:
    """A snapshot being written in pieces; invisible until ``commit``.

    Use as a context manager: leaving the block without ``commit`` (by an exception or
    otherwise) aborts and deletes the temp file.
    """

    def __init__(self, store: SnapshotStore, meta: SnapshotMeta) -> None:
        self._store = store
        self._meta = meta
        self._membership = meta.membership.encode()
        self._path = os.path.join(store.directory, snapshot_file_name(meta.index, meta.term))
        fd, self._tmp = tempfile.mkstemp(
            prefix=os.path.basename(self._path) + ".", suffix=_TMP_SUFFIX, dir=store.directory
        )
        self._fd = fd
        self._sums = _Checksums(BLOCK_SIZE)
        self._buffer = bytearray()
        self._done = False
        try:
            os.fchmod(fd, FILE_MODE)
            # A placeholder with the final length, rewritten at commit.
            write_all(fd, _encode_header(meta, self._membership, 0, 0))
        except BaseException:
            self.abort()
            raise

    @property
    def meta(self) -> SnapshotMeta:
        return self._meta

    @property
    def bytes_written(self) -> int:
        return self._sums.size

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append data; chunks of any size, gathered into large writes."""
        self._check_active()
        view = memoryview(chunk).cast("B")
        self._sums.update(view)
        if len(self._buffer) + len(view) < _IO_SIZE:
            self._buffer += view
            return
        self._flush()
        if len(view) >= _IO_SIZE:
            write_all(self._fd, view)
        else:
            self._buffer += view

    def commit(self) -> str:
        """Make the snapshot durable under its final name; returns that path.

        Raises ValueError (and discards this file) when a newer snapshot was committed
        while this one was being written: installing it would move the node backwards.
        """
        self._check_active()
        try:
            self._flush()
            blocks = self._sums.finish()
            write_all(self._fd, struct.pack(f"<{len(blocks)}I", *blocks))
            header = _encode_header(self._meta, self._membership, self._sums.size, self._sums.total)
            if os.pwrite(self._fd, header, 0) != len(header):
                raise OSError(f"short write of the snapshot header to {self._tmp}")
            os.fsync(self._fd)
            self._store._check_not_older(self._meta)
            os.rename(self._tmp, self._path)
        except BaseException:
            self.abort()
            raise
        os.close(self._fd)
        self._done = True
        fsync_dir(self._store.directory)
        self._store._prune()
        return self._path

    def abort(self) -> None:
        """Discard the snapshot. Harmless after commit or a previous abort."""
        if self._done:
            return
        self._done = True
        self._buffer = bytearray()
        os.close(self._fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def _flush(self) -> None:
        if self._buffer:
            write_all(self._fd, self._buffer)
            self._buffer = bytearray()

    def _check_active(self) -> None:
        if self._done:
            raise ValueError("snapshot writer is already committed or aborted")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


class FileSnapshotReader:
    """Random access to a stored snapshot's data, for sending it in chunks.

    Implements ``raftkv.raft.ready.SnapshotReader``. The descriptor stays open, so the
    reader keeps working even if the file is pruned meanwhile (the inode lives on).
    """

    def __init__(self, stored: StoredSnapshot) -> None:
        self._stored = stored
        fd = os.open(stored.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            header = _read_header(fd, stored.path)
            if (header.meta, header.header_len, header.data_size) != (
                stored.meta,
                stored.data_offset,
                stored.size,
            ):
                raise StorageCorruptionError(
                    stored.path, "file no longer matches the snapshot that was verified", 0
                )
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    @property
    def meta(self) -> SnapshotMeta:
        return self._stored.meta

    @property
    def size(self) -> int:
        return self._stored.size

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of data from ``offset``; fewer only at the end."""
        if self._fd is None:
            raise ValueError("read from a closed snapshot reader")
        if offset < 0 or length < 0 or offset > self._stored.size:
            raise ValueError(
                f"read({offset}, {length}) outside a snapshot of {self._stored.size} bytes"
            )
        length = min(length, self._stored.size - offset)
        if length == 0:
            return b""
        data = pread_exact(self._fd, length, self._stored.data_offset + offset)
        if len(data) != length:
            raise StorageCorruptionError(
                self._stored.path,
                "file shrank while being read",
                self._stored.data_offset + offset + len(data),
            )
        return data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SnapshotStore:
    """The snapshot directory: writes snapshots durably and finds the newest one."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._dir = os.fspath(directory)
        ensure_dir(self._dir)
        removed = False
        for name in os.listdir(self._dir):
            if name.startswith("snapshot-") and name.endswith(_TMP_SUFFIX):
                # A write that never reached its rename: never part of the node's state.
                os.unlink(os.path.join(self._dir, name))
                removed = True
        if removed:
            fsync_dir(self._dir)

    @property
    def directory(self) -> str:
        return self._dir

    def begin(self, meta: SnapshotMeta) -> SnapshotWriter:
        """Start writing a snapshot in pieces. ValueError if a newer one is stored."""
        if not (0 <= meta.index <= _MAX_U64 and 0 <= meta.term <= _MAX_U64):
            raise ValueError(f"snapshot index {meta.index} and term {meta.term} must be u64")
        self._check_not_older(meta)
        return SnapshotWriter(self, meta)

    def save(self, meta: SnapshotMeta, data: bytes | bytearray | memoryview) -> str:
        """Write a whole snapshot durably and prune old ones; returns its path."""
        with self.begin(meta) as writer:
            writer.write(data)
            return writer.commit()

    def list(self) -> builtins.list[SnapshotFile]:
        """Every snapshot file, oldest first, by name only (nothing is verified)."""
        found = []
        for name in os.listdir(self._dir):
            match = _NAME.fullmatch(name)
            if match is not None:
                found.append(
                    SnapshotFile(int(match[1]), int(match[2]), os.path.join(self._dir, name))
                )
        found.sort(key=lambda f: (f.index, f.term))
        return found

    def verify(self, path: str) -> StoredSnapshot:
        """Check one snapshot file completely (header, size, every data block)."""
        return verify_snapshot_file(path)

    def latest(self) -> StoredSnapshot | None:
        """The newest snapshot, verified; None when there is none.

        A damaged newest file raises StorageCorruptionError rather than falling back to
        the older one: the older snapshot may predate entries already compacted out of
        the log, so using it silently could lose committed writes. ``list`` and
        ``verify`` let tooling inspect both.
        """
        files = self.list()
        if not files:
            return None
        return self.verify(files[-1].path)

    def open_reader(self, stored: StoredSnapshot) -> FileSnapshotReader:
        return FileSnapshotReader(stored)

    def read_all(self, stored: StoredSnapshot) -> bytes:
        """The whole data, checked against its checksums again as it is read."""
        return read_snapshot_data(stored)

    def _check_not_older(self, meta: SnapshotMeta) -> None:
        files = self.list()
        if files and (meta.index, meta.term) < (files[-1].index, files[-1].term):
            raise ValueError(
                f"snapshot at index {meta.index} term {meta.term} is older than the "
                f"stored one at index {files[-1].index} term {files[-1].term}"
            )

    def _prune(self) -> None:
        files = self.list()
        doomed = files[:-KEEP]
        for old in doomed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old.path)
        if doomed:
            fsync_dir(self._dir)


def verify_snapshot_file(path: str) -> StoredSnapshot:
    """Check one snapshot file completely (header, size, every data block)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        header = _read_header(fd, path)
        _verify_data(fd, path, header)
    finally:
        os.close(fd)
    return StoredSnapshot(header.meta, path, header.data_size, header.header_len)


def read_snapshot_data(stored: StoredSnapshot) -> bytes:
    """The whole data, checked against its checksums again as it is read."""
    fd = os.open(stored.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        header = _read_header(fd, stored.path)
        data = pread_exact(fd, header.data_size, header.header_len)
        if len(data) != header.data_size:
            raise StorageCorruptionError(
                stored.path, "file shrank while being read", header.header_len + len(data)
            )
        if crc32c(data) != header.data_crc:
            # Find the damaged block (or table entry) the slow way, re-reading it.
            _verify_data(fd, stored.path, header)
            raise StorageCorruptionError(
                stored.path, "data changed while being read", header.header_len
            )
    finally:
        os.close(fd)
    if (header.meta, header.header_len, header.data_size) != (
        stored.meta,
        stored.data_offset,
        stored.size,
    ):
        raise StorageCorruptionError(
            stored.path, "file no longer matches the snapshot that was verified", 0
        )
    return data
