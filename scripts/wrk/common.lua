-- Shared by the bench-vs-etcd scripts: a keyspace, counters of non-2xx answers per
-- thread, and one summary line for the driving script to parse.
KEYS = tonumber(os.getenv("BENCH_KEYS") or "10000")
VALUE = string.rep("v", 256)
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  bad = 0
  seq = id
  math.randomseed(os.time() + id * 7919)
end

function key(i)
  return string.format("k%015d", i)
end

function random_key()
  return key(math.random(0, KEYS - 1))
end

-- The preload writes every key once per pass, threads interleaved.
function next_key()
  local k = key(seq % KEYS)
  seq = seq + counter_threads
  return k
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local errors = 0
  for _, t in ipairs(threads) do
    errors = errors + t:get("bad")
  end
  errors = errors + summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout
  local seconds = summary.duration / 1e6
  local ok = summary.requests - errors
  io.write(string.format("RESULT %.0f %.2f %.2f %d\n", ok / seconds,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, errors))
end
