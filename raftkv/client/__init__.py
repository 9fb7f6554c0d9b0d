"""Python clients of raftkv: ``Client`` and ``AsyncClient`` speak the HTTP API
(``raftkv.client.http_client``); ``NativeClient`` and ``AsyncNativeClient`` the binary
protocol (``raftkv.client.native``). Every client's ``watch()`` yields the
``WatchEvent`` of ``raftkv.client.watch``; the HTTP clients' ``txn()`` takes the
``Compare`` and ``TxnOp`` of ``raftkv.client.txn`` and returns a ``TxnResponse``.
docs/client.md shows them all."""

from raftkv.client.election import AsyncElection, Election, Leader
from raftkv.client.http_client import (
    AsyncClient,
    AsyncWatch,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    Consistency,
    KeyValue,
    NotFoundError,
    PermissionDeniedError,
    RaftkvError,
    UnavailableError,
    Watch,
    WriteResult,
)
from raftkv.client.leases import LeaseGrant, LeaseInfo
from raftkv.client.lock import AsyncLock, Lock, LockLostError, LockTimeoutError
from raftkv.client.txn import (
    Compare,
    TxnDeletePrefixResult,
    TxnDeleteResult,
    TxnGetResult,
    TxnListResult,
    TxnOp,
    TxnOpResult,
    TxnPutResult,
    TxnResponse,
)
from raftkv.client.watch import WatchEvent

__all__ = [
    "AsyncClient",
    "AsyncElection",
    "AsyncLock",
    "AsyncWatch",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "Compare",
    "ConflictError",
    "Consistency",
    "Election",
    "KeyValue",
    "Leader",
    "LeaseGrant",
    "LeaseInfo",
    "Lock",
    "LockLostError",
    "LockTimeoutError",
    "NotFoundError",
    "PermissionDeniedError",
    "RaftkvError",
    "TxnDeletePrefixResult",
    "TxnDeleteResult",
    "TxnGetResult",
    "TxnListResult",
    "TxnOp",
    "TxnOpResult",
    "TxnPutResult",
    "TxnResponse",
    "UnavailableError",
    "Watch",
    "WatchEvent",
    "WriteResult",
]
