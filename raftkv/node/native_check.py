"""What the Raft process checks on requests from native clients (``--client-addr``).

Requests from the HTTP workers have been validated by the worker (key and value sizes,
an empty key); requests on the native TCP port reach the Raft process directly, so the
same limits are applied here before they are submitted. A refused request is answered
BAD_REQUEST and never reaches the log.

The native port serves the key operations and the two status reports. Cluster
operations (membership, leadership, snapshots, backups) stay on the HTTP API: their
replies are built for the worker (a follower answers NOT_LEADER with the leader's HTTP
address for the worker to forward to; a backup answers with a path on this machine).

The native port has no authentication: while auth is enabled (``auth_enabled`` answers
True) it refuses every request, so turning auth on cannot leave a way around it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from raftkv.wire.protocol import Flag, Op
from raftkv_ext.codec import ClientRequest

__all__ = ["AUTH_REFUSAL", "NATIVE_OPS", "NativeRequestCheck"]

AUTH_REFUSAL = "authentication is enabled and the native port cannot authenticate: use the HTTP API"

NATIVE_OPS = frozenset(
    {
        Op.GET,
        Op.PUT,
        Op.DELETE,
        Op.LIST,
        Op.DELETE_PREFIX,
        Op.STATUS,
        Op.NODES,
        Op.WATCH,
        Op.WATCH_CANCEL,
        Op.READ_INDEX,
    }
)
_NEEDS_KEY = frozenset({Op.GET, Op.PUT, Op.DELETE})
_KNOWN_OPS = frozenset(int(op) for op in Op)
_HTTP_ONLY_FLAGS = Flag.LEASED | Flag.WITH_LEASE


@dataclass(frozen=True, slots=True)
class NativeRequestCheck:
    """Called with each request from a native client: None to serve it, else why not."""

    max_key_bytes: int
    max_value_bytes: int
    auth_enabled: Callable[[], bool] | None = None

    def __call__(self, request: ClientRequest) -> str | None:
        if self.auth_enabled is not None and self.auth_enabled():
            return AUTH_REFUSAL
        op = request.op
        if op not in NATIVE_OPS:
            if op in _KNOWN_OPS:
                return f"operation {Op(op).name} is served over HTTP only"
            return f"unknown operation {op}"
        if request.flags & _HTTP_ONLY_FLAGS:
            return "keys with a lease or TTL are served over HTTP only"
        key_length = len(request.key)
        if key_length > self.max_key_bytes:
            what = "key" if op in _NEEDS_KEY else "prefix"
            return f"{what} is {key_length} bytes; the limit is {self.max_key_bytes} bytes"
        if key_length == 0 and op in _NEEDS_KEY:
            return "key must not be empty"
        value_length = len(request.value)
        if value_length > self.max_value_bytes:
            return f"value is {value_length} bytes; the limit is {self.max_value_bytes} bytes"
        return None
