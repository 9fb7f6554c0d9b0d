"""The wrk scripts run here in LuaJIT (what wrk embeds) with a stand-in for wrk's API,
so CI checks what they send and what they report without wrk installed."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from lupa.luajit21 import LuaRuntime
from raftkv.kvbench.closed_loop import Request
from raftkv.kvbench.http_load import encode_raftkv, encode_raftkv_raw
from raftkv.kvbench.workloads import Workload
from raftkv.kvbench.wrk import WrkError, parse_wrk_output, raftkv_wrk_script

FAKE_WRK = """
wrk = {}
function wrk.format(method, path, headers, body)
  local content_type = nil
  if headers ~= nil then content_type = headers["Content-Type"] end
  return {method = method, path = path, body = body, content_type = content_type}
end
kvbench_output = {}
io.write = function(s) table.insert(kvbench_output, s) end
"""


def load(script: str) -> Any:
    lua = LuaRuntime()
    lua.execute(FAKE_WRK)
    lua.execute(script)
    return lua


def requests(lua: Any, count: int) -> list[tuple[str, str, str | None]]:
    out = []
    for _ in range(count):
        r = lua.globals().request()
        out.append((r["method"], r["path"], r["body"]))
    return out


def http_request(raw: bytes) -> tuple[str, str, dict[str, str], bytes]:
    """(method, path, headers, body) of one HTTP/1.1 request the Python generator sends."""
    head, _, body = raw.partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode("ascii").split("\r\n")
    method, path, version = request_line.split(" ")
    assert version == "HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in header_lines)
    assert int(headers.get("Content-Length", "0")) == len(body)
    return method, path, headers, body


def test_the_write_script_posts_the_documented_json_body_to_random_keys() -> None:
    lua = load(raftkv_wrk_script(Workload("write", 100, keys=20), seed=5))
    sent = requests(lua, 2000)
    assert {method for method, _, _ in sent} == {"POST"}
    assert {path for _, path, _ in sent} == {f"/kv/k{i:06d}" for i in range(20)}
    assert {body for _, _, body in sent} == {json.dumps({"value": "v" * 100})}
    assert lua.globals().request()["content_type"] == "application/json"


def test_the_write_raw_script_puts_the_raw_value() -> None:
    lua = load(raftkv_wrk_script(Workload("write-raw", 100, keys=20), seed=5))
    sent = requests(lua, 500)
    assert {method for method, _, _ in sent} == {"PUT"}
    assert {body for _, _, body in sent} == {"v" * 100}
    assert lua.globals().request()["content_type"] == "application/octet-stream"


@pytest.mark.parametrize(("name", "size"), [("write", 100), ("write-raw", 100), ("write", 16384)])
def test_wrk_and_the_python_generator_send_the_same_write(name: str, size: int) -> None:
    # A run's driver depends on whether wrk is installed; the requests must not.
    workload = Workload(name, size, keys=1)
    lua = load(raftkv_wrk_script(workload, seed=1))
    wrk_method, wrk_path, wrk_body = requests(lua, 1)[0]
    encode = encode_raftkv_raw if workload.raw_put else encode_raftkv
    raw = encode(Request(False, b"k000000", b"v" * size), b"127.0.0.1:1", False)
    method, path, headers, body = http_request(raw)
    assert (method, path, body.decode("ascii")) == (wrk_method, wrk_path, wrk_body)
    assert headers["Content-Type"] == lua.globals().request()["content_type"]
    if not workload.raw_put:
        assert json.loads(body) == {"value": "v" * size}


def test_the_python_generator_reads_with_the_consistency_asked() -> None:
    read = Request(True, b"k000007", b"")
    for encode in (encode_raftkv, encode_raftkv_raw):
        assert http_request(encode(read, b"h:1", False))[:2] == ("GET", "/kv/k000007")
        assert http_request(encode(read, b"h:1", True))[:2] == (
            "GET",
            "/kv/k000007?consistency=stale",
        )


@pytest.mark.parametrize(
    ("name", "suffix", "share"),
    [("read", "", 1.0), ("read-stale", "?consistency=stale", 1.0), ("mixed-50-50", "", 0.5)],
)
def test_read_scripts_mix_reads_with_the_consistency_asked(
    name: str, suffix: str, share: float
) -> None:
    lua = load(raftkv_wrk_script(Workload(name, 1024, keys=100), seed=7))
    sent = requests(lua, 4000)
    methods = Counter(method for method, _, _ in sent)
    assert methods["GET"] / len(sent) == pytest.approx(share, abs=0.04)
    assert all(path.endswith(suffix) for method, path, _ in sent if method == "GET")
    assert {method for method, _, _ in sent} <= {"GET", "POST"}
    writes = [json.loads(body) for method, _, body in sent if method == "POST" and body]
    assert all(doc == {"value": "v" * 1024} for doc in writes)


def test_done_reports_one_json_line_that_the_runner_parses() -> None:
    lua = load(raftkv_wrk_script(Workload("write", 100, keys=10), seed=1))
    g = lua.globals()
    store: dict[str, Any] = {}
    thread = lua.table_from(
        {
            "set": lambda _self, k, v: store.__setitem__(k, v),
            "get": lambda _self, k: store.get(k),
        }
    )
    g.setup(thread)
    g.response(200, lua.table(), "")
    g.response(503, lua.table(), '{"error": "no leader"}')
    store["kvbench_non2xx"] = g.kvbench_non2xx
    store["kvbench_first_error"] = g.kvbench_first_error
    summary = lua.eval(
        "{requests = 1000, duration = 2000000, bytes = 5000,"
        " errors = {connect = 1, read = 0, write = 0, timeout = 2, status = 1}}"
    )
    latency = lua.eval(
        "{mean = 1500.5, max = 9000, percentile = function(self, q) return q * 10 end}"
    )
    g.done(summary, latency, lua.table())
    text = "".join(g.kvbench_output.values())
    parsed = parse_wrk_output("Running 2s test\n" + text)
    assert parsed["requests"] == 1000 and parsed["ok"] == 999 and parsed["non2xx"] == 1
    assert parsed["errors"] == 1 + 1 + 2
    assert parsed["p50_us"] == 500 and parsed["p999_us"] == 999 and parsed["max_us"] == 9000
    assert parsed["first_error"].startswith("503 ")
    json.dumps(parsed)  # plain JSON all the way


def test_output_without_the_result_line_is_an_error() -> None:
    with pytest.raises(WrkError, match="KVBENCH_RESULT"):
        parse_wrk_output("Running 10s test @ http://x\n  unable to connect\n")
