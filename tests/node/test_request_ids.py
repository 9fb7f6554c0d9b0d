from __future__ import annotations

import random

from raftkv.node.request_ids import IncarnationCounter


def test_each_incarnation_counts_from_its_own_random_start() -> None:
    first = IncarnationCounter()
    second = IncarnationCounter()  # the same node, restarted
    ids_first = {first.next() for _ in range(10_000)}
    ids_second = {second.next() for _ in range(10_000)}
    assert len(ids_first) == len(ids_second) == 10_000
    assert not ids_first & ids_second
    assert all(0 <= i < 1 << 64 for i in ids_first | ids_second)


def test_ids_increase_and_wrap_within_64_bits() -> None:
    counter = IncarnationCounter(random.Random(1))
    a, b = counter.next(), counter.next()
    assert b == a + 1
    counter._last = (1 << 64) - 1
    assert counter.next() == 0
