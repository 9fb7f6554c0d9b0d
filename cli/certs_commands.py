"""kvctl certs: create the certificates of a TLS cluster (see raftkv/wire/certificates.py)."""

from __future__ import annotations

from pathlib import Path

import click
import orjson

from raftkv.wire.certificates import (
    DEFAULT_HOSTS,
    CertsError,
    create_cluster_certs,
    issue_node,
    load_authority,
)


@click.group("certs")
def certs_group() -> None:
    """Create a CA and certificates for a test or small TLS cluster."""


@certs_group.command("create")
@click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the files (created, owner-only, if missing).",
)
@click.option(
    "--nodes",
    type=click.IntRange(min=1, max=1000),
    default=3,
    show_default=True,
    help="Node certificates to issue: node-1 .. node-N.",
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="HOST",
    help="An IP address or DNS name every node certificate is valid for; repeat for "
    f"several (default: {' and '.join(DEFAULT_HOSTS)}).",
)
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
@click.option("--json", "as_json", is_flag=True, help="Print the files written as JSON.")
def create_cmd(
    directory: Path, nodes: int, hosts: tuple[str, ...], force: bool, as_json: bool
) -> None:
    """Write ca.pem and ca-key.pem (the cluster's CA), node-N.pem and node-N-key.pem
    (for kvnode --peer-cert-file/--cert-file and their keys) and client.pem and
    client-key.pem (for kvctl --cert/--key). Keys are written readable by the owner only;
    keep ca-key.pem off the nodes."""
    try:
        issued = create_cluster_certs(directory, nodes, hosts or DEFAULT_HOSTS, force=force)
    except CertsError as exc:
        raise click.UsageError(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(
            f"cannot write into {directory}: {exc.strerror or exc}"
        ) from None
    files = {
        "ca": str(issued.ca_cert),
        "ca_key": str(issued.ca_key),
        "nodes": {
            str(n): {"cert": str(cert), "key": str(key)} for n, (cert, key) in issued.nodes.items()
        },
        "client": {"cert": str(issued.client[0]), "key": str(issued.client[1])},
    }
    if as_json:
        click.echo(orjson.dumps(files).decode())
        return
    click.echo(f"CA:      {issued.ca_cert} (key {issued.ca_key}: keep it off the nodes)")
    for node_id, (cert, key) in issued.nodes.items():
        click.echo(f"node {node_id}:  {cert} (key {key})")
    click.echo(f"client:  {issued.client[0]} (key {issued.client[1]})")


@certs_group.command("node")
@click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="The directory 'certs create' wrote (its ca.pem and ca-key.pem sign the new one).",
)
@click.option("--id", "node_id", required=True, type=click.IntRange(min=1), help="The node's id.")
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="HOST",
    help=f"An IP address or DNS name of the node; repeat for several (default: "
    f"{' and '.join(DEFAULT_HOSTS)}).",
)
@click.option("--force", is_flag=True, help="Overwrite the node's files if they exist.")
def node_cmd(directory: Path, node_id: int, hosts: tuple[str, ...], force: bool) -> None:
    """Issue node-ID.pem and node-ID-key.pem for a node added later, with the same CA."""
    try:
        cert, key = issue_node(
            load_authority(directory), directory, node_id, hosts or DEFAULT_HOSTS, force=force
        )
    except CertsError as exc:
        raise click.UsageError(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(
            f"cannot write into {directory}: {exc.strerror or exc}"
        ) from None
    click.echo(f"node {node_id}:  {cert} (key {key})")
