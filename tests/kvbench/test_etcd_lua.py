"""The etcd wrk script run in LuaJIT (what wrk embeds) with a stand-in for wrk's API: the
requests it builds are byte for byte the Python gateway bodies, its base64 is Python's,
and its report parses."""

from __future__ import annotations

import base64
import json
import random
from collections import Counter
from typing import Any

import pytest
from lupa.luajit21 import LuaRuntime
from raftkv.kvbench.etcd import etcd_wrk_script, put_body, range_body
from raftkv.kvbench.key_space import WRK_RESULT_FIELDS, bench_value, raftkv_key

# What wrk gives a script: wrk.format, and io.write captured for the report.
FAKE_WRK = """
wrk = {}
function wrk.format(method, path, headers, body)
  return {method = method, path = path, body = body, content_type = headers["Content-Type"]}
end
kvbench_output = {}
io.write = function(s) table.insert(kvbench_output, s) end
"""


def load(script: str, thread_id: int = 0) -> Any:
    """A thread's Lua state as wrk sets it up: script loaded, setup()'s id, init()."""
    lua = LuaRuntime(encoding=None)  # bytes in and out: bodies are compared as bytes
    lua.execute(FAKE_WRK.encode())
    lua.execute(script.encode())
    lua.globals().kvbench_id = thread_id
    lua.globals().init(lua.table())
    return lua


def sent(lua: Any, count: int) -> list[tuple[bytes, bytes, bytes, bytes]]:
    out = []
    for _ in range(count):
        r = lua.globals().request()
        out.append((r[b"method"], r[b"path"], r[b"body"], r[b"content_type"]))
    return out


def script(**overrides: Any) -> str:
    args: dict[str, Any] = {
        "keys": 50,
        "value_size": 100,
        "read_fraction": 0.5,
        "serializable": False,
        "seed": 3,
    }
    text: str = etcd_wrk_script(**(args | overrides))
    return text


@pytest.mark.parametrize("serializable", [True, False])
def test_requests_are_the_python_bodies_for_random_keys(serializable: bool) -> None:
    requests = sent(load(script(serializable=serializable)), 3000)
    keys_seen: Counter[bytes] = Counter()
    for method, path, body, content_type in requests:
        assert method == b"POST" and content_type == b"application/json"
        key = base64.b64decode(json.loads(body)["key"])
        keys_seen[key] += 1
        if path == b"/v3/kv/put":
            assert body == put_body(key, bench_value(100))
        else:
            assert path == b"/v3/kv/range"
            assert body == range_body(key, serializable=serializable)
    assert set(keys_seen) == {raftkv_key(i).encode() for i in range(50)}
    reads = sum(1 for _, path, _, _ in requests if path == b"/v3/kv/range")
    assert reads / len(requests) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize(("fraction", "paths"), [(0.0, {b"/v3/kv/put"}), (1.0, {b"/v3/kv/range"})])
def test_pure_workloads_send_one_kind_of_request(fraction: float, paths: set[bytes]) -> None:
    requests = sent(load(script(read_fraction=fraction)), 500)
    assert {path for _, path, _, _ in requests} == paths


def test_threads_draw_different_keys_and_a_seed_replays() -> None:
    first = sent(load(script(keys=100_000), thread_id=0), 50)
    again = sent(load(script(keys=100_000), thread_id=0), 50)
    other = sent(load(script(keys=100_000), thread_id=1), 50)
    assert first == again
    assert first != other


def test_values_of_every_size_and_keys_past_six_digits() -> None:
    for size in (0, 1, 2, 3, 1024):
        for _, path, body, _ in sent(load(script(value_size=size, read_fraction=0.0)), 20):
            assert path == b"/v3/kv/put"
            assert base64.b64decode(json.loads(body)["value"]) == bench_value(size)
    # Past 999,999 a key has seven digits and its base64 another padding.
    for _, _, body, _ in sent(load(script(keys=5_000_000, read_fraction=0.0)), 200):
        key = base64.b64decode(json.loads(body)["key"])
        assert key == raftkv_key(int(key[1:])).encode()


def test_the_lua_base64_is_pythons() -> None:
    # The encoder is local to the script: run the script's head and return it.
    head = script().split("-- Encoded keys are cached")[0]
    encode = LuaRuntime(encoding=None).execute(head.encode() + b"\nreturn base64")
    rng = random.Random(11)
    for length in range(40):
        data = bytes(rng.randrange(256) for _ in range(length))
        assert encode(data) == base64.b64encode(data)


def test_done_prints_one_result_line_with_every_field() -> None:
    lua = load(script())
    g = lua.globals()
    store: dict[bytes, Any] = {}
    thread = lua.table_from(
        {
            b"set": lambda _self, k, v: store.__setitem__(k, v),
            b"get": lambda _self, k: store.get(k),
        }
    )
    g.setup(thread)
    g.response(200, lua.table(), b"")
    g.response(400, lua.table(), b'{"error":"illegal base64 data","code":3}')
    store[b"kvbench_non2xx"] = g.kvbench_non2xx
    store[b"kvbench_first_error"] = g.kvbench_first_error
    summary = lua.eval(
        b"{requests = 10, duration = 1000000, bytes = 900,"
        b" errors = {connect = 0, read = 1, write = 0, timeout = 0, status = 1}}"
    )
    latency = lua.eval(b"{mean = 0/0, max = 70, percentile = function(self, q) return q end}")
    g.done(summary, latency, lua.table())
    text = b"".join(g.kvbench_output.values()).decode()
    (line,) = [x for x in text.splitlines() if x.startswith("KVBENCH_RESULT ")]
    result = json.loads(line.removeprefix("KVBENCH_RESULT "))
    assert tuple(result) == WRK_RESULT_FIELDS
    assert result["ok"] == 9 and result["non2xx"] == 1 and result["errors"] == 2
    assert result["p999_us"] == 100 and result["mean_us"] == 0  # NaN mean: nothing measured
    assert result["first_error"] == '400 {"error":"illegal base64 data","code":3}'
