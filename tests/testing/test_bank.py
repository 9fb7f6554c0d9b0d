"""The bank workload: its check on made-up reads, a short chaos run on real processes
under faults (transfers are transactions: the total never changes), and the same with
transfers split into two writes, a bug the check must catch."""

from __future__ import annotations

from pathlib import Path

from raftkv.testing.bank_workload import BankOptions, BankRead, check_bank
from raftkv.testing.chaos import ChaosOptions, run_chaos

OPTIONS = BankOptions(accounts=3, initial_balance=10)
ALL = {"bank/00": 10, "bank/01": 10, "bank/02": 10}


def test_reads_that_keep_the_total_pass() -> None:
    moved = {"bank/00": 0, "bank/01": 25, "bank/02": 5}
    assert (
        check_bank([BankRead(0.1, ALL), BankRead(0.2, moved)], BankRead(1.0, moved), OPTIONS) == []
    )


def test_every_kind_of_wrong_read_is_reported() -> None:
    reads = [
        BankRead(0.1, {"bank/00": 10, "bank/01": 10}),  # an account missing
        BankRead(0.2, {**ALL, "bank/03": 0}),  # one too many
        BankRead(0.3, {"bank/00": 5, "bank/01": 10, "bank/02": 10}),  # money gone
        BankRead(0.4, {"bank/00": -5, "bank/01": 25, "bank/02": 10}),  # overdrawn
    ]
    violations = check_bank(reads, None, OPTIONS)
    assert len(violations) == 5, violations
    assert "saw accounts" in violations[0] and "saw accounts" in violations[1]
    assert "total 25, not 30" in violations[2]
    assert "negative balances in ['bank/00']" in violations[3]
    assert "no final read" in violations[4]


def test_transfers_keep_the_total_under_faults(tmp_path: Path) -> None:
    options = ChaosOptions(
        duration_s=15.0,
        seed=21,
        clients=2,
        set_clients=1,
        nemeses=("kill", "pause", "partition", "kill_leader"),
        calm_s=(0.3, 1.0),
        fault_s=(1.0, 3.0),
        bank=BankOptions(seed=21),
    )
    report = run_chaos(options, tmp_path / "run")
    assert report.ok, report.summary()
    bank = report.bank
    # Worth something only if money really moved, and reads were checked throughout.
    assert bank["transfers"]["ok"] > 50, bank
    assert bank["reads"] > 100, bank
    assert sum(bank["final"].values()) == 500 and bank["violations"] == []


def test_split_transfers_are_caught(tmp_path: Path) -> None:
    """The injected bug: without a transaction a reader sees money in flight (and
    racing transfers lose updates), so the check fails, faults or none."""
    options = ChaosOptions(
        duration_s=4.0,
        seed=3,
        clients=1,
        set_clients=1,
        nemeses=(),
        bank=BankOptions(seed=3, split_transfers=True),
    )
    report = run_chaos(options, tmp_path / "run")
    assert not report.ok
    assert report.bank["violations"], report.summary()
    assert any(a.startswith("bank:") for a in report.anomalies), report.anomalies
