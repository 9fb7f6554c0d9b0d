"""kvctl's rendering: tables, value previews and JSON documents."""

from __future__ import annotations

import json

from raftkv.cli import output

from raftkv.client.http_client import KeyValue


def test_table_aligns_text_left_and_numbers_right() -> None:
    rendered = output.table(
        ["NAME", "COUNT", "NOTE"],
        [["a", 5, None], ["longer", 1234, True], ["b", None, False]],
    )
    assert rendered.splitlines() == [
        "NAME    COUNT  NOTE",
        "a           5  -",
        "longer   1234  yes",
        "b           -  no",
    ]


def test_wide_characters_take_two_columns() -> None:
    rendered = output.table(["KEY", "N"], [["日本", 1], ["ab", 22]])
    assert rendered.splitlines() == ["KEY    N", "日本   1", "ab    22"]
    assert output.display_width("日本e\u0301") == 5  # the combining accent takes none


def test_truncate_counts_columns() -> None:
    assert output.truncate("short", 10) == "short"
    assert output.truncate("abcdefghij", 10) == "abcdefghij"
    assert output.truncate("abcdefghijk", 10) == "abcdefghi…"
    cut = output.truncate("日本語のテキスト", 7)
    assert cut == "日本語…" and output.display_width(cut) <= 7


def test_value_preview() -> None:
    assert output.value_preview(b"plain") == "plain"
    assert output.value_preview(b"tab\there\r\n\x07") == "tab\\there\\r\\n\\x07"
    assert output.value_preview(b"y" * 50) == "y" * 39 + "…"
    binary = output.value_preview(b"\xff\x00\x01")
    assert binary == "<3 bytes, binary> ff0001"


def test_kv_documents_follow_the_api() -> None:
    text = KeyValue("k", b"v", 3, 5, 2)
    assert output.kv_document(text) == {
        "key": "k",
        "value": "v",
        "create_revision": 3,
        "mod_revision": 5,
        "version": 2,
    }
    binary = output.kv_document(KeyValue("k", b"\xff", 3, 5, 2))
    assert binary["value_base64"] == "/w==" and "value" not in binary
    assert json.loads(output.to_json({"b": b"\x00", "a": 1})) == {"a": 1, "b": "AA=="}


def test_kv_table() -> None:
    assert output.kv_table([]) == "(no keys)"
    rendered = output.kv_table([KeyValue("a/b", b"x", 1, 12, 3), KeyValue("c", b"", 2, 2, 1)])
    assert rendered.splitlines() == [
        "KEY  VALUE  REVISION  VERSION",
        "a/b  x            12        3",
        "c                  2        1",
    ]


def test_status_without_a_leader() -> None:
    status = {
        "leader": None,
        "currentTerm": 4,
        "liveNodes": 1,
        "totalNodes": 3,
        "commitIndex": 10,
        "appliedIndex": 10,
        "lastIndex": 11,
        "replicationProgress": {},
    }
    nodes = {"nodes": [{"id": 1, "httpAddr": "h:1", "membership": "voter", "isLeader": False}]}
    rendered = output.status_text(status, nodes)
    assert rendered.splitlines()[0] == "leader:  -"
    assert "no leader known" in rendered
    assert rendered.splitlines()[-1].split() == ["1", "h:1", "follower", "-", "-", "-"]


def test_mapping_lines() -> None:
    assert output.mapping_lines({}) == ""
    assert output.mapping_lines({"index": 5, "nested": {"a": 1}, "ok": True}).splitlines() == [
        "  index:  5",
        '  nested: {"a":1}',
        "  ok:     yes",
    ]
