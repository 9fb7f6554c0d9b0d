"""Refusal log lines are throttled: one per kind per interval, with a count of the rest."""

from __future__ import annotations

import logging

import pytest

from raftkv.http.serving.connection_limits import ThrottledLog


def test_one_line_per_kind_per_interval_and_the_count_of_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    throttled = ThrottledLog(logging.getLogger("test.throttled"), 1.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.throttled"):
        for i in range(5):
            throttled.warning("slow", "slow client %d", i)
        throttled.warning("big", "big header")  # another kind has its own interval
        now[0] += 1.0
        throttled.warning("slow", "slow client %d", 5)
        throttled.warning("slow", "slow client %d", 6)
        now[0] += 1.0
        throttled.warning("slow", "slow client %d", 7)
    assert [record.getMessage() for record in caplog.records] == [
        "slow client 0",
        "big header",
        "slow client 5 (and 4 more like it since the last line)",
        "slow client 7 (and 1 more like it since the last line)",
    ]
