"""kvctl lease grant|keepalive|revoke|info|list: the commands on leases, offered by
``kvctl`` and by ``kvctl shell``.

A lease is a TTL that keys can be attached to (``kvctl set KEY VALUE --lease ID``): they
are deleted when it expires or is revoked. It expires unless kept alive within its TTL
(docs/api.md, "Leases").
"""

from __future__ import annotations

import time
from typing import Any

import click
import orjson

from raftkv.client.http_client import ConflictError, NotFoundError
from raftkv.client.leases import MIN_TTL_S, LeaseGrant, LeaseInfo
from raftkv.kv.leases import MAX_LEASE_ID, MAX_TTL_MS

from . import output
from .context import CommandContext, emit, pass_command_context
from .errors import EXIT_CONFLICT, EXIT_NOT_FOUND, fail

MAX_TTL_S = MAX_TTL_MS / 1000


class _FloatAtLeast(click.FloatRange):
    """A bounded number whose help names only its lower bound (the upper one is huge)."""

    def _describe_range(self) -> str:
        return f"x>={self.min:g}"


class _IntAtLeast(click.IntRange):
    def _describe_range(self) -> str:
        return f"x>={self.min}"


TTL = _FloatAtLeast(min=MIN_TTL_S, max=MAX_TTL_S)
"""A lease's TTL in seconds, as the store accepts it (1 s to ten years)."""
LEASE_ID = _IntAtLeast(min=1, max=MAX_LEASE_ID)


def seconds(value: float) -> str:
    """``10s``, ``2.5s``, ``0.123s``: seconds as the API gives them (milliseconds)."""
    return f"{round(value, 3):g}s"


def _not_found(lease_id: int) -> str:
    return f"lease {lease_id} not found (it expired, was revoked or never existed)"


def grant_document(grant: LeaseGrant) -> dict[str, Any]:
    return {"id": grant.id, "ttl": grant.ttl}


def info_document(info: LeaseInfo, keys: bool) -> dict[str, Any]:
    document: dict[str, Any] = {"id": info.id, "ttl": info.ttl, "remaining": info.remaining}
    if keys:
        document["keys"] = list(info.keys)
        document["more"] = info.more
    return document


def _remaining(info: LeaseInfo) -> str:
    if info.remaining is None:
        return "time left not known yet on the node that answered"
    return f"{seconds(info.remaining)} remaining"


def info_text(info: LeaseInfo, keys: bool) -> str:
    lines = [f"lease {info.id}: TTL {seconds(info.ttl)}, {_remaining(info)}"]
    if keys:
        if not info.keys:
            lines.append("no keys attached")
        else:
            noun = "key" if len(info.keys) == 1 else "keys"
            lines.append(f"{len(info.keys)} {noun} attached:")
            lines += [f"  {output.printable(key)}" for key in info.keys]
            if info.more:
                lines.append("  ... and more, not shown")
    return "\n".join(lines)


def leases_table(leases: list[LeaseInfo]) -> str:
    if not leases:
        return "(no leases)"
    return output.table(
        ["ID", "TTL", "REMAINING"],
        [
            [
                lease.id,
                seconds(lease.ttl),
                None if lease.remaining is None else seconds(lease.remaining),
            ]
            for lease in leases
        ],
    )


@click.group("lease")
def lease_group() -> None:
    """Grant, keep alive, revoke and inspect leases.

    Keys attached to a lease ('kvctl set KEY VALUE --lease ID') are deleted when it is
    revoked, or when it expires: when no keep-alive reached the store within its TTL.
    A key written with 'set --ttl' gets a lease of its own.
    """


@lease_group.command("grant")
@click.argument("ttl", type=TTL, metavar="TTL")
@click.option("--id", "lease_id", type=LEASE_ID, metavar="N", help="Give the lease this id.")
@pass_command_context
def grant_cmd(context: CommandContext, ttl: float, lease_id: int | None) -> None:
    """Create a lease of TTL seconds (at least 1) and print its id.

    Exit status 4 if --id names a lease that exists already.
    """
    try:
        grant = context.client.lease_grant(ttl, lease_id=lease_id)
    except ConflictError:
        fail(EXIT_CONFLICT, f"lease {lease_id} already exists")
    emit(
        context,
        grant_document(grant),
        lambda: f"lease {grant.id} granted with TTL {seconds(grant.ttl)}",
    )


@lease_group.command("keepalive")
@click.argument("lease_id", type=LEASE_ID, metavar="ID")
@click.option(
    "--forever",
    is_flag=True,
    help="Keep it alive every third of its TTL, printing each renewal, until Ctrl-C.",
)
@pass_command_context
def keepalive_cmd(context: CommandContext, lease_id: int, forever: bool) -> None:
    """Start the TTL of lease ID again (exit status 3 once it has expired).

    With --forever the lease lives as long as this command runs (and one TTL more);
    --json then prints one JSON object per renewal, one a line.
    """
    client = context.client
    if not forever:
        try:
            renewed = client.lease_keep_alive(lease_id)
        except NotFoundError:
            fail(EXIT_NOT_FOUND, _not_found(lease_id))
        emit(
            context,
            grant_document(renewed),
            lambda: f"lease {renewed.id} kept alive with TTL {seconds(renewed.ttl)}",
        )
        return
    renewals = 0
    try:
        while True:
            sent = time.monotonic()
            try:
                renewed = client.lease_keep_alive(lease_id)
            except NotFoundError:
                if renewals:
                    fail(EXIT_NOT_FOUND, f"lease {lease_id} expired or was revoked")
                fail(EXIT_NOT_FOUND, _not_found(lease_id))
            renewals += 1
            if context.json:
                click.echo(orjson.dumps(grant_document(renewed)).decode())
            else:
                click.echo(f"lease {renewed.id} kept alive with TTL {seconds(renewed.ttl)}")
            time.sleep(max(0.0, sent + renewed.ttl / 3 - time.monotonic()))
    except KeyboardInterrupt:
        return  # Ctrl-C is how --forever is meant to end


@lease_group.command("revoke")
@click.argument("lease_id", type=LEASE_ID, metavar="ID")
@pass_command_context
def revoke_cmd(context: CommandContext, lease_id: int) -> None:
    """End lease ID now, deleting its keys (exit status 3 if it does not exist)."""
    try:
        deleted = context.client.lease_revoke(lease_id)
    except NotFoundError:
        fail(EXIT_NOT_FOUND, _not_found(lease_id))
    noun = "key" if deleted == 1 else "keys"
    emit(
        context,
        {"id": lease_id, "revoked": True, "deleted": deleted},
        lambda: f"lease {lease_id} revoked ({deleted} {noun} deleted)",
    )


@lease_group.command("info")
@click.argument("lease_id", type=LEASE_ID, metavar="ID")
@click.option("--no-keys", is_flag=True, help="Do not list the attached keys.")
@click.option("--stale", is_flag=True, help="Answer from the node's local state (may lag).")
@pass_command_context
def info_cmd(context: CommandContext, lease_id: int, no_keys: bool, stale: bool) -> None:
    """Show lease ID: its TTL, the time it has left and the keys attached to it.

    Exit status 3 if it does not exist. Only the keys you may read are listed.
    """
    keys = not no_keys
    try:
        info = context.client.lease_info(
            lease_id, keys=keys, consistency="stale" if stale else "linearizable"
        )
    except NotFoundError:
        fail(EXIT_NOT_FOUND, _not_found(lease_id))
    emit(context, info_document(info, keys), lambda: info_text(info, keys))


@lease_group.command("list")
@click.option("--stale", is_flag=True, help="Answer from the node's local state (may lag).")
@pass_command_context
def list_cmd(context: CommandContext, stale: bool) -> None:
    """List every lease with its TTL and the time it has left."""
    leases = context.client.leases(consistency="stale" if stale else "linearizable")
    emit(
        context,
        {"leases": [info_document(lease, keys=False) for lease in leases], "count": len(leases)},
        lambda: leases_table(leases),
    )
