"""``kvctl lock`` and ``kvctl elect`` as scripts use them: kvctl as a subprocess (its
real entry point, in a session of its own, so that only the test signals it) against
one real node (``LocalCluster``), running commands that report what they saw to files:
the environment they get (the fencing token), exit statuses passed through, two
``kvctl lock`` taking turns, the timeout, signals passed on to the command, and a lock
or a leadership lost while the command runs (its lease revoked from another client):
SIGTERM, SIGKILL if need be, and exit status 75."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from raftkv.cli.lock_commands import EXIT_LOCK_TIMEOUT, EXIT_LOST

from raftkv.client import Client, Lock
from raftkv.client.election import DEFAULT_ELECTION_PREFIX
from raftkv.client.lock import DEFAULT_LOCK_PREFIX
from raftkv.testing.cluster import LocalCluster, running_cluster, wait_until

PYTHON = sys.executable


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def kvctl_command(endpoint: str, *args: str) -> list[str]:
    return [PYTHON, "-P", "-m", "raftkv.cli.kvctl", "--endpoints", endpoint, *args]


def kvctl_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTKV_")}
    env["RAFTKV_HISTORY"] = os.devnull
    return env


def kvctl(endpoint: str, *args: str) -> Run:
    done = subprocess.run(
        kvctl_command(endpoint, *args),
        capture_output=True,
        text=True,
        env=kvctl_env(),
        timeout=60,
        check=False,
        start_new_session=True,
    )
    return Run(done.returncode, done.stdout, done.stderr)


class Started:
    """A kvctl running in the background, its output going to files."""

    def __init__(self, endpoint: str, directory: Path, *args: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.out = directory / "stdout"
        self.err = directory / "stderr"
        with self.out.open("wb") as stdout, self.err.open("wb") as stderr:
            self.process = subprocess.Popen(
                kvctl_command(endpoint, *args),
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=kvctl_env(),
                start_new_session=True,  # no terminal: signals come from the test only
            )

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def wait(self, timeout: float = 15) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Kill kvctl and whatever it runs (its process group), if still there."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # a command left behind


@pytest.fixture
def started(url: str, tmp_path: Path) -> Iterator[list[Started]]:
    """Start kvctl in the background with ``started.append(Started(...))``; each is
    stopped at the end."""
    running: list[Started] = []
    try:
        yield running
    finally:
        for each in running:
            each.stop()


def script(code: str) -> list[str]:
    """A command: Python running ``code`` (``-P``: not from the working directory, which
    may be a source tree whose compiled modules are installed elsewhere)."""
    return [PYTHON, "-P", "-c", code]


# Reports its environment and pid to a file, says when SIGTERM or SIGINT came, then
# waits to be stopped.
REPORTER = """
import os, signal, sys, time
report = sys.argv[1]
def note(text):
    with open(report, "a") as out:
        out.write(text + "\\n")
def on_signal(signum, frame):
    note(f"signal {signum}")
    sys.exit(10 + signum)
signal.signal(signal.SIGTERM, on_signal if sys.argv[2] == "stops" else signal.SIG_IGN)
signal.signal(signal.SIGINT, on_signal)
note("pid " + str(os.getpid()))
for name in ("LOCK_KEY", "LOCK_TOKEN", "ELECTION_KEY", "ELECTION_REVISION"):
    note(f"RAFTKV_{name} {os.environ.get('RAFTKV_' + name, '')}")
note("ready")
while True:
    time.sleep(0.05)
"""


def reporter(report: Path, on_term: str = "stops") -> list[str]:
    return [*script(REPORTER), str(report), on_term]


def reported(report: Path) -> dict[str, str]:
    lines = report.read_text().splitlines() if report.exists() else []
    return {name: value for name, _, value in (line.partition(" ") for line in lines)}


def wait_ready(report: Path) -> dict[str, str]:
    wait_until(lambda: "ready" in reported(report), 20, what="the command to start")
    return reported(report)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("kvctl-lock"), 1) as running:
        yield running


@pytest.fixture(scope="module")
def url(cluster: LocalCluster) -> str:
    return cluster.url(1)


@pytest.fixture
def client(url: str) -> Iterator[Client]:
    with Client(url) as opened:
        yield opened


def queue_keys(client: Client, name: str, prefix: str = DEFAULT_LOCK_PREFIX) -> list[str]:
    return [kv.key for kv in client.list(f"{prefix}{name}/")]


# ---------------------------------------------------------------------- lock


def test_the_command_runs_with_its_fencing_token(url: str, client: Client, tmp_path: Path) -> None:
    out = tmp_path / "seen"
    # The token is the create revision of the lock's key, read while the lock is held.
    code = f"""
import os
from raftkv.client import Client
key, token = os.environ["RAFTKV_LOCK_KEY"], os.environ["RAFTKV_LOCK_TOKEN"]
with Client({url!r}) as client:
    created = client.get(key).create_revision
open({str(out)!r}, "w").write(f"{{key}} {{token}} {{created}}")
print("hello from the command")
raise SystemExit(7)
"""
    leases_before = {lease.id for lease in client.leases()}
    run = kvctl(url, "lock", "job", "--ttl", "2", "--", *script(code))
    assert run.code == 7, run.stderr  # the command's status
    assert run.stdout == "hello from the command\n"
    assert run.stderr == ""
    key, token, created = out.read_text().split()
    assert key.startswith(f"{DEFAULT_LOCK_PREFIX}job/")
    assert int(token) == int(created) > 0
    # Released: no key, no lease left.
    assert queue_keys(client, "job") == []
    assert {lease.id for lease in client.leases()} <= leases_before

    again = kvctl(url, "lock", "job", "--", *script(f"open({str(out)!r}, 'w').write('x')"))
    assert again.code == 0
    killed = kvctl(url, "lock", "job", "--", "sh", "-c", "kill -TERM $$")
    assert killed.code == 128 + signal.SIGTERM


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["lock", "job"], 2, "give the command to run after '--'"),
        (["lock", "job", "--"], 2, "give the command to run after '--'"),
        (["lock", "job", "true"], 2, "the command to run goes after '--'"),
        (["lock", "a/b", "--", "true"], 2, "without '/'"),
        (["lock", "job", "--ttl", "0.5", "--", "true"], 2, "--ttl"),
        (["lock", "job", "--", "/no/such/command"], 127, "command not found"),
        (["elect", "nobody-leads"], 3, "election 'nobody-leads' has no leader"),
        (["elect", "svc", "--observe", "value"], 2, "--observe takes no VALUE"),
        (["elect", "svc", "--", "true"], 2, "needs a VALUE"),
    ],
)
def test_errors(url: str, args: list[str], code: int, fragment: str) -> None:
    run = kvctl(url, *args)
    assert run.code == code, run.stderr
    assert run.stdout == ""
    assert fragment in run.stderr and len(run.stderr.splitlines()) == 1, run.stderr


def test_two_locks_take_turns(
    url: str, client: Client, tmp_path: Path, started: list[Started]
) -> None:
    log = tmp_path / "log"
    code = f"""
import os, time
token = os.environ["RAFTKV_LOCK_TOKEN"]
def note(what):
    with open({str(log)!r}, "a") as out:
        out.write(f"{{what}} {{token}}\\n")
note("start")
time.sleep(0.5)
note("end")
"""
    for name in ("a", "b"):
        started.append(Started(url, tmp_path / name, "lock", "turns", "--", *script(code)))
    assert [each.wait() for each in started] == [0, 0]
    lines = [line.split() for line in log.read_text().splitlines()]
    assert [what for what, _ in lines] == ["start", "end", "start", "end"], lines
    first, second = lines[0][1], lines[2][1]
    assert lines[1][1] == first and lines[3][1] == second
    assert int(second) > int(first)
    assert queue_keys(client, "turns") == []


def test_the_timeout(url: str, client: Client) -> None:
    with Lock(client, "busy", ttl=5):
        started = time.monotonic()
        run = kvctl(url, "lock", "busy", "--timeout", "0.5", "--", "touch", "/never")
        assert run.code == EXIT_LOCK_TIMEOUT == 124, run.stderr
        assert "lock 'busy': not acquired within 0.5s" in run.stderr
        assert time.monotonic() - started < 10
        assert len(queue_keys(client, "busy")) == 1  # the holder's only
    assert queue_keys(client, "busy") == []


def test_a_lost_lock_stops_the_command(
    url: str, client: Client, tmp_path: Path, started: list[Started]
) -> None:
    report = tmp_path / "report"
    holder = Started(url, tmp_path / "kvctl", "lock", "lost", "--ttl", "2", "--", *reporter(report))
    started.append(holder)
    seen = wait_ready(report)
    key = seen["RAFTKV_LOCK_KEY"]
    # Someone revokes the lock's lease (an operator, say): kvctl cannot renew it.
    client.lease_revoke(client.get(key).lease)
    revoked = time.monotonic()
    assert holder.wait() == EXIT_LOST == 75
    assert time.monotonic() - revoked < 3
    assert reported(report)["signal"] == str(int(signal.SIGTERM))
    assert holder.stderr == (
        "kvctl: lock 'lost' lost (the lease expired or was revoked): sent SIGTERM to the command\n"
    )
    assert queue_keys(client, "lost") == []


def test_a_command_that_ignores_sigterm_is_killed(
    url: str, client: Client, tmp_path: Path, started: list[Started]
) -> None:
    report = tmp_path / "report"
    holder = Started(
        url,
        tmp_path / "kvctl",
        *("lock", "stubborn", "--ttl", "2", "--kill-after", "0.5", "--"),
        *reporter(report, on_term="ignores"),
    )
    started.append(holder)
    seen = wait_ready(report)
    client.lease_revoke(client.get(seen["RAFTKV_LOCK_KEY"]).lease)
    assert holder.wait() == EXIT_LOST
    assert "sent SIGTERM to the command" in holder.stderr
    assert "did not exit within 0.5s of SIGTERM: sent SIGKILL" in holder.stderr
    with pytest.raises(ProcessLookupError):
        os.kill(int(seen["pid"]), 0)  # gone


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_are_passed_on_to_the_command(
    url: str, client: Client, tmp_path: Path, started: list[Started], signum: int
) -> None:
    report = tmp_path / "report"
    holder = Started(url, tmp_path / "kvctl", "lock", "signalled", "--", *reporter(report))
    started.append(holder)
    wait_ready(report)
    holder.process.send_signal(signum)
    # SIGHUP kills the reporter, which does not handle it: 128 + 1.
    expected = 128 + signum if signum == signal.SIGHUP else 10 + signum
    assert holder.wait() == expected
    if signum != signal.SIGHUP:
        assert reported(report)["signal"] == str(int(signum))
    assert holder.stderr == ""
    assert queue_keys(client, "signalled") == []  # released


def test_a_signal_while_waiting_leaves_the_queue(
    url: str, client: Client, tmp_path: Path, started: list[Started]
) -> None:
    with Lock(client, "queued", ttl=5):
        waiter = Started(url, tmp_path / "kvctl", "lock", "queued", "--", "touch", "/never")
        started.append(waiter)
        wait_until(lambda: len(queue_keys(client, "queued")) == 2, 20, what="kvctl in line")
        waiter.process.send_signal(signal.SIGTERM)
        assert waiter.wait() == 128 + signal.SIGTERM
        assert len(queue_keys(client, "queued")) == 1  # its key went with it


# ---------------------------------------------------------------------- elect


def test_elect_leads_shows_and_hands_over(
    url: str, client: Client, tmp_path: Path, started: list[Started]
) -> None:
    first = Started(url, tmp_path / "a", "elect", "svc", "host-a", "--ttl", "2")
    started.append(first)
    wait_until(lambda: first.stdout.startswith("elected"), 20, what="host-a elected")
    first_revision = int(first.stdout.split()[-1].rstrip(")"))
    assert first.stdout == f"elected (revision {first_revision})\n"

    shown = kvctl(url, "elect", "svc")
    assert (shown.code, shown.stdout) == (0, "host-a")  # as stored, like 'get'
    document = json.loads(kvctl(url, "--json", "elect", "svc").stdout)
    assert document["name"] == "svc"
    assert document["leader"]["value"] == "host-a"
    assert document["leader"]["revision"] == first_revision
    assert document["leader"]["key"].startswith(f"{DEFAULT_ELECTION_PREFIX}svc/")

    observer = Started(url, tmp_path / "observer", "elect", "svc", "--observe")
    started.append(observer)
    wait_until(lambda: observer.stdout == "host-a\n", 20, what="the observer to start")

    report = tmp_path / "report"
    second = Started(url, tmp_path / "b", "elect", "svc", "host-b", "--", *reporter(report))
    started.append(second)
    wait_until(
        lambda: len(queue_keys(client, "svc", DEFAULT_ELECTION_PREFIX)) == 2,
        20,
        what="host-b standing",
    )
    assert second.stdout == "" and not report.exists()

    # The leader steps down on SIGTERM: host-b leads and runs its command.
    first.process.send_signal(signal.SIGTERM)
    assert first.wait() == 0
    seen = wait_ready(report)
    second_revision = int(seen["RAFTKV_ELECTION_REVISION"])
    assert second_revision > first_revision
    assert second.stdout == f"elected (revision {second_revision})\n"
    assert seen["RAFTKV_ELECTION_KEY"] == queue_keys(client, "svc", DEFAULT_ELECTION_PREFIX)[0]

    second.process.send_signal(signal.SIGTERM)  # passed on: the command exits 10 + 15
    assert second.wait() == 10 + signal.SIGTERM
    wait_until(lambda: observer.stdout == "host-a\nhost-b\n(no leader)\n", 10, what="the changes")
    observer.process.send_signal(signal.SIGINT)
    assert observer.wait() == 0
    assert first.stderr == second.stderr == observer.stderr == ""


def test_a_lost_leadership(
    url: str, client: Client, tmp_path: Path, started: list[Started]
) -> None:
    leader = Started(url, tmp_path / "kvctl", "elect", "lossy", "me", "--ttl", "2")
    started.append(leader)
    wait_until(lambda: leader.stdout.startswith("elected"), 20, what="elected")
    (key,) = queue_keys(client, "lossy", DEFAULT_ELECTION_PREFIX)
    client.lease_revoke(client.get(key).lease)
    assert leader.wait() == EXIT_LOST
    assert leader.stderr == "kvctl: leadership of 'lossy' lost (the lease expired or was revoked)\n"
