"""Socket options every TCP connection of the project sets."""

from __future__ import annotations

import asyncio
import contextlib
import socket


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off: everything we send (Raft messages, client requests and
    replies) is small and latency-bound, and Nagle would hold a segment back until the
    previous one is acknowledged. Not a TCP socket (a Unix socket): nothing to do."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
