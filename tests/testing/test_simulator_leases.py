"""Leases in the simulator (raftkv/testing/sim_leases.py): seeded runs with lease clients
pass under every nemesis, replay exactly, and the lease checks catch deliberately broken
lease clocks, both ways: a lease that expires too early, and one that never does."""

from __future__ import annotations

import re
from collections.abc import Iterable

import pytest

from raftkv.kv.leases import TimerEvent
from raftkv.node.driver import Driver
from raftkv.node.lease_clock import LeaseClock
from raftkv.testing.safety import SafetyViolation
from raftkv.testing.sim_leases import (
    LeaseExpiredEarly,
    LeaseNotExpired,
    LeaseWatchingStateMachine,
)
from raftkv.testing.simulate import main as simulate_main
from raftkv.testing.simulate import replay_command
from raftkv.testing.simulator import Cluster, SimOptions, SimResult

LEASES = SimOptions(leases=True)
# Frequent checkpoints, many lease clients, leaders moving and a lossy network: the mix
# that exposes a checkpoint written over a keep-alive it has not applied (below).
CHECKPOINT_HUNT = SimOptions(
    leases=True,
    lease_checkpoint_ticks=3.0,
    lease_clients=6,
    nemeses=("transfer", "lossy"),
    nemesis_interval=(5, 20),
)
MAX_SEEDS_TO_CATCH = 30


def run(seed: int, options: SimOptions = LEASES) -> tuple[Cluster, SimResult]:
    cluster = Cluster(seed, options)
    return cluster, cluster.run()


def test_seeds_pass_with_leases() -> None:
    """Lease clients alongside the others, under every nemesis: no lease expires before
    an acknowledged renewal's TTL ran out, each expires in time once the faults heal,
    and the rest of the checks (safety, convergence, linearizability) still pass."""
    granted = kept_alive = expired = early_checked = late_checked = 0
    for seed in range(40):
        cluster, result = run(seed)
        assert result.stats.ok > 0
        workload = cluster.leases
        assert workload is not None
        summary = workload.summary
        granted += summary.granted
        kept_alive += summary.kept_alive
        expired += summary.expired
        assert workload.converged_at is not None
        for lease in summary.leases:
            if lease.ended_at is not None and lease.acked_send is not None:
                early_checked += 1
                assert lease.ended_at >= lease.acked_send + lease.ttl
            if lease.ended_at is not None and lease.ended_at > workload.converged_at:
                late_checked += 1
                assert lease.ended_at <= workload.expiry_bound(lease)
        # Every lease granted ended before the run did.
        leader = cluster.leader()
        assert leader is not None
        assert all(lease.id not in leader.sm.leases for lease in summary.leases)
        assert all(
            isinstance(node.sm, LeaseWatchingStateMachine) for node in cluster.nodes.values()
        )
    # The runs are only worth something if leases were granted, renewed and expired.
    assert granted > 200 and kept_alive > 400 and expired > 200
    assert early_checked > 200
    assert late_checked > 40  # leases that expired after the faults, against the bound


def test_five_node_clusters_pass_with_leases() -> None:
    for seed in range(5):
        run(seed, SimOptions(nodes=5, leases=True))


def test_a_lease_run_replays_exactly() -> None:
    first, first_result = run(4242)
    second, second_result = run(4242)
    assert first.leases is not None and second.leases is not None
    assert first.leases.summary == second.leases.summary
    assert first_result.history.to_json() == second_result.history.to_json()
    assert first_result.stats == second_result.stats


def test_without_leases_nothing_changes() -> None:
    cluster, _ = run(3, SimOptions())
    assert cluster.leases is None
    assert all(type(node.sm).__name__ == "KVStateMachine" for node in cluster.nodes.values())


# -- the checks can fail -----------------------------------------------------------------


def first_failure(options: SimOptions = LEASES) -> tuple[int, AssertionError]:
    for seed in range(MAX_SEEDS_TO_CATCH):
        try:
            run(seed, options)
        except AssertionError as exc:
            return seed, exc
    pytest.fail(f"the bug went unnoticed for {MAX_SEEDS_TO_CATCH} seeds")


def assert_names_a_lease(exc: AssertionError) -> None:
    assert re.search(r"lease \d+ \(ttl \d+, key lease/\d+\)", str(exc)), str(exc)


def test_a_new_leader_that_shortens_deadlines_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A leader that, instead of adding an election timeout, halves what is left of
    every deadline."""

    def became_leader(self: LeaseClock, now: float) -> None:
        self._leading = True
        self._proposed.clear()
        self._last_checkpoint = now
        for lease_id, deadline in list(self._deadlines.items()):
            self._set(lease_id, min(deadline, now + (deadline - now) / 2))

    monkeypatch.setattr(LeaseClock, "became_leader", became_leader)
    seed, exc = first_failure()
    assert isinstance(exc, LeaseExpiredEarly), exc
    assert isinstance(exc, SafetyViolation)
    assert_names_a_lease(exc)
    assert re.search(r"expired \d+ ticks before the TTL", str(exc))
    # The failing seed replays exactly.
    with pytest.raises(LeaseExpiredEarly) as again:
        run(seed)
    assert str(again.value) == str(exc)


def test_a_keep_alive_that_shortens_the_ttl_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    observe = LeaseClock.observe

    def short_observe(self: LeaseClock, events: Iterable[TimerEvent], now: float) -> None:
        shortened = [
            (lease, left if left is None or checkpoint else left * 2 // 3, checkpoint)
            for lease, left, checkpoint in events
        ]
        observe(self, shortened, now)

    monkeypatch.setattr(LeaseClock, "observe", short_observe)
    _, exc = first_failure()
    assert isinstance(exc, LeaseExpiredEarly), exc
    assert_names_a_lease(exc)


def test_leases_that_never_expire_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LeaseClock, "due", lambda self, now: [])
    _, exc = first_failure()
    assert isinstance(exc, LeaseNotExpired), exc
    assert not isinstance(exc, SafetyViolation)
    assert_names_a_lease(exc)
    assert "after its bound" in str(exc)


def test_a_checkpoint_over_an_unapplied_keep_alive_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the driver's guard taken out, a leader's checkpoint can record the time left
    on a lease while a keep-alive of it waits, unapplied, earlier in its log: followers
    apply the keep-alive and then take the checkpoint's earlier deadline, and one of
    them, leader next, expires the lease early (see test_driver_leases.py)."""
    monkeypatch.setattr(Driver, "_leases_named_unapplied", lambda self: set())
    _, exc = first_failure(CHECKPOINT_HUNT)
    assert isinstance(exc, LeaseExpiredEarly), exc


def test_the_checkpoint_hunt_passes_without_the_bug() -> None:
    for seed in range(10):
        run(seed, CHECKPOINT_HUNT)


# -- the command line ---------------------------------------------------------------------


def test_the_command_line_runs_leases(capsys: pytest.CaptureFixture[str]) -> None:
    assert simulate_main(["--seed", "5", "--leases"]) == 0
    assert "seed 5 passed" in capsys.readouterr().out
    command = replay_command(11, ["--seeds", "100", "--leases", "--jobs", "2"])
    assert command == "python -m raftkv.testing.simulate --seed 11 --leases"


def test_a_failing_lease_seed_prints_its_replay(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(LeaseClock, "due", lambda self, now: [])
    assert simulate_main(["--seeds", "1", "--start", "2", "--leases"]) == 1
    out = capsys.readouterr().out
    assert "seed 2 FAILED: LeaseNotExpired: lease" in out
    assert "replay: python -m raftkv.testing.simulate --seed 2 --leases" in out
