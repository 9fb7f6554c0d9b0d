"""``kvctl txn`` as scripts use it: a subprocess sending the JSON document of a file or
of stdin to the real HTTP worker, in front of a fake Raft process that applies it to a
real state machine; what it prints for each branch and operation, with and without
--json; its errors for bad input; and ``txn`` in ``kvctl shell``."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from served_worker import ServedWorker, served_worker

from raftkv.client import Client


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def kvctl(endpoint: str, *args: str, stdin: str = "") -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTKV_")}
    env["RAFTKV_HISTORY"] = os.devnull
    done = subprocess.run(
        [sys.executable, "-P", "-m", "raftkv.cli.kvctl", "--endpoints", endpoint, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def assert_error(run: Run, code: int, *fragments: str) -> None:
    """Exit ``code``, nothing on stdout, one line on stderr (no traceback)."""
    assert run.code == code, (run.code, run.stderr)
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("kvctl: txn: ") or lines[0].startswith("kvctl: bad request: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def worker() -> Iterator[ServedWorker]:
    with served_worker() as served:
        yield served


def write(path: Path, document: Any) -> str:
    path.write_text(json.dumps(document))
    return str(path)


def test_a_transaction_from_a_file_prints_each_result(worker: ServedWorker, tmp_path: Path) -> None:
    with Client(worker.url) as client:
        a = client.put("file/a", "1")
        gone = client.put("file/gone", "bye")
        client.put("file/tmp/x", "x")
        client.put("file/tmp/y", "y")
        one = client.put("file/p/1", "one")
        two = client.put("file/p/2", b"\xff\xfe")
    binary = base64.b64encode(b"file/\xff").decode()
    document = {
        "compare": [
            {"key": "file/a", "target": "value", "op": "==", "value": "1"},
            {"key": "file/a", "target": "mod_revision", "op": "<", "value": gone.revision},
            {"key": "file/a", "target": "version", "value": 1},
            {"key": "file/a", "target": "create_revision", "op": ">", "value": 0},
            {"key": "file/new", "target": "exists", "op": "==", "value": False},
        ],
        "success": [
            {"put": {"key": "file/a", "value": "2"}},
            {"put": {"key_base64": binary, "value": "bin"}},
            {"delete": {"key": "file/gone"}},
            {"delete": {"key": "file/never"}},
            {"delete_prefix": {"prefix": "file/tmp/"}},
            {"get": {"key_base64": binary}},
            {"get": {"key": "file/missing"}},
            {"list": {"prefix": "file/p/", "limit": 1}},
            {"list": {"prefix": "file/p/"}},
        ],
        "failure": [{"put": {"key": "file/failed", "value": "yes"}}],
    }
    run = kvctl(worker.url, "txn", write(tmp_path / "txn.json", document))
    assert run.code == 0, run.stderr
    revision = worker.raft.index
    assert run.stdout.splitlines() == [
        f"succeeded at revision {revision}",
        f"put file/a (was 1, rev {a.revision})",
        "put file/\\xff (new key)",
        f"delete file/gone (was bye, rev {gone.revision})",
        "delete file/never: not found",
        "delete_prefix file/tmp/: 2 keys deleted",
        f"get file/\\xff = bin (rev {revision}, version 1)",
        "get file/missing: not found",
        "list file/p/: 1 key, and more: raise its limit",
        f"  file/p/1 = one (rev {one.revision})",
        "list file/p/: 2 keys",
        f"  file/p/1 = one (rev {one.revision})",
        f"  file/p/2 = <2 bytes, binary> fffe (rev {two.revision})",
    ]
    assert run.stderr == ""
    assert worker.raft.data[b"file/a"].value == b"2"
    assert worker.raft.data[b"file/\xff"].mod_revision == revision
    assert b"file/failed" not in worker.raft.data


def test_the_failure_branch_from_stdin(worker: ServedWorker) -> None:
    document = {
        "compare": [{"key": "stdin/lock", "target": "exists", "value": True}],
        "success": [{"delete": {"key": "stdin/lock"}}],
        "failure": [
            {"put": {"key": "stdin/lock", "value": "me"}},
            {"list": {"prefix": "", "limit": 1}},
        ],
    }
    text = json.dumps(document)
    run = kvctl(worker.url, "txn", stdin=text)
    assert run.code == 0, run.stderr  # a transaction whose compares fail is no error
    revision = worker.raft.index
    lines = run.stdout.splitlines()
    assert lines[:2] == [
        f"failed (the failure branch ran) at revision {revision}",
        "put stdin/lock (new key)",
    ]
    assert lines[2].startswith('list "": 1 key, and more')
    assert worker.raft.data[b"stdin/lock"].value == b"me"

    # The same with '-', and --json: the server's answer; now the lock exists.
    answer = kvctl(worker.url, "--json", "txn", "-", stdin=text)
    assert answer.code == 0, answer.stderr
    assert json.loads(answer.stdout) == {
        "succeeded": True,
        "revision": revision + 1,
        "index": revision + 1,
        "term": 3,
        "results": [{"delete": {"deleted": 1, "prev": {
            "key": "stdin/lock",
            "value": "me",
            "create_revision": revision,
            "mod_revision": revision,
            "version": 1,
        }}}],
    }  # fmt: skip
    assert b"stdin/lock" not in worker.raft.data


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ('{"success": [{"get": {"key": "k"}}]', ("bad.json is not valid JSON", "line 1")),
        ('{"success": []}\n{"more": 1}', ("bad.json is not valid JSON",)),
        (b"\xff\xfe{}", ("bad.json is not valid JSON",)),
        ("", ("bad.json is empty", '{"compare": [...]')),
        ('[{"get": {"key": "k"}}]', ("bad.json must hold a JSON object",)),
    ],
)
def test_bad_json_is_a_usage_error(
    worker: ServedWorker, tmp_path: Path, content: str | bytes, fragments: tuple[str, ...]
) -> None:
    path = tmp_path / "bad.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    before = len(worker.raft.requests)
    assert_error(kvctl(worker.url, "txn", str(path)), 2, *fragments)
    assert len(worker.raft.requests) == before  # nothing reached the store


def test_bad_input_is_reported_without_a_traceback(worker: ServedWorker, tmp_path: Path) -> None:
    assert_error(kvctl(worker.url, "txn", str(tmp_path / "none.json")), 2, "cannot read")
    assert_error(kvctl(worker.url, "txn", stdin="   \n"), 2, "stdin is empty")
    assert_error(kvctl(worker.url, "txn", stdin="{oops}"), 2, "stdin is not valid JSON")
    # What only the server can check: exit 6, with its message.
    twice = {"success": [{"put": {"key": "k", "value": "1"}}, {"delete": {"key": "k"}}]}
    assert_error(kvctl(worker.url, "txn", stdin=json.dumps(twice)), 6, "is written twice")
    unknown = {"success": [{"cas": {"key": "k"}}]}
    assert_error(
        kvctl(worker.url, "txn", stdin=json.dumps(unknown)), 6, "success[0]: unknown operation"
    )


def test_txn_in_the_shell(worker: ServedWorker, tmp_path: Path) -> None:
    path = write(tmp_path / "shell.json", {"success": [{"put": {"key": "shell/k", "value": "v"}}]})
    run = kvctl(worker.url, "shell", stdin=f"txn {path}\ntxn\nhelp\n")
    assert run.code == 2  # the last failure: txn without a file
    lines = run.stdout.splitlines()
    assert lines[:2] == [f"succeeded at revision {worker.raft.index}", "put shell/k (new key)"]
    assert any(line.split()[:2] == ["txn", "FILE"] for line in lines)  # in `help`
    assert run.stderr.splitlines() == [
        "error: txn: a document from stdin ('-') is not available in the shell"
    ]
    assert worker.raft.data[b"shell/k"].value == b"v"
