"""The native protocol's Python client under its first name: programs written against
``raftkv.native`` keep working. It lives in ``raftkv.client.native``."""

from raftkv.client.native import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    MAX_LIST_LIMIT,
    AsyncNativeClient,
    KeyValue,
    NativeClient,
    WriteResult,
    open_native_connection,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "MAX_LIST_LIMIT",
    "AsyncNativeClient",
    "KeyValue",
    "NativeClient",
    "WriteResult",
    "open_native_connection",
]
