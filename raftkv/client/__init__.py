"""Python clients of raftkv: ``Client`` and ``AsyncClient`` speak the HTTP API
(``raftkv.client.http_client``); ``NativeClient`` and ``AsyncNativeClient`` the binary
protocol (``raftkv.client.native``). docs/client.md shows both."""

from raftkv.client.http_client import (
    AsyncClient,
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
    WriteResult,
)

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "Consistency",
    "KeyValue",
    "NotFoundError",
    "PermissionDeniedError",
    "RaftkvError",
    "UnavailableError",
    "WriteResult",
]
