"""``kvctl watch``, in process with a fake client whose watch yields set events and then
raises KeyboardInterrupt, as the user's Ctrl-C does: the lines printed, the JSON form,
the options passed on, the exit status, and the same command inside ``kvctl shell``."""

from __future__ import annotations

import json

import pytest
from kvctl_fakes import FakeClient
from raftkv.cli import context, kvctl
from raftkv.cli.context import CommandContext
from raftkv.cli.shell import Shell

from raftkv.client.http_client import PermissionDeniedError, UnavailableError
from raftkv.client.watch import WatchEvent
from raftkv.kv.results import KeyValue

OLD = KeyValue(b"app/mode", b"blue", 3, 7, 2)
EVENTS = [
    WatchEvent("put", 9, b"app/mode", b"green", 3, 9, 3, prev=OLD),
    WatchEvent("put", 10, b"app/new", b"two\nlines", 10, 10, 1),
    WatchEvent("delete", 11, b"app/mode", prev=KeyValue(b"app/mode", b"green", 3, 9, 3)),
    WatchEvent(
        "resync",
        20,
        items=(KeyValue(b"app/bin", b"\xff\x00", 12, 15, 2), KeyValue(b"app/new", b"x", 10, 18, 4)),
    ),
]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    client = FakeClient()
    client.watch_events = list(EVENTS)
    monkeypatch.setattr(context, "Client", client)
    monkeypatch.delenv("RAFTKV_ENDPOINTS", raising=False)
    return client


def call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = kvctl.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_one_line_per_event_until_ctrl_c(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = call(capsys, "watch", "--prefix", "app/")
    assert (code, err) == (0, "")  # Ctrl-C ends a watch: no error, no traceback
    assert out.splitlines() == [
        "PUT app/mode = green (rev 9)",
        "PUT app/new = two\\nlines (rev 10)",
        "DELETE app/mode (rev 11)",
        "RESYNC at rev 20: 2 keys",
        "  app/bin = <2 bytes, binary> ff00 (rev 15)",
        "  app/new = x (rev 18)",
    ]
    assert fake.calls == [("watch", (None,), {"prefix": "app/", "since": None, "prev": False})]
    assert fake.watches[0].closed


def test_prev_shows_what_each_change_replaced(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = call(capsys, "watch", "app/mode", "--prev", "--since", "8")
    assert code == 0
    assert out.splitlines()[:3] == [
        "PUT app/mode = green (rev 9, was blue)",
        "PUT app/new = two\\nlines (rev 10, new)",
        "DELETE app/mode (rev 11, was green)",
    ]
    assert fake.calls == [("watch", ("app/mode",), {"prefix": None, "since": 8, "prev": True})]


@pytest.mark.parametrize("args", [["watch", "--json", "--prev", "k"], ["--json", "watch", "k"]])
def test_json_is_one_object_per_line(
    fake: FakeClient, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code, out, _ = call(capsys, *args)
    assert code == 0
    documents = [json.loads(line) for line in out.splitlines()]
    assert documents == [
        {
            "type": "put",
            "revision": 9,
            "key": "app/mode",
            "value": "green",
            "create_revision": 3,
            "mod_revision": 9,
            "version": 3,
            "prev": {"value": "blue", "create_revision": 3, "mod_revision": 7, "version": 2},
        },
        {
            "type": "put",
            "revision": 10,
            "key": "app/new",
            "value": "two\nlines",
            "create_revision": 10,
            "mod_revision": 10,
            "version": 1,
        },
        {
            "type": "delete",
            "revision": 11,
            "key": "app/mode",
            "prev": {"value": "green", "create_revision": 3, "mod_revision": 9, "version": 3},
        },
        {
            "type": "resync",
            "revision": 20,
            "items": [
                {
                    "key": "app/bin",
                    "value_base64": "/wA=",
                    "create_revision": 12,
                    "mod_revision": 15,
                    "version": 2,
                },
                {
                    "key": "app/new",
                    "value": "x",
                    "create_revision": 10,
                    "mod_revision": 18,
                    "version": 4,
                },
            ],
        },
    ]


def test_an_empty_prefix_watches_every_key(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.watch_events = []
    assert call(capsys, "watch", "--prefix", "") == (0, "", "")
    assert fake.calls == [("watch", (None,), {"prefix": "", "since": None, "prev": False})]


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["watch"], "give either KEY or --prefix P"),
        (["watch", "k", "--prefix", "p"], "give either KEY or --prefix P"),
        (["watch", "k", "--since", "-1"], "--since"),
    ],
)
def test_a_watch_needs_a_key_or_a_prefix(
    fake: FakeClient, capsys: pytest.CaptureFixture[str], args: list[str], complaint: str
) -> None:
    code, out, err = call(capsys, *args)
    assert (code, out) == (2, "")
    assert complaint in err
    assert fake.calls == []


def test_errors_exit_with_their_codes(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    fake.fail["watch"] = PermissionDeniedError("user 'bob' lacks read", status=403)
    code, out, err = call(capsys, "watch", "k")
    assert (code, out) == (7, "")
    assert err == "kvctl: permission denied: user 'bob' lacks read\n"

    del fake.fail["watch"]
    fake.watch_end = UnavailableError("no node could serve it within 15s")
    code, out, err = call(capsys, "watch", "k")
    assert code == 5
    assert len(out.splitlines()) == 6  # what came before the failure was printed
    assert err == "kvctl: unavailable: no node could serve it within 15s\n"


def test_a_watch_in_the_shell_returns_to_the_prompt_on_ctrl_c(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeClient()
    fake.watch_events = EVENTS[:1]
    monkeypatch.setattr(context, "Client", fake)
    shell = Shell(CommandContext(["http://10.0.0.1:8001"], in_shell=True))
    assert shell.run_script(["watch --prefix app/\n", "watch app/mode --json\n", "get k\n"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "PUT app/mode = green (rev 9)"
    assert json.loads(out[1])["value"] == "green"
    assert out[2] == "v"
    assert fake.names() == ["watch", "watch", "get"]
