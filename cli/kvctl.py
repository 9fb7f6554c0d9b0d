"""kvctl: read, write and administer a raftkv cluster, from scripts or a terminal.

This module is the ``kvctl`` group (its global options) and the entry point. The
commands only parse arguments, call :mod:`raftkv.client.http_client` and print: those on
keys are in :mod:`raftkv.cli.key_commands`, the transaction in
:mod:`raftkv.cli.txn_commands`, those on leases in :mod:`raftkv.cli.lease_commands`,
``lock`` and ``elect`` in :mod:`raftkv.cli.lock_commands`, those on the cluster in
:mod:`raftkv.cli.cluster_commands` (all shared with the interactive shell,
:mod:`raftkv.cli.shell`); the tables live in :mod:`raftkv.cli.output`.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from .auth_commands import auth_group, role_group, user_group
from .certs_commands import certs_group
from .cluster_commands import (
    backup_cmd,
    members_group,
    restore_cmd,
    snapshot_cmd,
    status_cmd,
    transfer_leader_cmd,
)
from .context import DEFAULT_TIMEOUT, CommandContext, pass_command_context
from .errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    error_report,
    is_help_request,
    usage_line,
)
from .key_commands import clean_cmd, delete_cmd, get_cmd, list_cmd, set_cmd, watch_cmd
from .lease_commands import lease_group
from .lock_commands import elect_cmd, lock_cmd
from .txn_commands import txn_cmd

DEFAULT_ENDPOINTS = "http://127.0.0.1:8001"

EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  unexpected error
  2  usage error (unknown command, missing or invalid argument)
  3  key not found
  4  conflict: --prev-revision did not match the key's revision
  5  unavailable: no endpoint answered, or no leader or quorum in time; for a
     write the message says when it may have been applied
  6  bad request: the server rejected the request as invalid (key or value
     too large, empty key, ...)
  7  authentication failed (401) or permission denied (403)
  75 lock, elect: the lock or the leadership was lost (see 'kvctl lock --help'
     for the other statuses of the commands they run)
"""


def parse_endpoints(text: str, default_scheme: str = "http") -> list[str]:
    """``"a:1, http://b:2"`` -> ``["http://a:1", "http://b:2"]`` (``default_scheme``
    for an endpoint that names none)."""
    endpoints = []
    for part in text.split(","):
        part = part.strip().rstrip("/")
        if not part:
            continue
        if "://" not in part:
            part = f"{default_scheme}://{part}"
        endpoints.append(part)
    if not endpoints:
        raise click.BadParameter("no endpoint given", param_hint="'--endpoints'")
    return endpoints


# ---------------------------------------------------------------------- the group


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_CODES_HELP,
)
@click.option(
    "--endpoints",
    envvar="RAFTKV_ENDPOINTS",
    default=DEFAULT_ENDPOINTS,
    show_default=True,
    metavar="URLS",
    help="Comma-separated node URLs (env RAFTKV_ENDPOINTS); with several, kvctl fails "
    "over to the next when one does not answer.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document per command.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="Give up (exit 5) when no endpoint has answered within this time, retries included.",
)
@click.option(
    "--cacert",
    envvar="RAFTKV_CACERT",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Verify the nodes' HTTPS certificates with this CA (env RAFTKV_CACERT; "
    "default: the system's CAs).",
)
@click.option(
    "--cert",
    envvar="RAFTKV_CERT",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Client certificate, for a cluster that requires one (env RAFTKV_CERT).",
)
@click.option(
    "--key",
    envvar="RAFTKV_KEY",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The key of --cert (env RAFTKV_KEY).",
)
@click.option(
    "--user",
    envvar="RAFTKV_USER",
    help="User name, for a cluster with auth enabled (env RAFTKV_USER); the password is "
    "asked for unless --password or RAFTKV_PASSWORD gives it.",
)
@click.option(
    "--password",
    envvar="RAFTKV_PASSWORD",
    help="The password of --user (env RAFTKV_PASSWORD; prefer the prompt or the "
    "environment: a command line is visible to other users of the machine).",
)
@click.option(
    "--token",
    envvar="RAFTKV_TOKEN",
    help="An access token (from 'kvctl user token create'; env RAFTKV_TOKEN), used "
    "instead of --user.",
)
@click.version_option(package_name="raftkv", prog_name="kvctl")
@click.pass_context
def cli(
    ctx: click.Context,
    endpoints: str,
    as_json: bool,
    timeout: float,
    cacert: Path | None,
    cert: Path | None,
    key: Path | None,
    user: str | None,
    password: str | None,
    token: str | None,
) -> None:
    """Read, write and administer a raftkv cluster.

    Reads are linearizable unless --stale is given; writes return once a majority of
    the cluster has stored them.
    """
    # Given a CA or a client certificate, an endpoint without a scheme means https.
    scheme = "https" if cacert is not None or cert is not None else "http"
    context = CommandContext(
        parse_endpoints(endpoints, scheme),
        json=as_json,
        timeout=timeout,
        cacert=cacert,
        cert=cert,
        key=key,
        user=user,
        password=password,
        token=token,
    )
    ctx.obj = context
    ctx.call_on_close(context.close)


@cli.command("shell")
@pass_command_context
def shell_cmd(context: CommandContext) -> None:
    """Run commands at an interactive prompt.

    On a terminal: history (up-arrow, saved in ~/.raftkv_history or $RAFTKV_HISTORY)
    and Tab completion; 'help' lists the commands, Ctrl-D exits. When stdin is not a
    terminal it runs one command per line, without prompting, and exits with the
    status of the last command that failed (0 if none did).
    """
    from .shell import run_shell  # noqa: PLC0415 - prompt_toolkit loads only for the shell

    code = run_shell(context)
    if code:
        raise click.exceptions.Exit(code)


for command in (
    get_cmd,
    set_cmd,
    delete_cmd,
    list_cmd,
    clean_cmd,
    watch_cmd,
    txn_cmd,
    lease_group,
    lock_cmd,
    elect_cmd,
    status_cmd,
    members_group,
    transfer_leader_cmd,
    snapshot_cmd,
    backup_cmd,
    restore_cmd,
    certs_group,
    auth_group,
    user_group,
    role_group,
):
    cli.add_command(command)

# etcdctl's name for 'set', not listed.
put_cmd = copy.copy(set_cmd)
put_cmd.hidden = True
cli.add_command(put_cmd, "put")


# ---------------------------------------------------------------------- entry point


def report(code: int, message: str) -> int:
    click.echo(f"kvctl: {message}", err=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = cli.main(args=args, prog_name="kvctl", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        if is_help_request(exc):
            click.echo(exc.format_message(), err=True)
            return EXIT_USAGE
        return report(EXIT_USAGE, usage_line(exc))
    except KeyboardInterrupt:
        click.echo("", err=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (kvctl list | head): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        return report(*error_report(exc))
    return result if isinstance(result, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
