"""The lease clock on its own (raftkv/node/lease_clock.py): deadlines from what the log
said about a lease's time, the leader's extension, and the leader's duties (Expire
proposals and checkpoints), with time passed in as plain numbers."""

from __future__ import annotations

import pytest

from raftkv.node.lease_clock import LeaseClock, LeaseClockSettings

ET = 2.0  # election timeout, s
CI = 5.0  # checkpoint interval, s
RETRY = 3.0  # expire retry, s


def clock(**overrides: float) -> LeaseClock:
    settings = {"election_timeout_s": ET, "checkpoint_interval_s": CI, "expire_retry_s": RETRY}
    settings.update(overrides)
    return LeaseClock(LeaseClockSettings(**settings))


def leader_clock(now: float = 0.0) -> LeaseClock:
    lc = clock()
    lc.became_leader(now)
    return lc


# -- deadlines from the log ---------------------------------------------------------------


def test_a_grant_runs_its_ttl_from_when_it_is_applied() -> None:
    lc = clock()
    lc.observe([(1, 10_000, False)], now=100.0)
    assert len(lc) == 1
    assert lc.remaining_ms(1, 100.0) == 10_000
    assert lc.remaining_ms(1, 104.5) == 5_500
    assert lc.remaining_ms(1, 110.0) == 0
    assert lc.remaining_ms(1, 200.0) == 0  # never negative
    assert lc.remaining_ms(2, 100.0) == -1  # unknown lease


def test_a_keep_alive_starts_the_ttl_again_even_if_it_shortens_it() -> None:
    lc = clock()
    lc.observe([(1, 10_000, False)], now=0.0)
    lc.observe([(1, 10_000, False)], now=7.0)
    assert lc.remaining_ms(1, 7.0) == 10_000
    # A renewal's deadline replaces the old one, whichever is earlier: here a checkpoint
    # had left more than the renewal gives (it cannot in practice, but the renewal wins).
    lc.observe([(2, 10_000, False)], now=0.0)
    lc.observe([(2, 4_000, False)], now=1.0)
    assert lc.remaining_ms(2, 1.0) == 4_000


def test_events_in_one_batch_apply_in_order() -> None:
    lc = clock()
    lc.observe([(1, 10_000, False), (1, None, False), (2, 3_000, False), (2, 8_000, False)], 5.0)
    assert lc.remaining_ms(1, 5.0) == -1
    assert lc.remaining_ms(2, 5.0) == 8_000


def test_a_follower_takes_the_earlier_of_a_checkpoint_and_what_it_had() -> None:
    lc = clock()
    lc.observe([(1, 10_000, False), (2, 10_000, False)], now=0.0)  # deadlines 10
    lc.observe([(1, 4_000, True), (2, 9_000, True)], now=3.0)  # 7 and 12
    assert lc.remaining_ms(1, 3.0) == 4_000  # 7 < 10: the checkpoint's
    assert lc.remaining_ms(2, 3.0) == 7_000  # 12 > 10: kept its own


def test_a_checkpoint_times_a_lease_the_clock_did_not_know() -> None:
    for leading in (False, True):
        lc = leader_clock() if leading else clock()
        lc.observe([(5, 2_500, True)], now=1.0)
        assert lc.remaining_ms(5, 1.0) == 2_500


def test_the_leader_ignores_checkpoints_of_leases_it_times() -> None:
    lc = clock()
    lc.observe([(1, 60_000, False)], now=0.0)
    lc.became_leader(0.0)  # deadline 62
    lc.observe([(1, 1_000, True)], now=5.0)  # would be 6
    assert lc.remaining_ms(1, 5.0) == 57_000
    lc.observe([(1, 90_000, True)], now=5.0)  # would be 95
    assert lc.remaining_ms(1, 5.0) == 57_000
    # ... but a checkpoint counts as a record of the lease's time: no new checkpoint of
    # it is due until a whole interval after it.
    assert lc.to_checkpoint(5.0 + CI - 0.5) == []
    assert lc.to_checkpoint(5.0 + 2 * CI - 0.5) == [(1, 47_500)]


def test_an_ended_lease_is_forgotten() -> None:
    lc = leader_clock()
    lc.observe([(1, 1_000, False), (2, 1_000, False)], now=0.0)
    lc.observe([(1, None, False)], now=0.5)
    assert len(lc) == 1
    assert lc.remaining_ms(1, 0.5) == -1
    assert lc.due(10.0) == [2]
    assert lc.to_checkpoint(100.0) == []  # 2 was proposed for expiry; 1 is gone
    lc.observe([(2, None, False)], now=10.5)
    assert len(lc) == 0
    assert lc.due(1000.0) == []
    # Ending a lease the clock never knew is harmless.
    lc.observe([(9, None, False)], now=11.0)
    assert len(lc) == 0


# -- leadership ----------------------------------------------------------------------------


def test_a_new_leader_adds_one_election_timeout_to_every_deadline() -> None:
    lc = clock()
    lc.observe([(1, 10_000, False), (2, 3_000, False)], now=0.0)
    assert not lc.leading
    lc.became_leader(1.0)
    assert lc.leading
    assert lc.remaining_ms(1, 1.0) == int((10 + ET - 1) * 1000)
    assert lc.remaining_ms(2, 1.0) == int((3 + ET - 1) * 1000)
    # Due at the extended deadline, not the old one.
    assert lc.due(3.0) == []
    assert lc.due(3.0 + ET - 0.01) == []
    assert lc.due(3.0 + ET) == [2]


def test_leases_applied_while_leading_are_not_extended() -> None:
    lc = leader_clock(0.0)
    lc.observe([(1, 4_000, False)], now=1.0)
    assert lc.due(4.99) == []
    assert lc.due(5.0) == [1]


def test_only_the_leader_acts_and_stepping_down_stops_it() -> None:
    lc = clock()
    lc.observe([(1, 1_000, False)], now=0.0)
    assert lc.due(100.0) == []
    assert lc.to_checkpoint(100.0) == []
    lc.became_leader(100.0)
    assert lc.due(100.0 + ET) == [1]
    lc.stepped_down()
    assert not lc.leading
    assert lc.due(200.0) == []
    assert lc.to_checkpoint(200.0) == []
    # Leading again: the Expire proposed in the previous term is forgotten (it may have
    # been lost with that term), so the lease, long past its deadline, is due at once.
    lc.became_leader(200.0)
    assert lc.remaining_ms(1, 200.0) == 0
    assert lc.due(200.0) == [1]


# -- the leader's Expire proposals -----------------------------------------------------------


def test_due_only_after_the_deadline() -> None:
    lc = leader_clock()
    lc.observe([(1, 10_000, False)], now=0.0)
    assert lc.due(9.999) == []
    assert lc.due(10.0) == [1]


def test_an_expire_is_proposed_again_only_after_the_retry_interval() -> None:
    lc = leader_clock()
    lc.observe([(1, 1_000, False)], now=0.0)
    assert lc.due(1.0) == [1]
    assert lc.due(1.5) == []
    assert lc.due(1.0 + RETRY - 0.01) == []
    assert lc.due(1.0 + RETRY) == [1]
    assert lc.due(1.0 + RETRY + 0.5) == []
    assert lc.due(1.0 + 2 * RETRY) == [1]
    # Applying the Expire ends the lease: nothing more is proposed.
    lc.observe([(1, None, False)], now=1.0 + 2 * RETRY)
    assert lc.due(1000.0) == []


def test_many_leases_due_at_once_come_out_in_one_call() -> None:
    lc = leader_clock()
    lc.observe([(i, 1_000 * (i % 7 + 1), False) for i in range(1, 201)], now=0.0)
    lc.observe([(i, 50_000, False) for i in range(201, 211)], now=0.0)
    due = lc.due(8.0)
    assert sorted(due) == list(range(1, 201))
    assert len(due) == len(set(due))
    assert lc.due(8.0) == []
    assert lc.due(8.0 + RETRY) == sorted(due, key=lambda i: (i % 7, i))  # by deadline
    assert lc.due(8.0 + RETRY + 0.5) == []  # nothing new, and no retry is due yet
    assert set(lc.due(50.0 + 3 * RETRY)) == set(range(1, 211))


def test_a_lease_renewed_before_its_deadline_is_not_due_then() -> None:
    lc = leader_clock()
    lc.observe([(1, 10_000, False)], now=0.0)
    lc.observe([(1, 10_000, False)], now=8.0)  # new deadline 18
    assert lc.due(10.0) == []
    assert lc.due(17.99) == []
    assert lc.due(18.0) == [1]


def test_a_lease_renewed_after_its_expire_was_proposed_is_due_again_only_later() -> None:
    """The Expire went stale (a keep-alive committed before it): the new deadline rules,
    and the old, pending proposal does not delay the next one."""
    lc = leader_clock()
    lc.observe([(1, 10_000, False)], now=0.0)
    assert lc.due(10.0) == [1]
    lc.observe([(1, 10_000, False)], now=10.5)  # deadline 20.5
    assert lc.due(10.0 + RETRY) == []
    assert lc.due(20.49) == []
    assert lc.due(20.5) == [1]


def test_a_renewal_after_a_proposed_expire_gets_an_expire_of_its_own_in_time() -> None:
    """The Expire proposed before the renewal names an older renewal and changes
    nothing: the renewed lease's own deadline is not held back by the retry interval."""
    lc = leader_clock()
    lc.observe([(1, 1_000, False)], now=0.0)
    assert lc.due(1.0) == [1]
    lc.observe([(1, 1_000, False)], now=1.5)  # committed before the Expire: deadline 2.5
    assert lc.due(2.4) == []
    assert lc.due(2.5) == [1]  # not only at 1.0 + RETRY


def test_a_lease_renewed_after_a_proposed_expire_is_checkpointed_again() -> None:
    lc = leader_clock(0.0)
    lc.observe([(1, 10_000, False)], now=0.0)
    assert lc.due(10.0) == [1]
    lc.observe([(1, 60_000, False)], now=10.5)  # the Expire went stale
    assert lc.to_checkpoint(10.0) == []  # its Expire is under way
    assert lc.to_checkpoint(10.5 + CI) == [(1, 55_000)]


def test_the_heap_is_rebuilt_when_stale_entries_pile_up() -> None:
    lc = leader_clock()
    for step in range(3000):
        lc.observe([(1, 10_000, False), (2, 20_000, False)], now=step * 0.001)
    assert len(lc._heap) <= 2 * len(lc) + 1025
    assert lc.due(12.9) == []
    assert lc.due(13.0) == [1]
    assert lc.due(22.9) == [1]  # again: its Expire was never applied
    assert lc.due(23.0) == [2]


# -- checkpoints ----------------------------------------------------------------------------


def test_checkpoints_record_only_leases_nothing_recorded_for_an_interval() -> None:
    lc = leader_clock(0.0)
    lc.observe([(1, 60_000, False), (2, 60_000, False)], now=0.0)
    lc.observe([(3, 60_000, False)], now=3.0)
    assert lc.to_checkpoint(CI - 0.1) == []
    assert lc.to_checkpoint(CI) == [(1, 55_000), (2, 55_000)]
    # At most once per interval, even if a lease became stale in between.
    assert lc.to_checkpoint(3.0 + CI) == []
    assert lc.to_checkpoint(2 * CI - 0.1) == []
    # The checkpoint entry is applied (on the leader it only records the time)...
    lc.observe([(1, 55_000, True), (2, 55_000, True)], now=CI + 0.5)
    # ... so at the next interval only lease 3 is stale.
    assert lc.to_checkpoint(2 * CI) == [(3, 53_000)]


def test_a_checkpoint_that_is_not_applied_is_proposed_again() -> None:
    lc = leader_clock(0.0)
    lc.observe([(1, 60_000, False)], now=0.0)
    assert lc.to_checkpoint(CI) == [(1, 55_000)]
    # Lost (never applied): still unrecorded at the next interval.
    assert lc.to_checkpoint(2 * CI) == [(1, 50_000)]


def test_checkpoints_leave_out_leases_whose_expiry_was_proposed() -> None:
    lc = leader_clock(0.0)
    lc.observe([(1, 1_000, False), (2, 60_000, False)], now=0.0)
    assert lc.due(CI) == [1]
    assert lc.to_checkpoint(CI) == [(2, 55_000)]


def test_checkpoints_count_the_interval_from_becoming_leader() -> None:
    lc = clock()
    lc.observe([(1, 60_000, False)], now=0.0)
    lc.became_leader(10.0)
    assert lc.to_checkpoint(10.0 + CI - 0.1) == []
    assert lc.to_checkpoint(10.0 + CI) == [(1, int((60 + ET - 10 - CI) * 1000))]


def test_a_checkpoint_holds_at_most_a_thousand_leases() -> None:
    lc = leader_clock(0.0)
    lc.observe([(i, 60_000, False) for i in range(1, 1501)], now=0.0)
    first = lc.to_checkpoint(CI)
    assert [lease for lease, _ in first] == list(range(1, 1001))


# -- restore ----------------------------------------------------------------------------


def test_load_forgets_everything_and_starts_from_the_recorded_times() -> None:
    lc = leader_clock(0.0)
    lc.observe([(1, 1_000, False), (2, 1_000, False)], now=0.0)
    assert lc.due(1.0) == [1, 2]
    lc.load([(2, 4_000, False), (3, 9_000, False)], now=50.0)
    assert len(lc) == 2
    assert lc.remaining_ms(1, 50.0) == -1
    assert lc.remaining_ms(2, 50.0) == 4_000
    assert lc.remaining_ms(3, 50.0) == 9_000
    # Still leading (load does not change the role); nothing stale is left in the heap.
    assert lc.leading
    assert lc.due(53.99) == []
    assert lc.due(54.0) == [2]
    assert lc.due(56.5) == []
    assert lc.due(59.0) == [2, 3]


def test_load_records_the_restored_times_for_checkpoints() -> None:
    lc = leader_clock(0.0)
    lc.observe([(1, 60_000, False)], now=0.0)
    lc.load([(1, 30_000, False)], now=20.0)
    assert lc.to_checkpoint(20.0 + CI - 0.1) == []
    assert lc.to_checkpoint(20.0 + 2 * CI) == [(1, 20_000)]


def test_settings_have_sensible_defaults() -> None:
    settings = LeaseClockSettings(election_timeout_s=0.3)
    assert settings.checkpoint_interval_s == pytest.approx(5.0)
    assert settings.expire_retry_s == pytest.approx(2.0)
