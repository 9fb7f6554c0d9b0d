"""The streaming keep-alive, ``POST /lease/keepalive``, against a real node: one request
body that does not end, one answer line per keep-alive line (docs/api.md, "Leases").

The client side is a raw socket: an HTTP/1.1 request whose chunked body is written
while its chunked response is read, which is what the route is for.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from raftkv.testing.cluster import LocalCluster

# A read timeout much shorter than the streams below: they must outlive it.
READ_TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def node_url() -> Iterator[str]:
    base = Path(tempfile.mkdtemp(prefix="rkv-lease-stream-"))
    cluster = LocalCluster(base, 1, extra_args=["--read-timeout", str(READ_TIMEOUT_S)])
    try:
        cluster.start()
        yield cluster.url(1)
        assert "Traceback" not in cluster.nodes[1].log_text(), cluster.nodes[1].log_text()
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


class KeepAliveStream:
    """A raw streaming keep-alive: ``send`` writes one body chunk, ``answer`` reads one
    response line."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        self.sock.sendall(
            b"POST /lease/keepalive HTTP/1.1\r\nHost: raftkv\r\n"
            b"Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        self.buffer = b""
        self.head = b""
        self.lines: list[bytes] = []
        self.ended = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))

    def finish(self) -> None:
        self.sock.sendall(b"0\r\n\r\n")

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def _read_head(self) -> None:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        self.head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)

    def _read_chunk(self) -> bytes | None:
        while b"\r\n" not in self.buffer:
            self._fill()
        size_line, rest = self.buffer.split(b"\r\n", 1)
        size = int(size_line, 16)
        while len(rest) < size + 2:
            self._fill()
            rest = self.buffer.split(b"\r\n", 1)[1]
        self.buffer = rest[size + 2 :]
        return rest[:size] if size else None

    def answer(self) -> dict[str, Any] | None:
        """The next line, or None once the response has ended."""
        if not self.head:
            self._read_head()
            assert self.head.startswith(b"HTTP/1.1 200"), self.head
        pending = b""
        while not self.lines and not self.ended:
            chunk = self._read_chunk()
            if chunk is None:
                self.ended = True
                break
            pending += chunk
            *whole, pending = pending.split(b"\n")
            self.lines += [line for line in whole if line]
            assert not pending, "a line split across chunks"
        if not self.lines:
            return None
        document: dict[str, Any] = orjson.loads(self.lines.pop(0))
        return document

    def close(self) -> None:
        self.sock.close()


def _grant(url: str, ttl: float) -> int:
    answer = httpx.post(f"{url}/lease", json={"ttl": ttl}, timeout=10)
    assert answer.status_code == 200, answer.text
    lease_id: int = answer.json()["id"]
    return lease_id


def test_one_stream_keeps_leases_alive_past_their_ttl_and_the_read_timeout(
    node_url: str,
) -> None:
    first, second = _grant(node_url, 1.5), _grant(node_url, 1.5)
    httpx.post(f"{node_url}/kv/stream/a", json={"value": "v", "lease": first}, timeout=10)
    stream = KeepAliveStream(node_url)
    try:
        ends = time.monotonic() + 3 * 1.5
        while time.monotonic() < ends:
            stream.send(b'{"id": %d}\n{"id": %d}\n' % (first, second))
            for lease_id in (first, second):
                answer = stream.answer()
                assert answer is not None and answer["id"] == lease_id, answer
                assert answer["ttl"] == 1.5 and answer["index"] > 0
            time.sleep(0.4)
        # Past three TTLs and the read timeout: both leases and the key are there.
        assert httpx.get(f"{node_url}/kv/stream/a", timeout=10).status_code == 200
        stream.finish()
        assert stream.answer() is None  # the response ends with the body
    finally:
        stream.close()
    time.sleep(1.5 + 1.0)
    assert httpx.get(f"{node_url}/kv/stream/a", timeout=10).status_code == 404
    assert httpx.get(f"{node_url}/lease/{first}", timeout=10).status_code == 404


def test_a_gone_lease_is_answered_and_the_stream_goes_on(node_url: str) -> None:
    alive = _grant(node_url, 30)
    stream = KeepAliveStream(node_url)
    try:
        stream.send(b'{"id": 987654321}\n')
        gone = stream.answer()
        assert gone is not None and gone["status"] == 404 and "987654321" in gone["error"]
        # One line may also arrive in pieces.
        stream.send(b'{"id": ')
        stream.send(b"%d}\n" % alive)
        answer = stream.answer()
        assert answer is not None and answer["id"] == alive and answer["ttl"] == 30
        stream.finish()
        assert stream.answer() is None
    finally:
        stream.close()


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b"not json\n", "not valid JSON"),
        (b'{"lease": 1}\n', 'like {"id": 7}'),
        (b'{"id": 0}\n', "between 1"),
        (b'{"id": "7"}\n', "integer"),
        (b"x" * 2000, "longer than"),
    ],
)
def test_a_bad_line_ends_the_stream_with_a_message(node_url: str, line: bytes, words: str) -> None:
    stream = KeepAliveStream(node_url)
    try:
        stream.send(line)
        answer = stream.answer()
        assert answer is not None and answer["status"] == 400 and words in answer["error"]
        assert stream.answer() is None
    finally:
        stream.close()
    # The node goes on serving.
    assert httpx.get(f"{node_url}/health", timeout=10).status_code == 200


def test_lines_that_arrive_together_are_renewed_in_one_entry(node_url: str) -> None:
    leases = [_grant(node_url, 30) for _ in range(40)]
    stream = KeepAliveStream(node_url)
    try:
        # Every lease twice, and a gone one, in one chunk: one answer per line, in order.
        lines = [*leases, 987654322, *leases]
        stream.send(b"".join(b'{"id": %d}\n' % lease_id for lease_id in lines))
        answers = [stream.answer() for _ in lines]
        assert [a["id"] for a in answers if a is not None] == lines
        indexes = {a["index"] for a in answers if a is not None and "index" in a}
        assert len(indexes) == 1, indexes  # one log entry renewed them all
        gone = answers[len(leases)]
        assert gone is not None and gone["status"] == 404
        stream.finish()
        assert stream.answer() is None
    finally:
        stream.close()
