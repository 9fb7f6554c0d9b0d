"""The errors a client meets, and the one table that says which answer is which error.

The exceptions are shared by the HTTP and native clients and the pipelined connection
under them. ``ERROR_TABLE`` ties together the three ways an error answer is written: the
Raft process's ``ReplyStatus``, the HTTP API's status code and the client's exception
class. The HTTP worker reads it to turn a reply into an HTTP status, the HTTP client to
turn an HTTP status into an exception, and the native client to turn a reply into the
same exception the HTTP client raises for the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from raftkv.wire.protocol import ReplyStatus

__all__ = [
    "ERROR_TABLE",
    "UNMAPPED",
    "WRITE_NOT_APPLIED",
    "WRITE_OUTCOME_UNKNOWN",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "ErrorRow",
    "NotFoundError",
    "PermissionDeniedError",
    "RaftkvError",
    "UnavailableError",
    "certainly_not_applied",
    "error_class_for_http_status",
    "row_for_reply_status",
]


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


# -- the table ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorRow:
    """One kind of error answer, as each layer writes it."""

    http_status: int
    error: type[RaftkvError]
    reply_status: ReplyStatus | None = None
    """None for the answers only the HTTP worker gives (authentication, body size)."""

    @property
    def retry_later(self) -> bool:
        """Answered over HTTP with ``Retry-After: 1``: nothing is wrong with the request,
        the cluster could not serve it now."""
        return self.http_status == 503


ERROR_TABLE: Final = (
    ErrorRow(400, BadRequestError, ReplyStatus.BAD_REQUEST),
    ErrorRow(401, AuthenticationError),
    ErrorRow(403, PermissionDeniedError),
    ErrorRow(404, NotFoundError, ReplyStatus.NOT_FOUND),
    ErrorRow(409, ConflictError, ReplyStatus.CONFLICT),
    ErrorRow(413, BadRequestError),
    ErrorRow(500, RaftkvError, ReplyStatus.INTERNAL),
    ErrorRow(503, UnavailableError, ReplyStatus.UNAVAILABLE),
    ErrorRow(503, UnavailableError, ReplyStatus.TIMEOUT),
)
"""Every error answer that has a meaning of its own. Two reply statuses are not here
because no layer turns them into an error by themselves: STALE_SESSION starts a new
session (or, for a client's own session, becomes HTTP 410, which the HTTP client
handles), and NOT_LEADER makes a worker pass an operation on to the leader."""

UNMAPPED: Final = ErrorRow(500, RaftkvError)
"""Any other reply status: the Raft process answered something this side does not
understand, an internal error."""

_BY_REPLY_STATUS: Final[dict[int, ErrorRow]] = {
    int(row.reply_status): row for row in ERROR_TABLE if row.reply_status is not None
}
_BY_HTTP_STATUS: Final[dict[int, type[RaftkvError]]] = {
    row.http_status: row.error for row in ERROR_TABLE
}


def row_for_reply_status(status: int) -> ErrorRow:
    """The row of a reply status that is not OK (UNMAPPED for one without a row)."""
    return _BY_REPLY_STATUS.get(status, UNMAPPED)


def error_class_for_http_status(status: int) -> type[RaftkvError]:
    """The exception for an HTTP error status; RaftkvError for one without a row."""
    return _BY_HTTP_STATUS.get(status, RaftkvError)


WRITE_OUTCOME_UNKNOWN: Final = "the write may or may not have been applied"
WRITE_NOT_APPLIED: Final = "the write was not applied"
"""How an unavailable answer to a write says what became of it, in HTTP and the native
protocol alike; ``certainly_not_applied`` reads them back."""


def certainly_not_applied(message: str) -> bool:
    """An unavailable answer to a write says whether it certainly did not happen ("...
    was not applied") or may have ("may or may not have been applied"); HTTP and the
    native protocol carry the same words."""
    text = message.lower()
    return "not applied" in text and "may or may not" not in text
