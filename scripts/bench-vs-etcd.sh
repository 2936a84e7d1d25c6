#!/usr/bin/env bash
# Cairn against etcd, in one run on this machine: a three-member etcd and a three-node
# Cairn (`cairn dev`) on loopback, driven by wrk with the same shapes: put, linearizable
# get, and a 90/10 get/put mix, at 1, 16 and 64 connections, every request to one node
# (etcd: its leader, through the JSON gateway; Cairn: node 1). 16-byte keys, 256-byte
# values, a preloaded keyspace. Rounds go A B A B (etcd, Cairn, etcd, Cairn) so the
# machine's noise hits both; each row prints both rounds, throughput counting only 2xx
# answers, p50/p99, the non-2xx count and the ratio Cairn/etcd.
#
#   scripts/bench-vs-etcd.sh                    # 5 s per cell, 10 000 keys
#   BENCH_SECONDS=10 BENCH_KEYS=100000 scripts/bench-vs-etcd.sh
#   CAIRN=path/to/cairn scripts/bench-vs-etcd.sh   # another build
#   CAIRN_DEV_ARGS=--lease-reads scripts/bench-vs-etcd.sh   # more `cairn dev` flags
#
# It installs Debian's etcd-server and wrk if they are missing, builds Cairn in release
# if no binary is given, listens on 127.0.0.1 only, and removes its data on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER=${BENCH_SECONDS:-5}
KEYS=${BENCH_KEYS:-10000}
CONNS=${BENCH_CONNS:-"1 16 64"}
SHAPES=${BENCH_SHAPES:-"put get mix"}

need() { command -v "$1" > /dev/null 2>&1; }
if ! need etcd || ! need etcdctl || ! need wrk; then
  echo "installing etcd-server, etcd-client and wrk from Debian" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get install -y etcd-server etcd-client wrk > /dev/null || {
    $SUDO apt-get update > /dev/null && $SUDO apt-get install -y etcd-server etcd-client wrk > /dev/null
  }
fi
CAIRN=${CAIRN:-target/release/cairn}
if [ ! -x "$CAIRN" ]; then
  cargo build --release -p cairn-server
fi

work=$(mktemp -d /tmp/cairn-vs-etcd.XXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
  wait 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# etcd: three members on loopback.
cluster=""
for i in 1 2 3; do
  cluster+="e$i=http://127.0.0.1:$((23380 + i)),"
done
cluster=${cluster%,}
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$work/etcd$i" \
    --listen-client-urls "http://127.0.0.1:$((23370 + i))" \
    --advertise-client-urls "http://127.0.0.1:$((23370 + i))" \
    --listen-peer-urls "http://127.0.0.1:$((23380 + i))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((23380 + i))" \
    --initial-cluster "$cluster" --initial-cluster-state new \
    --log-level error > "$work/etcd$i.log" 2>&1 &
  pids+=($!)
done
# Cairn: three nodes in one process.
# shellcheck disable=SC2086 # CAIRN_DEV_ARGS is a list of flags
"$CAIRN" dev --data-dir "$work/cairn" --http-port 28181 --peer-port 29181 ${CAIRN_DEV_ARGS:-} \
  > "$work/cairn.log" 2>&1 &
pids+=($!)

endpoints="http://127.0.0.1:23371,http://127.0.0.1:23372,http://127.0.0.1:23373"
for _ in $(seq 1 150); do
  up=0
  ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health > /dev/null 2>&1 && up=$((up + 1))
  for port in 28181 28182 28183; do
    curl -sf "http://127.0.0.1:$port/ready" > /dev/null && up=$((up + 1))
  done
  [ "$up" = 4 ] && break
  sleep 0.2
done
[ "$up" = 4 ] || { echo "the clusters did not come up; logs in $work" >&2; exit 1; }
etcd_leader=$(ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint status -w json |
  python3 -c 'import json,sys
for e in json.load(sys.stdin):
    if e["Status"]["header"]["member_id"] == e["Status"]["leader"]:
        print(e["Endpoint"])')
cairn_node=http://127.0.0.1:28181

export WRK_DIR="$PWD/scripts/wrk" BENCH_KEYS="$KEYS"
run() { # system mode conns seconds -> "ops p50 p99 errors"
  local system=$1 mode=$2 conns=$3 secs=$4 url threads
  url=$cairn_node; [ "$system" = etcd ] && url=$etcd_leader
  threads=2; [ "$conns" -lt 2 ] && threads=1
  BENCH_MODE=$mode BENCH_THREADS=$threads wrk -t"$threads" -c"$conns" -d"${secs}s" \
    -s "$WRK_DIR/$system.lua" "$url" | awk '/^RESULT/ {print $2, $3, $4, $5}'
}

echo "preloading $KEYS keys into each" >&2
for system in etcd cairn; do
  run "$system" preload 32 $((KEYS / 500 + 5)) > /dev/null
done

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); etcd $(etcd --version | awk 'NR==1 {print $3}'), cairn $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "$SECONDS_PER s per cell, $KEYS keys, rounds A B A B (etcd, Cairn)"
echo
printf '| %-4s | %5s | %-34s | %-34s | %-11s |\n' shape conn "etcd ops/s (p50/p99 ms, non-2xx)" "Cairn ops/s (p50/p99 ms, non-2xx)" "Cairn/etcd"
printf '|------|------:|------------------------------------|------------------------------------|-------------|\n'
for shape in $SHAPES; do
  for c in $CONNS; do
    e1=$(run etcd "$shape" "$c" "$SECONDS_PER"); k1=$(run cairn "$shape" "$c" "$SECONDS_PER")
    e2=$(run etcd "$shape" "$c" "$SECONDS_PER"); k2=$(run cairn "$shape" "$c" "$SECONDS_PER")
    python3 - "$shape" "$c" "$e1" "$k1" "$e2" "$k2" << 'PY'
import sys
shape, c, e1, k1, e2, k2 = sys.argv[1:]
def cell(a, b):
    a, b = a.split(), b.split()
    return f"{a[0]} / {b[0]} ({a[1]}/{a[2]}, {a[3]}; {b[1]}/{b[2]}, {b[3]})"
def ratio(k, e):
    k, e = float(k.split()[0]), float(e.split()[0])
    return k / e if e else 0.0
print(f"| {shape:<4} | {c:>5} | {cell(e1, e2):<34} | {cell(k1, k2):<34} | "
      f"{ratio(k1, e1):.2f}x {ratio(k2, e2):.2f}x |")
PY
  done
done
