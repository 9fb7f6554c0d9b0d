"""Text and JSON rendering for kvctl: tables, value previews, cluster summaries.

Nothing here talks to a node; every function takes plain values (or the client's
dataclasses) and returns a string, so the formatting is tested without a cluster.
"""

from __future__ import annotations

import base64
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import orjson

VALUE_PREVIEW_WIDTH = 40


class KeyValueLike(Protocol):
    """What the client's ``KeyValue`` offers, as far as rendering needs."""

    @property
    def key(self) -> str: ...
    @property
    def value(self) -> bytes: ...
    @property
    def create_revision(self) -> int: ...
    @property
    def mod_revision(self) -> int: ...
    @property
    def version(self) -> int: ...


# ---------------------------------------------------------------------- JSON


def to_json(document: Any) -> str:
    """One JSON document, indented for people, stable key order for diffs."""
    return orjson.dumps(
        document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=_json_default
    ).decode()


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if hasattr(value, "__fspath__"):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def value_fields(value: bytes) -> dict[str, str]:
    """``{"value": text}`` for UTF-8 values, else ``{"value_base64": ...}`` (as the API)."""
    try:
        return {"value": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"value_base64": base64.b64encode(value).decode()}


def kv_document(kv: KeyValueLike) -> dict[str, Any]:
    return {
        "key": kv.key,
        **value_fields(kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
    }


# ---------------------------------------------------------------------- text


def display_width(text: str) -> int:
    """Terminal columns taken by ``text``: wide East Asian characters take two, combining
    marks none."""
    width = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def truncate(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` columns, ending in an ellipsis when cut."""
    if display_width(text) <= width:
        return text
    kept: list[str] = []
    used = 0
    for char in text:
        char_width = display_width(char)
        if used + char_width > width - 1:
            break
        kept.append(char)
        used += char_width
    return "".join(kept) + "…"


def printable(text: str) -> str:
    """Control characters escaped, so that one value stays on one table row."""
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        else:
            out.append(f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
    return "".join(out)


def value_preview(value: bytes, width: int = VALUE_PREVIEW_WIDTH) -> str:
    """A one-line, width-limited view of a value; binary values say so."""
    try:
        text = printable(value.decode("utf-8"))
    except UnicodeDecodeError:
        text = f"<{len(value)} bytes, binary> {value[:width].hex()}"
    return truncate(text, width)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain, left-aligned table with a header row; numbers are right-aligned."""
    raw = [list(row) for row in rows]
    cells = [[_cell(value) for value in row] for row in raw]
    numeric = [_is_numeric_column(raw, i) for i in range(len(headers))]
    widths = [display_width(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], display_width(cell))
    lines = [_line(list(headers), widths, numeric)]
    lines.extend(_line(row, widths, numeric) for row in cells)
    return "\n".join(lines)


def _is_numeric_column(rows: list[list[object]], column: int) -> bool:
    """A column of integers (blanks allowed) is right-aligned, header included."""
    values = [row[column] for row in rows if row[column] is not None]
    return bool(values) and all(
        isinstance(value, int) and not isinstance(value, bool) for value in values
    )


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _line(cells: Sequence[str], widths: Sequence[int], right: Sequence[bool]) -> str:
    parts = []
    for cell, width, align_right in zip(cells, widths, right, strict=True):
        pad = " " * (width - display_width(cell))
        parts.append(pad + cell if align_right else cell + pad)
    return "  ".join(parts).rstrip()


def kv_table(items: Sequence[KeyValueLike]) -> str:
    if not items:
        return "(no keys)"
    return table(
        ["KEY", "VALUE", "REVISION", "VERSION"],
        [[printable(kv.key), value_preview(kv.value), kv.mod_revision, kv.version] for kv in items],
    )


def mapping_lines(document: Mapping[str, Any], indent: str = "  ") -> str:
    """``key: value`` lines, aligned, for results whose fields are not known in advance."""
    if not document:
        return ""
    width = max(display_width(str(key)) for key in document)
    lines = []
    for key, value in document.items():
        if isinstance(value, Mapping | list):
            rendered = orjson.dumps(value, default=_json_default).decode()
        else:
            rendered = _cell(value)
        lines.append(f"{indent}{str(key) + ':':<{width + 1}} {rendered}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- cluster


def node_role(node: Mapping[str, Any]) -> str:
    if node.get("isLeader"):
        return "leader"
    membership = node.get("membership")
    if membership == "learner":
        return "learner"
    if membership == "removed":
        return "removed"
    return "follower"


def status_text(status: Mapping[str, Any], nodes: Mapping[str, Any]) -> str:
    """The cluster at a glance: leader and term, then one row per node with its role,
    replication progress and lag (as the leader sees it)."""
    leader = status.get("leader")
    leader_addr = status.get("leaderHttpAddr")
    header = [
        f"leader:  {_cell(leader)}" + (f" ({leader_addr})" if leader_addr else ""),
        f"term:    {_cell(status.get('currentTerm'))}",
        f"nodes:   {_cell(status.get('liveNodes'))} of {_cell(status.get('totalNodes'))} reachable",
        f"commit:  {_cell(status.get('commitIndex'))}"
        f"  applied: {_cell(status.get('appliedIndex'))}"
        f"  last: {_cell(status.get('lastIndex'))}",
    ]
    if status.get("electedAt"):
        header.append(f"elected: {status['electedAt']}")
    if leader is None:
        header.append("no leader known: the cluster may be electing one or lack a quorum")
    progress: Mapping[str, Any] = status.get("replicationProgress") or {}
    rows = []
    for node in nodes.get("nodes") or []:
        node_id = node.get("id")
        match: Any
        lag: Any
        replication: Any
        if node_id == leader:
            # The leader's own log is the reference: it matches its last index.
            match, lag, replication = status.get("lastIndex"), 0, "-"
        else:
            peer = progress.get(str(node_id)) or {}
            match = peer.get("matchIndex", node.get("matchIndex"))
            lag, replication = peer.get("lag"), peer.get("state")
        rows.append([node_id, node.get("httpAddr"), node_role(node), match, lag, replication])
    if not rows:
        return "\n".join(header)
    body = table(["ID", "HTTP", "ROLE", "MATCH", "LAG", "REPLICATION"], rows)
    return "\n".join(header) + "\n\n" + body


def members_table(nodes: Mapping[str, Any]) -> str:
    entries = nodes.get("nodes") or []
    if not entries:
        return "(no members)"
    return table(
        ["ID", "HTTP", "RPC", "MEMBERSHIP", "ROLE", "REACHABLE"],
        [
            [
                node.get("id"),
                node.get("httpAddr"),
                node.get("rpcAddr"),
                node.get("membership"),
                node_role(node),
                node.get("reachable"),
            ]
            for node in entries
        ],
    )
