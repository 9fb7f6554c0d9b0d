"""What every kvbench target shares, so that a ratio compares like with like: the key
names, the value written, and the Lua that reports a wrk run.

Key ``i`` is named ``k`` followed by ``i`` in six digits (``k000042``) whatever the target
and whatever generates the load (a wrk script, the Python load generator, a preload).
"""

from __future__ import annotations

import functools
import json

DEFAULT_KEYS = 100_000

# printf-style, so Lua's string.format and Python's % name a key the same way.
KEY_FORMAT = "k%06d"


def raftkv_key(i: int) -> str:
    """The name of key number ``i`` (``raftkv_key(42) == "k000042"``)."""
    if i < 0:
        raise ValueError(f"key numbers start at 0, not {i}")
    return KEY_FORMAT % i


def bench_value(size: int) -> bytes:
    """The value every write carries: ``size`` bytes of ``v``, as the raftkv wrk script
    writes (a constant value costs no generator time and compresses nowhere on the way)."""
    if size < 0:
        raise ValueError(f"a value cannot have {size} bytes")
    return b"v" * size


@functools.lru_cache(maxsize=16)
def json_put_body(value: bytes) -> bytes:
    """The body of raftkv's documented write, ``POST /kv/{key}``: ``{"value": "..."}``
    with the value as text. kvbench's values are ASCII (``bench_value``, a preload's
    ``p`` bytes), so the text is the bytes themselves and the stored value is what a raw
    ``PUT`` stores; a value that is not ASCII is refused rather than sent otherwise than
    asked. Cached: a run writes the same value object over and over, and its hash is
    computed once."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("kvbench writes ASCII values only") from None
    return json.dumps({"value": text}).encode("ascii")


def lua_string(text: str) -> str:
    """A double-quoted Lua 5.1 string literal for ``text`` (ASCII kept, the rest as
    decimal escapes, which LuaJIT and every Lua read alike)."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in '"\\' or not 32 <= byte < 127:
            out.append(f"\\{byte:03d}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


# The fields of the KVBENCH_RESULT line that WRK_DONE_LUA prints, in order.
WRK_RESULT_FIELDS = (
    "requests", "ok", "non2xx", "errors",
    "errors_connect", "errors_read", "errors_write", "errors_timeout", "errors_status",
    "duration_us", "bytes",
    "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us",
    "first_error",
)  # fmt: skip

# Appended to every target's wrk script, which must not define setup(), response() or
# done() itself. It prints one line, ``KVBENCH_RESULT {json}``, with flat fields:
#   requests      responses received (wrk's count: any status)
#   ok            responses with a 2xx status
#   non2xx        responses with any other status (wrk itself only counts status > 399)
#   errors        every failed attempt: non2xx + connect + read + write + timeout errors
#   errors_connect, errors_read, errors_write, errors_timeout, errors_status  (wrk's)
#   duration_us, bytes
#   p50_us, p90_us, p99_us, p999_us, max_us, mean_us   latency of the responses
#   first_error   "STATUS BODY..." of the first non-2xx response a thread saw, or null
# response() makes wrk hand every response to Lua, which costs a little per request; every
# target pays it alike, and without it a 3xx or an unexpected 2xx-less answer would pass
# unseen as a success.
WRK_DONE_LUA = r"""
-- kvbench reporting: identical for every target.
local kvbench_threads = {}

function setup(thread)
  -- Each thread gets its own id, so a script can seed its generator per thread.
  thread:set("kvbench_id", #kvbench_threads)
  table.insert(kvbench_threads, thread)
end

kvbench_non2xx = 0
kvbench_first_error = nil

function response(status, headers, body)
  if status < 200 or status > 299 then
    kvbench_non2xx = kvbench_non2xx + 1
    if kvbench_first_error == nil then
      kvbench_first_error = status .. " " .. string.sub(body or "", 1, 200)
    end
  end
end

local function kvbench_json_string(s)
  if s == nil then
    return "null"
  end
  -- Escape quotes, backslashes, control and non-ASCII bytes: the line must be valid
  -- JSON and valid UTF-8 whatever a server put in an error body.
  return '"' .. string.gsub(s, '[%z\1-\31\34\92\127-\255]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end) .. '"'
end

function done(summary, latency, requests)
  local non2xx = 0
  local first_error = nil
  for _, thread in ipairs(kvbench_threads) do
    non2xx = non2xx + (thread:get("kvbench_non2xx") or 0)
    if first_error == nil then
      first_error = thread:get("kvbench_first_error")
    end
  end
  local e = summary.errors
  local function int(x)
    return string.format("%d", math.floor(x + 0.5))
  end
  local mean = latency.mean
  if mean ~= mean then
    mean = 0 -- NaN when nothing was measured; JSON has no NaN
  end
  local fields = {
    '"requests":' .. int(summary.requests),
    '"ok":' .. int(summary.requests - non2xx),
    '"non2xx":' .. int(non2xx),
    '"errors":' .. int(non2xx + e.connect + e.read + e.write + e.timeout),
    '"errors_connect":' .. int(e.connect),
    '"errors_read":' .. int(e.read),
    '"errors_write":' .. int(e.write),
    '"errors_timeout":' .. int(e.timeout),
    '"errors_status":' .. int(e.status),
    '"duration_us":' .. int(summary.duration),
    '"bytes":' .. int(summary.bytes),
    '"p50_us":' .. int(latency:percentile(50)),
    '"p90_us":' .. int(latency:percentile(90)),
    '"p99_us":' .. int(latency:percentile(99)),
    '"p999_us":' .. int(latency:percentile(99.9)),
    '"max_us":' .. int(latency.max),
    '"mean_us":' .. string.format("%.1f", mean),
    '"first_error":' .. kvbench_json_string(first_error),
  }
  io.write("KVBENCH_RESULT {" .. table.concat(fields, ",") .. "}\n")
end
"""
