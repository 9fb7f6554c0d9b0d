"""``kvctl shell``: the kvctl commands at an interactive prompt.

On a terminal it is a prompt_toolkit prompt with a history file and Tab completion. When
stdin is not a terminal it reads one command per line without prompting, so that
``kvctl shell < script`` runs a script. Each line is split like a shell command line
(quotes work) and run by the same click commands as ``kvctl`` itself, with one command
context (and so one client) for the whole session. Only ``kvctl shell`` imports this
module, so the other commands never load prompt_toolkit.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

import click
from prompt_toolkit import PromptSession
from prompt_toolkit.completion import (
    CompleteEvent,
    Completer,
    Completion,
    NestedCompleter,
    WordCompleter,
)
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory

from . import output
from .cluster_commands import (
    NODE_ID,
    add_member,
    backup_cmd,
    host_port,
    members_group,
    remove_member,
    snapshot_cmd,
    status_cmd,
    transfer_leader_cmd,
)
from .context import CommandContext, pass_command_context
from .errors import EXIT_OK, EXIT_USAGE, error_report, is_help_request
from .key_commands import clean_cmd, delete_cmd, get_cmd, list_cmd, set_cmd, watch_cmd
from .lease_commands import lease_group
from .txn_commands import txn_cmd

PROMPT = "raftkv> "
HISTORY_ENV = "RAFTKV_HISTORY"
DEFAULT_HISTORY = "~/.raftkv_history"

EXIT_WORDS = ("exit", "quit")


@click.command("add-server")
@click.argument("node_id", metavar="ID", type=NODE_ID)
@click.argument("rpc_addr", metavar="RPC_ADDR", callback=host_port)
@click.argument("http_addr", metavar="HTTP_ADDR", callback=host_port)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until the node has caught up and joined as a voter.",
)
@pass_command_context
def add_server_cmd(
    context: CommandContext, node_id: int, rpc_addr: str, http_addr: str, wait: bool
) -> None:
    """Add node ID to the cluster (as 'members add')."""
    add_member(context, node_id, rpc_addr, http_addr, wait)


@click.command("remove-server")
@click.argument("node_id", metavar="ID", type=NODE_ID)
@pass_command_context
def remove_server_cmd(context: CommandContext, node_id: int) -> None:
    """Remove node ID from the cluster (as 'members remove')."""
    remove_member(context, node_id)


def build_group() -> click.Group:
    """The commands the shell offers: kvctl's own, minus the local and nested ones."""
    group = click.Group("", context_settings={"help_option_names": ["-h", "--help"]})
    for command in (
        set_cmd,
        get_cmd,
        delete_cmd,
        list_cmd,
        clean_cmd,
        watch_cmd,
        txn_cmd,
        lease_group,
        status_cmd,
        members_group,
        add_server_cmd,
        remove_server_cmd,
        transfer_leader_cmd,
        snapshot_cmd,
        backup_cmd,
    ):
        assert command.name is not None
        group.add_command(command, command.name)
    return group


# What `help` prints: the usage of each command; the description is the command's own.
USAGES: dict[str, str] = {
    "set": "set KEY VALUE [--prev-revision N] [--ttl|--lease]",
    "get": "get KEY [--stale]",
    "delete": "delete KEY [--prev-revision N]",
    "list": "list [PREFIX] [--limit N] [--stale]",
    "clean": "clean [PREFIX] [--yes]",
    "watch": "watch KEY | --prefix P [--since REV] [--prev]",
    "txn": "txn FILE",
    "lease": "lease grant|keepalive|revoke|info|list ...",
    "status": "status",
    "members": "members list | add ID ... | remove ID",
    "add-server": "add-server ID RPC_ADDR HTTP_ADDR [--no-wait]",
    "remove-server": "remove-server ID",
    "transfer-leader": "transfer-leader [ID]",
    "snapshot": "snapshot",
    "backup": "backup FILE [--force]",
}
BUILTINS: dict[str, str] = {
    "help [COMMAND]": "List the commands, or show one command's options.",
    "exit, quit": "Leave the shell (Ctrl-D too).",
}


def help_text(group: click.Group) -> str:
    rows = []
    for name, usage in USAGES.items():
        command = group.commands[name]
        rows.append([usage, command.get_short_help_str(limit=60)])
    rows += [[usage, text] for usage, text in BUILTINS.items()]
    usage_width = max(output.display_width(usage) for usage, _ in rows)
    lines = ["Commands:"]
    lines += [f"  {usage:<{usage_width}}  {text}" for usage, text in rows]
    lines.append("Values with spaces need quotes: set greeting 'hello world'")
    return "\n".join(lines)


class ExitShell(Exception):
    """Raised by `exit` and `quit`."""


class Shell:
    def __init__(self, context: CommandContext) -> None:
        self.context = context
        self.group = build_group()

    def run_line(self, line: str) -> int:
        """Run one command line; return its exit code (0 for a blank line)."""
        if line.lstrip().startswith("#"):
            return EXIT_OK
        try:
            words = shlex.split(line)
        except ValueError as exc:
            return self._error(EXIT_USAGE, f"cannot parse the line: {exc}")
        if not words:
            return EXIT_OK
        name, rest = words[0], words[1:]
        if name in EXIT_WORDS:
            raise ExitShell
        if name in ("help", "?"):
            if not rest:
                click.echo(help_text(self.group))
                return EXIT_OK
            words = [*rest, "--help"]
        try:
            result = self.group.main(
                args=words, prog_name="", obj=self.context, standalone_mode=False
            )
        except click.UsageError as exc:
            if is_help_request(exc):
                click.echo(exc.format_message())
                return EXIT_OK
            return self._error(*error_report(exc))
        except Exception as exc:
            return self._error(*error_report(exc))
        return result if isinstance(result, int) else EXIT_OK

    @staticmethod
    def _error(code: int, message: str) -> int:
        click.echo(f"error: {message}", err=True)
        return code

    def run_script(self, lines: list[str] | None = None) -> int:
        """Commands from stdin, one per line; the exit code of the last one that failed."""
        last_failure = EXIT_OK
        source = lines if lines is not None else sys.stdin
        for line in source:
            try:
                code = self.run_line(line)
            except ExitShell:
                break
            if code:
                last_failure = code
        return last_failure

    def run_interactive(self) -> int:
        history_path = Path(os.environ.get(HISTORY_ENV) or DEFAULT_HISTORY).expanduser()
        prompt: PromptSession[str] = PromptSession(
            history=FileHistory(str(history_path)),
            completer=completer(),
            complete_while_typing=False,
        )
        endpoints = ", ".join(self.context.endpoints)
        click.echo(f"kvctl shell on {endpoints}: 'help' lists the commands, Ctrl-D exits.")
        while True:
            try:
                line = prompt.prompt(PROMPT)
            except KeyboardInterrupt:
                continue  # Ctrl-C drops the line being typed, as in bash
            except EOFError:
                break
            try:
                self.run_line(line)
            except ExitShell:
                break
            except KeyboardInterrupt:
                click.echo("interrupted", err=True)
        return EXIT_OK


class FirstWordCompleter(Completer):
    """Completes the first word (the command) with ``first``, the rest with ``rest``.

    NestedCompleter alone completes the first word with a default WordCompleter, for
    which "-" ends a word: "transfer-l" would complete its "l" to "list".
    """

    def __init__(self, first: Completer, rest: Completer) -> None:
        self.first = first
        self.rest = rest

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        typed = document.text_before_cursor.lstrip()
        chosen = self.rest if " " in typed else self.first
        return chosen.get_completions(document, complete_event)


def completer() -> Completer:
    """Tab completion of command names, subcommands and each command's options."""

    def options(*names: str) -> WordCompleter:
        # WORD=True: a word runs to the previous space, so "--st" completes to "--stale"
        # and "transfer-l" to "transfer-leader" (by default "-" would end a word).
        return WordCompleter(list(names), WORD=True)

    tree: dict[str, object] = {
        "set": options("--prev-revision", "--ttl", "--lease"),
        "get": options("--stale"),
        "delete": options("--prev-revision"),
        "list": options("--limit", "--stale"),
        "clean": options("--yes"),
        "watch": options("--prefix", "--since", "--prev", "--json"),
        "txn": None,
        "lease": {
            "grant": options("--id"),
            "keepalive": options("--forever"),
            "revoke": None,
            "info": options("--no-keys", "--stale"),
            "list": options("--stale"),
        },
        "status": None,
        "members": {
            "list": None,
            "add": options("--rpc-addr", "--http-addr", "--no-wait"),
            "remove": None,
        },
        "add-server": options("--no-wait"),
        "remove-server": None,
        "transfer-leader": None,
        "snapshot": None,
        "backup": options("--force"),
        "exit": None,
        "quit": None,
    }
    tree["help"] = options(*USAGES)
    nested = NestedCompleter.from_nested_dict(tree)
    return FirstWordCompleter(options(*tree), nested)


def run_shell(context: CommandContext) -> int:
    context.in_shell = True
    shell = Shell(context)
    if sys.stdin.isatty() and sys.stdout.isatty():
        return shell.run_interactive()
    return shell.run_script()
