"""The errors a client meets, shared by the HTTP and native clients and the pipelined
connection under them."""

from __future__ import annotations

from typing import Any


class RaftkvError(Exception):
    """Any error answered by the store or met on the way to it.

    ``status`` is the HTTP status of the answer (None when there was none) and
    ``message`` the server's own explanation (its ``error`` field) or the client's.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the attributes through pickling (process pools, multiprocessing).
        return (type(self), (self.message,), self.__dict__)


class NotFoundError(RaftkvError):
    """404: the key (or member) does not exist."""


class ConflictError(RaftkvError):
    """409: ``prev_revision`` did not match, or a membership change is already under way.

    ``current_revision`` is the key's revision at the time (0 when the key is absent);
    -1 when the conflict was not about a key.
    """

    def __init__(
        self, message: str, *, status: int | None = 409, current_revision: int = -1
    ) -> None:
        super().__init__(message, status=status)
        self.current_revision = current_revision


class UnavailableError(RaftkvError):
    """No node could serve the request before ``retry_for`` ran out (503s, connection
    failures), or a write's outcome became unknown.

    ``may_have_applied`` is True when a write attempt may have reached a server and been
    applied; False when the write certainly did not happen (always False for reads).
    """

    def __init__(
        self, message: str, *, status: int | None = None, may_have_applied: bool = False
    ) -> None:
        super().__init__(message, status=status)
        self.may_have_applied = may_have_applied


class AuthenticationError(RaftkvError):
    """401: auth is enabled and the credentials are missing, malformed or wrong."""


class PermissionDeniedError(RaftkvError):
    """403: the credentials are valid but their roles do not allow the request."""


class BadRequestError(RaftkvError):
    """400 or 413: the request was malformed or too large."""
