"""Settings of one HTTP worker process."""

from __future__ import annotations

from dataclasses import dataclass, field

from raftkv.wire.limits import HttpLimits
from raftkv.wire.protocol import DEFAULT_MAX_KEY_BYTES, DEFAULT_MAX_VALUE_BYTES, MAX_TIMEOUT_MS
from raftkv.wire.txn_limits import TxnLimits
from raftkv.wire.watch_limits import WatchLimits
from raftkv_ext.codec import DEFAULT_MAX_FRAME_SIZE

__all__ = [
    "DEFAULT_MAX_KEY_BYTES",
    "DEFAULT_MAX_VALUE_BYTES",
    "JSON_OVERHEAD_BYTES",
    "WorkerSettings",
]

JSON_OVERHEAD_BYTES = 64 * 1024
"""Room for the JSON syntax, escapes and other fields around a value in a POST body."""


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    ipc_path: str
    """The Raft process's Unix socket."""
    node_id: int | None = None
    """This node's id, reported by /health (None when not told)."""
    cluster_id: int = 0
    """The cluster's id, sent in the IPC handshake (0: not told; the Raft process then
    checks only the protocol version)."""
    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    max_body_bytes: int = DEFAULT_MAX_VALUE_BYTES + JSON_OVERHEAD_BYTES
    """Largest request body accepted (a JSON body holds the value plus its syntax)."""
    request_timeout_s: float = 5.0
    """Deadline the Raft process is given for each request."""
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    connect_timeout_s: float = 1.0
    ipc_grace_s: float = 0.5
    """How much longer than ``request_timeout_s`` the worker waits for a reply, so the
    Raft process's own timeout answer (which says what happened) normally arrives first."""
    tls_cert_file: str | None = None
    """Set: the worker serves HTTPS with this certificate (and ``tls_key_file``)."""
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None
    """Set: HTTPS clients must present a certificate signed by this CA."""
    outbound_ca_file: str | None = None
    """The CA that verifies other nodes' HTTPS certificates (None: the system's CAs)."""
    limits: HttpLimits = field(default_factory=HttpLimits)
    """This worker's rate, connection, timeout and header limits (raftkv/wire/limits.py)."""
    watch: WatchLimits = field(default_factory=WatchLimits)
    """What each watcher may cost (raftkv/wire/watch_limits.py)."""
    txn: TxnLimits = field(default_factory=TxnLimits)
    """What one transaction may hold (raftkv/wire/txn_limits.py)."""

    def __post_init__(self) -> None:
        if not self.ipc_path:
            raise ValueError("ipc_path must not be empty")
        for name in ("max_key_bytes", "max_value_bytes", "max_body_bytes", "max_frame_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.request_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("HTTPS needs both a certificate and a key file")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("a client CA file needs HTTPS (a certificate and a key file)")
        if self.ipc_grace_s < 0:
            raise ValueError("ipc_grace_s must not be negative")
        if self.timeout_ms > MAX_TIMEOUT_MS:
            raise ValueError("request_timeout_s is too large")
        if self.max_key_bytes + self.max_value_bytes + 1024 > self.max_frame_size:
            raise ValueError("max_key_bytes + max_value_bytes do not fit in max_frame_size")

    @property
    def timeout_ms(self) -> int:
        """The deadline sent in ClientRequest.timeout_ms."""
        return max(1, round(self.request_timeout_s * 1000))

    @property
    def local_timeout_s(self) -> float:
        """How long the worker waits for a reply before it answers 503 itself."""
        return self.request_timeout_s + self.ipc_grace_s
