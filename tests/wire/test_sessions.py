"""The worker's exactly-once session: seq numbers, first_incomplete, STALE_SESSION retry."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from raftkv.wire.protocol import ReplyStatus
from raftkv.wire.sessions import (
    SessionHeaderError,
    SessionTag,
    WriteSession,
    parse_session_headers,
    random_client_id,
    send_tagged,
)
from raftkv_ext.codec import ClientReply


def counting_ids(start: int = 100) -> WriteSession:
    ids = itertools.count(start)
    return WriteSession(lambda: next(ids))


def test_random_client_ids_are_63_bit_and_distinct() -> None:
    ids = {random_client_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(0 < i < 2**63 for i in ids)
    assert max(ids).bit_length() > 56  # drawn from the whole range


def test_seq_and_first_incomplete() -> None:
    session = counting_ids()
    a = session.begin()
    b = session.begin()
    c = session.begin()
    assert (a, b, c) == (SessionTag(100, 1, 1), SessionTag(100, 2, 1), SessionTag(100, 3, 1))
    session.end(b)  # answered out of order: seq 1 is still open
    assert session.begin() == SessionTag(100, 4, 1)
    session.end(a)  # now 3 is the lowest open seq
    assert session.begin() == SessionTag(100, 5, 3)
    assert session.outstanding == 3
    for seq in (3, 4, 5):
        session.end(SessionTag(100, seq, 0))
    assert session.outstanding == 0
    assert session.begin() == SessionTag(100, 6, 6)


def test_renew_starts_over_once_per_stale_session() -> None:
    session = counting_ids()
    old = session.begin()
    session.begin()
    assert session.renew(old.client_id) is True
    assert session.client_id == 101
    assert session.outstanding == 0
    # Another write of the old session learning the same news does not renew again.
    assert session.renew(old.client_id) is False
    assert session.client_id == 101
    # Ending a tag of the old session leaves the new one alone.
    fresh = session.begin()
    session.end(old)
    assert fresh == SessionTag(101, 1, 1)
    assert session.outstanding == 1
    assert session.renewals == 1


def test_renew_never_reuses_the_stale_id() -> None:
    ids = iter([5, 5, 5, 9])
    session = WriteSession(lambda: next(ids))
    assert session.renew(5) is True
    assert session.client_id == 9


def reply(status: ReplyStatus) -> ClientReply:
    return ClientReply(1, status, 10, 2, 10)


def test_send_tagged_retries_stale_session_once_under_a_new_id() -> None:
    session = counting_ids()
    sent: list[SessionTag] = []
    answers = [reply(ReplyStatus.STALE_SESSION), reply(ReplyStatus.OK)]

    async def send(tag: SessionTag) -> ClientReply:
        sent.append(tag)
        return answers.pop(0)

    result = asyncio.run(send_tagged(session, None, send))
    assert result.status == ReplyStatus.OK
    assert sent == [SessionTag(100, 1, 1), SessionTag(101, 1, 1)]
    assert session.outstanding == 0


def test_send_tagged_gives_up_after_one_retry() -> None:
    session = counting_ids()
    sent: list[SessionTag] = []

    async def send(tag: SessionTag) -> ClientReply:
        sent.append(tag)
        return reply(ReplyStatus.STALE_SESSION)

    result = asyncio.run(send_tagged(session, None, send))
    assert result.status == ReplyStatus.STALE_SESSION
    assert len(sent) == 2


def test_send_tagged_drops_a_failed_seq() -> None:
    session = counting_ids()

    async def send(tag: SessionTag) -> ClientReply:
        raise TimeoutError

    with pytest.raises(TimeoutError):
        asyncio.run(send_tagged(session, None, send))
    assert session.outstanding == 0
    assert session.begin() == SessionTag(100, 2, 2)


def test_send_tagged_uses_the_clients_tag_as_is() -> None:
    session = counting_ids()
    sent: list[SessionTag] = []

    async def send(tag: SessionTag) -> ClientReply:
        sent.append(tag)
        return reply(ReplyStatus.STALE_SESSION)

    tag = SessionTag(7, 3, 2)
    result = asyncio.run(send_tagged(session, tag, send))
    assert result.status == ReplyStatus.STALE_SESSION  # not retried: the client decides
    assert sent == [tag]
    assert session.client_id == 100
    assert session.begin().seq == 1


def test_parse_session_headers() -> None:
    assert parse_session_headers({}) is None
    assert parse_session_headers(
        {"x-raftkv-client-id": "12", "x-raftkv-seq": " 4 ", "x-raftkv-first-incomplete": "0"}
    ) == SessionTag(12, 4, 0)
    for headers in (
        {"x-raftkv-seq": "1"},
        {"x-raftkv-client-id": "1", "x-raftkv-seq": "1", "x-raftkv-first-incomplete": ""},
        {"x-raftkv-client-id": "1", "x-raftkv-seq": "0", "x-raftkv-first-incomplete": "0"},
        {"x-raftkv-client-id": "1", "x-raftkv-seq": "\u0661", "x-raftkv-first-incomplete": "1"},
        {"x-raftkv-client-id": "1", "x-raftkv-seq": "+1", "x-raftkv-first-incomplete": "1"},
    ):
        with pytest.raises(SessionHeaderError):
            parse_session_headers(headers)
