"""The Raft process's driver: it owns the core, the log, the snapshots and the state
machine, and runs the ready loop (DESIGN.md, "A write, end to end").

Everything that arrives in one event-loop turn (peer messages, client requests, ticks)
is fed to the core first; one ``_process`` call per turn then takes the Ready, so
proposals, log writes, AppendEntries and replies are batched per turn. The log's fsync
runs in a thread (the extension releases the GIL) while the loop goes on: the leader
replicates while its own write is under way, and acknowledgements wait for the sync.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from raftkv.kv import AuthChange, Delete, DeletePrefix, KVStateMachine, Put, encode_command
from raftkv.node.auth_reply import auth_tables_reply
from raftkv.node.node_config import NodeAddress, NodeConfig, cluster_id_for, split_host_port
from raftkv.node.node_snapshot import (
    decode_addresses,
    decode_node_snapshot,
    encode_addresses,
    encode_node_snapshot,
)
from raftkv.node.operator_actions import Operations
from raftkv.node.raft_metrics import RaftMetrics
from raftkv.node.request_ids import IncarnationCounter
from raftkv.node.requests import (
    DeadlineQueue,
    PendingRequest,
    ReplyFn,
    reply_for_result,
    timeout_message,
)
from raftkv.node.status import cluster_nodes, cluster_status
from raftkv.node.transport import PeerTransport
from raftkv.raft.config import RaftConfig
from raftkv.raft.core import (
    CommittedEntryConflictError,
    NotLeaderError,
    ProposalDroppedError,
    RaftCore,
    Role,
)
from raftkv.raft.membership import Membership
from raftkv.raft.ready import HardState, InitialState, Ready, Snapshot, SnapshotMeta
from raftkv.storage.errors import StorageCorruptionError
from raftkv.storage.hard_state import HardStateFile
from raftkv.storage.log_store import LogStore
from raftkv.storage.open_log import open_log_store
from raftkv.storage.snapshots import (
    SnapshotStore,
    StoredSnapshot,
    snapshot_file_name,
    verify_snapshot_file,
)
from raftkv.wire.protocol import (
    LIST_FETCH_MAX,
    Flag,
    Op,
    ReplyStatus,
    encode_key_value,
    encode_key_values,
)
from raftkv_ext.codec import ClientReply, ClientRequest, RequestVote
from raftkv_ext.entry import ENTRY_CONFIG, ENTRY_NORMAL, Entry

if TYPE_CHECKING:
    from raftkv_ext.codec import RaftMessage

# A tick that fires this late means the loop ran something long; half the shortest
# election timeout at the default tick is where heartbeats start to be at risk.
_LOOP_STALL_WARNING_S = 0.075
_OPERATIONS = (Op.MEMBER_ADD, Op.MEMBER_REMOVE, Op.TRANSFER_LEADER, Op.SNAPSHOT, Op.BACKUP)


@dataclass(slots=True)
class _ReadBatch:
    requests: list[PendingRequest]
    index: int = 0


JOINING_MARKER = "joining"


def prepare_joining_node(data_dir: Path, cluster_id: int, node_id: int) -> None:
    """A node joining a running cluster: identity on disk, no log, and a marker that
    keeps it from voting until it is a voter again with the whole log."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    hard_state = HardStateFile(data_dir)
    hard_state.initialize(cluster_id, node_id)
    hard_state.save(0, 0)
    marker = data_dir / JOINING_MARKER
    marker.write_bytes(b"")
    os.chmod(marker, 0o600)


class FatalStorageError(RuntimeError):
    """The disk failed under the log (a failed fsync): the node must stop."""


class RaftNode:
    def __init__(self, config: NodeConfig, logger: logging.Logger | None = None) -> None:
        self.config = config
        self.logger = logger or logging.getLogger("raftkv.node")
        self.data_dir = Path(config.data_dir)
        self.addresses: dict[int, NodeAddress] = {}
        self.cluster_id = 0
        self.sm = KVStateMachine()
        self._core: RaftCore | None = None
        self._log: LogStore | None = None
        self._snapshots: SnapshotStore | None = None
        self._hard_state_file: HardStateFile | None = None
        self._transport: PeerTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process_scheduled = False
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = False
        self.stopped = asyncio.Event()
        self.fatal_error: BaseException | None = None
        self._stop_task: asyncio.Future[None] | None = None

        # Writes and reads waiting on the core.
        self._deadlines = DeadlineQueue()
        self._no_leader: list[PendingRequest] = []
        self._proposals: list[tuple[bytes, PendingRequest]] = []
        self._writes: dict[int, tuple[int, PendingRequest]] = {}
        # Batches forwarded to a leader: batch id -> (that leader, the requests).
        self._forwards: dict[int, tuple[int, list[PendingRequest]]] = {}
        # Ids of forwarded batches and ReadIndex contexts start at a random point in
        # every incarnation; see request_ids.py for the acknowledged-but-lost writes and
        # the stale reads that counting from zero caused.
        self._batch_ids = IncarnationCounter()
        self._read_batch: list[PendingRequest] = []
        self._reads_by_context: dict[bytes, _ReadBatch] = {}
        self._reads_ready: list[_ReadBatch] = []
        self._read_ids = IncarnationCounter()

        # Durability: groups of (messages, last entry) waiting for the next fsync.
        self._unsynced: list[tuple[list[RaftMessage], tuple[int, int] | None]] = []
        self._sync_running = False
        self._sync_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="raftkv-fsync"
        )
        self._last_snapshot_index = 0
        # Bytes of commands applied since the last snapshot began, and that snapshot's
        # size: together they decide when the next one is due (see _maybe_snapshot).
        self._applied_bytes = 0
        self._snapshot_bytes = 0
        self._snapshot_child: tuple[int, SnapshotMeta, float] | None = None
        self._fork_ms = 0.0
        self._bytes_at_snapshot = 0
        self._snapshot_check: asyncio.Task[None] | None = None
        self._force_snapshot = False
        self.latest_snapshot: StoredSnapshot | None = None
        self.operations = Operations(self)
        self._joining = (self.data_dir / JOINING_MARKER).exists()
        self._leader_seen = 0
        self.elected_at: float | None = None
        self.leader_changes = 0
        # Monotonic time of the last message from each peer: how long a follower has
        # been silent, for /cluster/status and /cluster/nodes (see status.py).
        self.last_heard: dict[int, float] = {}
        self._role_seen = Role.FOLLOWER
        self._term_seen = 0
        self.metrics = RaftMetrics(self)

    # ------------------------------------------------------------------ lifecycle

    @property
    def core(self) -> RaftCore:
        assert self._core is not None, "node not started"
        return self._core

    @property
    def transport(self) -> PeerTransport:
        assert self._transport is not None, "node not started"
        return self._transport

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._open_storage()
        self.metrics.count_from_here()
        me = self.config.me
        if self.config.rpc_listen:
            host, port = split_host_port(self.config.rpc_listen)
        else:
            host, port = self.addresses.get(self.config.node_id, me).rpc_host_port
        self._transport = PeerTransport(
            self.config.node_id,
            self.cluster_id,
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
        self._ticker = asyncio.create_task(self._tick_loop(), name="raftkv-ticker")
        self.logger.info(
            "node %d started: term %d, log %d..%d, applied %d, members %s",
            self.config.node_id,
            self.core.term,
            self.core.log.first_index,
            self.core.last_index,
            self.sm.applied_index,
            self.core.membership,
        )

    async def stop(self) -> None:
        """Fail what is waiting, sync what was written, close everything."""
        if self._stopping:
            return
        self._stopping = True
        if self._ticker is not None:
            self._ticker.cancel()
        if self._snapshot_child is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._snapshot_child[0], 0)  # let it finish its file
        if self._snapshot_check is not None:
            await asyncio.gather(self._snapshot_check, return_exceptions=True)
        for pending in self._deadlines.drain():
            pending.fail(ReplyStatus.UNAVAILABLE, "the node is shutting down")
        self.operations.fail_all("the node is shutting down")
        if self._transport is not None:
            await self._transport.stop()
        if self._log is not None:
            try:
                self._log.sync()
            finally:
                self._log.close()
        self._sync_executor.shutdown(wait=True)
        self.stopped.set()

    def _open_storage(self) -> None:
        config = self.config
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        hard_state_file = HardStateFile(self.data_dir)
        self._hard_state_file = hard_state_file
        stored = hard_state_file.load()
        log = open_log_store(config.storage, str(self.data_dir / "log"), config.segment_size)
        self._log = log
        snapshots = SnapshotStore(self.data_dir / "snapshots")
        self._snapshots = snapshots
        latest = snapshots.latest()
        if stored is None:
            if log.last_index > 0 or latest is not None:
                raise FatalStorageError(
                    f"{self.data_dir}: a log or snapshot exists but raft_state.json does not"
                )
            self._bootstrap(hard_state_file, log)
            stored = hard_state_file.load()
            assert stored is not None
        self.cluster_id = stored.cluster_id

        snapshot_meta: SnapshotMeta | None = None
        if latest is not None:
            addresses, state = decode_node_snapshot(snapshots.read_all(latest))
            self.sm.restore(state)
            self.addresses = addresses
            snapshot_meta = latest.meta
            self.latest_snapshot = latest
            self._last_snapshot_index = latest.meta.index
            self._snapshot_bytes = latest.size

        boundary = log.first_index - 1
        boundary_term = log.term(boundary)
        entries = (
            log.entries(log.first_index, log.last_index + 1)
            if log.last_index >= log.first_index
            else []
        )
        if snapshot_meta is not None:
            held = (
                boundary <= snapshot_meta.index <= log.last_index
                and log.term(snapshot_meta.index) == snapshot_meta.term
            )
            if not held and snapshot_meta.index > boundary:
                # The log does not reach the snapshot with a matching entry: it can only
                # hold a stale tail, so it restarts after the snapshot.
                log.reset(snapshot_meta.index, snapshot_meta.term)
                log.sync()
                boundary, boundary_term, entries = snapshot_meta.index, snapshot_meta.term, []
        for entry in entries:
            if entry.type == ENTRY_CONFIG and (
                snapshot_meta is None or entry.index > snapshot_meta.index
            ):
                context = Membership.decode(entry.data)[1]
                if context:
                    self.addresses = decode_addresses(context)
        initial = InitialState(
            hard_state=HardState(stored.term, stored.voted_for),
            snapshot=snapshot_meta,
            boundary_index=boundary,
            boundary_term=boundary_term,
            entries=entries,
        )
        raft_config = RaftConfig(
            node_id=config.node_id,
            election_ticks=config.election_ticks,
            heartbeat_ticks=config.heartbeat_ticks,
            max_inflight_messages=config.max_inflight,
        )
        seed = int.from_bytes(os.urandom(8), "big")
        self._core = RaftCore(raft_config, random.Random(seed), initial)
        if latest is not None:
            self.core.snapshot_saved(latest.meta, snapshots.open_reader(latest))
        if not self.addresses:
            self.addresses = dict(config.cluster)

    def _bootstrap(self, hard_state_file: HardStateFile, log: LogStore) -> None:
        """A founding member of a new cluster: the membership is entry 1 of every log."""
        cluster = self.config.cluster
        membership = Membership.of(cluster)
        entry = Entry(1, 1, ENTRY_CONFIG, membership.encode(encode_addresses(cluster)))
        log.append([entry])
        log.sync()
        hard_state_file.initialize(cluster_id_for(cluster), self.config.node_id)
        hard_state_file.save(1, 0)
        self.logger.info("bootstrapped a new cluster: %s", membership)

    def _peer_addresses(self, also: frozenset[int] = frozenset()) -> dict[int, tuple[str, int]]:
        """Where to reach the other members. Only members (of the configuration in the
        log, or ``also``, the one being applied) are peers: a removed node is refused."""
        members = (self._core.membership.members if self._core is not None else frozenset()) | also
        return {
            node_id: address.rpc_host_port
            for node_id, address in self.addresses.items()
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
            self.core.tick()
            self._expire(now)
            self._reap_snapshot_child()
            self._schedule_process()

    def _on_messages(self, messages: list[RaftMessage]) -> None:
        core = self.core
        joining = self._joining
        heard_at = time.monotonic()
        last_heard = self.last_heard
        for message in messages:
            last_heard[message.sender] = heard_at
            if joining and isinstance(message, RequestVote):
                # A joining node may have voted in this term before its data was lost;
                # it stays out of elections until it is a voter again (see _apply_config).
                continue
            try:
                core.step(message)
            except CommittedEntryConflictError as exc:
                self._fatal(exc)
                return
        self.metrics.round_trips.received(messages)
        self._schedule_process()

    def _on_unreachable(self, peer: int) -> None:
        self.metrics.round_trips.lost(peer)
        self.core.report_unreachable(peer)

    def submit(self, request: ClientRequest, reply_fn: ReplyFn) -> None:
        """A client request from a worker: answered through ``reply_fn`` exactly once."""
        if self._stopping:
            reply_fn(
                ClientReply(request.request_id, ReplyStatus.UNAVAILABLE, body=b"shutting down")
            )
            return
        op = request.op
        timeout = (request.timeout_ms or self.config.request_timeout_s * 1000) / 1000
        is_write = op in (Op.PUT, Op.DELETE, Op.DELETE_PREFIX, Op.AUTH_CHANGE)
        pending = PendingRequest(request, reply_fn, time.monotonic() + timeout, is_write)
        if op == Op.AUTH_TABLES:
            pending.answer(auth_tables_reply(request, self.sm.auth))
            return
        if op == Op.METRICS:
            body = self.metrics.exposition()
            pending.answer(ClientReply(request.request_id, ReplyStatus.OK, body=body))
            return
        if op in (Op.STATUS, Op.NODES):
            self._answer_status(pending)
            return
        if self._removed():
            pending.fail(ReplyStatus.UNAVAILABLE, "this node is no longer a member of the cluster")
            return
        if op in _OPERATIONS:
            self.operations.submit(pending)
            return
        if op in (Op.GET, Op.LIST):
            if request.flags & Flag.STALE_READ:
                self._serve_read(pending)
                return
            self._deadlines.add(pending)
            self._read_batch.append(pending)
        elif is_write:
            try:
                command = self._command_for(request)
            except ValueError as exc:
                pending.fail(ReplyStatus.BAD_REQUEST, str(exc))
                return
            self._deadlines.add(pending)
            self._proposals.append((command, pending))
        else:
            pending.fail(ReplyStatus.BAD_REQUEST, f"unknown operation {op}")
            return
        self._schedule_process()

    def _removed(self) -> bool:
        """Whether a committed configuration has taken this node out of the cluster."""
        core = self.core
        membership = core.membership
        return (
            bool(membership.members)
            and self.config.node_id not in membership.members
            and core.committed >= core.last_config_index
        )

    def _command_for(self, request: ClientRequest) -> bytes:
        tag = {
            "client_id": request.client_id,
            "seq": request.seq,
            "first_incomplete": request.first_incomplete,
        }
        prev = request.prev_revision if request.flags & Flag.HAS_PREV_REVISION else None
        if request.op == Op.PUT:
            return encode_command(Put(request.key, request.value, prev, **tag))
        if request.op == Op.DELETE:
            return encode_command(Delete(request.key, prev, **tag))
        if request.op == Op.AUTH_CHANGE:
            return encode_command(AuthChange(request.value, **tag))
        return encode_command(DeletePrefix(request.key, **tag))

    def _expire(self, now: float) -> None:
        for pending in self._deadlines.expire(now):
            status, message = timeout_message(pending)
            pending.fail(status, message)

    # ------------------------------------------------------------------ the ready loop

    def schedule(self) -> None:
        """Run the ready loop at the end of this loop turn (once, however often asked)."""
        self._schedule_process()

    def request_snapshot(self) -> None:
        """Take a snapshot now rather than at the threshold (an operator asked)."""
        self._force_snapshot = True
        self._schedule_process()

    def _schedule_process(self) -> None:
        if not self._process_scheduled and self._loop is not None and not self._stopping:
            self._process_scheduled = True
            self._loop.call_soon(self._process)

    def _process(self) -> None:
        self._process_scheduled = False
        if self._stopping:
            return
        core = self.core
        try:
            self._submit_batches(core)
            while core.has_ready():
                self._handle_ready(core, core.ready())
            self._track_role(core)
            self._track_leader(core)
            self.operations.promote_caught_up_learners()
            self._maybe_snapshot(core)
            while core.has_ready():
                self._handle_ready(core, core.ready())
            self.operations.poll()
        except FatalStorageError as exc:
            self._fatal(exc)

    def _track_role(self, core: RaftCore) -> None:
        """One log line when this node starts an election, wins one or steps down."""
        role, term = core.role, core.term
        if role is self._role_seen and term == self._term_seen:
            return
        previous = self._role_seen
        self._role_seen, self._term_seen = role, term
        if previous is Role.LEADER and role is not Role.LEADER:
            self.logger.info("term %d: stepped down, now %s", term, role.value)
        if role is Role.CANDIDATE:
            self.logger.info("term %d: starting an election", term)
        elif role is Role.LEADER and previous is not Role.LEADER:
            self.logger.info("term %d: won the election", term)
        elif role is Role.PRE_CANDIDATE and previous is not Role.PRE_CANDIDATE:
            # A node cut off from the others pre-votes every election timeout without
            # ever changing the term: worth a line only when asked for detail.
            self.logger.debug("term %d: asking for pre-votes", term)

    def _track_leader(self, core: RaftCore) -> None:
        if core.leader_id != self._leader_seen:
            self._leader_seen = core.leader_id
            self._abandon_forwards(core.leader_id)
            self.leader_changes += 1
            if core.leader_id:
                self.metrics.leader_changes.inc()
                self.elected_at = time.time()
                self.logger.info("term %d: leader is node %d", core.term, core.leader_id)
            else:
                self.logger.info("term %d: no leader", core.term)
        if core.leader_id and self._no_leader:
            waiting, self._no_leader = self._no_leader, []
            for pending in waiting:
                if pending.done:
                    continue
                if pending.is_write:
                    self._proposals.append((self._command_for(pending.request), pending))
                else:
                    self._read_batch.append(pending)
            self._schedule_process()

    def _abandon_forwards(self, leader: int) -> None:
        """Batches forwarded to a former leader will get no answer: say so now rather
        than at the deadline. The old leader may have appended them before it fell, so
        the outcome is unknown; a client retrying with the same tag is safe."""
        for batch_id, (sent_to, waiting) in list(self._forwards.items()):
            if sent_to == leader:
                continue
            del self._forwards[batch_id]
            for pending in waiting:
                pending.fail(
                    ReplyStatus.TIMEOUT,
                    "leadership changed; the write may or may not have been applied",
                )

    def _submit_batches(self, core: RaftCore) -> None:
        if self._proposals:
            proposals, self._proposals = self._proposals, []
            live = [(command, pending) for command, pending in proposals if not pending.done]
            if live:
                self._propose(core, live)
        if self._read_batch:
            batch, self._read_batch = self._read_batch, []
            live_reads = [pending for pending in batch if not pending.done]
            if live_reads:
                if core.leader_id == 0:
                    self._no_leader.extend(live_reads)
                else:
                    context = self._read_ids.next().to_bytes(8, "little")
                    self._reads_by_context[context] = _ReadBatch(live_reads)
                    core.read_index(context)

    def _propose(self, core: RaftCore, proposals: list[tuple[bytes, PendingRequest]]) -> None:
        commands = [command for command, _ in proposals]
        try:
            first = core.propose(commands)
        except NotLeaderError as exc:
            if not exc.leader_id:
                self._no_leader.extend(pending for _, pending in proposals)
                return
            batch_id = self._batch_ids.next()
            core.forward(batch_id, commands)
            self._forwards[batch_id] = (exc.leader_id, [p for _, p in proposals])
            for command, pending in proposals:
                pending.proposed = True
                pending.command = command
            return
        except ProposalDroppedError as exc:
            for _, pending in proposals:
                pending.fail(ReplyStatus.UNAVAILABLE, f"{exc}; the write was not applied")
            return
        term = core.term
        for offset, (command, pending) in enumerate(proposals):
            pending.proposed = True
            pending.command = command
            self._writes[first + offset] = (term, pending)

    def _handle_ready(self, core: RaftCore, ready: Ready) -> None:
        transport = self.transport
        if ready.messages:
            transport.send(ready.messages)
            self.metrics.round_trips.sent(ready.messages)
        if ready.snapshot is not None:
            self._install_snapshot(core, ready.snapshot)
        log = self._log
        assert log is not None and self._hard_state_file is not None
        if ready.hard_state is not None:
            self._hard_state_file.save(ready.hard_state.term, ready.hard_state.vote)
        last: tuple[int, int] | None = None
        if ready.entries:
            first = ready.entries[0].index
            if first <= log.last_index:
                log.truncate_after(first - 1)
            log.append(ready.entries)
            last = (ready.entries[-1].index, ready.entries[-1].term)
        if last is not None or ready.persisted_messages:
            self._unsynced.append((ready.persisted_messages, last))
            self._start_sync()
        # The leader's answers to forwarded batches say at which indexes the waiting
        # writes sit; they must be registered before this Ready's committed entries are
        # applied, which may already include them (the commit can arrive in the same
        # turn as the answer), or those writes would never be answered.
        for result in ready.forwarded:
            forwarded = self._forwards.pop(result.batch_id, None)
            if forwarded is None:
                continue
            waiting = forwarded[1]
            if not result.success:
                for pending in waiting:
                    pending.fail(
                        ReplyStatus.UNAVAILABLE, "the leader refused the write; it was not applied"
                    )
                continue
            applied = self.sm.applied_index
            for offset, pending in enumerate(waiting):
                index = result.index + offset
                if index <= applied:
                    # Already applied (a snapshot installed in this Ready covers it): its
                    # result is gone; a retry with the same tag gets it from the client
                    # table.
                    pending.fail(ReplyStatus.TIMEOUT, "the write may or may not have been applied")
                    continue
                self._writes[index] = (result.term, pending)
        if ready.committed:
            self._apply(ready.committed)
        for read in ready.reads:
            batch = self._reads_by_context.pop(read.context, None)
            if batch is not None:
                batch.index = read.index
                self._reads_ready.append(batch)
        for context in ready.dropped_reads:
            batch = self._reads_by_context.pop(context, None)
            if batch is not None:
                for pending in batch.requests:
                    self._no_leader.append(pending)  # retried once a leader is known
        self._serve_ready_reads()

    def _start_sync(self) -> None:
        if self._sync_running or not self._unsynced:
            return
        groups, self._unsynced = self._unsynced, []
        self._sync_running = True
        log = self._log
        assert log is not None and self._loop is not None
        if getattr(log, "sync_from_any_thread", True) and self.config.storage == "segment":
            future = self._loop.run_in_executor(
                self._sync_executor, self.metrics.timed_fsync, log.sync
            )
            future.add_done_callback(lambda f: self._synced(groups, f.exception()))
        else:
            error: BaseException | None = None
            try:
                self.metrics.timed_fsync(log.sync)
            except OSError as exc:
                error = exc
            self._loop.call_soon(self._synced, groups, error)

    def _synced(
        self,
        groups: list[tuple[list[RaftMessage], tuple[int, int] | None]],
        error: BaseException | None,
    ) -> None:
        self._sync_running = False
        if self._stopping:
            return
        if error is not None:
            self._fatal(FatalStorageError(f"fsync of the log failed: {error}"))
            return
        core = self.core
        transport = self.transport
        for messages, last in groups:
            if messages:
                transport.send(messages)
            if last is not None:
                core.on_persisted(*last)
        self._start_sync()
        self._schedule_process()

    def _fatal(self, error: BaseException) -> None:
        # Like etcd and PostgreSQL: after a failed fsync the page cache can no longer be
        # trusted to match the disk, and a log that contradicts what this node committed
        # means some disk lost acknowledged writes; either way the only safe move is to
        # stop (exit 1, the error logged) rather than let the replicas diverge.
        self.logger.critical("stopping: %s", error)
        self.fatal_error = error
        self._stop_task = asyncio.ensure_future(self.stop())

    # ------------------------------------------------------------------ applying

    def _apply(self, entries: list[Entry]) -> None:
        started = time.perf_counter()
        sm = self.sm
        writes = self._writes
        applied_bytes = 0
        for entry in entries:
            if entry.type == ENTRY_NORMAL:
                data = entry.data
                applied_bytes += len(data)
                result = sm.apply(entry.index, data)
                waiting = writes.pop(entry.index, None)
                if waiting is not None:
                    term, pending = waiting
                    if term == entry.term and data == pending.command:
                        pending.answer(
                            reply_for_result(pending.request.request_id, entry.term, result)
                        )
                    elif term == entry.term:
                        # Not the entry this write was told it would be: never answer
                        # a write with another command's result. (Answers meant for a
                        # previous incarnation of this node once did exactly that.)
                        self.logger.warning(
                            "entry %d is not the write registered there; its outcome is unknown",
                            entry.index,
                        )
                        pending.fail(
                            ReplyStatus.TIMEOUT, "the write may or may not have been applied"
                        )
                    else:
                        pending.fail(
                            ReplyStatus.UNAVAILABLE, "leadership changed; the write was not applied"
                        )
                continue
            sm.advance(entry.index)
            waiting = writes.pop(entry.index, None)
            if waiting is not None:
                waiting[1].fail(
                    ReplyStatus.UNAVAILABLE, "leadership changed; the write was not applied"
                )
            if entry.type == ENTRY_CONFIG:
                self._apply_config(entry)
        self._applied_bytes += applied_bytes
        self.metrics.apply_duration.observe(time.perf_counter() - started)

    def _apply_config(self, entry: Entry) -> None:
        membership, context = Membership.decode(entry.data)
        if context:
            self.addresses = decode_addresses(context)
        self.transport.update_peers(self._peer_addresses(membership.members))
        self.logger.info("membership at index %d: %s", entry.index, membership)
        if self._joining and self.config.node_id in membership.voters and not membership.is_joint:
            self._joining = False
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / JOINING_MARKER).unlink()
            self.logger.info("caught up and promoted: taking part in elections again")

    def _serve_ready_reads(self) -> None:
        if not self._reads_ready:
            return
        applied = self.sm.applied_index
        waiting: list[_ReadBatch] = []
        for batch in self._reads_ready:
            if batch.index > applied:
                waiting.append(batch)
                continue
            for pending in batch.requests:
                self._serve_read(pending)
        self._reads_ready = waiting

    def _serve_read(self, pending: PendingRequest) -> None:
        request = pending.request
        sm = self.sm
        index = sm.applied_index
        term = self.core.term
        if request.op == Op.GET:
            stored = sm.get(request.key)
            if stored is None:
                pending.answer(
                    ClientReply(
                        request.request_id, ReplyStatus.NOT_FOUND, index, term, 0, b"key not found"
                    )
                )
            else:
                pending.answer(
                    ClientReply(
                        request.request_id,
                        ReplyStatus.OK,
                        index,
                        term,
                        stored.mod_revision,
                        encode_key_value(stored),
                    )
                )
            return
        limit = min(request.limit or LIST_FETCH_MAX, LIST_FETCH_MAX)
        items = sm.range(request.key, limit)
        pending.answer(
            ClientReply(
                request.request_id, ReplyStatus.OK, index, term, 0, encode_key_values(items)
            )
        )

    def _answer_status(self, pending: PendingRequest) -> None:
        request = pending.request
        if request.op == Op.STATUS:
            body = cluster_status(self, with_hash=bool(request.flags & Flag.STATE_HASH))
        else:
            body = cluster_nodes(self)
        pending.answer(ClientReply(request.request_id, ReplyStatus.OK, body=body))

    # ------------------------------------------------------------------ snapshots

    def _install_snapshot(self, core: RaftCore, snapshot: Snapshot) -> None:
        """A snapshot from the leader: save it, reset the log behind it, load it."""
        started = time.monotonic()
        assert self._snapshots is not None and self._log is not None
        meta = snapshot.meta
        stored = self._snapshots.save(meta, snapshot.data)
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
            self.addresses = addresses
            self.transport.update_peers(self._peer_addresses())
        self._last_snapshot_index = meta.index
        self.latest_snapshot = self._snapshots.verify(stored)
        self._snapshot_bytes = self.latest_snapshot.size
        self._applied_bytes = 0
        core.snapshot_saved(meta, self._snapshots.open_reader(self.latest_snapshot))
        # Writes waiting at indexes the snapshot covers have an unknown outcome here.
        for index in [i for i in self._writes if i <= meta.index]:
            _, pending = self._writes.pop(index)
            pending.fail(ReplyStatus.TIMEOUT, "the write may or may not have been applied")
        self.metrics.leader_snapshot_duration.observe(time.monotonic() - started)
        self.logger.info("installed snapshot at index %d term %d", meta.index, meta.term)

    def _maybe_snapshot(self, core: RaftCore) -> None:
        """Take a snapshot every ``snapshot_entries`` applied entries, in a forked child.

        The child gets a copy-on-write image of the state machine at this instant, so it
        can serialize and write a consistent snapshot while this process goes on
        applying and replicating: the loop stalls only for the fork itself, not for the
        serialization (about a second per million keys) or the file write.
        """
        applied = self.sm.applied_index
        config = self.config
        due = (
            applied - self._last_snapshot_index >= config.snapshot_entries
            and self._applied_bytes >= config.snapshot_log_ratio * self._snapshot_bytes
        )
        forced = self._force_snapshot and applied > self._last_snapshot_index
        busy = self._snapshot_child is not None or self._snapshot_check is not None
        if busy or not (due or forced):
            return
        self._force_snapshot = False
        assert self._snapshots is not None
        meta = core.snapshot_meta(applied)
        # Counted afresh from here; given back if this snapshot fails, so the next one is
        # not put off by a whole ratio of the state.
        self._bytes_at_snapshot = self._applied_bytes
        self._applied_bytes = 0
        started = time.monotonic()
        pid = os.fork()
        if pid != 0:
            self._fork_ms = (time.monotonic() - started) * 1000
        if pid == 0:  # the child: write the snapshot and leave without any cleanup
            code = 1
            try:
                data = encode_node_snapshot(self.addresses, self.sm.snapshot())
                self._snapshots.save(meta, data)
                code = 0
            finally:
                os._exit(code)
        self._snapshot_child = (pid, meta, started)
        self.logger.debug("snapshot at index %d started in child %d", applied, pid)

    def _reap_snapshot_child(self) -> None:
        if self._snapshot_child is None:
            return
        pid, meta, started = self._snapshot_child
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            return
        self._snapshot_child = None
        if os.waitstatus_to_exitcode(status) != 0:
            self.logger.warning("snapshot at index %d failed in child %d", meta.index, pid)
            self._applied_bytes += self._bytes_at_snapshot
            return
        assert self._snapshots is not None
        if meta.index <= self._last_snapshot_index:
            return  # a snapshot from the leader overtook it
        path = str(Path(self._snapshots.directory) / snapshot_file_name(meta.index, meta.term))
        self._snapshot_check = asyncio.create_task(
            self._adopt_snapshot(meta, path, started), name="raftkv-snapshot-check"
        )

    async def _adopt_snapshot(self, meta: SnapshotMeta, path: str, started: float) -> None:
        """Check the child's file in a thread (reading back a large snapshot takes tens
        of milliseconds, too long for the loop), then compact the log behind it."""
        checked = time.monotonic()
        try:
            stored = await asyncio.to_thread(verify_snapshot_file, path)
        except (OSError, StorageCorruptionError) as exc:
            # Keeping a damaged newest file would stop the next start; the previous
            # snapshot and the log still cover everything.
            self.logger.error(
                "snapshot at index %d failed its check (%s); removed", meta.index, exc
            )
            with contextlib.suppress(OSError):
                os.unlink(path)
            self._applied_bytes += self._bytes_at_snapshot
            return
        finally:
            self._snapshot_check = None
        check_ms = (time.monotonic() - checked) * 1000
        if self._stopping or meta.index <= self._last_snapshot_index:
            return
        try:
            self._compact_behind(meta, stored, started, check_ms)
        except (FatalStorageError, OSError) as exc:
            # Nothing awaits this task: a storage error here must stop the node as it
            # would anywhere else, not vanish with the task.
            self._fatal(exc)

    def _compact_behind(
        self, meta: SnapshotMeta, stored: StoredSnapshot, started: float, check_ms: float
    ) -> None:
        """Adopt a checked local snapshot and compact the log behind it."""
        assert self._snapshots is not None and self._log is not None
        core = self.core
        core.snapshot_saved(meta, self._snapshots.open_reader(stored))
        self._last_snapshot_index = meta.index
        self.latest_snapshot = stored
        self._snapshot_bytes = stored.size
        compacted = time.monotonic()
        compact_to = max(core.log.boundary_index, meta.index - self.config.snapshot_retain)
        boundary_term = core.log.term(compact_to)
        if boundary_term is not None and compact_to > core.log.boundary_index:
            core.compact(compact_to)
            self._log.compact(compact_to, boundary_term)
        self.metrics.local_snapshot_duration.observe(time.monotonic() - started)
        self.logger.info(
            "snapshot at index %d (%d bytes) in %.0f ms; on the loop: fork %.1f ms, "
            "log compaction %.1f ms (check %.1f ms in a thread)",
            meta.index,
            stored.size,
            (time.monotonic() - started) * 1000,
            self._fork_ms,
            (time.monotonic() - compacted) * 1000,
            check_ms,
        )

    # ------------------------------------------------------------------ views

    def pending_writes(self) -> int:
        """Client writes waiting here, unanswered: queued to be proposed, waiting for a
        leader, proposed and not yet applied, or forwarded to the leader."""
        waiting = [pending for _, pending in self._proposals]
        waiting += (pending for pending in self._no_leader if pending.is_write)
        waiting += (pending for _, pending in self._writes.values())
        for _, forwarded in self._forwards.values():
            waiting += forwarded
        return sum(1 for pending in waiting if not pending.done)

    @property
    def role(self) -> Role:
        return self.core.role
