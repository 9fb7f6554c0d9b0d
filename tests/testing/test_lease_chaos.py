"""The lease workload: its check on made-up histories (a key that vanished before its
TTL and one that lingered past the bound must both be reported), a short chaos run on
real processes (keys on leases kept alive across kills, pauses and partitions), and a
real run with both injected bugs, which the check must catch."""

from __future__ import annotations

from raftkv.testing.lease_workload import (
    LINGER_BOUND_S,
    NOT_FOUND,
    OK,
    UNKNOWN,
    KeepAlive,
    LeaseRecord,
    PrefixRead,
    check_leases,
)

KEY = "lease/0/00001"


def record(*keepalives: KeepAlive, ttl: float = 2.0) -> LeaseRecord:
    """A lease granted (sent) at 0.0, answered at 0.01, its key put by 0.02."""
    return LeaseRecord(
        KEY,
        lease_id=7,
        ttl=ttl,
        granted_sent=0.0,
        granted_at=0.01,
        put_sent=0.01,
        put_ended=0.02,
        put_outcome=OK,
        keepalives=list(keepalives),
    )


def reads(*spans: tuple[float, float, bool]) -> list[PrefixRead]:
    """(sent, received, present) for each read."""
    return [
        PrefixRead(s, r, frozenset({KEY}) if present else frozenset()) for s, r, present in spans
    ]


def test_a_key_kept_alive_then_let_go_passes() -> None:
    lease = record(KeepAlive(0.6, 0.62, OK), KeepAlive(1.2, 1.25, UNKNOWN))
    history = reads(
        (0.0, 0.005, False),  # sent before the put was acknowledged: not evidence
        (0.5, 0.51, True),
        (2.55, 2.58, True),  # 0.6 + 2.0 = 2.6 is the protected time
        (2.59, 2.61, False),  # answered after it: fine
        (3.0, 3.01, False),
    )
    verdict = check_leases([lease], history, healed_at=1.0)
    assert verdict.ok, verdict
    assert verdict.keys_checked == verdict.keys_seen_gone == 1
    assert len(verdict.gone_after) == 1
    assert abs(verdict.gone_after[0] - 0.01) < 1e-9


def test_a_key_that_vanished_before_its_ttl_is_reported() -> None:
    """The last acknowledged keep-alive was sent at 0.6 s: the key is protected until
    2.6 s, and a read answered at 2.3 s found it gone."""
    lease = record(KeepAlive(0.6, 0.62, OK))
    history = reads((1.0, 1.01, True), (2.29, 2.3, False), (3.0, 3.01, False))
    verdict = check_leases([lease], history, healed_at=1.0)
    assert not verdict.ok and not verdict.lingering
    assert len(verdict.early) == 1, verdict
    assert "vanished early" in verdict.early[0] and "before 2.600s" in verdict.early[0]


def test_a_keep_alive_refused_before_the_ttl_is_reported() -> None:
    lease = record(KeepAlive(0.6, 0.62, OK), KeepAlive(1.2, 1.21, NOT_FOUND))
    verdict = check_leases([lease], reads((3.0, 3.01, False)), healed_at=1.0)
    assert len(verdict.early) == 1, verdict
    assert "a keep-alive was answered 404 at 1.210s, before 2.600s" in verdict.early[0]


def test_a_key_that_lingered_past_the_bound_is_reported() -> None:
    """Renewed last by a call that ended at 0.62 s, healed at 1.0 s: the key must be gone
    by 1.0 + 2.0 + LINGER_BOUND_S; a read sent after that still found it."""
    lease = record(KeepAlive(0.6, 0.62, OK))
    gone_by = 1.0 + 2.0 + LINGER_BOUND_S
    history = reads((2.0, 2.01, True), (gone_by - 0.1, gone_by, True), (gone_by + 0.1, 8.2, True))
    verdict = check_leases([lease], history, healed_at=1.0)
    assert not verdict.ok and not verdict.early
    assert len(verdict.lingering) == 1, verdict
    assert "lingered: a read sent at" in verdict.lingering[0]
    # Seen there only by reads sent before the bound, and never gone: unverified.
    verdict = check_leases([lease], history[:2], healed_at=1.0)
    assert not verdict.violations and len(verdict.unverified) == 1, verdict


def test_a_key_that_came_back_is_reported() -> None:
    lease = record()
    history = reads((1.0, 1.01, True), (2.1, 2.2, False), (2.3, 2.31, True), (2.4, 2.41, False))
    verdict = check_leases([lease], history, healed_at=1.0)
    assert len(verdict.lingering) == 1 and "came back" in verdict.lingering[0], verdict


# The runs with real processes, under faults and with the injected bugs, share their
# clusters with the lock workload's: tests/testing/test_lock_chaos.py.
