"""The wrk scripts run here in LuaJIT (what wrk embeds) with a stand-in for wrk's API,
so CI checks what they send and what they report without wrk installed."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from lupa.luajit21 import LuaRuntime
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


def test_the_write_script_puts_values_of_the_size_asked_to_random_keys() -> None:
    lua = load(raftkv_wrk_script(Workload("write", 100, keys=20), seed=5))
    sent = requests(lua, 2000)
    assert {method for method, _, _ in sent} == {"PUT"}
    assert {path for _, path, _ in sent} == {f"/kv/k{i:06d}" for i in range(20)}
    assert {body for _, _, body in sent} == {"v" * 100}


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
    assert all(body == "v" * 1024 for method, _, body in sent if method == "PUT")


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
