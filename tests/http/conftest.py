"""Fixtures for the HTTP worker tests: a fake Raft process and a worker app in front of it."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_raft import FakeRaft

with warnings.catch_warnings():
    # Recent Starlette prefers the httpx2 package for its TestClient and warns when it
    # finds httpx instead; both work, and httpx is what the project depends on.
    warnings.filterwarnings("ignore", message=".*httpx2")
    from starlette.testclient import TestClient

from raftkv.http.routes.app import create_app
from raftkv.http.serving.settings import WorkerSettings


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # A short directory: a Unix socket path must fit in about 100 bytes, which a test's
    # own tmp_path may not.
    path = Path(tempfile.mkdtemp(prefix="rkv-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake(socket_dir: Path) -> Iterator[FakeRaft]:
    raft = FakeRaft(str(socket_dir / "raft.sock"))
    raft.start()
    yield raft
    raft.stop()


def make_settings(fake: FakeRaft, **overrides: Any) -> WorkerSettings:
    options: dict[str, Any] = {
        "ipc_path": fake.path,
        "node_id": 1,
        "request_timeout_s": 0.5,
        "ipc_grace_s": 0.25,
        "connect_timeout_s": 0.5,
    }
    options.update(overrides)
    return WorkerSettings(**options)


@pytest.fixture
def make_client(fake: FakeRaft) -> Iterator[Callable[..., TestClient]]:
    """Build a TestClient (lifespan started) for a worker with the given settings."""
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        client = TestClient(create_app(make_settings(fake, **overrides)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()
