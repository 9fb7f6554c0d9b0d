"""kvctl: read, write and administer a raftkv cluster, from scripts or a terminal.

The commands only parse arguments, call :mod:`raftkv.client.http_client` and print; the tables live
in :mod:`raftkv.cli.output` and the interactive shell in :mod:`raftkv.cli.shell`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click

from raftkv.client.http_client import (
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RaftkvError,
    UnavailableError,
)
from raftkv.wire.tls_contexts import TlsSetupError

from . import output
from .auth_commands import auth_group, role_group, user_group
from .certs_commands import certs_group

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_UNAVAILABLE = 5
EXIT_BAD_REQUEST = 6
EXIT_AUTH = 7
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report a SIGINT death

DEFAULT_ENDPOINTS = "http://127.0.0.1:8001"
DEFAULT_TIMEOUT = 15.0
# One HTTP request never waits longer than this, so that a hung node is left for the
# next endpoint well before the overall --timeout runs out.
MAX_REQUEST_TIMEOUT = 5.0

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
"""


class CommandError(Exception):
    """An error a command reports with a given exit code and a one-line message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Session:
    """What every command shares: the global options and one client, made on first use."""

    endpoints: list[str]
    json: bool = False
    timeout: float = DEFAULT_TIMEOUT
    in_shell: bool = False
    # HTTPS: the CA of the nodes' certificates, and a client certificate and key for a
    # cluster that requires one.
    cacert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    # Credentials for a cluster with auth enabled: a user (whose password is asked for
    # when not given) or a token.
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    _client: Client | None = field(default=None, repr=False)

    @property
    def client(self) -> Client:
        if self._client is None:
            user, password, token = self._credentials()
            try:
                self._client = Client(
                    self.endpoints,
                    timeout=min(self.timeout, MAX_REQUEST_TIMEOUT),
                    retry_for=self.timeout,
                    cacert=self.cacert,
                    cert=self.cert,
                    key=self.key,
                    user=user,
                    password=password,
                    token=token,
                )
            except TlsSetupError as exc:
                raise CommandError(EXIT_USAGE, f"TLS: {exc}") from None
            except ValueError as exc:
                raise CommandError(EXIT_USAGE, f"--endpoints: {exc}") from None
        return self._client

    def _credentials(self) -> tuple[str | None, str | None, str | None]:
        """(user, password, token); all None lets the client read the environment."""
        if self.token:
            return None, None, self.token
        if self.user and self.password is None:
            self.password = click.prompt(
                f"Password for {self.user}",
                hide_input=True,
                err=True,
                default="",
                show_default=False,
            )
        return self.user, self.password, None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


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


def error_report(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message for an error raised by a command."""
    if isinstance(exc, CommandError):
        return exc.code, exc.message
    if isinstance(exc, NotFoundError):
        return EXIT_NOT_FOUND, f"not found: {exc.message}"
    if isinstance(exc, ConflictError):
        return EXIT_CONFLICT, f"conflict: {exc.message}"
    if isinstance(exc, UnavailableError):
        message = f"unavailable: {exc.message}"
        if exc.may_have_applied:
            message += " (it may have been applied: check before retrying)"
        return EXIT_UNAVAILABLE, message
    if isinstance(exc, BadRequestError):
        return EXIT_BAD_REQUEST, f"bad request: {exc.message}"
    if isinstance(exc, AuthenticationError):
        return EXIT_AUTH, f"authentication failed: {exc.message}"
    if isinstance(exc, PermissionDeniedError):
        return EXIT_AUTH, f"permission denied: {exc.message}"
    if isinstance(exc, RaftkvError):
        status = f" (HTTP {exc.status})" if exc.status is not None else ""
        return EXIT_ERROR, f"error{status}: {exc.message}"
    if isinstance(exc, click.UsageError):
        return EXIT_USAGE, usage_line(exc)
    if isinstance(exc, click.ClickException):
        return exc.exit_code, exc.format_message()
    if isinstance(exc, click.exceptions.Abort):
        if isinstance(exc.__context__, KeyboardInterrupt):
            return EXIT_INTERRUPTED, "interrupted"
        return EXIT_ERROR, "aborted"
    if isinstance(exc, OSError):
        return EXIT_ERROR, str(exc)
    return EXIT_ERROR, f"unexpected error: {type(exc).__name__}: {exc}"


def is_help_request(exc: click.UsageError) -> bool:
    """A group called without a command (`kvctl members`): click answers with its help."""
    no_args_help = getattr(click.exceptions, "NoArgsIsHelpError", None)
    return no_args_help is not None and isinstance(exc, no_args_help)


def usage_line(exc: click.UsageError) -> str:
    message = exc.format_message().rstrip(".")
    if exc.ctx is None:
        return message
    path = exc.ctx.command_path.strip()
    hint = f"'{path} --help'" if path else "'help'"
    prefix = f"{exc.ctx.info_name}: " if exc.ctx.info_name and exc.ctx.parent else ""
    return f"{prefix}{message} (see {hint})"


def emit(session: Session, document: Any, text: Callable[[], str]) -> None:
    """Print ``document`` as JSON with --json, else the readable ``text()``."""
    if session.json:
        click.echo(output.to_json(document))
    else:
        rendered = text()
        if rendered:
            click.echo(rendered)


def fail(code: int, message: str) -> NoReturn:
    raise CommandError(code, message)


def host_port(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """host:port, checked as the cluster file checks it."""
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    # isascii: isdigit() alone admits digits int() refuses ("²").
    digits = port.isascii() and port.isdigit() and len(port) <= 5
    if not sep or not host or not digits or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not host:port", param=param)
    return value


pass_session = click.make_pass_decorator(Session)


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
    session = Session(
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
    ctx.obj = session
    ctx.call_on_close(session.close)


# ---------------------------------------------------------------------- keys


@cli.command("get")
@click.argument("key")
@click.option("--stale", is_flag=True, help="Answer from the node's local state (may lag).")
@pass_session
def get_cmd(session: Session, key: str, stale: bool) -> None:
    """Print the value of KEY.

    The value is written to stdout exactly as stored (a newline is added only when
    stdout is a terminal). With --json: the key's metadata and value.
    """
    try:
        kv = session.client.get(key, consistency="stale" if stale else "linearizable")
    except NotFoundError:
        fail(EXIT_NOT_FOUND, f"key {key!r} not found")
    if session.json:
        click.echo(output.to_json(output.kv_document(kv)))
        return
    stream = sys.stdout.buffer
    stream.write(kv.value)
    if (session.in_shell or sys.stdout.isatty()) and not kv.value.endswith(b"\n"):
        stream.write(b"\n")
    stream.flush()


@cli.command("set")
@click.argument("key")
@click.argument("value")
@click.option(
    "--prev-revision",
    type=click.IntRange(min=0),
    metavar="N",
    help="Write only if the key's revision is N (0: only if the key does not exist).",
)
@pass_session
def set_cmd(session: Session, key: str, value: str, prev_revision: int | None) -> None:
    """Store VALUE under KEY.

    VALUE '-' reads the value from stdin, as bytes (kvctl set cert - < cert.pem).
    """
    data: str | bytes = value
    if value == "-":
        if session.in_shell:
            fail(EXIT_USAGE, "set: a value from stdin ('-') is not available in the shell")
        data = sys.stdin.buffer.read()
    try:
        result = session.client.put(key, data, prev_revision=prev_revision)
    except ConflictError as exc:
        fail(EXIT_CONFLICT, _conflict_message(key, prev_revision, exc))
    emit(
        session,
        _write_document(result),
        lambda: f"set {key!r} at revision {result.revision}",
    )


@cli.command("delete")
@click.argument("key")
@click.option(
    "--prev-revision",
    type=click.IntRange(min=1),
    metavar="N",
    help="Delete only if the key's revision is N.",
)
@pass_session
def delete_cmd(session: Session, key: str, prev_revision: int | None) -> None:
    """Delete KEY (exit status 3 if it does not exist)."""
    try:
        result = session.client.delete(key, prev_revision=prev_revision)
    except NotFoundError:
        fail(EXIT_NOT_FOUND, f"key {key!r} not found")
    except ConflictError as exc:
        fail(EXIT_CONFLICT, _conflict_message(key, prev_revision, exc))
    emit(
        session,
        {**_write_document(result), "deleted": True},
        lambda: f"deleted {key!r} at revision {result.revision}",
    )


@cli.command("list")
@click.argument("prefix", default="")
@click.option(
    "--limit",
    type=click.IntRange(1, 10000),
    default=1000,
    show_default=True,
    help="Most keys to show.",
)
@click.option("--stale", is_flag=True, help="Answer from the node's local state (may lag).")
@pass_session
def list_cmd(session: Session, prefix: str, limit: int, stale: bool) -> None:
    """List keys starting with PREFIX (default: all), sorted."""
    items = session.client.list(
        prefix, limit=limit, consistency="stale" if stale else "linearizable"
    )
    emit(
        session,
        {
            "prefix": prefix,
            "items": [output.kv_document(kv) for kv in items],
            "count": len(items),
        },
        lambda: output.kv_table(items),
    )
    if len(items) == limit and not session.json:
        click.echo(f"kvctl: the first {limit} keys; there may be more: raise --limit", err=True)


@cli.command("clean")
@click.argument("prefix")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before deleting every key.")
@pass_session
def clean_cmd(session: Session, prefix: str, yes: bool) -> None:
    """Delete every key that starts with PREFIX.

    An empty PREFIX ("") deletes every key in the store: kvctl asks first, or needs
    --yes when it cannot ask (stdin is not a terminal, or in a shell script).
    """
    if prefix == "" and not yes:
        if not sys.stdin.isatty():
            fail(EXIT_USAGE, "clean: an empty prefix deletes every key; add --yes to confirm")
        if not click.confirm("Delete every key in the store?", default=False, err=True):
            fail(EXIT_ERROR, "clean: not confirmed; nothing deleted")
    deleted = session.client.delete_prefix(prefix)
    noun = "key" if deleted == 1 else "keys"
    where = f"with prefix {prefix!r}" if prefix else "(the whole store)"
    emit(
        session,
        {"prefix": prefix, "deleted": deleted},
        lambda: f"deleted {deleted} {noun} {where}",
    )


def _write_document(result: Any) -> dict[str, Any]:
    return {
        "key": result.key,
        "revision": result.revision,
        "index": result.index,
        "term": result.term,
    }


def _conflict_message(key: str, expected: int | None, exc: ConflictError) -> str:
    current = (
        "does not exist" if exc.current_revision == 0 else f"is at revision {exc.current_revision}"
    )
    wanted = "absent (0)" if expected == 0 else f"revision {expected}"
    return f"conflict: key {key!r} {current}, expected {wanted}"


# ---------------------------------------------------------------------- cluster


@cli.command("status")
@pass_session
def status_cmd(session: Session) -> None:
    """Show the leader, term, and each node's role and lag."""
    status = session.client.status()
    nodes = session.client.nodes()
    emit(
        session,
        {**status, "nodes": nodes.get("nodes", [])},
        lambda: output.status_text(status, nodes),
    )


@cli.group("members")
def members_group() -> None:
    """Show or change the cluster's membership."""


@members_group.command("list")
@pass_session
def members_list_cmd(session: Session) -> None:
    """List the members and their state.

    One row per node: id, addresses, voter or learner, role, and whether the node
    that answered has a live connection to it.
    """
    nodes = session.client.nodes()
    emit(session, nodes, lambda: output.members_table(nodes))


def add_member(session: Session, node_id: int, rpc_addr: str, http_addr: str, wait: bool) -> None:
    result = session.client.add_member(node_id, rpc_addr, http_addr, wait=wait)
    if wait:
        headline = f"added node {node_id} (rpc {rpc_addr}, http {http_addr})"
    else:
        headline = (
            f"adding node {node_id} (rpc {rpc_addr}, http {http_addr}); "
            "not waiting for it to catch up"
        )
    emit(session, result, lambda: _with_details(headline, result))


def remove_member(session: Session, node_id: int) -> None:
    result = session.client.remove_member(node_id)
    emit(session, result, lambda: _with_details(f"removed node {node_id}", result))


def _with_details(headline: str, details: Any) -> str:
    if isinstance(details, dict) and details:
        return headline + "\n" + output.mapping_lines(details)
    return headline


NODE_ID = click.IntRange(min=1)


@members_group.command("add")
@click.argument("node_id", metavar="ID", type=NODE_ID)
@click.option(
    "--rpc-addr",
    required=True,
    callback=host_port,
    metavar="HOST:PORT",
    help="Where the new node listens for Raft peers.",
)
@click.option(
    "--http-addr",
    required=True,
    callback=host_port,
    metavar="HOST:PORT",
    help="Where the new node serves the HTTP API.",
)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until the node has caught up and joined as a voter.",
)
@pass_session
def members_add_cmd(
    session: Session, node_id: int, rpc_addr: str, http_addr: str, wait: bool
) -> None:
    """Add node ID to the cluster (start it with the same ID first)."""
    add_member(session, node_id, rpc_addr, http_addr, wait)


@members_group.command("remove")
@click.argument("node_id", metavar="ID", type=NODE_ID)
@pass_session
def members_remove_cmd(session: Session, node_id: int) -> None:
    """Remove node ID from the cluster."""
    remove_member(session, node_id)


@cli.command("transfer-leader")
@click.argument("node_id", metavar="[ID]", type=NODE_ID, required=False)
@pass_session
def transfer_leader_cmd(session: Session, node_id: int | None) -> None:
    """Hand leadership to node ID (default: the server picks)."""
    leader = session.client.transfer_leader(node_id)
    emit(session, {"leader": leader}, lambda: f"leader is now node {leader}")


@cli.command("snapshot")
@pass_session
def snapshot_cmd(session: Session) -> None:
    """Make the leader take a snapshot now."""
    result = session.client.snapshot()
    emit(session, result, lambda: _with_details("snapshot taken", result))


@cli.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@pass_session
def backup_cmd(session: Session, file: Path, force: bool) -> None:
    """Write a consistent backup of the store to FILE."""
    if file.exists() and not force:
        fail(EXIT_USAGE, f"backup: {file} exists; add --force to overwrite it")
    result = session.client.backup(file)
    document = {"path": str(file), **(result or {})}
    emit(session, document, lambda: _with_details(f"backup written to {file}", result))


@cli.command("restore")
@click.option(
    "--from",
    "source",
    required=True,
    metavar="FILE",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The backup file (from 'kvctl backup').",
)
@click.option(
    "--data-dir",
    required=True,
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="The data directory to create for this node.",
)
@click.option(
    "--node-id",
    required=True,
    type=NODE_ID,
    metavar="N",
    help="The id of the node that will run on DIR.",
)
@click.option(
    "--cluster",
    "cluster_file",
    required=True,
    metavar="PATH",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The cluster file of the restored cluster.",
)
@click.option(
    "--storage",
    type=click.Choice(["segment", "sqlite"]),
    default="segment",
    show_default=True,
    help="The log store the node will run with.",
)
@pass_session
def restore_cmd(
    session: Session,
    source: Path,
    data_dir: Path,
    node_id: int,
    cluster_file: Path,
    storage: str,
) -> None:
    """Create a node's data directory from a backup (local).

    Runs on the machine of the node, which must not be running on DIR. Run it once
    per node of the new cluster, each with its own --node-id and --data-dir and the
    same --cluster file, then start the nodes with kvnode. The restored cluster gets
    a cluster id of its own, so it never mixes with the one the backup came from.
    """
    # Imported here, not at the top: only restore needs the server's storage code, and
    # every other command starts faster without it.
    from raftkv.node import restore  # noqa: PLC0415
    from raftkv.node.node_config import ConfigError, load_cluster_file  # noqa: PLC0415
    from raftkv.node.node_snapshot import NodeSnapshotError  # noqa: PLC0415
    from raftkv.storage.errors import StorageCorruptionError  # noqa: PLC0415

    try:
        cluster = load_cluster_file(cluster_file)
    except ConfigError as exc:
        fail(EXIT_USAGE, f"restore: {exc}")
    if node_id not in cluster:
        members = ", ".join(str(n) for n in sorted(cluster))
        fail(EXIT_USAGE, f"restore: node {node_id} is not in {cluster_file} (nodes: {members})")

    extra = {"storage": storage} if storage != "segment" else {}
    try:
        result = restore.restore_backup(source, data_dir, node_id, cluster, **extra)
    except restore.RestoreError as exc:
        fail(EXIT_ERROR, f"restore: {exc}")
    except (StorageCorruptionError, NodeSnapshotError) as exc:
        fail(EXIT_ERROR, f"restore: {source} is not a usable backup: {exc}")
    command = f"kvnode --node-id {node_id} --cluster {cluster_file} --data-dir {data_dir}" + (
        f" --storage {storage}" if extra else ""
    )
    headline = (
        f"restored {source} into {data_dir} as node {node_id} of a {len(cluster)}-node "
        f"cluster\nstart it with: {command}"
    )
    emit(
        session,
        {
            "backup": str(source),
            "node_id": node_id,
            "cluster_file": str(cluster_file),
            "data_dir": str(data_dir),
            **(result or {}),
        },
        lambda: _with_details(headline, result),
    )


@cli.command("shell")
@pass_session
def shell_cmd(session: Session) -> None:
    """Run commands at an interactive prompt.

    On a terminal: history (up-arrow, saved in ~/.raftkv_history or $RAFTKV_HISTORY)
    and Tab completion; 'help' lists the commands, Ctrl-D exits. When stdin is not a
    terminal it runs one command per line, without prompting, and exits with the
    status of the last command that failed (0 if none did).
    """
    from .shell import run_shell  # noqa: PLC0415 - prompt_toolkit loads only for the shell

    code = run_shell(session)
    if code:
        raise click.exceptions.Exit(code)


cli.add_command(certs_group)
cli.add_command(auth_group)
cli.add_command(user_group)
cli.add_command(role_group)


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
    # Run as `python -m raftkv.cli.kvctl`, this file is `__main__`; the shell imports
    # `raftkv.cli.kvctl`, a second copy with its own classes. Run the canonical module
    # so that there is only one.
    import importlib

    sys.exit(importlib.import_module("raftkv.cli.kvctl").main())
