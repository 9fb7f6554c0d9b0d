"""Entry point of one HTTP worker process.

The Raft process starts each worker as
``python -m raftkv.http.worker --ipc-socket PATH --fd N``, where file descriptor N is a
bound, listening TCP socket it passes down (several workers accept on the same socket).
``--host``/``--port`` make the worker bind its own socket instead, to run it alone.
SIGTERM or SIGINT stop it gracefully: it finishes the requests under way, closes its
IPC connection and exits with status 0.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence

import uvicorn

from raftkv.http.routes.app import create_app
from raftkv.http.serving.connection_limits import limited_http_protocol
from raftkv.http.serving.https import https_protocol
from raftkv.http.serving.settings import (
    DEFAULT_MAX_KEY_BYTES,
    DEFAULT_MAX_VALUE_BYTES,
    JSON_OVERHEAD_BYTES,
    WorkerSettings,
)
from raftkv.logs import LOG_FORMATS, setup_logging
from raftkv.node.gc_monitor import GcPauseMonitor, freeze_heap
from raftkv.wire.limits import add_http_limit_flags, http_limits_from_args
from raftkv.wire.tls_contexts import TlsSetupError
from raftkv.wire.txn_limits import add_txn_flags, txn_limits_from_args
from raftkv.wire.watch_limits import add_watch_flags, watch_limits_from_args
from raftkv_ext.codec import DEFAULT_MAX_FRAME_SIZE

__all__ = ["main", "parse_args"]

log = logging.getLogger("raftkv.http.worker")

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raftkv.http.worker",
        description="raftkv HTTP worker: serves the HTTP API, forwards to the Raft process.",
    )
    parser.add_argument("--ipc-socket", required=True, help="the Raft process's Unix socket")
    listen = parser.add_mutually_exclusive_group(required=True)
    listen.add_argument(
        "--fd", type=int, help="an inherited, bound and listening TCP socket to accept on"
    )
    listen.add_argument("--host", help="address to bind (with --port), to run standalone")
    parser.add_argument("--port", type=int, help="port to bind (with --host)")
    parser.add_argument("--node-id", type=int, default=None, help="this node's id")
    parser.add_argument(
        "--cluster-id", type=int, default=0, help="the cluster's id, for the IPC handshake"
    )
    parser.add_argument("--max-key-bytes", type=_positive_int, default=DEFAULT_MAX_KEY_BYTES)
    parser.add_argument("--max-value-bytes", type=_positive_int, default=DEFAULT_MAX_VALUE_BYTES)
    parser.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=None,
        help=f"largest request body (default: max value + {JSON_OVERHEAD_BYTES} bytes)",
    )
    parser.add_argument(
        "--request-timeout", type=_positive_float, default=5.0, help="seconds per request"
    )
    parser.add_argument("--max-frame-size", type=_positive_int, default=DEFAULT_MAX_FRAME_SIZE)
    parser.add_argument("--log-level", choices=_LOG_LEVELS, default="info")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text")
    parser.add_argument("--cert-file", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--key-file", help="the certificate's private key (PEM)")
    parser.add_argument(
        "--trusted-ca-file", help="require HTTPS clients to present a certificate signed by this CA"
    )
    parser.add_argument(
        "--outbound-ca-file",
        help="verify other nodes' HTTPS certificates with this CA (default: the system's CAs)",
    )
    add_http_limit_flags(parser, for_worker=True)
    add_watch_flags(parser, for_worker=True)
    add_txn_flags(parser)
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[WorkerSettings, argparse.Namespace]:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.host is not None and args.port is None:
        parser.error("--host needs --port")
    if args.fd is not None and args.port is not None:
        parser.error("--port goes with --host, not with --fd")
    max_body = args.max_body_bytes
    if max_body is None:
        max_body = args.max_value_bytes + JSON_OVERHEAD_BYTES
    try:
        settings = WorkerSettings(
            ipc_path=args.ipc_socket,
            node_id=args.node_id,
            cluster_id=args.cluster_id,
            max_key_bytes=args.max_key_bytes,
            max_value_bytes=args.max_value_bytes,
            max_body_bytes=max_body,
            request_timeout_s=args.request_timeout,
            max_frame_size=args.max_frame_size,
            tls_cert_file=args.cert_file,
            tls_key_file=args.key_file,
            tls_client_ca_file=args.trusted_ca_file,
            outbound_ca_file=args.outbound_ca_file,
            limits=http_limits_from_args(args),
            watch=watch_limits_from_args(args),
            txn=txn_limits_from_args(args),
        )
    except ValueError as exc:
        parser.error(str(exc))
    return settings, args


def _exit_with_parent(server: uvicorn.Server) -> None:
    """A worker started by a Raft process stops when that process is gone.

    Without this, a Raft process killed with SIGKILL would leave its workers holding the
    inherited HTTP socket, and the restarted node could not bind its port.
    """
    parent = os.getppid()

    def watch() -> None:
        while not server.should_exit:
            if os.getppid() != parent:
                log.warning("the Raft process (pid %d) is gone; stopping", parent)
                server.should_exit = True
                return
            time.sleep(0.2)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def watch_collections() -> GcPauseMonitor:
    """Log every collection of 50 ms or more, as the Raft process does: a long one (a
    worker holding thousands of watch streams) stalls every request the worker serves."""
    monitor = GcPauseMonitor(logging.getLogger("raftkv.gc"))
    monitor.install()
    return monitor


class _WorkerServer(uvicorn.Server):
    """uvicorn's server, which moves everything the worker holds once started out of
    the garbage collector's sight (``tune_collections``)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        tune_collections()


def tune_collections() -> None:
    """Make garbage collection cheap for a worker that is serving.

    Once started, a worker's heap is mostly what it will hold until it exits (modules,
    the app, the metrics), hundreds of thousands of objects, and a full collection
    walks every one of them. Each request also leaves objects alive across a few
    collections (its coroutine, future and buffers, while it waits for the Raft
    process), which pushes them into the older generations and triggers full
    collections often: a profile of writes at 64 connections found 40% of the
    worker's CPU in the collector. ``gc.freeze`` takes what exists now out of every
    later collection, and a larger first generation lets a request's objects die
    before they are promoted. Cycles are still collected; only less often.
    """
    freeze_heap()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


GC_YOUNG_THRESHOLD = 20_000
"""Allocations between collections of the youngest generation (CPython's default: 700)."""


def main(argv: Sequence[str] | None = None) -> int:
    settings, args = parse_args(argv)
    setup_logging(args.log_level, args.log_format, node_id=settings.node_id, process_kind="worker")
    watch_collections()
    app = create_app(settings)
    plain_http = limited_http_protocol(settings.limits, app.state.hot_routes)
    try:
        https = https_protocol(settings, log, plain_http)
    except TlsSetupError as exc:
        log.error("cannot serve HTTPS: %s", exc)
        return 2
    config = uvicorn.Config(
        app,
        host=args.host or "127.0.0.1",
        port=args.port or 0,
        loop="uvloop",
        http=https if https is not None else plain_http,
        lifespan="on",
        # uvicorn's records go through the handler set up above, in the node's format,
        # rather than through uvicorn's own text handlers.
        log_config=None,
        log_level=args.log_level,
        access_log=False,
        server_header=False,
        # X-Forwarded-For is not trusted (docs/security.md): a client's address, which
        # the rate limit goes by, is the connection's, on every path.
        proxy_headers=False,
    )
    server = _WorkerServer(config)
    sockets: list[socket.socket] | None = None
    if args.fd is not None:
        # Adopt the inherited socket with its real family (uvicorn's own fd= path
        # assumes a Unix socket).
        try:
            sock = socket.socket(fileno=args.fd)
        except OSError as exc:
            log.error("cannot use file descriptor %d as a socket: %s", args.fd, exc)
            return 2
        sockets = [sock]
        log.info("accepting on inherited socket %s", sock.getsockname())

    def request_exit(signum: int, frame: object) -> None:
        # While the server runs, uvicorn's own handler is in place; this one covers a
        # signal that arrives before (the server then stops right after starting) and the
        # signal uvicorn re-raises after its graceful shutdown, whose default action
        # would kill the process instead of letting it exit with status 0.
        server.should_exit = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_exit)
    if args.fd is not None:
        _exit_with_parent(server)
    server.run(sockets=sockets)
    if not server.started:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
