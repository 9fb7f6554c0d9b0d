"""Seed a node of a new cluster from a backup (a snapshot file from GET /cluster/backup).

Every member of the new cluster is restored from the same backup with the new cluster's
membership, as with etcd's snapshot restore: each starts with the backup's state as its
snapshot, an empty log after it, and a cluster id of its own, so the restored cluster
can never be mistaken for (or join) the one the backup came from.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson

from raftkv.kv import KVStateMachine
from raftkv.node.node_config import NodeAddress
from raftkv.node.node_snapshot import decode_node_snapshot, encode_node_snapshot
from raftkv.raft.membership import Membership
from raftkv.raft.ready import SnapshotMeta
from raftkv.storage.hard_state import HardStateFile
from raftkv.storage.open_log import open_log_store
from raftkv.storage.snapshots import SnapshotStore, read_snapshot_data, verify_snapshot_file


class RestoreError(RuntimeError):
    """The backup cannot be restored here, with the reason."""


def restored_cluster_id(cluster: dict[int, NodeAddress], backup_sha256: str) -> int:
    """Every member derives the same id from the new cluster and the backup's digest."""
    canonical = orjson.dumps(
        {"backup": backup_sha256, "nodes": {str(n): cluster[n].to_json() for n in sorted(cluster)}},
        option=orjson.OPT_SORT_KEYS,
    )
    return int.from_bytes(hashlib.sha256(canonical).digest()[:8], "big") >> 1


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def restore_backup(
    backup_path: Path,
    data_dir: Path,
    node_id: int,
    cluster: dict[int, NodeAddress],
    storage: str = "segment",
) -> dict[str, Any]:
    """Write a fresh data directory for ``node_id`` holding the backup's state."""
    if node_id not in cluster:
        raise RestoreError(f"node {node_id} is not in the new cluster ({sorted(cluster)})")
    if (data_dir / "raft_state.json").exists():
        raise RestoreError(f"{data_dir} already holds a node; restore into an empty directory")
    if not backup_path.is_file():
        raise RestoreError(f"{backup_path} is not a file")
    # The backup is a snapshot file: its header and checksums are verified on reading.
    stored = verify_snapshot_file(str(backup_path))
    _old_addresses, state = decode_node_snapshot(read_snapshot_data(stored))
    machine = KVStateMachine()
    machine.restore(state)  # refuses a damaged state before anything is written

    meta = SnapshotMeta(stored.meta.index, stored.meta.term, Membership.of(cluster))
    digest = _sha256_of(backup_path)
    cluster_id = restored_cluster_id(cluster, digest)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    SnapshotStore(data_dir / "snapshots").save(meta, encode_node_snapshot(cluster, state))
    log = open_log_store(storage, str(data_dir / "log"))
    try:
        log.reset(meta.index, meta.term)
        log.sync()
    finally:
        log.close()
    hard_state = HardStateFile(data_dir)
    hard_state.initialize(cluster_id, node_id)
    hard_state.save(meta.term, 0)
    return {
        "node_id": node_id,
        "index": meta.index,
        "term": meta.term,
        "keys": len(machine),
        "leases": len(machine.leases),
        "state_hash": machine.state_hash(),
        "cluster_id": cluster_id,
        "backup_sha256": digest,
        "data_dir": str(data_dir),
    }
