"""The HTTP worker served on a real port by uvicorn, in front of the fake Raft process of
tests/http/fake_raft.py (which applies real commands to a real state machine): for the
tests of the clients and of kvctl that need the whole HTTP API, a node's answers
included, without starting a cluster."""

from __future__ import annotations

import contextlib
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

# fake_raft lives with the HTTP worker's tests; pytest puts that directory on sys.path
# only while it collects them.
_HTTP_TESTS = str(Path(__file__).resolve().parent / "http")
if _HTTP_TESTS not in sys.path:
    sys.path.insert(0, _HTTP_TESTS)

from fake_raft import FakeRaft  # noqa: E402

from raftkv.http.routes.app import create_app  # noqa: E402
from raftkv.http.serving.settings import WorkerSettings  # noqa: E402
from raftkv.testing.cluster import free_ports, wait_until  # noqa: E402

__all__ = ["FakeRaft", "ServedWorker", "served_worker"]


@dataclass
class ServedWorker:
    url: str
    """``http://127.0.0.1:PORT``."""
    raft: FakeRaft
    """The fake Raft process: its state machine (``raft.data``) and the requests the
    worker sent it (``raft.requests_of``)."""


@contextlib.contextmanager
def served_worker(**settings: Any) -> Iterator[ServedWorker]:
    """A worker with ``WorkerSettings(**settings)`` (and the fake's socket) on a free
    port of 127.0.0.1, until the block ends."""
    with tempfile.TemporaryDirectory(prefix="rkv-") as directory:  # short: a socket path
        raft = FakeRaft(str(Path(directory) / "raft.sock"))
        raft.start()
        try:
            app = create_app(WorkerSettings(ipc_path=raft.path, node_id=1, **settings))
            (port,) = free_ports(1)
            config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
            server = uvicorn.Server(config)
            thread = threading.Thread(target=server.run, name="served-worker", daemon=True)
            thread.start()
            try:
                wait_until(lambda: server.started, 10.0, what="the worker to start")
                yield ServedWorker(f"http://127.0.0.1:{port}", raft)
            finally:
                server.should_exit = True
                thread.join(10)
        finally:
            raft.stop()
