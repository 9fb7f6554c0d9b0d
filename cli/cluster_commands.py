"""kvctl status|members|transfer-leader|snapshot|backup|restore: the commands on the
cluster. ``kvctl shell`` offers them too, but for restore (local, and run once per node)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from . import output
from .context import CommandContext, emit, pass_command_context
from .errors import EXIT_ERROR, EXIT_USAGE, fail

NODE_ID = click.IntRange(min=1)


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


def _with_details(headline: str, details: Any) -> str:
    if isinstance(details, dict) and details:
        return headline + "\n" + output.mapping_lines(details)
    return headline


@click.command("status")
@pass_command_context
def status_cmd(context: CommandContext) -> None:
    """Show the leader, term, and each node's role and lag."""
    status = context.client.status()
    nodes = context.client.nodes()
    emit(
        context,
        {**status, "nodes": nodes.get("nodes", [])},
        lambda: output.status_text(status, nodes),
    )


@click.group("members")
def members_group() -> None:
    """Show or change the cluster's membership."""


@members_group.command("list")
@pass_command_context
def members_list_cmd(context: CommandContext) -> None:
    """List the members and their state.

    One row per node: id, addresses, voter or learner, role, and whether the node
    that answered has a live connection to it.
    """
    nodes = context.client.nodes()
    emit(context, nodes, lambda: output.members_table(nodes))


def add_member(
    context: CommandContext, node_id: int, rpc_addr: str, http_addr: str, wait: bool
) -> None:
    result = context.client.add_member(node_id, rpc_addr, http_addr, wait=wait)
    if wait:
        headline = f"added node {node_id} (rpc {rpc_addr}, http {http_addr})"
    else:
        headline = (
            f"adding node {node_id} (rpc {rpc_addr}, http {http_addr}); "
            "not waiting for it to catch up"
        )
    emit(context, result, lambda: _with_details(headline, result))


def remove_member(context: CommandContext, node_id: int) -> None:
    result = context.client.remove_member(node_id)
    emit(context, result, lambda: _with_details(f"removed node {node_id}", result))


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
@pass_command_context
def members_add_cmd(
    context: CommandContext, node_id: int, rpc_addr: str, http_addr: str, wait: bool
) -> None:
    """Add node ID to the cluster (start it with the same ID first)."""
    add_member(context, node_id, rpc_addr, http_addr, wait)


@members_group.command("remove")
@click.argument("node_id", metavar="ID", type=NODE_ID)
@pass_command_context
def members_remove_cmd(context: CommandContext, node_id: int) -> None:
    """Remove node ID from the cluster."""
    remove_member(context, node_id)


@click.command("transfer-leader")
@click.argument("node_id", metavar="[ID]", type=NODE_ID, required=False)
@pass_command_context
def transfer_leader_cmd(context: CommandContext, node_id: int | None) -> None:
    """Hand leadership to node ID (default: the server picks)."""
    leader = context.client.transfer_leader(node_id)
    emit(context, {"leader": leader}, lambda: f"leader is now node {leader}")


@click.command("snapshot")
@pass_command_context
def snapshot_cmd(context: CommandContext) -> None:
    """Make the leader take a snapshot now."""
    result = context.client.snapshot()
    emit(context, result, lambda: _with_details("snapshot taken", result))


@click.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@pass_command_context
def backup_cmd(context: CommandContext, file: Path, force: bool) -> None:
    """Write a consistent backup of the store to FILE."""
    if file.exists() and not force:
        fail(EXIT_USAGE, f"backup: {file} exists; add --force to overwrite it")
    result = context.client.backup(file)
    document = {"path": str(file), **(result or {})}
    emit(context, document, lambda: _with_details(f"backup written to {file}", result))


@click.command("restore")
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
@pass_command_context
def restore_cmd(
    context: CommandContext,
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
        context,
        {
            "backup": str(source),
            "node_id": node_id,
            "cluster_file": str(cluster_file),
            "data_dir": str(data_dir),
            **(result or {}),
        },
        lambda: _with_details(headline, result),
    )
