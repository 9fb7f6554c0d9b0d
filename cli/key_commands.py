"""kvctl get|set|delete|list|clean|watch: the commands on keys, offered by ``kvctl`` and
by ``kvctl shell``. (``kvctl put`` is another name for ``set``, as etcdctl calls it.)"""

from __future__ import annotations

import base64
import sys
from typing import Any

import click
import orjson

from raftkv.client.http_client import ConflictError, NotFoundError
from raftkv.client.watch import KeyValue as WatchedKeyValue
from raftkv.client.watch import WatchEvent
from raftkv.wire.protocol import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, MAX_REVISION

from . import output
from .context import CommandContext, emit, pass_command_context
from .errors import EXIT_CONFLICT, EXIT_ERROR, EXIT_NOT_FOUND, EXIT_USAGE, fail
from .lease_commands import LEASE_ID, TTL, seconds


@click.command("get")
@click.argument("key")
@click.option("--stale", is_flag=True, help="Answer from the node's local state (may lag).")
@pass_command_context
def get_cmd(context: CommandContext, key: str, stale: bool) -> None:
    """Print the value of KEY.

    The value is written to stdout exactly as stored (a newline is added only when
    stdout is a terminal). With --json: the key's metadata and value.
    """
    try:
        kv = context.client.get(key, consistency="stale" if stale else "linearizable")
    except NotFoundError:
        fail(EXIT_NOT_FOUND, f"key {key!r} not found")
    if context.json:
        document = output.kv_document(kv)
        if kv.lease:
            document.update(lease=kv.lease, ttl=kv.ttl)
        click.echo(output.to_json(document))
        return
    stream = sys.stdout.buffer
    stream.write(kv.value)
    if (context.in_shell or sys.stdout.isatty()) and not kv.value.endswith(b"\n"):
        stream.write(b"\n")
    stream.flush()


@click.command("set")
@click.argument("key")
@click.argument("value")
@click.option(
    "--prev-revision",
    type=click.IntRange(min=0),
    metavar="N",
    help="Write only if the key's revision is N (0: only if the key does not exist).",
)
@click.option(
    "--ttl",
    type=TTL,
    metavar="SECONDS",
    help="Delete the key SECONDS after this write (at least 1), unless it is written again "
    "without --ttl first.",
)
@click.option(
    "--lease",
    "lease_id",
    type=LEASE_ID,
    metavar="ID",
    help="Attach the key to lease ID ('kvctl lease grant'): it is deleted with the lease.",
)
@pass_command_context
def set_cmd(
    context: CommandContext,
    key: str,
    value: str,
    prev_revision: int | None,
    ttl: float | None,
    lease_id: int | None,
) -> None:
    """Store VALUE under KEY.

    VALUE '-' reads the value from stdin, as bytes (kvctl set cert - < cert.pem). With
    --ttl or --lease (not both) the key lives only as long as a lease: exit status 3
    if lease ID does not exist.
    """
    if ttl is not None and lease_id is not None:
        fail(EXIT_USAGE, "set: give --ttl or --lease, not both")
    data: str | bytes = value
    if value == "-":
        if context.in_shell:
            fail(EXIT_USAGE, "set: a value from stdin ('-') is not available in the shell")
        data = sys.stdin.buffer.read()
    try:
        # A plain set calls put() as it always did; --ttl and --lease add their keyword.
        if ttl is not None:
            result = context.client.put(key, data, prev_revision=prev_revision, ttl=ttl)
        elif lease_id is not None:
            result = context.client.put(key, data, prev_revision=prev_revision, lease=lease_id)
        else:
            result = context.client.put(key, data, prev_revision=prev_revision)
    except ConflictError as exc:
        fail(EXIT_CONFLICT, _conflict_message(key, prev_revision, exc))
    except NotFoundError:
        if lease_id is None:
            raise
        # Only a write to a lease can be "not found": the lease is.
        fail(
            EXIT_NOT_FOUND, f"lease {lease_id} not found (it expired, was revoked or never existed)"
        )
    document = _write_document(result)
    text = f"set {key!r} at revision {result.revision}"
    if result.lease:
        document.update(lease=result.lease, ttl=result.ttl)
        ttl_text = "" if result.ttl is None else f", TTL {seconds(result.ttl)}"
        text += f" (lease {result.lease}{ttl_text})"
    emit(context, document, lambda: text)


@click.command("delete")
@click.argument("key")
@click.option(
    "--prev-revision",
    type=click.IntRange(min=1),
    metavar="N",
    help="Delete only if the key's revision is N.",
)
@pass_command_context
def delete_cmd(context: CommandContext, key: str, prev_revision: int | None) -> None:
    """Delete KEY (exit status 3 if it does not exist)."""
    try:
        result = context.client.delete(key, prev_revision=prev_revision)
    except NotFoundError:
        fail(EXIT_NOT_FOUND, f"key {key!r} not found")
    except ConflictError as exc:
        fail(EXIT_CONFLICT, _conflict_message(key, prev_revision, exc))
    emit(
        context,
        {**_write_document(result), "deleted": True},
        lambda: f"deleted {key!r} at revision {result.revision}",
    )


@click.command("list")
@click.argument("prefix", default="")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_LIST_LIMIT),
    default=DEFAULT_LIST_LIMIT,
    show_default=True,
    help="Most keys to show.",
)
@click.option("--stale", is_flag=True, help="Answer from the node's local state (may lag).")
@pass_command_context
def list_cmd(context: CommandContext, prefix: str, limit: int, stale: bool) -> None:
    """List keys starting with PREFIX (default: all), sorted."""
    items = context.client.list(
        prefix, limit=limit, consistency="stale" if stale else "linearizable"
    )
    emit(
        context,
        {
            "prefix": prefix,
            "items": [output.kv_document(kv) for kv in items],
            "count": len(items),
        },
        lambda: output.kv_table(items),
    )
    if len(items) == limit and not context.json:
        click.echo(f"kvctl: the first {limit} keys; there may be more: raise --limit", err=True)


@click.command("clean")
@click.argument("prefix", required=False, default="")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before deleting every key.")
@pass_command_context
def clean_cmd(context: CommandContext, prefix: str, yes: bool) -> None:
    """Delete every key that starts with PREFIX.

    Without PREFIX (or with an empty one, "") every key in the store is deleted: kvctl
    asks first, or needs --yes when it cannot ask (stdin is not a terminal, or in a
    shell script).
    """
    if prefix == "" and not yes:
        if not sys.stdin.isatty():
            fail(EXIT_USAGE, "clean: an empty prefix deletes every key; add --yes to confirm")
        if not click.confirm("Delete every key in the store?", default=False, err=True):
            fail(EXIT_ERROR, "clean: not confirmed; nothing deleted")
    deleted = context.client.delete_prefix(prefix)
    noun = "key" if deleted == 1 else "keys"
    where = f"with prefix {prefix!r}" if prefix else "(the whole store)"
    emit(
        context,
        {"prefix": prefix, "deleted": deleted},
        lambda: f"deleted {deleted} {noun} {where}",
    )


@click.command("watch")
@click.argument("key", required=False)
@click.option("--prefix", metavar="P", help="Watch every key starting with P ('' for every key).")
@click.option(
    "--since",
    type=click.IntRange(0, MAX_REVISION),
    metavar="REV",
    help="Show the changes after revision REV (default: from now on).",
)
@click.option("--prev", is_flag=True, help="Show each key's value before the change too.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event, one a line.")
@pass_command_context
def watch_cmd(
    context: CommandContext,
    key: str | None,
    prefix: str | None,
    since: int | None,
    prev: bool,
    as_json: bool,
) -> None:
    """Print every change to KEY, or to every key under --prefix, until Ctrl-C.

    One line per change: 'PUT key = value (rev N)' or 'DELETE key (rev N)'. When the
    node cannot go on change by change (--since older than its history), it sends the
    whole range instead: 'RESYNC at rev S: n keys', then one line per key. kvctl follows
    the watch from node to node across failures, without missing or repeating a change.
    """
    if (key is None) == (prefix is None):
        fail(EXIT_USAGE, "watch: give either KEY or --prefix P")
    as_json = as_json or context.json
    try:
        with context.client.watch(key, prefix=prefix, since=since, prev=prev) as watch:
            for event in watch:
                click.echo(_event_json(event) if as_json else _event_text(event, prev))
    except KeyboardInterrupt:
        return  # Ctrl-C is how a watch is meant to end


def _shown(data: bytes) -> str:
    """A key or value on one line: text with control characters escaped, or a preview
    of binary data."""
    try:
        return output.printable(data.decode("utf-8"))
    except UnicodeDecodeError:
        return output.value_preview(data)


def _event_text(event: WatchEvent, with_prev: bool) -> str:
    was = ""
    if with_prev:
        was = ", new" if event.prev is None else f", was {_shown(event.prev.value)}"
    if event.type == "put":
        return f"PUT {_shown(event.key)} = {_shown(event.value)} (rev {event.revision}{was})"
    if event.type == "delete":
        return f"DELETE {_shown(event.key)} (rev {event.revision}{was})"
    if event.type == "resync":
        noun = "key" if len(event.items) == 1 else "keys"
        lines = [f"RESYNC at rev {event.revision}: {len(event.items)} {noun}"]
        lines += [
            f"  {_shown(kv.key)} = {_shown(kv.value)} (rev {kv.mod_revision})" for kv in event.items
        ]
        return "\n".join(lines)
    return f"PROGRESS at rev {event.revision}"


def _text_or_base64(name: str, data: bytes) -> dict[str, str]:
    """``{name: text}``, or ``{name_base64: ...}`` for bytes that are not UTF-8 (as the
    API writes them)."""
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(data).decode("ascii")}


def _kv_json(kv: WatchedKeyValue) -> dict[str, Any]:
    return {
        **_text_or_base64("key", kv.key),
        **_text_or_base64("value", kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
    }


def _event_json(event: WatchEvent) -> str:
    """One line: the event as the HTTP API writes it, with its ``type``."""
    document: dict[str, Any] = {"type": event.type, "revision": event.revision}
    if event.type == "resync":
        document["items"] = [_kv_json(kv) for kv in event.items]
    elif event.type in ("put", "delete"):
        document.update(_text_or_base64("key", event.key))
    if event.type == "put":
        document.update(_text_or_base64("value", event.value))
        document["create_revision"] = event.create_revision
        document["mod_revision"] = event.mod_revision
        document["version"] = event.version
    if event.prev is not None:
        prev = _kv_json(event.prev)
        del prev["key"]
        document["prev"] = prev
    return orjson.dumps(document).decode()


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
