"""kvctl txn: a multi-key transaction from a JSON document, offered by ``kvctl`` and by
``kvctl shell``.

The document is ``POST /txn``'s (docs/api.md, "Transactions") and goes to the server as
it is: the server checks it and names what is wrong and where (``success[1].put: value
is missing``), better than a second parser here could. kvctl itself only needs JSON.
"""

from __future__ import annotations

import base64
import binascii
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from raftkv.client.answers import KeyValue
from raftkv.client.txn import (
    TxnDeletePrefixResult,
    TxnDeleteResult,
    TxnGetResult,
    TxnListResult,
    TxnOpResult,
    TxnPutResult,
    parse_txn_response,
)

from . import output
from .context import CommandContext, emit, pass_command_context
from .errors import EXIT_USAGE, fail

_SHAPE = '{"compare": [...], "success": [...], "failure": [...]}'


@click.command("txn")
@click.argument("file", metavar="[FILE]", required=False, default="-")
@pass_command_context
def txn_cmd(context: CommandContext, file: str) -> None:
    """Run the transaction in the JSON document FILE (no FILE, or '-': stdin).

    The document is POST /txn's (docs/api.md, "Transactions"): compares, then the
    operations to run if they all hold ("success") or if one does not ("failure"), all
    at one revision. For example, to take a lock or see who holds it:

    \b
      {"compare": [{"key": "lock", "target": "exists", "value": false}],
       "success": [{"put": {"key": "lock", "value": "me"}}],
       "failure": [{"get": {"key": "lock"}}]}

    Prints "succeeded" or "failed (the failure branch ran)", then one line per
    operation of the branch that ran; --json prints the server's answer. The exit
    status is 0 whichever branch ran.
    """
    document = read_document(context, file)
    answer = context.client.txn_json(document)
    emit(context, answer, lambda: txn_text(document, answer))


def read_document(context: CommandContext, file: str) -> dict[str, Any]:
    """The JSON object in ``file`` ("-": stdin); a usage error (exit 2) naming the
    problem when there is none."""
    if file == "-":
        if context.in_shell:
            fail(EXIT_USAGE, "txn: a document from stdin ('-') is not available in the shell")
        source = "stdin"
        data = sys.stdin.buffer.read()
    else:
        source = file
        try:
            data = Path(file).read_bytes()
        except OSError as exc:
            fail(EXIT_USAGE, f"txn: cannot read {file}: {exc.strerror or exc}")
    if not data.strip():
        fail(EXIT_USAGE, f"txn: {source} is empty; expected a JSON document like {_SHAPE}")
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        fail(EXIT_USAGE, f"txn: {source} is not valid JSON: {exc}")
    if not isinstance(document, dict):
        fail(EXIT_USAGE, f"txn: {source} must hold a JSON object like {_SHAPE}")
    return document


# ---------------------------------------------------------------------- text


def txn_text(document: dict[str, Any], answer: dict[str, Any]) -> str:
    """The answer for people: which branch ran and at which revision, then one line per
    operation, named by the key or prefix the document gave it."""
    response = parse_txn_response(answer)
    if response.succeeded:
        lines = [f"succeeded at revision {response.revision}"]
        ops = document.get("success")
    else:
        lines = [f"failed (the failure branch ran) at revision {response.revision}"]
        ops = document.get("failure")
    sent = ops if isinstance(ops, list) else []
    for index, result in enumerate(response.results):
        subject = _subject(sent[index]) if index < len(sent) else "?"
        lines.extend(_result_lines(subject, result))
    return "\n".join(lines)


def _subject(op: object) -> str:
    """The key or prefix of one operation of the document, printable."""
    if not isinstance(op, dict) or len(op) != 1:
        return "?"
    (fields,) = op.values()
    if not isinstance(fields, dict):
        return "?"
    for name in ("key", "prefix"):
        if isinstance(fields.get(name), str):
            return _key_text(fields[name])
        encoded = fields.get(f"{name}_base64")
        if isinstance(encoded, str):
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                return "?"
            return _key_text(data.decode("utf-8", "surrogateescape"))
    return "?"


def _key_text(key: str) -> str:
    """A key or prefix on one line: "" when empty, bytes that are not UTF-8 as \\xNN."""
    if not key:
        return '""'
    data = key.encode("utf-8", "surrogateescape")
    return output.printable(data.decode("utf-8", "backslashreplace"))


def _was(kv: KeyValue) -> str:
    return f"was {output.value_preview(kv.value)}, rev {kv.mod_revision}"


def _result_lines(subject: str, result: TxnOpResult) -> list[str]:
    if isinstance(result, TxnPutResult):
        was = "new key" if result.prev is None else _was(result.prev)
        return [f"put {subject} ({was})"]
    if isinstance(result, TxnDeleteResult):
        if result.prev is None:
            return [f"delete {subject}: not found"]
        return [f"delete {subject} ({_was(result.prev)})"]
    if isinstance(result, TxnDeletePrefixResult):
        noun = "key" if result.deleted == 1 else "keys"
        return [f"delete_prefix {subject}: {result.deleted} {noun} deleted"]
    if isinstance(result, TxnGetResult):
        kv = result.kv
        if kv is None:
            return [f"get {subject}: not found"]
        value = output.value_preview(kv.value)
        return [f"get {subject} = {value} (rev {kv.mod_revision}, version {kv.version})"]
    assert isinstance(result, TxnListResult)
    noun = "key" if len(result.items) == 1 else "keys"
    more = ", and more: raise its limit" if result.more else ""
    lines = [f"list {subject}: {len(result.items)} {noun}{more}"]
    lines += [
        f"  {_key_text(kv.key)} = {output.value_preview(kv.value)} (rev {kv.mod_revision})"
        for kv in result.items
    ]
    return lines
