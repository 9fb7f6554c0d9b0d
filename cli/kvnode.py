"""kvnode: run a raftkv node, or a local development cluster (`kvnode dev`)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import orjson

from raftkv.logs import LOG_FORMATS, setup_logging
from raftkv.node.main import run
from raftkv.node.node_config import (
    EMBEDDED_DEFAULT,
    ConfigError,
    NodeAddress,
    NodeConfig,
    load_cluster_file,
)
from raftkv.node.node_snapshot import NodeSnapshotError
from raftkv.node.recovery import FatalStorageError, prepare_joining_node
from raftkv.node.restore import RestoreError, restore_backup
from raftkv.storage.errors import StorageCorruptionError
from raftkv.storage.file_modes import restrict_umask
from raftkv.wire.limits import HttpLimits, add_http_limit_flags, http_limits_from_args
from raftkv.wire.peer_tls import (
    ClientTls,
    PeerTls,
    client_tls_from_flags,
    node_http_context,
    peer_tls_from_flags,
)
from raftkv.wire.tls_contexts import TlsSetupError
from raftkv.wire.txn_limits import TxnLimits, add_txn_flags, txn_limits_from_args
from raftkv.wire.watch_limits import WatchLimits, add_watch_flags, watch_limits_from_args
from raftkv_ext.errors import LogCorruptionError

# How long `--join` keeps asking a cluster that is electing a leader or busy with
# another membership change.
JOIN_PATIENCE_S = 120.0

DEFAULTS = NodeConfig(node_id=1, cluster=EMBEDDED_DEFAULT, data_dir=Path("data"))


def _add_node_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node-id", type=int, default=1, help="this node's id (default: 1)")
    parser.add_argument(
        "--cluster",
        type=Path,
        help="cluster file (default: ./cluster.json if present, else a single node on "
        "127.0.0.1:8001 (HTTP) and 127.0.0.1:9001 (Raft))",
    )
    parser.add_argument("--data-dir", type=Path, help="data directory (default: ./data/node-<id>)")

    parser.add_argument(
        "--join",
        metavar="URL",
        help="join a running cluster through any of its nodes (a new node, or one whose "
        "data was wiped); several URLs may be given, comma-separated; needs --http-addr "
        "and --rpc-addr unless the cluster file has them",
    )
    parser.add_argument("--http-addr", help="this node's client address host:port")
    parser.add_argument("--rpc-addr", help="this node's Raft address host:port")
    parser.add_argument(
        "--rpc-listen",
        help="listen for peers here instead of on the advertised rpc_addr (behind a proxy or NAT)",
    )
    parser.add_argument(
        "--client-addr",
        help="also serve the native binary client protocol on this TCP host:port (default: "
        "off); it has no authentication: bind it to loopback or a private network",
    )
    tls = parser.add_argument_group(
        "TLS", "peer links: mutual TLS (all three --peer-* files or none); clients: HTTPS"
    )
    tls.add_argument("--peer-cert-file", help="this node's certificate for the peer links (PEM)")
    tls.add_argument("--peer-key-file", help="the key of --peer-cert-file (PEM)")
    tls.add_argument(
        "--peer-trusted-ca-file",
        help="the cluster's CA: peers must present a certificate signed by it",
    )
    tls.add_argument(
        "--cert-file",
        help="serve HTTPS (and TLS on --client-addr) with this certificate (PEM)",
    )
    tls.add_argument("--key-file", help="the key of --cert-file (PEM)")
    tls.add_argument(
        "--trusted-ca-file",
        help="require clients to present a certificate signed by this CA; also verifies "
        "other nodes' HTTPS (default for that: --peer-trusted-ca-file)",
    )

    parser.add_argument(
        "--storage",
        choices=["segment", "sqlite"],
        default=DEFAULTS.storage,
        help="log store (default: %(default)s)",
    )
    parser.add_argument(
        "--tick-ms",
        type=int,
        default=DEFAULTS.tick_ms,
        help="length of one Raft tick in ms (default: %(default)s)",
    )
    parser.add_argument(
        "--election-ticks",
        type=int,
        default=DEFAULTS.election_ticks,
        help="minimum election timeout in ticks; the timeout is random in "
        "[T, 2T) (default: %(default)s = 150-300 ms)",
    )
    parser.add_argument(
        "--heartbeat-ticks",
        type=int,
        default=DEFAULTS.heartbeat_ticks,
        help="heartbeat interval in ticks (default: %(default)s = 50 ms)",
    )
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=DEFAULTS.max_inflight,
        help="AppendEntries in flight to one follower before the leader waits for an "
        "answer: the replication pipeline's depth (default: %(default)s)",
    )
    parser.add_argument(
        "--snapshot-entries",
        type=int,
        default=DEFAULTS.snapshot_entries,
        help="take a snapshot every N applied entries (default: %(default)s)",
    )
    parser.add_argument(
        "--snapshot-log-ratio",
        type=float,
        default=DEFAULTS.snapshot_log_ratio,
        help="...and once the commands applied since the last snapshot reach this "
        "fraction of its size, so a large state is not rewritten every few thousand "
        "writes (default: %(default)s; 0: count entries only)",
    )
    parser.add_argument(
        "--snapshot-retain",
        type=int,
        default=DEFAULTS.snapshot_retain,
        help="log entries kept behind a snapshot (default: %(default)s)",
    )
    parser.add_argument(
        "--lease-checkpoint-interval",
        type=float,
        default=DEFAULTS.lease_checkpoint_interval_s,
        metavar="SECONDS",
        help="the leader records the time left of leases nothing renewed for this long, "
        "so a node that restarts does not start their countdown again "
        f"(default {DEFAULTS.lease_checkpoint_interval_s})",
    )
    parser.add_argument(
        "--segment-size",
        type=int,
        default=DEFAULTS.segment_size,
        help="log segment size in bytes (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULTS.workers,
        help="HTTP worker processes (default: %(default)s)",
    )
    parser.add_argument(
        "--max-key-bytes",
        type=int,
        default=DEFAULTS.max_key_bytes,
        help="largest key accepted (default: %(default)s)",
    )
    parser.add_argument(
        "--max-value-bytes",
        type=int,
        default=DEFAULTS.max_value_bytes,
        help="largest value accepted (default: %(default)s)",
    )
    parser.add_argument(
        "--max-frame-bytes",
        type=int,
        default=DEFAULTS.max_frame_size,
        help="largest frame accepted from a peer or worker (default: %(default)s)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULTS.request_timeout_s,
        help="seconds a request may wait for a leader and a quorum before "
        "it is answered 503 (default: %(default)s)",
    )
    add_http_limit_flags(parser)
    add_watch_flags(parser)
    add_txn_flags(parser)
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level of the Raft process and its HTTP workers (default: %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=LOG_FORMATS,
        help="log lines on stderr: text for people, or json, one object per line "
        "(default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvnode",
        description="Run a raftkv node. With no cluster file it runs a single-node store.",
    )
    _add_node_flags(parser)
    sub = parser.add_subparsers(dest="command")
    repair = sub.add_parser(
        "repair",
        help="bring back a node whose log or snapshot is damaged: move its data directory "
        "aside and rejoin the cluster under the same id, resyncing from the peers",
    )
    repair.add_argument(
        "--via",
        metavar="URL",
        help="a running member to join through (default: the other nodes of the cluster "
        "file, in turn)",
    )
    restore = sub.add_parser(
        "restore",
        help="seed this node of a new cluster from a backup (GET /cluster/backup); run it "
        "for every member with the same backup and cluster file, then start them",
    )
    restore.add_argument("--from", dest="backup", type=Path, required=True, help="the backup file")
    dev = sub.add_parser("dev", help="start a local cluster on this machine (Ctrl-C stops it)")
    dev.add_argument("--nodes", type=int, default=3, help="cluster size (default: %(default)s)")
    dev.add_argument(
        "--http-port",
        type=int,
        default=8001,
        help="HTTP port of node 1; node i uses port + i - 1 (default: %(default)s)",
    )
    dev.add_argument(
        "--rpc-port",
        type=int,
        default=9001,
        help="Raft port of node 1; node i uses port + i - 1 (default: %(default)s)",
    )
    dev.add_argument(
        "--client-port",
        type=int,
        default=7001,
        help="native client port of node 1; node i uses port + i - 1; 0 turns the native "
        "port off (default: %(default)s)",
    )
    dev.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the cluster file and data go (default: a new temp dir)",
    )
    return parser


def _own_address(args: argparse.Namespace, cluster: dict[int, NodeAddress]) -> NodeAddress:
    if args.http_addr and args.rpc_addr:
        return NodeAddress(args.node_id, args.http_addr, args.rpc_addr)
    if args.node_id in cluster:
        return cluster[args.node_id]
    raise ConfigError(
        f"node {args.node_id} is not in the cluster file: give --http-addr and --rpc-addr"
    )


def tls_from_args(args: argparse.Namespace) -> tuple[PeerTls | None, ClientTls | None]:
    try:
        return (
            peer_tls_from_flags(args.peer_cert_file, args.peer_key_file, args.peer_trusted_ca_file),
            client_tls_from_flags(args.cert_file, args.key_file, args.trusted_ca_file),
        )
    except TlsSetupError as exc:
        raise ConfigError(str(exc)) from None


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    # First: a TLS mistake is reported before anything (joining a cluster) happens.
    peer_tls, client_tls = tls_from_args(args)
    if args.cluster is not None:
        cluster = load_cluster_file(args.cluster)
    elif Path("cluster.json").exists():
        cluster = load_cluster_file(Path("cluster.json"))
    elif args.join:
        cluster = {}
    else:
        cluster = dict(EMBEDDED_DEFAULT)
    data_dir = args.data_dir or Path("data") / f"node-{args.node_id}"
    if args.join or args.http_addr or args.rpc_addr or args.node_id not in cluster:
        cluster = {**cluster, args.node_id: _own_address(args, cluster)}
    if args.join and not (data_dir / "raft_state.json").exists():
        # The replicated membership is what counts from now on; the cluster file (if
        # any) only told us our own address.
        cluster = join_cluster(
            args.join, cluster[args.node_id], data_dir, node_http_context(client_tls, peer_tls)
        )
    return NodeConfig(
        node_id=args.node_id,
        cluster=cluster,
        data_dir=data_dir,
        storage=args.storage,
        tick_ms=args.tick_ms,
        election_ticks=args.election_ticks,
        heartbeat_ticks=args.heartbeat_ticks,
        max_inflight=args.max_inflight,
        snapshot_entries=args.snapshot_entries,
        snapshot_log_ratio=args.snapshot_log_ratio,
        snapshot_retain=args.snapshot_retain,
        lease_checkpoint_interval_s=args.lease_checkpoint_interval,
        segment_size=args.segment_size,
        max_key_bytes=args.max_key_bytes,
        max_value_bytes=args.max_value_bytes,
        max_frame_size=args.max_frame_bytes,
        request_timeout_s=args.request_timeout,
        workers=args.workers,
        log_level=args.log_level,
        log_format=args.log_format,
        rpc_listen=args.rpc_listen,
        client_addr=args.client_addr,
        peer_tls=peer_tls,
        client_tls=client_tls,
        http_limits=_http_limits(args),
        watch_limits=_watch_limits(args),
        txn_limits=_txn_limits(args),
    )


def _watch_limits(args: argparse.Namespace) -> WatchLimits:
    try:
        return watch_limits_from_args(args)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _txn_limits(args: argparse.Namespace) -> TxnLimits:
    try:
        return txn_limits_from_args(args)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _http_limits(args: argparse.Namespace) -> HttpLimits:
    try:
        return http_limits_from_args(args)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def join_cluster(
    url: str, me: NodeAddress, data_dir: Path, tls: ssl.SSLContext | None = None
) -> dict[int, NodeAddress]:
    """Ask a running cluster to add this node, and prepare its data directory.

    The node starts as a learner with an empty log; the leader streams it a snapshot and
    the log, and promotes it to voter once it has caught up. Until then it refuses to
    vote (see RaftNode), which keeps a node whose disk was wiped from voting twice in a
    term it had already voted in. ``tls``: the cluster serves HTTPS, verified with it.
    """
    scheme = "https" if tls is not None else "http"
    bases = [u if "://" in u else f"{scheme}://{u}" for u in url.split(",") if u.strip()]
    if not bases:
        raise ConfigError("--join needs the URL of a running member")
    deadline = time.monotonic() + JOIN_PATIENCE_S
    attempt = 0
    while True:
        # Several URLs may be given: a member that went down is skipped for the next.
        base = bases[attempt % len(bases)]
        attempt += 1
        # A cluster in the middle of an election or of another membership change
        # answers 503 or 409 for a moment: keep asking until it can take us.
        try:
            response = httpx.post(
                f"{base.rstrip('/')}/cluster/members",
                params={"wait": "false"},
                json={"id": me.node_id, "rpc_addr": me.rpc_addr, "http_addr": me.http_addr},
                timeout=60.0,
                verify=tls if tls is not None else True,
            )
        except httpx.HTTPError as exc:
            problem = f"cannot reach {base} to join: {exc}"
        else:
            if response.status_code in (200, 202):
                break
            problem = f"{base} refused to add node {me.node_id}: {response.text}"
            if response.status_code not in (409, 502, 503, 504):
                raise ConfigError(problem)
        if time.monotonic() >= deadline:
            raise ConfigError(problem)
        logging.getLogger("raftkv.kvnode").warning("%s; retrying", problem)
        time.sleep(1.0)
    answer = response.json()
    members = {
        int(n): NodeAddress(int(a["id"]), a["http_addr"], a["rpc_addr"])
        for n, a in answer["members"].items()
    }
    prepare_joining_node(data_dir, int(answer["cluster_id"]), me.node_id)
    return members


def prepare_repair(args: argparse.Namespace) -> int:
    """Move the damaged data aside (kept for inspection) and arrange to rejoin: the node
    then starts as if its disk had been wiped, which the cluster repairs on its own."""
    data_dir = args.data_dir or Path("data") / f"node-{args.node_id}"
    if data_dir.exists():
        aside = data_dir.with_name(f"{data_dir.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        data_dir.rename(aside)
        print(f"kvnode repair: moved {data_dir} aside to {aside}", file=sys.stderr)
    if args.via:
        args.join = args.via
        return 0
    cluster = load_cluster_file(args.cluster) if args.cluster else {}
    try:
        peer_tls, client_tls = tls_from_args(args)
    except ConfigError as exc:
        print(f"kvnode repair: {exc}", file=sys.stderr)
        return 2
    https = node_http_context(client_tls, peer_tls)
    for node_id, address in sorted(cluster.items()):
        if node_id == args.node_id:
            continue
        url = f"{'https' if https is not None else 'http'}://{address.http_addr}"
        try:
            # Any answer will do: the node is up, and joining waits for a leader.
            httpx.get(f"{url}/health", timeout=2.0, verify=https or True)
        except httpx.HTTPError:
            continue
        args.join = url
        return 0
    print("kvnode repair: no running member to join through; give --via URL", file=sys.stderr)
    return 2


def run_restore(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        result = restore_backup(
            args.backup, config.data_dir, config.node_id, config.cluster, config.storage
        )
    except (ConfigError, RestoreError) as exc:
        print(f"kvnode restore: {exc}", file=sys.stderr)
        return 2
    except (LogCorruptionError, StorageCorruptionError, NodeSnapshotError) as exc:
        print(f"kvnode restore: the backup is damaged: {exc}", file=sys.stderr)
        return 3
    print(
        f"restored node {result['node_id']} into {result['data_dir']}: {result['keys']} keys "
        f"and {result['leases']} leases at index {result['index']} (term {result['term']}), "
        f"state hash {result['state_hash']}"
    )
    return 0


def dev_client_addr(args: argparse.Namespace, node_id: int) -> str | None:
    """Node ``node_id``'s native client address in a dev cluster (None: turned off)."""
    if args.client_port == 0:
        return None
    return f"127.0.0.1:{args.client_port + node_id - 1}"


def dev_node_command(
    args: argparse.Namespace, node_id: int, cluster_file: Path, base: Path
) -> list[str]:
    """The command that runs node ``node_id`` of a dev cluster."""
    native = dev_client_addr(args, node_id)
    return [
        sys.executable,
        "-P",  # never import from the working directory, only the installed package
        "-m",
        "raftkv.cli.kvnode",
        "--node-id",
        str(node_id),
        "--cluster",
        str(cluster_file),
        "--data-dir",
        str(base / f"node-{node_id}"),
        "--storage",
        args.storage,
        "--log-level",
        args.log_level,
        "--log-format",
        args.log_format,
        *(["--client-addr", native] if native else []),
    ]


class _StopRequested(Exception):
    """SIGTERM reached the dev supervisor."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _StopRequested


def run_dev_cluster(args: argparse.Namespace) -> int:
    # SIGTERM must stop the nodes as Ctrl-C does; by default it would end this process
    # alone and leave the nodes holding their ports.
    signal.signal(signal.SIGTERM, _raise_stop)
    base = args.dir or Path(tempfile.mkdtemp(prefix="raftkv-dev-"))
    base.mkdir(parents=True, exist_ok=True)
    nodes = {
        i: NodeAddress(
            i, f"127.0.0.1:{args.http_port + i - 1}", f"127.0.0.1:{args.rpc_port + i - 1}"
        )
        for i in range(1, args.nodes + 1)
    }
    cluster_file = base / "cluster.json"
    cluster_file.write_bytes(
        orjson.dumps(
            {"nodes": {str(i): a.to_json() for i, a in nodes.items()}}, option=orjson.OPT_INDENT_2
        )
    )
    processes = [
        subprocess.Popen(dev_node_command(args, node_id, cluster_file, base)) for node_id in nodes
    ]
    print(f"raftkv dev cluster of {args.nodes} nodes (data in {base}):", flush=True)
    for node_id, address in nodes.items():
        native = dev_client_addr(args, node_id)
        extra = f", native clients on {native}" if native else ""
        print(f"  node {node_id}: http://{address.http_addr}{extra}", flush=True)
    print("Ctrl-C stops the cluster.", flush=True)
    try:
        while all(p.poll() is None for p in processes):
            time.sleep(0.2)
        print("a node exited; stopping the cluster", file=sys.stderr)
    except (KeyboardInterrupt, _StopRequested):
        pass
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    codes = [process.wait() for process in processes]
    return 0 if all(code == 0 for code in codes) else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before anything is written: every file and directory of the node (and of its
    # workers, which inherit the umask) is private to this user. See file_modes.
    restrict_umask()
    if args.command == "dev":
        return run_dev_cluster(args)
    if args.command == "restore":
        return run_restore(args)
    if args.command == "repair":
        prepared = prepare_repair(args)
        if prepared != 0:
            return prepared
    # Before the configuration is read: joining a cluster logs its retries.
    setup_logging(args.log_level, args.log_format, node_id=args.node_id, process_kind="raft")
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"kvnode: {exc}", file=sys.stderr)
        return 2
    logger = logging.getLogger("raftkv.kvnode")
    try:
        return run(config)
    except (LogCorruptionError, StorageCorruptionError, NodeSnapshotError) as exc:
        # Damaged data is never skipped: say which file and where, and stop.
        logger.error("refusing to start: %s", exc)
        return 3
    except FatalStorageError as exc:
        logger.error("refusing to start: %s", exc)
        return 3
    except OSError as exc:
        logger.error("%s", exc)
        return 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
