"""Opening a node's data directory: what it holds becomes the core's initial state, the
state machine's contents and the address book; a new founding member writes the first
configuration; a joining member gets an identity and no log."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from raftkv.kv import KVStateMachine
from raftkv.node.node_config import NodeAddress, NodeConfig, cluster_id_for
from raftkv.node.node_snapshot import addresses_in_log, decode_node_snapshot, encode_addresses
from raftkv.raft.membership import Membership
from raftkv.raft.ready import HardState, InitialState, SnapshotMeta
from raftkv.storage.hard_state import HardStateFile
from raftkv.storage.log_store import LogStore
from raftkv.storage.open_log import open_log_store
from raftkv.storage.snapshots import SnapshotStore, StoredSnapshot
from raftkv_ext.entry import ENTRY_CONFIG, Entry

__all__ = [
    "JOINING_MARKER",
    "FatalStorageError",
    "OpenedStorage",
    "open_storage",
    "prepare_joining_node",
]

JOINING_MARKER = "joining"


class FatalStorageError(RuntimeError):
    """The disk failed under the log (a failed fsync): the node must stop."""


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


@dataclass(slots=True)
class OpenedStorage:
    cluster_id: int
    hard_state_file: HardStateFile
    log: LogStore
    snapshots: SnapshotStore
    latest: StoredSnapshot | None
    initial: InitialState
    addresses: dict[int, NodeAddress]
    joining: bool


def open_storage(
    config: NodeConfig, state_machine: KVStateMachine, logger: logging.Logger
) -> OpenedStorage:
    """Open (or create) the data directory and load the newest snapshot into
    ``state_machine``."""
    data_dir = Path(config.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    hard_state_file = HardStateFile(data_dir)
    stored = hard_state_file.load()
    log = open_log_store(config.storage, str(data_dir / "log"), config.segment_size)
    snapshots = SnapshotStore(data_dir / "snapshots")
    latest = snapshots.latest()
    if stored is None:
        if log.last_index > 0 or latest is not None:
            raise FatalStorageError(
                f"{data_dir}: a log or snapshot exists but raft_state.json does not"
            )
        _bootstrap(config, hard_state_file, log, logger)
        stored = hard_state_file.load()
        assert stored is not None

    addresses: dict[int, NodeAddress] = {}
    snapshot_meta: SnapshotMeta | None = None
    if latest is not None:
        addresses, state = decode_node_snapshot(snapshots.read_all(latest))
        state_machine.restore(state)
        snapshot_meta = latest.meta

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
    addresses = addresses_in_log(
        entries, snapshot_meta.index if snapshot_meta is not None else 0, addresses
    )
    initial = InitialState(
        hard_state=HardState(stored.term, stored.voted_for),
        snapshot=snapshot_meta,
        boundary_index=boundary,
        boundary_term=boundary_term,
        entries=entries,
    )
    return OpenedStorage(
        cluster_id=stored.cluster_id,
        hard_state_file=hard_state_file,
        log=log,
        snapshots=snapshots,
        latest=latest,
        initial=initial,
        addresses=addresses or dict(config.cluster),
        joining=(data_dir / JOINING_MARKER).exists(),
    )


def _bootstrap(
    config: NodeConfig, hard_state_file: HardStateFile, log: LogStore, logger: logging.Logger
) -> None:
    """A founding member of a new cluster: the membership is entry 1 of every log."""
    cluster = config.cluster
    membership = Membership.of(cluster)
    entry = Entry(1, 1, ENTRY_CONFIG, membership.encode(encode_addresses(cluster)))
    log.append([entry])
    log.sync()
    hard_state_file.initialize(cluster_id_for(cluster), config.node_id)
    hard_state_file.save(1, 0)
    logger.info("bootstrapped a new cluster: %s", membership)
