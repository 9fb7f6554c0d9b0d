"""The worker as a real process: command line, real HTTP over uvicorn, graceful SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

import httpx
import pytest
from fake_raft import FakeRaft

from raftkv.http.serving.settings import DEFAULT_MAX_VALUE_BYTES, JSON_OVERHEAD_BYTES
from raftkv.http.worker import parse_args
from raftkv.wire.protocol import Op


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def worker(args: Sequence[str], pass_fds: Sequence[int] = ()) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-P", "-m", "raftkv.http.worker", *args, "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=pass_fds,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def wait_healthy(base_url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"worker exited with {process.returncode}: {err.decode()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base_url}/health", timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    pytest.fail("worker did not become healthy")


def stop(process: subprocess.Popen[bytes]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=15)
    return process.returncode, err.decode()


def test_standalone_worker_serves_http_and_exits_cleanly(fake: FakeRaft) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["--ipc-socket", fake.path, "--host", "127.0.0.1", "--port", str(port)]
    with worker([*args, "--node-id", "4"]) as process:
        wait_healthy(base, process)
        with httpx.Client(base_url=base, timeout=5.0) as http:
            health = http.get("/health").json()
            assert health == {"status": "ok", "node_id": 4, "leader": 1}
            stored = http.put("/kv/dir/ключ", content=b"\x00binary\xff")
            assert stored.status_code == 200
            assert stored.json()["key"] == "dir/ключ"
            got = http.get("/kv/dir/ключ")
            assert got.status_code == 200
            assert got.content == b"\x00binary\xff"
            assert got.headers["x-raftkv-version"] == "1"
            missing = http.get("/kv/absent")
            assert missing.status_code == 404
            assert missing.json() == {"error": "key not found", "key": "absent"}
            assert "server" not in got.headers
        code, err = stop(process)
    assert code == 0, err
    assert "Traceback" not in err
    assert fake.data["dir/ключ".encode()].value == b"\x00binary\xff"


def test_workers_share_an_inherited_listening_socket(fake: FakeRaft) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    base = f"http://127.0.0.1:{port}"
    args = ["--ipc-socket", fake.path, "--fd", str(fd)]
    try:
        with worker(args, pass_fds=[fd]) as first, worker(args, pass_fds=[fd]) as second:
            wait_healthy(base, first)
            wait_healthy(base, second)
            # Both answer on one port, so a healthy answer may come from either: wait
            # until each worker has connected to the Raft process (it does so at startup,
            # after its signal handlers are in place).
            deadline = time.monotonic() + 15
            while fake.connections < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert fake.connections == 2
            with httpx.Client(base_url=base, timeout=5.0) as http:
                for i in range(20):
                    # A new connection each time, so both workers get a share.
                    response = http.post(
                        f"/kv/shared/{i}", json={"value": str(i)}, headers={"Connection": "close"}
                    )
                    assert response.status_code == 200
            assert len(fake.data) == 20
            codes = [stop(first), stop(second)]
    finally:
        listener.close()
    for code, err in codes:
        assert code == 0, err
    # Each worker has its own IPC connection and its own client session.
    assert fake.connections == 2
    writers = {r.client_id for r in fake.requests_of(Op.PUT)}
    assert len(writers) in (1, 2)
    assert all(0 < client_id < 2**63 for client_id in writers)


def test_worker_waits_for_the_raft_process(socket_dir: object, fake: FakeRaft) -> None:
    """Started before the Raft process listens, the worker answers 503 until it does."""
    fake.stop()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["--ipc-socket", fake.path, "--host", "127.0.0.1", "--port", str(port)]
    with worker(args) as process:
        deadline = time.monotonic() + 20
        response = None
        while time.monotonic() < deadline and response is None:
            with contextlib.suppress(httpx.TransportError):
                response = httpx.get(f"{base}/health", timeout=1.0)
            time.sleep(0.05)
        assert response is not None
        assert response.status_code == 503
        assert response.json()["status"] == "raft process unreachable"
        fake.start()
        wait_healthy(base, process)
        code, err = stop(process)
    assert code == 0, err


def test_parse_args() -> None:
    settings, args = parse_args(
        ["--ipc-socket", "s.sock", "--fd", "7", "--node-id", "2", "--max-value-bytes", "1000"]
    )
    assert args.fd == 7
    assert settings.ipc_path == "s.sock"
    assert settings.node_id == 2
    assert settings.max_value_bytes == 1000
    assert settings.max_body_bytes == 1000 + JSON_OVERHEAD_BYTES
    defaults, _ = parse_args(["--ipc-socket", "s", "--host", "::1", "--port", "80"])
    assert defaults.max_value_bytes == DEFAULT_MAX_VALUE_BYTES
    assert defaults.request_timeout_s == 5.0


@pytest.mark.parametrize(
    "argv",
    [
        ["--fd", "3"],
        ["--ipc-socket", "s"],
        ["--ipc-socket", "s", "--host", "127.0.0.1"],
        ["--ipc-socket", "s", "--fd", "3", "--host", "127.0.0.1", "--port", "1"],
        ["--ipc-socket", "s", "--fd", "3", "--port", "1"],
        ["--ipc-socket", "s", "--fd", "3", "--max-key-bytes", "0"],
        ["--ipc-socket", "s", "--fd", "3", "--log-level", "loud"],
        ["--ipc-socket", "s", "--fd", "3", "--max-value-bytes", str(2**27)],
    ],
)
def test_bad_command_lines_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse_args(argv)
    assert caught.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_python_dash_m_help() -> None:
    result = subprocess.run(
        [sys.executable, "-P", "-m", "raftkv.http.worker", "--help"],
        capture_output=True,
        timeout=30,
        env={**os.environ},
        check=False,
    )
    assert result.returncode == 0
    assert b"--ipc-socket" in result.stdout


def test_the_worker_logs_long_garbage_collections(caplog: pytest.LogCaptureFixture) -> None:
    import gc

    from raftkv.http.worker import watch_collections

    monitor = watch_collections()
    try:
        monitor._warn_after_s = 0.0  # every collection is "long" for this test
        with caplog.at_level("WARNING", logger="raftkv.gc"):
            gc.collect()
        assert monitor.collections >= 1
        assert any("garbage collection of generation 2" in r.getMessage() for r in caplog.records)
    finally:
        monitor.uninstall()


def test_a_started_worker_takes_its_heap_out_of_collections() -> None:
    """What a worker holds once started is frozen, and the youngest generation is
    collected less often (worker.tune_collections)."""
    import subprocess
    import sys

    script = (
        "import gc\n"
        "from raftkv.http.worker import GC_YOUNG_THRESHOLD, tune_collections\n"
        "tune_collections()\n"
        "assert gc.get_freeze_count() > 1000, gc.get_freeze_count()\n"
        "assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD\n"
    )
    # -P: the installed package, not the source tree of the working directory.
    subprocess.run([sys.executable, "-P", "-c", script], check=True, timeout=60)
