-- etcd's JSON gateway (v3): POST /v3/kv/put and /v3/kv/range (linearizable by
-- default), keys and values base64 as the gateway wants them.
package.path = package.path .. ";" .. (os.getenv("WRK_DIR") or ".") .. "/?.lua"
require("common")
local mode = os.getenv("BENCH_MODE") or "put"
counter_threads = tonumber(os.getenv("BENCH_THREADS") or "2")

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(data)
  return ((data:gsub(".", function(x)
    local r, b = "", x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return b64chars:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#data % 3 + 1])
end

local value64 = b64(VALUE)
local headers = { ["Content-Type"] = "application/json" }

local function put(k)
  local body = string.format('{"key":"%s","value":"%s"}', b64(k), value64)
  return wrk.format("POST", "/v3/kv/put", headers, body)
end

local function get(k)
  return wrk.format("POST", "/v3/kv/range", headers, string.format('{"key":"%s"}', b64(k)))
end

function request()
  if mode == "preload" then
    return put(next_key())
  elseif mode == "put" then
    return put(random_key())
  elseif mode == "get" then
    return get(random_key())
  elseif math.random(10) == 1 then
    return put(random_key())
  else
    return get(random_key())
  end
end
