"""The log line formats shared by the Raft process and its workers."""

from __future__ import annotations

import datetime
import json
import logging
import sys

import pytest

from raftkv.logs import JsonLineFormatter, formatter_for


def record(
    message: str, *args: object, level: int = logging.INFO, with_error: bool = False
) -> logging.LogRecord:
    exc_info = None
    if with_error:
        try:
            raise ValueError("the disk is on fire")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("raftkv.node", level, __file__, 1, message, args or None, exc_info)


def test_a_json_line_has_every_field() -> None:
    line = JsonLineFormatter(3, "raft").format(record("term %d: leader is node %d", 7, 2))
    document = json.loads(line)
    assert document["message"] == "term 7: leader is node 2"
    assert document["level"] == "INFO"
    assert document["node"] == 3
    assert document["process"] == "raft"
    assert document["logger"] == "raftkv.node"
    assert isinstance(document["pid"], int)
    assert "exception" not in document
    when = datetime.datetime.fromisoformat(document["time"])
    assert when.utcoffset() == datetime.timedelta(0)


def test_a_json_line_carries_the_exception_text_on_one_line() -> None:
    formatter = formatter_for("json", 1, "worker")
    line = formatter.format(record("unhandled error", level=logging.ERROR, with_error=True))
    assert "\n" not in line
    document = json.loads(line)
    assert document["level"] == "ERROR" and document["process"] == "worker"
    assert document["exception"].startswith("Traceback (most recent call last)")
    assert "ValueError: the disk is on fire" in document["exception"]


def test_a_multi_line_message_stays_one_json_line() -> None:
    line = JsonLineFormatter(None, "worker").format(record('first\nsecond "quoted"'))
    assert "\n" not in line
    document = json.loads(line)
    assert document["message"] == 'first\nsecond "quoted"'
    assert document["node"] is None


def test_text_lines_name_the_node_and_the_worker() -> None:
    raft = formatter_for("text", 2, "raft").format(record("node %d started", 2))
    assert raft.endswith(" INFO node2 raftkv.node: node 2 started")
    worker = formatter_for("text", 2, "worker").format(record("accepting"))
    assert " INFO node2 worker[" in worker and worker.endswith("] raftkv.node: accepting")


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text, json"):
        formatter_for("xml", 1, "raft")
