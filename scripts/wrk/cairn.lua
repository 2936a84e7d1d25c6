-- Cairn's HTTP API: PUT /v1/kv/<key>, GET /v1/kv/<key> (linearizable by default).
package.path = package.path .. ";" .. (os.getenv("WRK_DIR") or ".") .. "/?.lua"
require("common")
local mode = os.getenv("BENCH_MODE") or "put"
counter_threads = tonumber(os.getenv("BENCH_THREADS") or "2")

local function put(k)
  return wrk.format("PUT", "/v1/kv/" .. k, nil, VALUE)
end

local function get(k)
  return wrk.format("GET", "/v1/kv/" .. k)
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
