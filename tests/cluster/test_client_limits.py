"""The limits of a real `kvnode` against misbehaving clients and peers, over raw sockets:
connections per worker, header sizes and counts, idle and slow connections, the rate
limit, body sizes, and oversized frames from a peer. Every refusal is an answer with a
JSON error (or a closed connection), never a hang or a 500, and the node keeps serving.
"""

from __future__ import annotations

import math
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from raftkv.node.node_config import cluster_id_for, load_cluster_file
from raftkv.testing.cluster import LocalCluster, free_ports, running_cluster, wait_until
from raftkv.wire.tls_contexts import client_context
from raftkv_ext.codec import (
    PROTOCOL_VERSION,
    FrameDecoder,
    Handshake,
    HandshakeReply,
    encode,
)

# How long a test waits for an answer or a close before it calls the server hung.
PATIENCE_S = 15.0


class Answer:
    """One HTTP response read off a raw socket."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def error(self) -> str:
        message = orjson.loads(self.body)["error"]
        assert isinstance(message, str)
        return message


def connect(cluster: LocalCluster) -> socket.socket:
    return socket.create_connection(("127.0.0.1", cluster.nodes[1].http_port), PATIENCE_S)


def read_answer(sock: socket.socket) -> Answer:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a whole answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of a body"
        body += chunk
    return Answer(int(status_line.split()[1]), headers, body)


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes the connection (within PATIENCE_S: a hang fails)."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def request(path: str = "/health", *, extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: node\r\n" + extra + b"\r\n"


def exchange(cluster: LocalCluster, data: bytes) -> tuple[Answer, bool]:
    """Send ``data`` on a new connection: the answer, and whether the server closed."""
    with connect(cluster) as sock:
        sock.sendall(data)
        answer = read_answer(sock)
        return answer, closed_by_server(sock)


def node_log(cluster: LocalCluster) -> str:
    return cluster.nodes[1].log_text()


def still_serves(cluster: LocalCluster) -> None:
    with httpx.Client(timeout=PATIENCE_S) as client:
        response = client.put(f"{cluster.url(1)}/kv/still-here", content=b"yes")
        assert response.status_code == 200, response.text
        assert client.get(f"{cluster.url(1)}/kv/still-here").content == b"yes"
    assert cluster.nodes[1].running


@pytest.fixture(scope="module")
def timeouts_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    flags = ["--idle-timeout", "1", "--read-timeout", "1"]
    with running_cluster(tmp_path_factory.mktemp("timeouts"), 1, extra_args=flags) as cluster:
        cluster.wait_ready()
        yield cluster


@pytest.fixture(scope="module")
def limits_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    flags = [
        "--max-connections", "4", "--max-header-bytes", "4096", "--max-headers", "20",
        "--max-key-bytes", "100", "--max-value-bytes", "1000", "--max-body-bytes", "1500",
    ]  # fmt: skip
    with running_cluster(tmp_path_factory.mktemp("limits"), 1, extra_args=flags) as cluster:
        cluster.wait_ready()
        # The harness's keep-alive connection would take one of the four places.
        cluster.client.close()
        cluster.client = httpx.Client(timeout=PATIENCE_S)
        yield cluster


# -- idle and slow clients ----------------------------------------------------------


def test_a_connection_that_never_sends_is_closed_after_the_idle_timeout(
    timeouts_node: LocalCluster,
) -> None:
    with connect(timeouts_node) as sock:
        assert closed_by_server(sock)
    still_serves(timeouts_node)


def test_an_idle_keep_alive_connection_is_closed(timeouts_node: LocalCluster) -> None:
    with connect(timeouts_node) as sock:
        sock.sendall(request("/health"))
        answer = read_answer(sock)
        assert answer.status == 200 and "close" not in answer.headers.get("connection", "")
        assert closed_by_server(sock)


def test_headers_that_stop_halfway_get_408(timeouts_node: LocalCluster) -> None:
    with connect(timeouts_node) as sock:
        sock.sendall(b"GET /kv/slow HTTP/1.1\r\nHost: node\r\nX-Partial: ")
        answer = read_answer(sock)
        assert answer.status == 408
        assert answer.error() == "the request's headers did not arrive within 1 s"
        assert answer.headers["connection"] == "close"
        assert closed_by_server(sock)
    wait_until(
        lambda: "request's headers did not arrive within 1 s" in node_log(timeouts_node),
        timeout=PATIENCE_S,
        what="the slow client in the log",
    )
    still_serves(timeouts_node)


def test_a_body_that_stops_halfway_gets_408_and_is_not_written(
    timeouts_node: LocalCluster,
) -> None:
    with connect(timeouts_node) as sock:
        sock.sendall(
            b"PUT /kv/half-sent HTTP/1.1\r\nHost: node\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
        )
        answer = read_answer(sock)
        assert answer.status == 408
        assert answer.error() == "the request's body did not arrive within 1 s"
        assert closed_by_server(sock)
    with httpx.Client(timeout=PATIENCE_S) as client:
        assert client.get(f"{timeouts_node.url(1)}/kv/half-sent").status_code == 404
    assert "Traceback" not in node_log(timeouts_node)
    still_serves(timeouts_node)


# -- headers --------------------------------------------------------------------------


def test_an_oversized_header_gets_431(limits_node: LocalCluster) -> None:
    answer, closed = exchange(limits_node, request(extra=b"X-Big: " + b"a" * 5000 + b"\r\n"))
    assert answer.status == 431
    assert answer.error() == "the request line and headers exceed the limit of 4096 bytes"
    assert closed


def test_a_header_that_never_ends_gets_431_not_a_hang(limits_node: LocalCluster) -> None:
    with connect(limits_node) as sock:
        # Twice the limit, and no end to the header in sight.
        sock.sendall(b"GET /health HTTP/1.1\r\nX-Endless: " + b"a" * 8192)
        answer = read_answer(sock)
        assert answer.status == 431
        assert answer.error() == "the request line and headers exceed the limit of 4096 bytes"
        assert closed_by_server(sock)


def test_too_many_headers_get_431(limits_node: LocalCluster) -> None:
    extra = b"".join(b"X-H%d: v\r\n" % i for i in range(25))
    answer, closed = exchange(limits_node, request(extra=extra))
    assert answer.status == 431
    assert answer.error() == "the request has more than 20 header fields, the limit"
    assert closed
    wait_until(
        lambda: "more than 20 header fields" in node_log(limits_node),
        timeout=PATIENCE_S,
        what="the refusal in the log",
    )


def test_a_request_line_too_long_gets_414(limits_node: LocalCluster) -> None:
    answer, closed = exchange(limits_node, request("/kv/" + "k" * 5000))
    assert answer.status == 414
    assert answer.error() == "the request target exceeds the limit of 4096 bytes"
    assert closed


def test_headers_within_the_limits_are_served(limits_node: LocalCluster) -> None:
    # Host, 18 more and Connection: 20 fields, the limit, in about 2.3 KiB.
    extra = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(18))
    answer, closed = exchange(limits_node, request(extra=extra + b"Connection: close\r\n"))
    assert answer.status == 200
    assert closed


def test_a_request_that_is_not_http_gets_400(limits_node: LocalCluster) -> None:
    answer, closed = exchange(limits_node, b"\x16\x03\x01 not http at all\r\n\r\n")
    assert answer.status == 400
    assert answer.error().startswith("invalid HTTP request")
    assert closed
    still_serves(limits_node)


# -- sizes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "message"),
    [
        ("PUT", "/kv/" + "k" * 101, b"v", "key is 101 bytes; the limit is 100 bytes"),
        ("PUT", "/kv/big", b"v" * 1001, "value is 1001 bytes; the limit is 1000 bytes"),
        (
            "POST",
            "/kv/big",
            orjson.dumps({"value": "v" * 1001}),
            "value is 1001 bytes; the limit is 1000 bytes",
        ),
        (
            "POST",
            "/kv/big",
            b'{"value": "v", "pad": "' + b" " * 1600 + b'"}',
            "request body is 1625 bytes; the limit is 1500 bytes",
        ),
    ],
)
def test_oversized_keys_values_and_bodies_get_413(
    limits_node: LocalCluster, method: str, path: str, body: bytes, message: str
) -> None:
    with httpx.Client(timeout=PATIENCE_S) as client:
        response = client.request(method, f"{limits_node.url(1)}{path}", content=body)
    assert response.status_code == 413
    assert response.json()["error"] == message


# -- connections ----------------------------------------------------------------------


def admitted_connection(cluster: LocalCluster) -> socket.socket:
    """A connection that got a 200 (retrying while the worker still counts connections
    other tests closed a moment ago)."""
    holder: list[socket.socket] = []

    def admitted() -> bool:
        sock = connect(cluster)
        sock.sendall(request("/health"))
        if read_answer(sock).status == 200:
            holder.append(sock)
            return True
        sock.close()
        return False

    wait_until(admitted, timeout=PATIENCE_S, what="a connection to be admitted")
    return holder[0]


def test_connections_above_the_limit_get_503_and_are_closed(limits_node: LocalCluster) -> None:
    held = [admitted_connection(limits_node) for _ in range(4)]
    try:
        answer, closed = exchange(limits_node, request("/health"))
        assert answer.status == 503
        assert answer.headers["retry-after"] == "1"
        assert "4 connections open, its limit" in answer.error()
        assert closed
        # The admitted ones go on being served on their connections.
        for sock in held:
            sock.sendall(request("/health"))
            assert read_answer(sock).status == 200
        wait_until(
            lambda: "refusing a connection from 127.0.0.1" in node_log(limits_node),
            timeout=PATIENCE_S,
            what="the refusal in the log",
        )
    finally:
        for sock in held:
            sock.close()
    # Once one closes, a new connection is admitted again.
    admitted_connection(limits_node).close()


# -- rate limit -----------------------------------------------------------------------


def test_the_rate_limit_answers_429_per_client_and_spares_health(tmp_path: Path) -> None:
    # One request per 100 s after a burst of 3: nothing refills during the test.
    flags = ["--rate-limit", "0.01", "--rate-burst", "3"]
    with running_cluster(tmp_path, 1, extra_args=flags) as cluster:
        cluster.wait_ready()
        url = cluster.url(1)
        # Two clients told apart by their addresses: 127.0.0.1 and 127.0.0.2.
        other = httpx.Client(
            timeout=PATIENCE_S, transport=httpx.HTTPTransport(local_address="127.0.0.2")
        )
        with httpx.Client(timeout=PATIENCE_S) as client, other:
            burst_began = time.monotonic()
            statuses = [client.put(f"{url}/kv/r{i}", content=b"v").status_code for i in range(3)]
            assert statuses == [200, 200, 200]
            refused = client.put(f"{url}/kv/r3", content=b"v")
            elapsed = time.monotonic() - burst_began
            assert refused.status_code == 429
            # The next token is 100 s after the bucket emptied, less what has refilled
            # since: whole seconds, rounded up.
            assert 100 - math.ceil(elapsed) <= int(refused.headers["retry-after"]) <= 100
            assert "too many requests" in refused.json()["error"]
            assert client.get(f"{url}/kv/r0").status_code == 429
            assert [client.get(f"{url}/health").status_code for _ in range(10)] == [200] * 10
            # Another address is another client.
            assert other.get(f"{url}/kv/r0").status_code == 200
            metrics = other.get(f"{url}/metrics")
            assert metrics.status_code == 200
            assert "raftkv_http_rate_limited_total 2.0" in metrics.text


# -- frames between peers -------------------------------------------------------------


def test_a_peer_sending_an_oversized_frame_is_cut_off_and_the_node_goes_on(
    tmp_path: Path,
) -> None:
    flags = ["--max-frame-bytes", "65536", "--max-value-bytes", "1000"]
    with running_cluster(tmp_path, 1, extra_args=flags) as cluster:
        cluster.wait_ready()
        # Node 2 becomes a member (a learner nobody runs), so that a connection
        # claiming to be node 2 passes the handshake.
        http_port, rpc_port = free_ports(2)
        member = {
            "id": 2,
            "rpc_addr": f"127.0.0.1:{rpc_port}",
            "http_addr": f"127.0.0.1:{http_port}",
        }
        with httpx.Client(timeout=PATIENCE_S) as client:
            added = client.post(
                f"{cluster.url(1)}/cluster/members", params={"wait": "false"}, json=member
            )
            assert added.status_code == 200, added.text
        cluster_id = cluster_id_for(load_cluster_file(cluster.cluster_file))
        with socket.create_connection(("127.0.0.1", cluster.nodes[1].rpc_port), PATIENCE_S) as sock:
            sock.sendall(encode(Handshake(PROTOCOL_VERSION, cluster_id, 2)))
            decoder = FrameDecoder(4096)
            replies: list[object] = []
            while not replies:
                data = sock.recv(4096)
                assert data, "the node closed the connection instead of answering"
                replies = list(decoder.feed(data))
            reply = replies[0]
            assert isinstance(reply, HandshakeReply) and reply.accepted, reply
            # A frame header announcing 1 MiB, 16 times the limit.
            sock.sendall(struct.pack("<IB", 1 << 20, 1))
            assert closed_by_server(sock)
        wait_until(
            lambda: "frame length 1048576 exceeds the limit of 65536 bytes" in node_log(cluster),
            timeout=PATIENCE_S,
            what="the oversized frame in the log",
        )
        line = next(
            line for line in node_log(cluster).splitlines() if "frame length 1048576" in line
        )
        assert "closing peer connection" in line and "node 2" in line
        still_serves(cluster)


# -- over HTTPS -------------------------------------------------------------------------


def test_the_limits_hold_over_https(tmp_path: Path) -> None:
    flags = ["--max-headers", "5", "--read-timeout", "1"]
    with running_cluster(tmp_path, 1, tls=True, extra_args=flags) as cluster:
        cluster.wait_ready()
        url = cluster.url(1)
        assert url.startswith("https://")
        many = {f"X-H{i}": "v" for i in range(8)}
        refused = cluster.client.get(f"{url}/health", headers=many)
        assert refused.status_code == 431
        assert refused.json()["error"] == "the request has more than 5 header fields, the limit"
        context = client_context(cluster.ca_file, *cluster.client_cert_files)
        raw = socket.create_connection(("127.0.0.1", cluster.nodes[1].http_port), PATIENCE_S)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: node\r\n")
            answer = read_answer(sock)
            assert answer.status == 408
            assert answer.error() == "the request's headers did not arrive within 1 s"
        assert cluster.client.get(f"{url}/health").status_code == 200
