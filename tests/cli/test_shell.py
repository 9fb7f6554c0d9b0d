"""`kvctl shell` as a user drives it: in a pseudo-terminal (pexpect) against a real
cluster, typing commands, recalling history with the up arrow, completing with Tab and
leaving with Ctrl-D; and as a script, with commands on stdin."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from kvctl_fakes import FakeClient
from raftkv.cli import context
from raftkv.cli.context import CommandContext
from raftkv.cli.shell import USAGES, Shell

from raftkv.testing.cluster import LocalCluster, running_cluster

PROMPT = "raftkv>"  # prompt_toolkit draws the trailing space as a cursor move
UP = "\x1b[A"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("shell"), 3) as running:
        yield running


@pytest.fixture(scope="module")
def endpoints(cluster: LocalCluster) -> str:
    return ",".join(cluster.url(node_id) for node_id in cluster.nodes)


def shell_env(endpoints: str, history: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RAFTKV_ENDPOINTS=endpoints,
        RAFTKV_HISTORY=str(history),
        TERM="xterm",
        # pexpect is a terminal that never answers cursor-position requests; without
        # this prompt_toolkit waits for the answer and then prints a warning.
        PROMPT_TOOLKIT_NO_CPR="1",
    )
    return env


def spawn(endpoints: str, history: Path) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        ["-P", "-m", "raftkv.cli.kvctl", "shell"],
        env=shell_env(endpoints, history),
        encoding="utf-8",
        timeout=30,  # generous: a loaded machine renders the prompt slowly
        dimensions=(50, 160),
    )
    child.expect("'help' lists the commands, Ctrl-D exits")
    child.expect(PROMPT)
    return child


def run(child: pexpect.spawn, line: str, *expected: str) -> None:
    """Type ``line`` and Enter, and see each of ``expected`` in order, then the prompt."""
    child.send(line + "\r")
    for text in expected:
        child.expect_exact(text)
    child.expect(PROMPT)


def leave(child: pexpect.spawn) -> int:
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus is not None
    return child.exitstatus


# ---------------------------------------------------------------------- a terminal


def test_a_session_at_the_prompt(cluster: LocalCluster, endpoints: str, tmp_path: Path) -> None:
    history = tmp_path / "history"
    child = spawn(endpoints, history)
    leader = cluster.leader()

    run(child, "set greeting 'hello world'", "set 'greeting' at revision")
    run(child, "get greeting", "hello world\r\n")
    run(child, "set counter 1 --prev-revision 0", "set 'counter' at revision")
    run(child, "list", "KEY", "counter", "greeting", "hello world")
    run(child, "status", f"leader:  {leader}", "REPLICATION", "leader")
    # An error says what went wrong and the shell goes on.
    run(child, "get no-such-key", "error: key 'no-such-key' not found")
    run(child, "set counter 2 --prev-revision 0", "error: conflict: key 'counter' is at revision")
    run(child, "frobnicate", "error: No such command 'frobnicate'")
    run(child, "set 'unbalanced", "error: cannot parse the line")
    run(child, "get greeting", "hello world")
    # Cleaning the whole store asks first; "n" keeps everything.
    child.send("clean ''\r")
    child.expect_exact("Delete every key in the store? [y/N]")
    child.send("n\r")
    run(child, "", "error: clean: not confirmed; nothing deleted")
    run(child, "get greeting", "hello world")

    child.send("help\r")
    child.expect_exact("Commands:")
    child.expect(PROMPT)
    listed = child.before
    for name in [*USAGES, "help", "exit, quit"]:
        assert f"\n  {name}" in listed, name
    run(child, "help set", "Usage: set [OPTIONS] KEY VALUE", "--prev-revision")

    assert leave(child) == 0
    saved = history.read_text()
    for line in ("+set greeting 'hello world'", "+get greeting", "+status", "+help set"):
        assert line in saved, line


def test_history_recalls_previous_commands(endpoints: str, tmp_path: Path) -> None:
    history = tmp_path / "history"
    child = spawn(endpoints, history)
    run(child, "set recall/a first-value", "set 'recall/a'")
    run(child, "get recall/a", "first-value")
    run(child, "set recall/b second-value", "set 'recall/b'")

    # Up twice: past "set recall/b ..." to "get recall/a", which runs again (the only
    # command that prints "first-value"). The second Up redraws only the characters that
    # differ, so the recalled line is checked by what it prints.
    child.send(UP)
    child.expect_exact("set recall/b second-value")
    child.send(UP)
    child.send("\r")
    child.expect_exact("first-value")
    child.expect(PROMPT)
    assert leave(child) == 0

    # A new session starts with the saved history: Up recalls the last command.
    child = spawn(endpoints, history)
    child.send(UP)
    child.expect_exact("get recall/a")
    child.send("\r")
    child.expect_exact("first-value")
    child.expect(PROMPT)
    assert leave(child) == 0


def test_tab_completes_commands_and_options(endpoints: str, tmp_path: Path) -> None:
    child = spawn(endpoints, tmp_path / "history")
    run(child, "set tab/key tabbed", "set 'tab/key'")

    child.send("sta\t")
    child.expect_exact("status")
    run(child, "", "leader:", "REPLICATION")

    child.send("members l\t")
    child.expect_exact("list")
    run(child, "", "MEMBERSHIP", "voter")

    child.send("get tab/key --st\t")
    child.expect_exact("--stale")
    run(child, "", "tabbed")

    child.send("transfer-l\t")
    child.expect_exact("transfer-leader")
    child.sendcontrol("c")  # drops the line without running it
    child.expect(PROMPT)
    run(child, "get tab/key", "tabbed")
    assert leave(child) == 0


def test_exit_and_quit_leave_the_shell(endpoints: str, tmp_path: Path) -> None:
    for word in ("exit", "quit"):
        child = spawn(endpoints, tmp_path / "history")
        child.send(word + "\r")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0


# ---------------------------------------------------------------------- a script


def run_script(endpoints: str, script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "raftkv.cli.kvctl", "shell"],
        input=script,
        capture_output=True,
        text=True,
        env=shell_env(endpoints, tmp_path / "history"),
        timeout=30,
        check=False,
    )


def test_commands_from_stdin(endpoints: str, tmp_path: Path) -> None:
    script = "\n".join(
        [
            "# a comment, then a blank line",
            "",
            "set script/a 'one two'",
            "set script/b 'has # inside'",
            "get script/a",
            "list script/",
            "get script/missing",
            "status",
            "set script/c -",
            "get script/b",
        ]
    )
    done = run_script(endpoints, script + "\n", tmp_path)
    assert "raftkv>" not in done.stdout  # no prompt, no banner
    lines = done.stdout.splitlines()
    assert lines[0].startswith("set 'script/a' at revision")
    assert lines[1].startswith("set 'script/b' at revision")
    assert lines[2] == "one two"
    assert lines[3].split() == ["KEY", "VALUE", "REVISION", "VERSION"]
    assert lines[4].split()[:3] == ["script/a", "one", "two"]
    assert "leader:" in done.stdout
    assert lines[-1] == "has # inside"
    assert done.stderr.splitlines() == [
        "error: key 'script/missing' not found",
        "error: set: a value from stdin ('-') is not available in the shell",
    ]
    # The exit status is that of the last command that failed (usage, 2).
    assert done.returncode == 2
    assert not (tmp_path / "history").exists()  # scripts leave no history


def test_script_stops_at_exit(endpoints: str, tmp_path: Path) -> None:
    done = run_script(endpoints, "set stop/a 1\nexit\nset stop/b 2\n", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("set 'stop/a' at revision")
    assert "stop/b" not in done.stdout


# ---------------------------------------------------------------------- admin, faked


def test_admin_commands_in_the_shell(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeClient()
    monkeypatch.setattr(context, "Client", fake)
    command_context = CommandContext(["http://10.0.0.1:8001"], in_shell=True)
    code = Shell(command_context).run_script(
        [
            "add-server 5 10.0.0.5:9001 10.0.0.5:8001\n",
            "add-server 6 10.0.0.6:9001 10.0.0.6:8001 --no-wait\n",
            "members add 7 --rpc-addr h:2 --http-addr h:1\n",
            "remove-server 5\n",
            "members remove 6\n",
            "transfer-leader 2\n",
            "snapshot\n",
            "add-server 8 not-an-address h:1\n",
            "members list\n",
        ]
    )
    out, err = capsys.readouterr()
    assert fake.calls == [
        ("add_member", (5, "10.0.0.5:9001", "10.0.0.5:8001"), {"wait": True}),
        ("add_member", (6, "10.0.0.6:9001", "10.0.0.6:8001"), {"wait": False}),
        ("add_member", (7, "h:2", "h:1"), {"wait": True}),
        ("remove_member", (5,), {}),
        ("remove_member", (6,), {}),
        ("transfer_leader", (2,), {}),
        ("snapshot", (), {}),
        ("nodes", (), {}),
    ]
    assert len(fake.constructed) == 1  # one client for the whole session
    assert "added node 5 (rpc 10.0.0.5:9001, http 10.0.0.5:8001)" in out
    assert "removed node 6" in out
    assert "leader is now node 2" in out
    assert err.splitlines() == [
        "error: add-server: Invalid value for 'RPC_ADDR': 'not-an-address' is not host:port "
        "(see 'add-server --help')"
    ]
    # The status is that of the last command that failed, even if later ones succeed.
    assert code == 2
    assert Shell(command_context).run_script(["snapshot\n", "members list\n"]) == 0


class Terminal(io.StringIO):
    """A stdin that is a terminal, on which the user types the text it is made with."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("answer", "deleted"),
    [("y\n", True), ("yes\n", True), ("n\n", False), ("\n", False)],
)
def test_clean_without_a_prefix_asks_before_deleting_every_key(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    answer: str,
    deleted: bool,
) -> None:
    fake = FakeClient()
    monkeypatch.setattr(context, "Client", fake)
    monkeypatch.setattr(sys, "stdin", Terminal(answer))
    shell = Shell(CommandContext(["http://10.0.0.1:8001"], in_shell=True))
    code = shell.run_line("clean")
    out, err = capsys.readouterr()
    assert "Delete every key in the store? [y/N]" in err
    if deleted:
        assert code == 0
        assert fake.calls == [("delete_prefix", ("",), {})]
        assert out == "deleted 2 keys (the whole store)\n"
    else:
        assert code == 1
        assert fake.calls == []
        assert "error: clean: not confirmed; nothing deleted" in err


def test_clean_without_a_prefix_in_a_script_needs_yes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeClient()
    monkeypatch.setattr(context, "Client", fake)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal: nobody to ask
    shell = Shell(CommandContext(["http://10.0.0.1:8001"], in_shell=True))
    assert shell.run_script(["clean\n"]) == 2
    assert "add --yes to confirm" in capsys.readouterr().err
    assert fake.calls == []
    assert shell.run_script(["clean --yes\n", "clean tmp/\n"]) == 0
    # A prefix is cleaned at once, as before.
    assert fake.calls == [("delete_prefix", ("",), {}), ("delete_prefix", ("tmp/",), {})]
    assert capsys.readouterr().out.splitlines() == [
        "deleted 2 keys (the whole store)",
        "deleted 2 keys with prefix 'tmp/'",
    ]
