"""The Raft process's node: the real disks, sockets, threads and clock around the driver.

``RaftNode`` opens the data directory (recovery.py), starts the peer transport and the
tick loop, and hosts the driver (driver.py), which decides everything: each effect the
driver asks for is carried out here with real files and sockets. Everything that
arrives in one event-loop turn (peer messages, client requests, ticks) is handed to the
driver first; one ``Driver.process`` per turn then runs the ready loop, so proposals,
log writes, AppendEntries and replies are batched per turn. The log's fsync runs in a
thread of its own that never takes the GIL (raftkv_ext.segment_log.BackgroundSync) while
the loop goes on: the leader replicates while its own write is under way, and
acknowledgements wait for the sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from raftkv.kv import KVStateMachine
from raftkv.node.auth_reply import auth_tables_reply
from raftkv.node.driver import Driver, DriverSettings
from raftkv.node.gc_monitor import refreeze_heap
from raftkv.node.lease_clock import LeaseStats
from raftkv.node.local_snapshots import LocalSnapshots
from raftkv.node.node_config import NodeAddress, NodeConfig, split_host_port
from raftkv.node.node_snapshot import decode_addresses, decode_node_snapshot
from raftkv.node.raft_metrics import RaftMetrics
from raftkv.node.recovery import JOINING_MARKER, FatalStorageError, open_storage
from raftkv.node.requests import ReplyFn
from raftkv.node.snapshot_record import SnapshotRecord
from raftkv.node.status import cluster_nodes, cluster_status
from raftkv.node.transport import PeerStats, PeerTransport
from raftkv.node.watch_hub import WatchHub, WatchStats
from raftkv.raft.config import RaftConfig
from raftkv.raft.core import CommittedEntryConflictError, RaftCore
from raftkv.raft.membership import Membership
from raftkv.raft.ready import HardState, Snapshot, SnapshotMeta
from raftkv.storage.hard_state import HardStateFile
from raftkv.storage.log_store import LogStore
from raftkv.storage.snapshots import SnapshotStore, StoredSnapshot
from raftkv.wire.protocol import Flag, Op, ReplyStatus
from raftkv_ext.codec import ClientReply, ClientRequest
from raftkv_ext.segment_log import BackgroundSync, SegmentLog

if TYPE_CHECKING:
    from raftkv_ext.codec import RaftMessage
from raftkv_ext.entry import Entry

__all__ = ["RaftNode"]

# A tick that fires this late means the loop ran something long; half the shortest
# election timeout at the default tick is where heartbeats start to be at risk.
_LOOP_STALL_WARNING_S = 0.075
# How often watches are checked for progress messages and drained connections.
_WATCH_TICK_S = 0.1
# Read-only views the node answers itself; everything else goes to the driver.
_VIEW_OPS = frozenset({Op.AUTH_TABLES, Op.METRICS, Op.STATUS, Op.NODES})


class RaftNode:
    def __init__(
        self,
        config: NodeConfig,
        logger: logging.Logger | None = None,
        *,
        freeze_heap: bool = False,
    ) -> None:
        """``freeze_heap``: the process froze its heap once started (main.py), so a
        snapshot installed from the leader freezes it again (gc_monitor.py). Off for
        nodes run inside another program, such as the tests."""
        self.config = config
        self._freeze_heap = freeze_heap
        self.logger = logger or logging.getLogger("raftkv.node")
        self.data_dir = Path(config.data_dir)
        self._addresses: dict[int, NodeAddress] = {}
        self._cluster_id = 0
        self.sm = KVStateMachine(watch_history=config.watch_limits.history)
        self.watches = WatchHub(
            lambda: self.sm,
            self.submit,
            time.monotonic,
            progress_s=config.watch_limits.progress_s,
            logger=logging.getLogger("raftkv.watch"),
        )
        self._next_watch_tick = 0.0
        self._driver: Driver | None = None
        self._log: LogStore | None = None
        self._snapshots: SnapshotStore | None = None
        self._hard_state_file: HardStateFile | None = None
        self._transport: PeerTransport | None = None
        self._local_snapshots: LocalSnapshots | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process_scheduled = False
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = False
        self.stopped = asyncio.Event()
        self.fatal_error: BaseException | None = None
        self._stop_task: asyncio.Future[None] | None = None
        # The segment log's syncs, on a thread of their own (None: the store syncs on the
        # loop, as SQLite does).
        self._background_sync: BackgroundSync | None = None
        self._sync_thread: threading.Thread | None = None
        self.elected_at: float | None = None
        # Monotonic time of the last message from each peer: how long a follower has
        # been silent, for /cluster/status and /cluster/nodes (see status.py).
        self.last_heard: dict[int, float] = {}
        self.metrics = RaftMetrics(self)

    # ------------------------------------------------------------------ lifecycle

    @property
    def driver(self) -> Driver:
        assert self._driver is not None, "node not started"
        return self._driver

    @property
    def core(self) -> RaftCore:
        return self.driver.core

    @property
    def transport(self) -> PeerTransport:
        assert self._transport is not None, "node not started"
        return self._transport

    @property
    def local_snapshots(self) -> LocalSnapshots:
        assert self._local_snapshots is not None, "node not started"
        return self._local_snapshots

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._open()
        self.metrics.count_from_here()
        me = self.config.me
        if self.config.rpc_listen:
            host, port = split_host_port(self.config.rpc_listen)
        else:
            host, port = self._addresses.get(self.config.node_id, me).rpc_host_port
        self._transport = PeerTransport(
            self.config.node_id,
            self._cluster_id,
            host,
            port,
            self._peer_addresses(),
            self._on_messages,
            self._on_unreachable,
            max_frame_size=self.config.max_frame_size,
            logger=logging.getLogger("raftkv.transport"),
            tls=self.config.peer_tls,
        )
        await self._transport.start()
        if isinstance(self._log, SegmentLog):
            background = self._background_sync = BackgroundSync(self._log)
            self._sync_thread = threading.Thread(
                target=background.run, name="raftkv-fsync", daemon=True
            )
            self._sync_thread.start()
            self._loop.add_reader(background.fileno(), self._background_synced)
        self._ticker = asyncio.create_task(self._tick_loop(), name="raftkv-ticker")
        core = self.core
        self.logger.info(
            "node %d started: term %d, log %d..%d, applied %d, members %s",
            self.config.node_id,
            core.term,
            core.log.first_index,
            core.last_index,
            self.sm.applied_index,
            core.membership,
        )

    async def stop(self) -> None:
        """Fail what is waiting, sync what was written, close everything."""
        if self._stopping:
            return
        self._stopping = True
        if self._ticker is not None:
            self._ticker.cancel()
        if self._local_snapshots is not None:
            await self._local_snapshots.stop()
        if self._driver is not None:
            self._driver.fail_all("the node is shutting down")
        self.watches.close_all("the node is shutting down")
        if self._transport is not None:
            await self._transport.stop()
        background = self._background_sync
        if background is not None and self._sync_thread is not None:
            if self._loop is not None:
                self._loop.remove_reader(background.fileno())
            # After the sync under way, if any: it holds descriptors of its own.
            background.stop()
            self._sync_thread.join()
        if self._log is not None:
            try:
                self._log.sync()
            finally:
                self._log.close()
        self.stopped.set()

    def _open(self) -> None:
        config = self.config
        opened = open_storage(config, self.sm, self.logger)
        self._cluster_id = opened.cluster_id
        self._hard_state_file = opened.hard_state_file
        self._log = opened.log
        self._snapshots = opened.snapshots
        self._addresses = opened.addresses
        raft_config = RaftConfig(
            node_id=config.node_id,
            election_ticks=config.election_ticks,
            heartbeat_ticks=config.heartbeat_ticks,
            max_inflight_messages=config.max_inflight,
        )
        core = RaftCore(raft_config, random.Random(os.urandom(8)), opened.initial)
        latest = self._record(opened.latest) if opened.latest is not None else None
        self._local_snapshots = LocalSnapshots(
            opened.snapshots,
            self.sm,
            lambda: self._addresses,
            self._local_snapshot_checked,
            self._local_snapshot_failed,
            self.logger,
        )
        self._driver = Driver(
            core,
            self.sm,
            self,
            DriverSettings(
                node_id=config.node_id,
                request_timeout_s=config.request_timeout_s,
                snapshot_entries=config.snapshot_entries,
                snapshot_log_ratio=config.snapshot_log_ratio,
                snapshot_retain=config.snapshot_retain,
                hard_state_durable_at_once=True,
                # The longest randomized election timeout (the core draws from [T, 2T)).
                election_timeout_s=2 * config.election_ticks * config.tick_ms / 1000,
                lease_checkpoint_interval_s=config.lease_checkpoint_interval_s,
            ),
            random.Random(os.urandom(16)),
            joining=opened.joining,
            latest_snapshot=latest,
            clock=time.perf_counter,
            logger=self.logger,
        )
        self._driver.lease_clock.on_expired = self.metrics.lease_expiry_lateness.observe

    def _record(self, stored: StoredSnapshot) -> SnapshotRecord:
        assert self._snapshots is not None
        return SnapshotRecord(
            stored.meta, stored.size, str(stored.path), self._snapshots.open_reader(stored)
        )

    def _peer_addresses(self, also: frozenset[int] = frozenset()) -> dict[int, tuple[str, int]]:
        """Where to reach the other members. Only members (of the configuration in the
        log, or ``also``, the one being applied) are peers: a removed node is refused.
        The current leader is one too, member or not in what this node has: a snapshot
        older than the entry that added the leader (one it installed when it joined)
        would otherwise cut this node off from the only node that can send it that
        entry."""
        core = self._driver.core if self._driver is not None else None
        members = (core.membership.members if core is not None else frozenset()) | also
        if members and core is not None and core.leader_id:
            members = members | {core.leader_id}
        return {
            node_id: address.rpc_host_port
            for node_id, address in self._addresses.items()
            if node_id != self.config.node_id and (not members or node_id in members)
        }

    # ------------------------------------------------------------------ inputs

    async def _tick_loop(self) -> None:
        interval = self.config.tick_ms / 1000
        next_tick = time.monotonic()
        while True:
            next_tick += interval
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            now = time.monotonic()
            late = now - next_tick
            if late > _LOOP_STALL_WARNING_S:
                self.logger.warning("event loop blocked for %.0f ms", late * 1000)
            if late > 10 * interval:
                next_tick = now  # the loop was blocked; do not replay the missed ticks
            self.driver.tick(now)
            self.local_snapshots.reap()
            if now >= self._next_watch_tick:
                self._next_watch_tick = now + _WATCH_TICK_S
                self.watches.tick()
            self._schedule_process()

    def _on_messages(self, messages: list[RaftMessage]) -> None:
        heard_at = time.monotonic()
        last_heard = self.last_heard
        for message in messages:
            last_heard[message.sender] = heard_at
        try:
            self.driver.step(messages)
        except CommittedEntryConflictError as exc:
            self._fatal(exc)
            return
        self.metrics.round_trips.received(messages)
        self._schedule_process()

    def _on_unreachable(self, peer: int) -> None:
        self.metrics.round_trips.lost(peer)
        self.driver.report_unreachable(peer)

    def submit(self, request: ClientRequest, reply_fn: ReplyFn) -> None:
        """A client request from a worker: answered through ``reply_fn`` exactly once.
        Read-only views are answered here; everything else goes to the driver."""
        if self._stopping:
            reply_fn(
                ClientReply(request.request_id, ReplyStatus.UNAVAILABLE, body=b"shutting down")
            )
            return
        if request.op in _VIEW_OPS:
            self._answer_view(request, reply_fn)
            return
        driver = self._driver
        assert driver is not None, "node not started"
        driver.submit(request, reply_fn, time.monotonic())
        if not self._process_scheduled:
            self._schedule_process()

    def _answer_view(self, request: ClientRequest, reply_fn: ReplyFn) -> None:
        op = request.op
        if op == Op.AUTH_TABLES:
            reply_fn(auth_tables_reply(request, self.sm.auth))
            return
        if op == Op.METRICS:
            body = self.metrics.exposition()
        elif op == Op.STATUS:
            body = cluster_status(self, with_hash=bool(request.flags & Flag.STATE_HASH))
        else:
            body = cluster_nodes(self)
        reply_fn(ClientReply(request.request_id, ReplyStatus.OK, body=body))

    # ------------------------------------------------------------------ the ready loop

    def _schedule_process(self) -> None:
        """Run the driver's turn at the end of this loop turn (once, however often asked)."""
        if not self._process_scheduled and self._loop is not None and not self._stopping:
            self._process_scheduled = True
            self._loop.call_soon(self._process)

    def _process(self) -> None:
        self._process_scheduled = False
        if self._stopping:
            return
        try:
            self.driver.process(time.monotonic())
        except FatalStorageError as exc:
            self._fatal(exc)
            return
        self.watches.publish()

    def _fatal(self, error: BaseException) -> None:
        # Like etcd and PostgreSQL: after a failed fsync the page cache can no longer be
        # trusted to match the disk, and a log that contradicts what this node committed
        # means some disk lost acknowledged writes; either way the only safe move is to
        # stop (exit 1, the error logged) rather than let the replicas diverge.
        self.logger.critical("stopping: %s", error)
        self.fatal_error = error
        self._stop_task = asyncio.ensure_future(self.stop())

    # ------------------------------------------------------------------ DriverHost

    @property
    def addresses(self) -> Mapping[int, NodeAddress]:
        return self._addresses

    @property
    def cluster_id(self) -> int:
        return self._cluster_id

    def send(self, messages: list[RaftMessage]) -> None:
        self.transport.send(messages)
        self.metrics.round_trips.sent(messages)

    def save_hard_state(self, state: HardState) -> None:
        assert self._hard_state_file is not None
        self._hard_state_file.save(state.term, state.vote)

    def append(self, entries: list[Entry]) -> None:
        log = self._log
        assert log is not None
        first = entries[0].index
        if first <= log.last_index:
            log.truncate_after(first - 1)
        log.append(entries)

    def start_sync(self) -> None:
        log = self._log
        assert log is not None and self._loop is not None
        error: BaseException | None = None
        background = self._background_sync
        if background is not None:
            try:
                background.start()
                return  # _background_synced goes on once it is done
            except OSError as exc:
                error = exc
        else:
            try:
                self.metrics.timed_fsync(log.sync)
            except OSError as exc:
                error = exc
        self._loop.call_soon(self._synced, error)

    def _background_synced(self) -> None:
        """The sync thread's eventfd is readable: its sync is done."""
        background = self._background_sync
        assert background is not None
        try:
            seconds = background.finish()
        except OSError as exc:
            self._synced(exc)
            return
        if seconds is not None:  # None: woken with nothing done (the loop may do that)
            self.metrics.fsync_done(seconds)
            self._synced(None)

    def _synced(self, error: BaseException | None) -> None:
        if self._stopping:
            return
        if error is not None:
            self._fatal(FatalStorageError(f"fsync of the log failed: {error}"))
            return
        driver = self.driver
        driver.synced()
        # What the sync released is sent already: a turn is due only if the core has more
        # to say (the leader's own write can commit entries). A follower's syncs, one per
        # batch it receives, then cost no turn of their own.
        if driver.core.has_ready():
            self._schedule_process()

    def install_snapshot(self, snapshot: Snapshot) -> SnapshotRecord:
        """A snapshot from the leader: save it, reset the log behind it, load it."""
        started = time.monotonic()
        assert self._snapshots is not None and self._log is not None
        meta = snapshot.meta
        saved = self._snapshots.save(meta, snapshot.data)
        log = self._log
        if (
            log.first_index - 1 <= meta.index <= log.last_index
            and log.term(meta.index) == meta.term
        ):
            log.compact(meta.index, meta.term)
        else:
            log.reset(meta.index, meta.term)
        log.sync()
        addresses, state = decode_node_snapshot(snapshot.data)
        self.sm.restore(state)
        if addresses:
            # Merged, not replaced: the snapshot's book may lack the leader sending it.
            self._addresses = {**self._addresses, **addresses}
            self.transport.update_peers(self._peer_addresses())
        record = self._record(self._snapshots.verify(saved))
        if self._freeze_heap:
            refreeze_heap()
        self.metrics.leader_snapshot_duration.observe(time.monotonic() - started)
        self.logger.info("installed snapshot at index %d term %d", meta.index, meta.term)
        return record

    def start_snapshot(self, meta: SnapshotMeta) -> None:
        self.local_snapshots.start(meta)

    def _local_snapshot_checked(
        self, stored: StoredSnapshot, started: float, check_ms: float
    ) -> None:
        if self._stopping:
            return
        driver = self.driver
        if driver.snapshot_outdated(stored.meta):
            return  # the leader's snapshot overtook it; its file may be gone already
        compacted = time.monotonic()
        try:
            driver.snapshot_taken(self._record(stored))
        except (FatalStorageError, OSError) as exc:
            # Nothing awaits the check's task: a storage error here must stop the node
            # as it would anywhere else, not vanish with the task.
            self._fatal(exc)
            return
        self.metrics.local_snapshot_duration.observe(time.monotonic() - started)
        self.logger.info(
            "snapshot at index %d (%d bytes) in %.0f ms; on the loop: fork %.1f ms, "
            "log compaction %.1f ms (check %.1f ms in a thread)",
            stored.meta.index,
            stored.size,
            (time.monotonic() - started) * 1000,
            self.local_snapshots.fork_ms,
            (time.monotonic() - compacted) * 1000,
            check_ms,
        )

    def _local_snapshot_failed(self) -> None:
        if not self._stopping:
            self.driver.snapshot_failed()

    def compact_log(self, index: int, term: int) -> None:
        assert self._log is not None
        self._log.compact(index, term)

    def config_applied(self, entry: Entry, membership: Membership, context: bytes) -> None:
        if context:
            self._addresses = decode_addresses(context)
        self.transport.update_peers(self._peer_addresses(membership.members))

    def joined(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / JOINING_MARKER).unlink()

    def leader_changed(self, leader_id: int, term: int) -> None:
        if leader_id:
            self.metrics.leader_changes.inc()
            self.elected_at = time.time()

    def apply_timed(self, seconds: float) -> None:
        self.metrics.apply_duration.observe(seconds)

    # ------------------------------------------------------------------ NodeView

    @property
    def raft_state(self) -> RaftCore:
        return self.core

    @property
    def applied_index(self) -> int:
        return self.sm.applied_index

    def state_hash(self) -> str:
        return self.sm.state_hash()

    def peer_stats(self) -> dict[int, PeerStats]:
        return self.transport.stats()

    def watch_stats(self) -> WatchStats:
        return self.watches.stats()

    def pending_writes(self) -> int:
        return self.driver.pending_writes()

    def lease_stats(self) -> LeaseStats:
        leases = self.sm.leases
        return LeaseStats(
            leases=len(leases),
            attached_keys=leases.attached_keys(),
            expired=self.sm.leases_expired,
            expiries_proposed=self.driver.leases_expired,
        )

    @property
    def leader_changes(self) -> int:
        return self.driver.leader_changes

    @property
    def latest_snapshot(self) -> SnapshotRecord | None:
        return self.driver.latest_snapshot
