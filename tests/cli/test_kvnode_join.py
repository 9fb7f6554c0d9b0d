"""`kvnode --join` keeps asking a cluster that cannot take it yet."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from raftkv.cli import kvnode

from raftkv.node.node_config import ConfigError, NodeAddress

MEMBERS = {
    "1": {"id": 1, "http_addr": "127.0.0.1:1", "rpc_addr": "127.0.0.1:2"},
    "4": {"id": 4, "http_addr": "127.0.0.1:3", "rpc_addr": "127.0.0.1:4"},
}


class _Cluster(BaseHTTPRequestHandler):
    """Answers 503 (no leader), then 409 (a change in progress), then adds the node."""

    answers: list[tuple[int, dict[str, object]]] = []
    requests: list[dict[str, object]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        status, document = type(self).answers.pop(0)
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def cluster_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Cluster)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_join_retries_until_the_cluster_takes_the_node(
    cluster_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kvnode.time, "sleep", lambda _s: None)
    _Cluster.requests = []
    _Cluster.answers = [
        (503, {"error": "no leader is known; retry"}),
        (409, {"error": "a membership change is already in progress"}),
        (200, {"id": 4, "membership": "learner", "cluster_id": 99, "members": MEMBERS}),
    ]
    me = NodeAddress(4, "127.0.0.1:3", "127.0.0.1:4")
    members = kvnode.join_cluster(cluster_url, me, tmp_path / "node-4")
    assert members[4] == me and members[1].rpc_addr == "127.0.0.1:2"
    assert len(_Cluster.requests) == 3
    assert _Cluster.requests[-1] == {"id": 4, "rpc_addr": "127.0.0.1:4", "http_addr": "127.0.0.1:3"}
    state = json.loads((tmp_path / "node-4" / "raft_state.json").read_text())
    assert state["cluster_id"] == 99 and state["node_id"] == 4
    assert (tmp_path / "node-4" / "joining").exists()


def test_join_gives_up_at_once_on_a_bad_request(cluster_url: str, tmp_path: Path) -> None:
    _Cluster.requests = []
    _Cluster.answers = [(400, {"error": '"id" must be a positive integer'})]
    with pytest.raises(ConfigError, match="positive integer"):
        kvnode.join_cluster(cluster_url, NodeAddress(4, "a:1", "b:2"), tmp_path / "n")
    assert len(_Cluster.requests) == 1
    assert not (tmp_path / "n").exists()
