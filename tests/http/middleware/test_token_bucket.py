"""Per-client token buckets, on a clock moved by hand."""

from __future__ import annotations

import pytest

from raftkv.http.middleware.token_bucket import TokenBuckets


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_a_new_client_may_spend_its_burst_at_once_then_waits(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    # Empty: the next token comes after 1 / rate seconds.
    assert buckets.take("a") == pytest.approx(0.5)


def test_a_refusal_takes_nothing_and_the_wait_shrinks_as_time_passes(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, clock=clock)
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(1.0)
    clock.advance(0.25)
    assert buckets.take("a") == pytest.approx(0.75)
    clock.advance(0.75)
    assert buckets.take("a") == 0.0


def test_tokens_refill_at_the_rate_and_never_beyond_the_burst(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=4.0, burst=5, clock=clock)
    for _ in range(5):
        assert buckets.take("a") == 0.0
    clock.advance(0.75)  # three tokens back
    assert [buckets.take("a") == 0.0 for _ in range(4)] == [True, True, True, False]
    clock.advance(3600)  # an hour later: a full bucket, not 36000 tokens
    admitted = 0
    while buckets.take("a") == 0.0:
        admitted += 1
    assert admitted == 5


def test_clients_have_separate_buckets(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, clock=clock)
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    assert buckets.take("b") == 0.0
    assert buckets.take(b"a") == 0.0  # bytes and text keys never collide


def test_wait_looks_without_taking_or_creating(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=4.0, burst=1, clock=clock)
    assert buckets.wait("a") == 0.0
    assert len(buckets) == 0
    assert buckets.take("a") == 0.0
    assert buckets.wait("a") == pytest.approx(0.25)
    assert buckets.wait("a") == pytest.approx(0.25)  # looking twice takes nothing
    clock.advance(0.25)
    assert buckets.wait("a") == 0.0


def test_buckets_that_have_refilled_are_forgotten(clock: FakeClock) -> None:
    # burst / rate = 2 s: a bucket untouched for 2 s is full, as good as new.
    buckets = TokenBuckets(rate=1.0, burst=2, clock=clock)
    for i in range(1000):
        buckets.take(f"10.0.{i // 256}.{i % 256}")
    assert len(buckets) == 1000
    clock.advance(1.0)
    buckets.take("late")
    assert len(buckets) == 1001  # not full yet: kept
    clock.advance(1.0)
    buckets.take("later")
    # The first thousand are full again and gone; "late" (1 s old) stays.
    assert len(buckets) == 2


def test_forgetting_a_bucket_changes_no_answer(clock: FakeClock) -> None:
    kept = TokenBuckets(rate=1.0, burst=2, clock=clock, max_clients=10)
    for _ in range(2):
        kept.take("a")
    clock.advance(2.0)
    kept.take("other")  # sweeps "a", which is full again
    assert len(kept) == 1
    assert [kept.take("a") == 0.0 for _ in range(3)] == [True, True, False]


def test_the_table_never_grows_beyond_max_clients(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, clock=clock, max_clients=100)
    for i in range(10_000):
        buckets.take(i)
    assert len(buckets) == 100
    # The most recent clients are the ones kept: client 9999 is still empty.
    assert buckets.take(9999) > 0
    # The oldest was forgotten early, which can only let it in sooner.
    assert buckets.take(0) == 0.0


def test_a_recently_seen_client_is_kept_over_an_older_one(clock: FakeClock) -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, clock=clock, max_clients=2)
    buckets.take("a")
    buckets.take("b")
    buckets.take("a")  # "a" is now the most recent; refused, but seen
    buckets.take("c")  # evicts "b", the least recently seen
    assert buckets.take("a") > 0
    assert buckets.take("b") == 0.0


@pytest.mark.parametrize(
    ("rate", "burst", "max_clients", "message"),
    [
        (0.0, 1, 10, "rate must be positive"),
        (-1.0, 1, 10, "rate must be positive"),
        (1.0, 0.5, 10, "burst must be at least 1"),
        (1.0, 1, 0, "max_clients must be positive"),
    ],
)
def test_bad_parameters_are_refused(
    rate: float, burst: float, max_clients: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        TokenBuckets(rate, burst, max_clients=max_clients)
