"""CPU per request of every member of the cluster under test, from ``/proc``.

A member is a process tree: a raftkv node is its Raft process plus the HTTP workers it
spawns (and, now and then, a forked child writing a snapshot); an etcd member is one
process. The CPU of a run is user plus system time (``utime + stime`` of
``/proc/<pid>/stat``) of every process of each member, read when the run's measured
window begins and when it ends, divided by the requests completed in that window. It
drifts far less than throughput with what else the machine is doing (batching makes it
depend on the load too), so it is the figure to compare across runs and against etcd.

The tree is walked at both ends of the window, so a process that started inside it
counts from zero. One that ended inside it has been reaped by its parent, whose
``cutime + cstime`` then grew by the child's whole life; what the child had used before
the window (read at its start) is taken off again, so only the window is counted.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Roles of the processes of a member. The main process of a raftkv node is its Raft
# process, that of an etcd member the whole member.
RAFT, HTTP, OTHER, ETCD = "raft", "http", "other", "etcd"
_WORKER_MODULE = b"raftkv.http.worker"


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of one ``/proc/<pid>/stat`` line that CPU accounting needs."""

    ppid: int
    own_s: float  # utime + stime: the process's own CPU seconds
    reaped_s: float  # cutime + cstime: the whole lives of the children it has waited for


def parse_stat(line: str, ticks_per_s: float = _CLOCK_TICKS) -> ProcStat:
    """Parse a ``/proc/<pid>/stat`` line. The command name (field 2, in parentheses)
    may itself hold spaces and parentheses, so fields are counted after its last ``)``;
    after it come state (3), ppid (4), ... utime (14), stime (15), cutime (16) and
    cstime (17), in clock ticks."""
    fields = line.rsplit(")", 1)[1].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ProcStat(ppid, (utime + stime) / ticks_per_s, (cutime + cstime) / ticks_per_s)


def read_stat(pid: int) -> ProcStat | None:
    """``pid``'s stat, or None when it has gone."""
    try:
        return parse_stat(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, IndexError, ValueError):
        return None


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far (``/proc/<pid>/stat``)."""
    stat = read_stat(pid)
    if stat is None:
        raise ProcessLookupError(pid)
    return stat.own_s


def children(pid: int) -> list[int]:
    """The children of ``pid`` (every thread's ``children`` file: a child belongs to
    the thread that started it); empty once ``pid`` has gone."""
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _argv(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def is_http_worker(argv: Iterable[bytes]) -> bool:
    """Whether a command line is a raftkv HTTP worker's (``python -m raftkv.http.worker``)
    rather than the other children of a Raft process (forked snapshot writers, which
    carry their parent's command line)."""
    return _WORKER_MODULE in argv


def http_workers(raft_pid: int) -> tuple[int, ...]:
    """The HTTP workers among the Raft process's children."""
    return tuple(pid for pid in children(raft_pid) if is_http_worker(_argv(pid)))


# ------------------------------------------------------------------------ members


@dataclass(frozen=True, slots=True)
class Member:
    """One member of the cluster under test: its name in reports (a raftkv node id, an
    etcd member name), its main process and that process's role (``raft`` or ``etcd``)."""

    name: str
    pid: int
    role: str


@dataclass(frozen=True, slots=True)
class Proc:
    member: str
    role: str
    stat: ProcStat


# pid -> what it is and its CPU so far, for every process of every member at one moment.
Sample = dict[int, Proc]


def child_role(argv: Iterable[bytes]) -> str:
    return HTTP if is_http_worker(argv) else OTHER


def take_sample(members: Iterable[Member]) -> Sample:
    """Every process of every member now: the main process, then its descendants, each
    child of the main process by its command line (an HTTP worker or not) and deeper
    descendants with their ancestor's role."""
    found: Sample = {}
    for member in members:
        stat = read_stat(member.pid)
        if stat is None:
            continue  # the member has gone: it has nothing to count
        found[member.pid] = Proc(member.name, member.role, stat)
        pending = [(pid, child_role(_argv(pid))) for pid in children(member.pid)]
        while pending:
            pid, role = pending.pop()
            stat = read_stat(pid)
            if stat is None or pid in found:
                continue
            found[pid] = Proc(member.name, role, stat)
            pending += [(grandchild, role) for grandchild in children(pid)]
    return found


def attribute(before: Sample, after: Sample) -> dict[str, dict[str, float]]:
    """CPU seconds each member's processes used between two samples, by member and role.

    A process in both samples counts the difference, one only in ``after`` (started in
    between) all it has used. The children a process reaped in between show in the rise
    of its ``reaped_s``: that goes to the member's ``other`` role, less what each child
    that was in ``before`` had used by then (for a child whose parent is still there to
    have reaped it). A process that went without its parent in ``after`` is lost: what
    it used in between cannot be read any more."""
    used: dict[str, dict[str, float]] = {}

    def add(member: str, role: str, seconds: float) -> None:
        roles = used.setdefault(member, {})
        roles[role] = roles.get(role, 0.0) + seconds

    for pid, proc in after.items():
        start = before.get(pid)
        if start is not None and start.member != proc.member:
            start = None  # the pid was reused by another member's process: a new one
        add(proc.member, proc.role, proc.stat.own_s - (start.stat.own_s if start else 0.0))
        reaped = proc.stat.reaped_s - (start.stat.reaped_s if start else 0.0)
        if reaped:
            add(proc.member, OTHER, reaped)
    for pid, proc in before.items():
        parent = after.get(proc.stat.ppid)
        if pid not in after and parent is not None and proc.stat.ppid in before:
            # Reaped in between: its parent's reaped_s rose by its whole life, of which
            # this much was before the window.
            add(parent.member, OTHER, -(proc.stat.own_s + proc.stat.reaped_s))
    return used


# ------------------------------------------------------------------------ one run


@dataclass(slots=True)
class ClusterCpu:
    """The CPU every member of a cluster used over one run's measured window, and the
    requests completed in it."""

    system: str  # "raftkv" or "etcd"
    leader: str  # the member that led when the window began
    members: list[str]  # every member's name, in the cluster's order
    window_s: float
    requests: int
    # member -> role -> CPU seconds
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)

    def us(self, member: str, role: str | None = None) -> float:
        """Microseconds of CPU per request of one member (all its processes, or those of
        one role)."""
        if self.requests <= 0:
            return 0.0
        roles = self.seconds.get(member, {})
        spent = sum(roles.values()) if role is None else roles.get(role, 0.0)
        return spent * 1e6 / self.requests

    @property
    def followers(self) -> list[str]:
        return [m for m in self.members if m != self.leader]

    @property
    def total_us(self) -> float:
        """Microseconds of CPU per request, summed over every process of every member."""
        return sum(self.us(m) for m in self.members)

    def roles(self) -> list[str]:
        """The roles of this system's processes, main process first."""
        main = ETCD if self.system == "etcd" else RAFT
        seen = {role for roles in self.seconds.values() for role in roles}
        rest = [HTTP] if self.system != "etcd" else []
        return [main, *rest, *sorted(seen - {main, *rest, OTHER}), OTHER]

    def to_json(self) -> dict[str, Any]:
        per_member = {
            m: {
                "leader": m == self.leader,
                **{role: round(self.us(m, role), 2) for role in self.roles()},
                "total": round(self.us(m), 2),
            }
            for m in self.members
        }
        summary: dict[str, Any] = {
            "leader": round(self.us(self.leader), 2),
            "followers": [round(self.us(f), 2) for f in self.followers],
            "total": round(self.total_us, 2),
        }
        if self.system != "etcd":
            summary |= {
                "leader_http": round(self.us(self.leader, HTTP), 2),
                "leader_raft": round(self.us(self.leader, RAFT), 2),
                "followers_raft": [round(self.us(f, RAFT), 2) for f in self.followers],
                "followers_http": [round(self.us(f, HTTP), 2) for f in self.followers],
                "other": round(sum(self.us(m, OTHER) for m in self.members), 2),
            }
        return {
            "system": self.system,
            "leader": self.leader,
            "window_s": round(self.window_s, 3),
            "requests": self.requests,
            "cpu_s": {
                m: {role: round(self.seconds.get(m, {}).get(role, 0.0), 4) for role in self.roles()}
                for m in self.members
            },
            "us_per_request": summary,
            "members_us_per_request": per_member,
        }


class CpuMeter:
    """Reads the members' CPU when a run's measured window begins (``begin``, which the
    load generator calls the moment its warm-up ends) and when it ends (``end``)."""

    def __init__(self, system: str, members: list[Member], leader: str) -> None:
        if leader not in {m.name for m in members}:
            raise ValueError(f"leader {leader!r} is not one of the members")
        self.system = system
        self.members = members
        self.leader = leader
        self._before: Sample | None = None
        self._after: Sample | None = None
        self._began = self._ended = 0.0

    def begin(self) -> None:
        self._began, self._before = time.monotonic(), take_sample(self.members)

    def end(self) -> None:
        self._ended, self._after = time.monotonic(), take_sample(self.members)

    def per_request(self, requests: int) -> ClusterCpu | None:
        """The window's figures, or None when it never began and ended."""
        if self._before is None or self._after is None:
            return None
        return ClusterCpu(
            system=self.system,
            leader=self.leader,
            members=[m.name for m in self.members],
            window_s=self._ended - self._began,
            requests=requests,
            seconds=attribute(self._before, self._after),
        )


def raftkv_members(raft_pids: Mapping[int, int]) -> list[Member]:
    """The members of a raftkv cluster from node id -> Raft process."""
    return [Member(str(node), pid, RAFT) for node, pid in sorted(raft_pids.items())]
