"""Starts the HTTP worker processes, restarts any that die, and stops them.

The Raft process binds the client HTTP socket itself and hands the listening descriptor
to every worker, so all workers accept on one port and a restarted worker takes over
the same socket without a window in which the port is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from raftkv.node.worker_metrics_dir import MULTIPROCESS_DIR_ENV


def bind_http_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno, f"cannot listen for HTTP on {host}:{port}: {exc.strerror}"
        ) from None
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


class WorkerSupervisor:
    def __init__(
        self,
        count: int,
        sock: socket.socket,
        ipc_path: Path,
        worker_args: Sequence[str],
        logger: logging.Logger | None = None,
        metrics_dir: Path | None = None,
    ) -> None:
        self.count = count
        self.sock = sock
        self.ipc_path = ipc_path
        self.worker_args = list(worker_args)
        # Where the workers share their metrics (see worker_metrics_dir.py); None: each
        # worker serves only its own.
        self.metrics_dir = metrics_dir
        self.logger = logger or logging.getLogger("raftkv.supervisor")
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.restarts = 0

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-P",  # never import from the working directory, only the installed package
            "-m",
            "raftkv.http.worker",
            "--fd",
            str(self.sock.fileno()),
            "--ipc-socket",
            str(self.ipc_path),
            *self.worker_args,
        ]

    async def start(self) -> None:
        for slot in range(self.count):
            await self._spawn(slot)
            self._tasks.append(asyncio.create_task(self._watch(slot), name=f"worker-{slot}"))

    async def _spawn(self, slot: int) -> None:
        env = dict(os.environ)
        env.pop(MULTIPROCESS_DIR_ENV, None)
        if self.metrics_dir is not None:
            env[MULTIPROCESS_DIR_ENV] = str(self.metrics_dir)
        process = await asyncio.create_subprocess_exec(
            *self._command(),
            pass_fds=(self.sock.fileno(),),
            stdin=asyncio.subprocess.DEVNULL,
            env=env,
        )
        self._processes[slot] = process
        self.logger.info("started HTTP worker %d (pid %d)", slot, process.pid)

    async def _watch(self, slot: int) -> None:
        backoff = 0.1
        while True:
            process = self._processes[slot]
            started = time.monotonic()
            code = await process.wait()
            if self._stopping:
                return
            self.logger.warning(
                "HTTP worker %d (pid %d) exited with %s; restarting", slot, process.pid, code
            )
            self.restarts += 1
            # A worker that dies at once again and again is not restarted in a busy loop.
            backoff = 0.1 if time.monotonic() - started > 10 else min(backoff * 2, 5.0)
            await asyncio.sleep(backoff)
            if self._stopping:
                return
            await self._spawn(slot)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes.values() if p.returncode is None]

    async def stop(self, grace: float = 5.0) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for process in self._processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        for process in self._processes.values():
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                self.logger.warning("HTTP worker pid %d did not stop; killing it", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        self.sock.close()
