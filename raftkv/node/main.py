"""Run one node: the Raft process with its IPC server and supervised HTTP workers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvloop

from raftkv.node.gc_monitor import GcPauseMonitor, freeze_heap
from raftkv.node.ipc_server import IpcServer
from raftkv.node.native_check import NativeRequestCheck
from raftkv.node.node import RaftNode
from raftkv.node.node_config import NodeConfig
from raftkv.node.supervisor import WorkerSupervisor, bind_http_socket
from raftkv.node.worker_metrics_dir import prepare_worker_metrics_dir
from raftkv.wire.peer_tls import worker_tls_arguments


def worker_arguments(config: NodeConfig) -> list[str]:
    return [
        "--node-id",
        str(config.node_id),
        "--max-key-bytes",
        str(config.max_key_bytes),
        "--max-value-bytes",
        str(config.max_value_bytes),
        "--request-timeout",
        str(config.request_timeout_s),
        "--log-level",
        config.log_level,
        "--log-format",
        config.log_format,
        *worker_tls_arguments(config.client_tls, config.peer_tls),
        *config.http_limits.worker_arguments(config.workers),
        *config.watch_limits.worker_arguments(),
        *config.txn_limits.worker_arguments(),
        *config.extra_worker_args,
    ]


async def serve(config: NodeConfig) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or a fatal storage error (exit 1)."""
    logger = logging.getLogger("raftkv.kvnode")
    gc_monitor = GcPauseMonitor(logging.getLogger("raftkv.gc"))
    gc_monitor.install()
    node = RaftNode(config, freeze_heap=True)
    await node.start()
    ipc = IpcServer(
        config.data_dir / "raft.sock",
        node.submit,
        max_frame_size=config.max_frame_size,
        cluster_id=node.cluster_id,
        node_id=config.node_id,
        tcp_address=config.client_host_port,
        tcp_ssl=config.client_tls.server_context() if config.client_tls is not None else None,
        watches=node.watches,
        tcp_check=NativeRequestCheck(
            config.max_key_bytes, config.max_value_bytes, lambda: node.sm.auth.enabled
        ),
    )
    try:
        await ipc.start()
    except OSError:
        await node.stop()  # sync and close the log before the bind error ends the process
        raise
    if ipc.tcp_address is not None:
        logger.info(
            "node %d serving native clients on %s:%s",
            config.node_id,
            ipc.tcp_address[0],
            ipc.tcp_port,
        )
    http_host, http_port = config.me.http_host_port
    if node.config.node_id in node.addresses:
        http_host, http_port = node.addresses[node.config.node_id].http_host_port
    supervisor = WorkerSupervisor(
        config.workers,
        bind_http_socket(http_host, http_port),
        ipc.path,
        [*worker_arguments(config), "--cluster-id", str(node.cluster_id)],
        metrics_dir=prepare_worker_metrics_dir(config.data_dir),
    )
    await supervisor.start()
    logger.info(
        "node %d serving %s on %s:%d",
        config.node_id,
        "HTTPS" if config.client_tls is not None else "HTTP",
        http_host,
        http_port,
    )

    # Started: the log and snapshot are loaded, the sockets bound and the workers run.
    # What exists now lives as long as the process (gc_monitor.py).
    freeze_heap()

    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    stop_wait = asyncio.create_task(stop_requested.wait())
    fatal_wait = asyncio.create_task(node.stopped.wait())
    await asyncio.wait({stop_wait, fatal_wait}, return_when=asyncio.FIRST_COMPLETED)
    for task in (stop_wait, fatal_wait):
        task.cancel()

    logger.info("node %d shutting down", config.node_id)
    # Workers first: they stop accepting and finish their in-flight requests, which the
    # Raft process (still running) answers. Then the Raft process fails what is left,
    # syncs the log and closes it.
    await supervisor.stop()
    await node.stop()
    await ipc.stop()
    if node.fatal_error is not None:
        logger.error("node %d stopped on a fatal error: %s", config.node_id, node.fatal_error)
        return 1
    logger.info("node %d stopped cleanly", config.node_id)
    return 0


def run(config: NodeConfig) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        return uvloop.run(serve(config))
    return 0
