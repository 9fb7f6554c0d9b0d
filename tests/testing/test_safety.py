"""The safety checker recognises each violation it exists to catch."""

from __future__ import annotations

import random

import pytest

from raftkv.raft.config import RaftConfig
from raftkv.raft.core import RaftCore, Role
from raftkv.raft.membership import Membership
from raftkv.raft.ready import HardState, InitialState
from raftkv.testing.safety import SafetyChecker, SafetyViolation
from raftkv_ext.entry import ENTRY_CONFIG, Entry


def make_core(node_id: int, log_terms: list[int], term: int) -> RaftCore:
    config_entry = Entry(1, 1, ENTRY_CONFIG, Membership.of([1, 2, 3]).encode())
    log = [config_entry] + [Entry(i + 2, t, 0, b"x%d" % t) for i, t in enumerate(log_terms)]
    state = InitialState(hard_state=HardState(term=term), entries=log)
    return RaftCore(RaftConfig(node_id=node_id), random.Random(node_id), state)


def test_two_leaders_in_one_term() -> None:
    checker = SafetyChecker()
    a, b = make_core(1, [], 2), make_core(2, [], 2)
    a.role = b.role = Role.LEADER
    checker.check(1, a)
    with pytest.raises(SafetyViolation, match="Election Safety"):
        checker.check(2, b)


def test_different_entries_with_the_same_index_and_term() -> None:
    checker = SafetyChecker()
    a = make_core(1, [1], 1)
    checker.appended(1, a, [Entry(3, 2, 0, b"one")])
    with pytest.raises(SafetyViolation, match="Log Matching"):
        checker.appended(2, a, [Entry(3, 2, 0, b"two")])


def test_different_entries_applied_at_one_index() -> None:
    checker = SafetyChecker()
    checker.applied(1, [Entry(5, 2, 0, b"a")])
    with pytest.raises(SafetyViolation, match="State Machine Safety"):
        checker.applied(2, [Entry(5, 3, 0, b"b")])


def test_leader_without_a_committed_entry() -> None:
    checker = SafetyChecker()
    follower = make_core(1, [1, 1], 1)
    follower.log.committed = 3
    checker.check(1, follower)
    leader = make_core(2, [1], 2)
    leader.role = Role.LEADER
    with pytest.raises(SafetyViolation, match="Leader Completeness"):
        checker.check(2, leader)


def test_commit_index_going_back() -> None:
    checker = SafetyChecker()
    core = make_core(1, [1, 1], 1)
    core.log.committed = 3
    checker.check(1, core)
    core.log.committed = 2
    with pytest.raises(SafetyViolation, match="went back"):
        checker.check(1, core)


def test_leader_rewriting_its_log() -> None:
    checker = SafetyChecker()
    core = make_core(1, [1, 1], 2)
    core.role = Role.LEADER
    checker.check(1, core)
    del core.log.entries[-1]
    with pytest.raises(SafetyViolation, match="Leader Append-Only"):
        checker.check(1, core)
