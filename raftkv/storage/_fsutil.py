"""File system steps shared by the stores: private directories and durable renames.

A rename is only durable once the directory holding it is fsynced, and a new directory
only once its parent is; these helpers make both steps explicit so no store forgets one.
"""

from __future__ import annotations

import contextlib
import os

# Raft state is private to the node: the log, votes and snapshots can hold user data.
FILE_MODE = 0o600
DIR_MODE = 0o700


def fsync_dir(path: str) -> None:
    """Make the directory's entries (creations, renames, deletions) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: str) -> None:
    """Create ``path`` (and missing parents) with mode 0700, durably.

    An existing directory is left as it is: its mode is the operator's choice.
    """
    if os.path.isdir(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    ensure_dir(parent)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return
    # mkdir's mode is filtered by the umask; set it exactly.
    os.chmod(path, DIR_MODE)
    fsync_dir(parent)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write until every byte is written (a write may be short)."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def pread_exact(fd: int, length: int, offset: int) -> bytes:
    """Read ``length`` bytes at ``offset``; fewer only where the file ends."""
    first = os.pread(fd, length, offset)
    if len(first) == length or not first:
        return first
    parts = [first]
    got = len(first)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def atomic_write(path: str, data: bytes, tmp_path: str) -> None:
    """Replace ``path`` with ``data`` so a crash leaves either the old or the new file.

    The data goes to ``tmp_path`` in the same directory, is fsynced, renamed over
    ``path``, and the directory is fsynced so the rename itself survives a power loss.
    """
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        # O_CREAT's mode goes through the umask, and a leftover file keeps its old mode.
        os.fchmod(fd, FILE_MODE)
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp_path)
        raise
    os.close(fd)
    try:
        os.rename(tmp_path, path)
    except BaseException:
        _unlink_quietly(tmp_path)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
