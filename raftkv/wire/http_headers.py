"""The raftkv-specific HTTP headers of the API's answers, named once for the routes that
send them, the OpenAPI document that describes them and the clients that read them.

The session headers a client sends with its writes are in ``raftkv.wire.sessions``.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "HEADER_BACKUP_INDEX",
    "HEADER_BACKUP_SHA256",
    "HEADER_BACKUP_TERM",
    "HEADER_CREATE_REVISION",
    "HEADER_FORWARDED",
    "HEADER_INDEX",
    "HEADER_LEASE",
    "HEADER_PREFIX",
    "HEADER_REVISION",
    "HEADER_TTL",
    "HEADER_VERSION",
]

HEADER_PREFIX: Final = "x-raftkv-"
"""What every header here starts with (lower case, for case-insensitive matching)."""

HEADER_REVISION: Final = "X-Raftkv-Revision"
"""A key's mod revision, on ``GET /kv/{key}``."""
HEADER_CREATE_REVISION: Final = "X-Raftkv-Create-Revision"
HEADER_VERSION: Final = "X-Raftkv-Version"
HEADER_INDEX: Final = "X-Raftkv-Index"
"""The applied index a read was served at."""
HEADER_LEASE: Final = "X-Raftkv-Lease"
"""The lease a key read by ``GET /kv/{key}`` is attached to (absent: none)."""
HEADER_TTL: Final = "X-Raftkv-Ttl"
"""The seconds that lease has left, on the node that served the read."""

HEADER_BACKUP_INDEX: Final = "X-Raftkv-Backup-Index"
HEADER_BACKUP_TERM: Final = "X-Raftkv-Backup-Term"
HEADER_BACKUP_SHA256: Final = "X-Raftkv-Backup-Sha256"
"""The hex SHA-256 of the backup's body, which the client checks what it saved against."""

HEADER_FORWARDED: Final = "X-Raftkv-Forwarded"
"""Set on an operation one node passes on to the leader, so that it is passed on once."""
