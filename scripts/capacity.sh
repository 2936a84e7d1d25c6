#!/usr/bin/env bash
# What each node stores as a cluster grows: the same data written into a three-node
# and a six-node `cairn dev` cluster, both with three replicas per shard; prints each
# node's data directory size and the average. With six nodes each node holds about
# half of what it holds with three (each shard's three replicas spread over twice
# the nodes).
#
#   scripts/capacity.sh                        # 20 000 keys of 1 000 random bytes
#   CAP_KEYS=50000 CAP_VALUE=4000 scripts/capacity.sh
#   CAIRN=path/to/cairn scripts/capacity.sh
#
# Listens on 127.0.0.1 only and removes its data on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${CAP_KEYS:-20000}
VALUE=${CAP_VALUE:-1000}
CAIRN=${CAIRN:-target/release/cairn}
if [ ! -x "$CAIRN" ]; then
  cargo build --release -p cairn-server
fi
work=$(mktemp -d /tmp/cairn-capacity.XXXX)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_ready() {
  for port in "$@"; do
    for _ in $(seq 1 300); do
      curl -sf "http://127.0.0.1:$port/ready" > /dev/null && break
      sleep 0.1
    done
  done
}

for nodes in 3 6; do
  dir="$work/n$nodes"
  "$CAIRN" dev --nodes "$nodes" --replication-factor 3 --data-dir "$dir" \
    --snapshot-interval-ms 0 --http-port 18081 --peer-port 19081 > "$work/dev$nodes.log" 2>&1 &
  pid=$!
  ports=$(seq 18081 $((18080 + nodes)))
  wait_ready $ports
  endpoints=$(for p in $ports; do printf 'http://127.0.0.1:%s,' "$p"; done)
  # Every key once, in order, through every node: the same live data in both runs.
  python3 - "$KEYS" "$VALUE" "${endpoints%,}" << 'PY'
import os, sys, urllib.request, concurrent.futures
keys, size, endpoints = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
def put(i):
    url = f"{endpoints[i % len(endpoints)]}/v1/kv/cap-{i:08d}"
    req = urllib.request.Request(url, data=os.urandom(size), method="PUT")
    urllib.request.urlopen(req, timeout=30).read()
with concurrent.futures.ThreadPoolExecutor(32) as pool:
    list(pool.map(put, range(keys)))
PY
  kill -TERM "$pid"; wait "$pid" 2> /dev/null || true; pid=""
  total=0
  line=""
  for n in $(seq 1 "$nodes"); do
    kb=$(du -sk "$dir/node-$n" | cut -f1)
    total=$((total + kb))
    line="$line node$n=$((kb / 1024))MiB"
  done
  echo "$nodes nodes, RF 3, $KEYS keys x $VALUE B ($((KEYS * VALUE / 1048576)) MiB live):$line; average $((total / nodes / 1024)) MiB per node"
done
