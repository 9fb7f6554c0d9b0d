"""The simulator: many seeded runs pass, runs replay exactly, and injected bugs are caught."""

from __future__ import annotations

import pytest

from raftkv.raft.config import UnsafeFaults
from raftkv.testing.safety import SafetyViolation
from raftkv.testing.simulate import main as simulate_main
from raftkv.testing.simulator import (
    NEMESES,
    LinearizabilityFailure,
    LivenessFailure,
    SimOptions,
    run_simulation,
)

CI_SEEDS = 300
BATCH = 25


@pytest.mark.parametrize("first", range(0, CI_SEEDS, BATCH))
def test_seeds_pass_under_all_nemeses(first: int) -> None:
    """Every nemesis mixed with concurrent clients: safety after every step, then
    convergence and a linearizable history."""
    for seed in range(first, first + BATCH):
        result = run_simulation(seed, SimOptions())
        assert result.stats.ok > 0, f"seed {seed}: no operation succeeded"
        assert result.stats.elections > 0


def test_faults_are_really_injected() -> None:
    """The runs above are only worth something if the nemeses fire and clients load."""
    seen: dict[str, int] = {}
    ops = unknown = 0
    for seed in range(20):
        stats = run_simulation(seed, SimOptions()).stats
        for fault, count in stats.faults.items():
            seen[fault] = seen.get(fault, 0) + count
        ops += stats.ops
        unknown += stats.unknown
    assert set(seen) == set(NEMESES)
    assert ops > 2000
    assert unknown > 0, "no operation ever timed out: the faults are too gentle"


def test_five_node_clusters_pass() -> None:
    for seed in range(10):
        result = run_simulation(seed, SimOptions(nodes=5))
        assert result.stats.ok > 0


def test_a_seed_replays_exactly() -> None:
    first = run_simulation(4242, SimOptions())
    second = run_simulation(4242, SimOptions())
    assert first.history.to_json() == second.history.to_json()
    assert first.stats == second.stats


# Each deliberate bug with the fault mix that exposes it fastest. The checks must catch
# each one within a bounded number of seeds.
BUG_HUNTS = {
    "commit_earlier_terms": SimOptions(
        nodes=5,
        nemeses=("crash_leader", "isolate_leader"),
        nemesis_interval=(3, 12),
        max_message_bytes=1,
        ticks=500,
        clients=8,
        keys=2,
        faults=UnsafeFaults(commit_earlier_terms=True),
    ),
    "ack_before_persist": SimOptions(
        nemeses=("restart_all", "crash_leader", "crash"),
        nemesis_interval=(10, 40),
        disk_latency=(3, 8),
        faults=UnsafeFaults(ack_before_persist=True),
    ),
    "vote_without_log_check": SimOptions(faults=UnsafeFaults(vote_without_log_check=True)),
}
MAX_SEEDS_TO_CATCH = 60


@pytest.mark.parametrize("bug", sorted(BUG_HUNTS))
def test_injected_bug_is_caught(bug: str) -> None:
    options = BUG_HUNTS[bug]
    for seed in range(MAX_SEEDS_TO_CATCH):
        try:
            run_simulation(seed, options)
        except (SafetyViolation, LinearizabilityFailure, LivenessFailure) as exc:
            caught = exc
            break
    else:
        pytest.fail(f"{bug} went unnoticed for {MAX_SEEDS_TO_CATCH} seeds")
    # A safety property or the history check must be what fails, not just liveness.
    assert isinstance(caught, SafetyViolation | LinearizabilityFailure), caught


@pytest.mark.parametrize("bug", sorted(BUG_HUNTS))
def test_same_fault_mix_passes_without_the_bug(bug: str) -> None:
    """The hunting fault mixes are harsh, but a correct core survives them."""
    clean = SimOptions(
        **{
            name: getattr(BUG_HUNTS[bug], name)
            for name in SimOptions.__dataclass_fields__
            if name != "faults"
        }
    )
    for seed in range(15):
        run_simulation(seed, clean)


def test_failing_seed_prints_its_replay_command(capsys: pytest.CaptureFixture[str]) -> None:
    status = simulate_main(["--seeds", "3", "--inject", "vote_without_log_check"])
    out = capsys.readouterr().out
    assert status == 1
    replay_lines = [line for line in out.splitlines() if "replay:" in line]
    assert replay_lines
    command = replay_lines[0].split("replay:", 1)[1].split()
    assert command[:3] == ["python", "-m", "raftkv.testing.simulate"]
    failure = next(line for line in out.splitlines() if "FAILED" in line)

    # Replaying gives exactly the same failure.
    assert simulate_main(command[3:]) == 1
    replayed = capsys.readouterr().out
    assert failure.split(":", 1)[1].strip() in replayed


def test_passing_campaign_reports_totals(capsys: pytest.CaptureFixture[str]) -> None:
    assert simulate_main(["--seeds", "2", "--start", "7"]) == 0
    out = capsys.readouterr().out
    assert "2 seeds in" in out and "2 passed, 0 failed" in out
    assert "faults injected:" in out
