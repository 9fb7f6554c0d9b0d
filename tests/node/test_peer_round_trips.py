"""Round trips to followers are matched message for message, and recover from loss."""

from __future__ import annotations

from raftkv.node.peer_round_trips import PeerRoundTrips
from raftkv_ext.codec import AppendEntries, AppendEntriesResponse, RequestVote

LEADER = 1


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def append(peer: int, index: int = 0) -> AppendEntries:
    return AppendEntries(LEADER, peer, 1, index, 1, 0, [], 0)


def response(peer: int, index: int = 0) -> AppendEntriesResponse:
    return AppendEntriesResponse(peer, LEADER, 1, True, index)


def tracker(clock: Clock) -> tuple[PeerRoundTrips, list[tuple[int, float]]]:
    samples: list[tuple[int, float]] = []
    trips = PeerRoundTrips(
        lambda peer, seconds: samples.append((peer, seconds)), clock=clock, give_up_after=5.0
    )
    return trips, samples


def test_one_message_is_timed_to_its_own_response() -> None:
    clock = Clock()
    trips, samples = tracker(clock)
    trips.sent([append(2), append(3)])
    clock.now += 0.25
    trips.received([response(3)])
    clock.now += 0.125
    trips.received([response(2)])
    assert samples == [(3, 0.25), (2, 0.375)]


def test_pipelined_messages_time_the_probe_not_an_earlier_answer() -> None:
    clock = Clock()
    trips, samples = tracker(clock)
    trips.sent([append(2, 1)])  # the probe: message 1
    clock.now += 0.125
    trips.sent([append(2, 2), append(2, 3)])  # in flight behind it, not timed
    clock.now += 0.125
    trips.received([response(2, 1)])
    assert samples == [(2, 0.25)]
    # The next probe starts with the next message sent and waits for answers 2 and 3
    # (earlier messages) before its own, the fourth.
    trips.sent([append(2, 4)])
    clock.now += 0.5
    trips.received([response(2, 2), response(2, 3)])
    assert len(samples) == 1
    clock.now += 0.25
    trips.received([response(2, 4)])
    assert samples[-1] == (2, 0.75)


def test_other_messages_are_ignored() -> None:
    clock = Clock()
    trips, samples = tracker(clock)
    trips.sent([RequestVote(LEADER, 2, 1, 0, 0)])
    trips.received([response(2)])
    assert samples == []


def test_a_reported_loss_resets_the_count() -> None:
    clock = Clock()
    trips, samples = tracker(clock)
    trips.sent([append(2), append(2)])  # both lost with the connection
    trips.lost(2)
    clock.now += 1.0
    trips.sent([append(2)])
    clock.now += 0.375
    trips.received([response(2)])
    assert samples == [(2, 0.375)]


def test_a_probe_without_answer_is_given_up() -> None:
    clock = Clock()
    trips, samples = tracker(clock)
    trips.sent([append(2)])  # lost without any report
    clock.now += 6.0
    trips.sent([append(2)])  # replaces the stale probe
    clock.now += 0.125
    trips.received([response(2)])
    assert samples == [(2, 0.125)]


def test_answers_beyond_what_was_sent_do_not_run_ahead() -> None:
    clock = Clock()
    trips, samples = tracker(clock)
    trips.received([response(2), response(2)])  # to messages of an earlier leadership
    trips.sent([append(2)])
    clock.now += 0.5
    trips.received([response(2)])
    assert samples == [(2, 0.5)]
