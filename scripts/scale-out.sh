#!/usr/bin/env bash
# Scale-out figures, on loopback: a three-node cluster (RF 3, 8 shards) is loaded,
# then, while 16 clients write, two nodes join and rebalancing moves replicas onto
# them; then one node is SIGKILLed and its replicas are re-created elsewhere after
# --dead-after. Prints:
#   - how long rebalancing took from the joins until every node held within one
#     replica of the others, and the writers' throughput before and during it;
#   - how long from the SIGKILL until every shard had three voters again.
#
#   scripts/scale-out.sh                       # 100 000 keys of 256 B
#   SCALE_KEYS=1000000 scripts/scale-out.sh
#   CAIRN=path/to/cairn SCALE_RATE=60 SCALE_DEAD_AFTER=10s scripts/scale-out.sh
#
# Listens on 127.0.0.1 only and removes its data on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
CAIRN=${CAIRN:-target/release/cairn}
if [ ! -x "$CAIRN" ]; then
  cargo build --release -p cairn-server
fi
exec python3 - "$CAIRN" "${SCALE_KEYS:-100000}" "${SCALE_RATE:-60}" "${SCALE_DEAD_AFTER:-10s}" << 'PY'
import json, os, shutil, signal, subprocess, sys, tempfile, threading, time, urllib.request

cairn, keys, rate, dead_after = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
work = tempfile.mkdtemp(prefix="cairn-scale-")
procs = {}
base = 28080

def http(n): return f"127.0.0.1:{base + n}"
def peer(n): return f"127.0.0.1:{base + 1000 + n}"

def start(n, extra):
    args = [cairn, "server", "--id", str(n), "--data-dir", f"{work}/node{n}",
            "--http", http(n), "--peer", peer(n), "--shards", "8",
            "--rebalance-rate", rate, "--dead-after", dead_after,
            "--snapshot-interval-ms", "0"] + extra
    log = open(f"{work}/node{n}.log", "ab")
    procs[n] = subprocess.Popen(args, stdout=log, stderr=log)

def call(n, path, method="GET", body=None, timeout=30):
    req = urllib.request.Request(f"http://{http(n)}{path}", data=body, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")

def wait(what, check, timeout=120):
    t = time.time()
    while time.time() - t < timeout:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")

def spread(n, members):
    s = call(n, "/v1/cluster")
    # Joined nodes are `joining` until the meta leader reaches them: every member
    # must be active, and hold within one replica of the others.
    counts = [x["replicas"] for x in s["nodes"] if x["state"] == "active"]
    return (len(counts) == members and max(counts) - min(counts) <= 1
            and all(len(p["replicas"]) == 3 for p in s["placement"]))

try:
    founding = ",".join(f"{n}={peer(n)}" for n in (1, 2, 3))
    for n in (1, 2, 3):
        start(n, ["--initial-cluster", founding])
    for n in (1, 2, 3):
        wait(f"node {n}", lambda: call(n, "/ready")["ready"])
    # Load: batches of 500 keys of 256 B.
    value = "v" * 256
    t = time.time()
    def load(lo):
        for i in range(lo, keys, 8 * 500):
            ops = [{"op": "put", "key": f"scale/{j:08d}", "value": value}
                   for j in range(i, min(i + 500, keys))]
            body = json.dumps({"ops": ops}).encode()
            call(1 + (i // 500) % 3, "/v1/batch", "POST", body, timeout=120)
    loaders = [threading.Thread(target=load, args=(k * 500,)) for k in range(8)]
    for th in loaders: th.start()
    for th in loaders: th.join()
    print(f"loaded {keys} keys of 256 B in {time.time() - t:.1f} s")

    # 16 writers through nodes 1-3, counted per second.
    done = {}
    stop = threading.Event()
    def writer(w):
        i = 0
        while not stop.is_set():
            key = f"scale/{(w * 7919 + i * 104729) % keys:08d}"
            try:
                req = urllib.request.Request(f"http://{http(1 + w % 3)}/v1/kv/{key}",
                                             data=b"w" * 256, method="PUT")
                urllib.request.urlopen(req, timeout=10).read()
                sec = int(time.time())
                done[sec] = done.get(sec, 0) + 1
            except Exception:
                pass
            i += 1
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(16)]
    for th in writers: th.start()
    def rate_between(a, b):
        secs = [done.get(s, 0) for s in range(int(a) + 1, int(b))]
        return sum(secs) / max(len(secs), 1)

    time.sleep(12)
    before = (time.time() - 10, time.time())
    joined_at = time.time()
    for n in (4, 5):
        start(n, ["--join", f"http://{http(1)}"])
    wait("nodes 4 and 5 to join", lambda: len(call(1, "/v1/cluster")["nodes"]) == 5, 60)
    wait("replicas to spread over five nodes", lambda: spread(1, 5), 3600)
    spread_at = time.time()
    counts = [x["replicas"] for x in call(1, "/v1/cluster")["nodes"]]
    print(f"rebalanced 3 -> 5 nodes in {spread_at - joined_at:.1f} s "
          f"(--rebalance-rate {rate}); replicas per node now {counts}")
    # Five processes share the machine after the joins: the fair baseline for the
    # cost of the moves themselves is the settled five-node cluster, measured next.
    time.sleep(12)
    after = (time.time() - 10, time.time())
    during = rate_between(joined_at, spread_at)
    def fewer(base): return 100 * (1 - during / max(base, 1))
    print(f"writes/s with 16 clients: {rate_between(*before):.0f} before (3 nodes), "
          f"{during:.0f} while rebalancing, {rate_between(*after):.0f} after (5 nodes); "
          f"{fewer(rate_between(*before)):.0f} % fewer than before, "
          f"{fewer(rate_between(*after)):.0f} % fewer than after")
    stop.set()
    for th in writers: th.join()

    # Death: SIGKILL node 5; time until every shard has three voters without it.
    victim = 5
    procs[victim].send_signal(signal.SIGKILL)
    procs[victim].wait()
    killed_at = time.time()
    def replaced():
        s = call(1, "/v1/cluster")
        return all(len(p["replicas"]) == 3 and victim not in p["replicas"]
                   for p in s["placement"])
    wait("the dead node's replicas to be re-created", replaced, 3600)
    print(f"node {victim} SIGKILLed: full replication back after "
          f"{time.time() - killed_at:.1f} s (--dead-after {dead_after})")
finally:
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()
    shutil.rmtree(work, ignore_errors=True)
PY
