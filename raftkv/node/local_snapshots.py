"""Snapshots this node takes of its own state machine, in a forked child.

The child gets a copy-on-write image of the state machine at the instant of the fork,
so it can serialize and write a consistent snapshot while the Raft process goes on
applying and replicating: the loop stalls only for the fork itself, not for the
serialization (about a second per million keys) or the file write. The file is then
read back and checked in a thread (tens of milliseconds for a large one, too long for
the loop) before the driver adopts it and compacts the log behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from raftkv.kv import KVStateMachine
from raftkv.node.node_config import NodeAddress
from raftkv.node.node_snapshot import encode_node_snapshot
from raftkv.raft.ready import SnapshotMeta
from raftkv.storage.errors import StorageCorruptionError
from raftkv.storage.snapshots import (
    SnapshotStore,
    StoredSnapshot,
    snapshot_file_name,
    verify_snapshot_file,
)

__all__ = ["LocalSnapshots"]


class LocalSnapshots:
    def __init__(
        self,
        snapshots: SnapshotStore,
        state_machine: KVStateMachine,
        addresses: Callable[[], dict[int, NodeAddress]],
        on_checked: Callable[[StoredSnapshot, float, float], None],
        on_failed: Callable[[], None],
        logger: logging.Logger,
    ) -> None:
        """``on_checked(stored, started, check_ms)`` and ``on_failed()`` report how each
        snapshot ended (``started``: monotonic time of the fork)."""
        self._snapshots = snapshots
        self._sm = state_machine
        self._addresses = addresses
        self._on_checked = on_checked
        self._on_failed = on_failed
        self._logger = logger
        self._child: tuple[int, SnapshotMeta, float] | None = None
        self._check: asyncio.Task[None] | None = None
        self.fork_ms = 0.0

    @property
    def busy(self) -> bool:
        return self._child is not None or self._check is not None

    def start(self, meta: SnapshotMeta) -> None:
        """Fork a child that writes the state machine (applied up to ``meta.index``)."""
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: write the snapshot and leave without any cleanup
            # It exits as soon as the file is written: collecting its garbage would only
            # touch (and so copy) pages it shares with the parent.
            gc.disable()
            code = 1
            try:
                data = encode_node_snapshot(self._addresses(), self._sm.snapshot())
                self._snapshots.save(meta, data)
                code = 0
            finally:
                os._exit(code)
        self.fork_ms = (time.monotonic() - started) * 1000
        self._child = (pid, meta, started)
        self._logger.debug("snapshot at index %d started in child %d", meta.index, pid)

    def reap(self) -> None:
        """Called every tick: once the child has exited, check its file."""
        if self._child is None:
            return
        pid, meta, started = self._child
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            return
        self._child = None
        if os.waitstatus_to_exitcode(status) != 0:
            self._logger.warning("snapshot at index %d failed in child %d", meta.index, pid)
            self._on_failed()
            return
        path = str(Path(self._snapshots.directory) / snapshot_file_name(meta.index, meta.term))
        self._check = asyncio.create_task(
            self._verify(meta, path, started), name="raftkv-snapshot-check"
        )

    async def _verify(self, meta: SnapshotMeta, path: str, started: float) -> None:
        checked = time.monotonic()
        try:
            stored = await asyncio.to_thread(verify_snapshot_file, path)
        except (OSError, StorageCorruptionError) as exc:
            # Keeping a damaged newest file would stop the next start; the previous
            # snapshot and the log still cover everything.
            self._logger.error(
                "snapshot at index %d failed its check (%s); removed", meta.index, exc
            )
            with contextlib.suppress(OSError):
                os.unlink(path)
            self._on_failed()
            return
        finally:
            self._check = None
        self._on_checked(stored, started, (time.monotonic() - checked) * 1000)

    async def stop(self) -> None:
        if self._child is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._child[0], 0)  # let it finish its file
        if self._check is not None:
            await asyncio.gather(self._check, return_exceptions=True)
