"""The lock workload: its check on made-up histories (a holder paused past its TTL that
writes on when it wakes must be caught), a short chaos run on real processes (holders
of one lock write to a fenced register while nodes are killed, paused and
partitioned), and a real run with a holder that ignores ``valid_until``, which the
check must catch."""

from __future__ import annotations

from pathlib import Path

from raftkv.testing.chaos import ChaosOptions, run_chaos
from raftkv.testing.lease_workload import LeaseOptions
from raftkv.testing.lock_workload import (
    Acquisition,
    FencedRegister,
    LockOptions,
    RegisterWrite,
    check_lock,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_correct_history_passes() -> None:
    clock = FakeClock()
    register = FencedRegister(clock)
    acquisitions = []
    for n, token in enumerate([5, 9, 12]):
        clock.now = 2.0 * n
        acquisitions.append(Acquisition(token, n, clock.now, clock.now + 1.8))
        for step in range(5):
            clock.now = 2.0 * n + 0.1 + 0.2 * step
            assert register.write(token, n)
    assert check_lock(acquisitions, register.writes, min_acquisitions=3) == []


def test_a_paused_holder_that_writes_on_waking_is_caught() -> None:
    """Holder 0 gets token 5, is paused (no keep-alives) past its TTL, the store gives
    the lock to holder 1 (token 9), and holder 0 wakes and writes before holder 1's
    first write: the fence accepts it, the check must not."""
    clock = FakeClock()
    register = FencedRegister(clock)
    acquisitions = [Acquisition(5, 0, 0.0, 1.8)]
    clock.now = 0.1
    assert register.write(5, 0)
    # Paused from 0.2 s to 2.6 s; the lease expired at 2.0 s.
    acquisitions.append(Acquisition(9, 1, 2.3, 4.1))
    clock.now = 2.6
    assert register.write(5, 0)  # the fence has not seen token 9 yet
    clock.now = 2.65
    assert register.write(9, 1)
    clock.now = 2.7
    assert not register.write(5, 0)  # now it has: refused, not a violation
    violations = check_lock(acquisitions, register.writes, min_acquisitions=2)
    assert len(violations) == 1, violations
    assert "holder 0's write with token 5 was accepted at 2.6000s" in violations[0]
    assert "after holder 1 had acquired token 9 at 2.3000s" in violations[0]


def test_every_other_kind_of_wrong_history_is_reported() -> None:
    acquisitions = [
        Acquisition(9, 0, 1.0, 2.8),
        Acquisition(7, 1, 3.0, 4.8),  # a token below the one before
        Acquisition(6, 2, 3.5, 3.4),  # returned too late to use: not ordered
    ]
    writes = [
        RegisterWrite(9, 0, 1.1, True),
        RegisterWrite(11, 2, 3.6, True),  # a token nobody acquired
    ]
    violations = check_lock(acquisitions, writes, min_acquisitions=5)
    assert len(violations) == 3, violations
    assert "holder 2 wrote with token 11 at 3.6000s without having acquired it" in violations[0]
    assert "holder 1 acquired token 7 at 3.0000s, not above token 9" in violations[1]
    assert "only 2 acquisitions returned with the lock held, fewer than 5" in violations[2]


def test_many_violations_are_capped() -> None:
    acquisitions = [Acquisition(1, 0, 0.0, 1.8), Acquisition(2, 1, 2.0, 3.8)]
    writes = [RegisterWrite(1, 0, 2.0 + n / 100, True) for n in range(1, 31)]
    violations = check_lock(acquisitions, writes, min_acquisitions=1, limit=5)
    assert len(violations) == 6
    assert violations[-1] == "... and 25 more superseded writes accepted"


def test_locks_and_leases_hold_under_faults(tmp_path: Path) -> None:
    """One run with both workloads (each checked on its own) keeps CI short."""
    options = ChaosOptions(
        duration_s=20.0,
        seed=15,
        clients=2,
        set_clients=1,
        nemeses=("kill", "pause", "partition", "kill_leader"),
        calm_s=(0.3, 1.0),
        fault_s=(1.0, 3.0),
        lock=LockOptions(seed=15, min_acquisitions=10),
        lease=LeaseOptions(seed=15),
    )
    report = run_chaos(options, tmp_path / "run")
    assert report.ok, report.summary()
    assert {"kill", "pause", "partition"} <= set(report.faults), report.faults
    lock = report.lock
    # Worth something only if the lock changed hands often and holders really wrote.
    assert lock["acquisitions"] >= 10 and lock["holders"] == 3, lock
    assert lock["writes_accepted"] > 100, lock
    assert lock["violation_count"] == 0 and lock["violations"] == [], lock
    assert (tmp_path / "run" / "lock.json").exists()
    lease = report.lease
    # Worth something only if many keys were kept alive across the faults and every
    # one of them was seen gone, after its TTL.
    assert lease["leases"] >= 20 and lease["after_heal"] == 3, lease
    assert lease["keepalives"].get("ok", 0) >= 20, lease
    assert lease["reads"] >= 200, lease
    assert lease["keys_seen_gone"] == lease["keys_checked"] >= 20, lease
    assert lease["gone_after_s"]["min"] >= 0, lease
    assert lease["violation_count"] == 0 and not lease["unverified_keys"], lease
    assert (tmp_path / "run" / "lease.json").exists()


def test_injected_lock_and_lease_bugs_are_caught(tmp_path: Path) -> None:
    """The injected bugs, in one run with real processes. Lock: holder 0 stops its
    keeper once it holds the lock and writes on past its TTL; the next holder gets the
    lock and, before its first write, the fence accepts holder 0's stale token. Lease:
    client 0 records a keep-alive it never sent (its key vanishes before the time the
    history protects it to); client 1 keeps its lease alive in secret after recording
    that it stopped (its key outlives the bound)."""
    options = ChaosOptions(
        duration_s=8.0,
        seed=3,
        clients=1,
        set_clients=1,
        nemeses=(),
        lock=LockOptions(seed=3, zombie_holder=True),
        lease=LeaseOptions(seed=3, phantom_keepalive=True, zombie_keepalive=True),
    )
    report = run_chaos(options, tmp_path / "run")
    assert not report.ok
    lock = report.lock
    assert lock["abandoned"] >= 1, lock
    assert any("holder 0's write with token" in v for v in lock["violations"]), lock
    assert any(a.startswith("lock:") for a in report.anomalies), report.anomalies
    lease = report.lease
    assert lease["early"] >= 1 and lease["lingering"] >= 1, lease
    assert any("lease/0/00001" in v and "vanished early" in v for v in lease["violations"])
    assert any("lease/1/00001" in v and "lingered" in v for v in lease["violations"])
    assert any("before their TTL" in a for a in report.anomalies), report.anomalies
    assert any("outlived their bound" in a for a in report.anomalies), report.anomalies
