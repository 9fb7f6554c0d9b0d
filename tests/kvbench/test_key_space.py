"""What every kvbench target shares: key names, the value, the report's fields."""

from __future__ import annotations

import json
import re

import pytest
from raftkv.kvbench.key_space import (
    DEFAULT_KEYS,
    KEY_FORMAT,
    WRK_DONE_LUA,
    WRK_RESULT_FIELDS,
    bench_value,
    json_put_body,
    lua_string,
    raftkv_key,
)


def test_keys_are_k_and_six_digits() -> None:
    assert DEFAULT_KEYS == 100_000
    assert raftkv_key(0) == "k000000"
    assert raftkv_key(42) == "k000042"
    assert raftkv_key(DEFAULT_KEYS - 1) == "k099999"
    assert raftkv_key(1_234_567) == "k1234567"  # wider key spaces stay distinct
    assert len({raftkv_key(i) for i in range(DEFAULT_KEYS)}) == DEFAULT_KEYS
    # The printf form is what the Lua scripts format with.
    assert all(KEY_FORMAT % i == raftkv_key(i) for i in (0, 7, 99_999))
    with pytest.raises(ValueError):
        raftkv_key(-1)


def test_the_value_has_the_size_asked() -> None:
    assert bench_value(100) == b"v" * 100
    assert bench_value(0) == b""
    with pytest.raises(ValueError):
        bench_value(-1)


def test_the_report_defines_the_wrk_hooks_and_names_every_field() -> None:
    for hook in (
        "setup(thread)",
        "response(status, headers, body)",
        "done(summary, latency, requests)",
    ):
        assert f"function {hook}" in WRK_DONE_LUA
    assert 'io.write("KVBENCH_RESULT {"' in WRK_DONE_LUA
    # The fields, in the order the script writes them.
    written = re.findall(r"'\"(\w+)\":'", WRK_DONE_LUA)
    assert tuple(written) == WRK_RESULT_FIELDS


def test_the_documented_write_carries_the_value_as_json_text() -> None:
    body = json_put_body(bench_value(100))
    assert body == b'{"value": "' + b"v" * 100 + b'"}'
    assert json.loads(body) == {"value": "v" * 100}
    # Values that need escaping are escaped, not sent raw.
    assert json.loads(json_put_body(b'a"b\\c')) == {"value": 'a"b\\c'}
    with pytest.raises(ValueError, match="ASCII"):
        json_put_body("é".encode())


@pytest.mark.parametrize("text", ['{"value": "vvv"}', "a\\b\nc", "é ünï", ""])
def test_lua_string_literals_read_back_as_the_text_in_luajit(text: str) -> None:
    from lupa.luajit21 import LuaRuntime

    assert LuaRuntime().eval(lua_string(text)) == text
