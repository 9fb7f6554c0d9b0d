"""The status<->error table: one row per kind of error answer, looked up both ways."""

from __future__ import annotations

import pickle

import pytest

from raftkv.wire.errors import (
    ERROR_TABLE,
    UNMAPPED,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RaftkvError,
    UnavailableError,
    certainly_not_applied,
    error_class_for_http_status,
    row_for_reply_status,
)
from raftkv.wire.protocol import ReplyStatus


@pytest.mark.parametrize(
    ("reply_status", "http_status", "error", "retry_later"),
    [
        (ReplyStatus.BAD_REQUEST, 400, BadRequestError, False),
        (ReplyStatus.NOT_FOUND, 404, NotFoundError, False),
        (ReplyStatus.CONFLICT, 409, ConflictError, False),
        (ReplyStatus.INTERNAL, 500, RaftkvError, False),
        (ReplyStatus.UNAVAILABLE, 503, UnavailableError, True),
        (ReplyStatus.TIMEOUT, 503, UnavailableError, True),
    ],
)
def test_each_reply_status_has_its_http_status_and_exception(
    reply_status: ReplyStatus, http_status: int, error: type[RaftkvError], retry_later: bool
) -> None:
    row = row_for_reply_status(reply_status)
    assert (row.reply_status, row.http_status, row.error) == (reply_status, http_status, error)
    assert row.retry_later is retry_later
    assert error_class_for_http_status(http_status) is error


@pytest.mark.parametrize(
    ("http_status", "error"),
    [
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (413, BadRequestError),
        (408, RaftkvError),
        (410, RaftkvError),
        (429, RaftkvError),
        (502, RaftkvError),
    ],
)
def test_http_statuses_without_a_reply_status(http_status: int, error: type[RaftkvError]) -> None:
    assert error_class_for_http_status(http_status) is error


def test_statuses_that_are_not_errors_by_themselves_are_unmapped() -> None:
    # STALE_SESSION and NOT_LEADER are handled before the table (a new session, a
    # forward to the leader); anything the table does not know is an internal error.
    for status in (ReplyStatus.STALE_SESSION, ReplyStatus.NOT_LEADER, 99):
        assert row_for_reply_status(status) is UNMAPPED
    assert (UNMAPPED.http_status, UNMAPPED.error) == (500, RaftkvError)


def test_one_row_per_reply_status() -> None:
    statuses = [row.reply_status for row in ERROR_TABLE if row.reply_status is not None]
    assert len(statuses) == len(set(statuses))
    # Two rows with one HTTP status agree on the exception, so the HTTP client's lookup
    # (by HTTP status alone) gives what the native client gives (by reply status).
    by_http: dict[int, set[type[RaftkvError]]] = {}
    for row in ERROR_TABLE:
        by_http.setdefault(row.http_status, set()).add(row.error)
    assert all(len(errors) == 1 for errors in by_http.values()), by_http


@pytest.mark.parametrize(
    ("message", "not_applied"),
    [
        ("no leader in time; the write was not applied", True),
        ("the write was NOT APPLIED", True),
        ("no quorum answered in time; the write may or may not have been applied", False),
        ("timed out; the write may or may not have been applied; it was not applied", False),
        ("no leader", False),
    ],
)
def test_certainly_not_applied(message: str, not_applied: bool) -> None:
    assert certainly_not_applied(message) is not_applied


def test_errors_keep_their_attributes_through_pickling() -> None:
    conflict = pickle.loads(pickle.dumps(ConflictError("c", current_revision=7)))
    assert (conflict.status, conflict.current_revision) == (409, 7)
    unavailable = pickle.loads(pickle.dumps(UnavailableError("u", may_have_applied=True)))
    assert unavailable.may_have_applied is True
