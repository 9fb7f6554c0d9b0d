"""Node configuration: the cluster file, flags, and their defaults (docs/architecture.md)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from raftkv.wire.limits import HttpLimits
from raftkv.wire.peer_tls import ClientTls, PeerTls
from raftkv.wire.protocol import DEFAULT_MAX_KEY_BYTES, DEFAULT_MAX_VALUE_BYTES
from raftkv.wire.txn_limits import TxnLimits
from raftkv.wire.watch_limits import WatchLimits
from raftkv_ext.codec import DEFAULT_MAX_FRAME_SIZE
from raftkv_ext.segment_log import DEFAULT_SEGMENT_SIZE


class ConfigError(ValueError):
    """A cluster file or flag that cannot be used, with a message saying why."""


@dataclass(frozen=True, slots=True)
class NodeAddress:
    node_id: int
    http_addr: str
    rpc_addr: str

    @property
    def http_host_port(self) -> tuple[str, int]:
        return split_host_port(self.http_addr)

    @property
    def rpc_host_port(self) -> tuple[str, int]:
        return split_host_port(self.rpc_addr)

    def to_json(self) -> dict[str, object]:
        return {"id": self.node_id, "http_addr": self.http_addr, "rpc_addr": self.rpc_addr}


def split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    # isdigit() alone admits digits int() refuses ("²") and strings too long to convert.
    digits = port.isascii() and port.isdigit() and len(port) <= 5
    if not sep or not host or not digits or not 0 < int(port) < 65536:
        raise ConfigError(f"address {address!r} is not host:port")
    return host.strip("[]"), int(port)


# A single node on the default ports: what `kvnode` runs with no cluster file.
EMBEDDED_DEFAULT = {1: NodeAddress(1, "127.0.0.1:8001", "127.0.0.1:9001")}


def parse_cluster(document: object, source: str) -> dict[int, NodeAddress]:
    """Validate a cluster document of the shape {"nodes": {"1": {"id", "http_addr",
    "rpc_addr"}}}."""
    if not isinstance(document, dict) or not isinstance(document.get("nodes"), dict):
        raise ConfigError(f'{source}: expected an object with a "nodes" object')
    nodes: dict[int, NodeAddress] = {}
    for key, entry in document["nodes"].items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: node {key!r} is not an object")
        try:
            node_id = int(entry.get("id", key))
        # OverflowError: an infinite float; a node id travels as a u64 on the wire.
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{source}: node {key!r} has a non-integer id") from None
        if str(node_id) != str(key).strip() or node_id <= 0:
            raise ConfigError(f"{source}: node key {key!r} does not match its id {node_id}")
        if node_id >= 1 << 64:
            raise ConfigError(f"{source}: node id {node_id} does not fit in 64 bits")
        http_addr, rpc_addr = entry.get("http_addr"), entry.get("rpc_addr")
        if not isinstance(http_addr, str) or not isinstance(rpc_addr, str):
            raise ConfigError(f"{source}: node {node_id} needs http_addr and rpc_addr strings")
        try:
            split_host_port(http_addr)
            split_host_port(rpc_addr)
        except ConfigError as exc:
            # Name the file, as every other refusal here does.
            raise ConfigError(f"{source}: node {node_id}: {exc}") from None
        nodes[node_id] = NodeAddress(node_id, http_addr, rpc_addr)
    if not nodes:
        raise ConfigError(f"{source}: no nodes")
    return nodes


def load_cluster_file(path: Path) -> dict[int, NodeAddress]:
    try:
        document = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"cluster file {path} does not exist") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    return parse_cluster(document, str(path))


def cluster_id_for(nodes: dict[int, NodeAddress]) -> int:
    """A 63-bit id every founding node derives alike from the bootstrap cluster."""
    canonical = orjson.dumps(
        {str(n): nodes[n].to_json() for n in sorted(nodes)}, option=orjson.OPT_SORT_KEYS
    )
    return int.from_bytes(hashlib.sha256(canonical).digest()[:8], "big") >> 1


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: int
    cluster: dict[int, NodeAddress]
    data_dir: Path
    storage: str = "segment"
    tick_ms: int = 10
    election_ticks: int = 15
    heartbeat_ticks: int = 5
    # AppendEntries a leader keeps in flight to one follower before it waits for an
    # answer: the depth of the replication pipeline.
    max_inflight: int = 16
    # Every snapshot rewrites the whole state in a child process: on a small machine
    # that competes with serving (at 1000, HTTP writes ran at 0.7x of 10,000's rate; see
    # docs/benchmarks.md). 10,000 entries of log are a few MB of memory and a fraction of
    # a second to replay at start.
    snapshot_entries: int = 10_000
    # ...and only once the commands applied since the last snapshot add up to this
    # fraction of its size: a large state is not rewritten every few thousand writes
    # (that is write amplification of state size / log bytes), and the log a restart
    # replays stays a fraction of the state it loads.
    snapshot_log_ratio: float = 0.1
    # Entries kept behind a snapshot so a briefly lagging follower catches up from the
    # log rather than by a whole snapshot.
    snapshot_retain: int = 500
    # The leader checkpoints the time left of a lease nothing recorded for this long
    # (raftkv/node/lease_clock.py): it bounds how far a restarted node's countdown lags.
    lease_checkpoint_interval_s: float = 5.0
    segment_size: int = DEFAULT_SEGMENT_SIZE
    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    request_timeout_s: float = 5.0
    workers: int = 1
    log_level: str = "info"
    # "text" or "json" (raftkv/logs.py), for the Raft process and its workers alike.
    log_format: str = "text"
    # Where to listen for peers when that differs from the advertised rpc_addr (behind
    # a proxy or NAT); None: listen on rpc_addr.
    rpc_listen: str | None = None
    # Where to serve the native binary client protocol over TCP (host:port); None: off.
    # Not part of the cluster file: only this node's clients need to know it.
    client_addr: str | None = None
    # Mutual TLS on the peer links and TLS on the client ports (raftkv/wire/peer_tls.py);
    # None: plaintext.
    peer_tls: PeerTls | None = None
    client_tls: ClientTls | None = None
    # What the HTTP workers enforce on clients: rate, connections, timeouts, headers.
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    # The history kept for watches and what each watcher may cost (wire/watch_limits.py).
    watch_limits: WatchLimits = field(default_factory=WatchLimits)
    # What one transaction may hold (wire/txn_limits.py), enforced by the workers.
    txn_limits: TxnLimits = field(default_factory=TxnLimits)
    extra_worker_args: tuple[str, ...] = field(default=())

    @property
    def me(self) -> NodeAddress:
        return self.cluster[self.node_id]

    @property
    def client_host_port(self) -> tuple[str, int] | None:
        """Where native clients connect, or None when the native port is off."""
        return None if self.client_addr is None else split_host_port(self.client_addr)

    def __post_init__(self) -> None:
        if self.node_id not in self.cluster:
            raise ConfigError(
                f"node id {self.node_id} is not in the cluster (ids: {sorted(self.cluster)})"
            )
        if self.storage not in ("segment", "sqlite"):
            raise ConfigError(f"--storage must be segment or sqlite, not {self.storage!r}")
        if self.tick_ms <= 0 or self.heartbeat_ticks <= 0:
            raise ConfigError("tick and heartbeat must be positive")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError("the election timeout must be longer than the heartbeat")
        if not 1 <= self.max_inflight <= 1024:
            raise ConfigError("--max-inflight must be between 1 and 1024")
        if not self.lease_checkpoint_interval_s > 0:
            raise ConfigError("--lease-checkpoint-interval must be positive")
        if self.snapshot_entries <= 0 or self.workers <= 0:
            raise ConfigError("snapshot threshold and worker count must be positive")
        if not 0 <= self.snapshot_log_ratio <= 100:
            raise ConfigError("the snapshot log ratio must be between 0 and 100")
        if self.client_addr is not None:
            try:
                split_host_port(self.client_addr)
            except ConfigError as exc:
                raise ConfigError(f"--client-addr: {exc}") from None
