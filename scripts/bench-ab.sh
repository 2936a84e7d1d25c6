#!/usr/bin/env bash
# Compare two builds of cairn in one run, A B A B, so the machine's noise hits both:
# each round starts `cairn dev` from the binary on a fresh data directory (loopback
# ports 28081-28083 and 29081-29083), runs that binary's own `cairn bench`, and
# stops it.
#
#   scripts/bench-ab.sh OLD_BINARY NEW_BINARY [CONCURRENCY] [SECONDS]
#
# e.g. build the old commit in a worktree with its own target directory:
#   git worktree add /tmp/old <commit> && (cd /tmp/old && cargo build --release)
#   scripts/bench-ab.sh /tmp/old/target/release/cairn target/release/cairn 16 10
set -u
if [ $# -lt 2 ]; then
  sed -n '2,12p' "$0"
  exit 2
fi
A=$1; B=$2; C=${3:-16}; D=${4:-10}
nodes="http://127.0.0.1:28081,http://127.0.0.1:28082,http://127.0.0.1:28083"
for round in 1 2; do
  for label in A B; do
    bin=$A; [ "$label" = B ] && bin=$B
    dir=$(mktemp -d /tmp/cairn-ab.XXXX)
    "$bin" dev --data-dir "$dir" --http-port 28081 --peer-port 29081 > "$dir/dev.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 150); do
      ready=0
      for port in 28081 28082 28083; do
        curl -sf "http://127.0.0.1:$port/ready" > /dev/null && ready=$((ready + 1))
      done
      [ "$ready" = 3 ] && break
      sleep 0.2
    done
    echo "== round $round $label ($bin), $C clients"
    "$bin" bench --endpoints "$nodes" --concurrency "$C" --duration "$D" \
      --keys 10000 --value-size 256 2>&1 | grep -E "writes:|reads:"
    kill -INT "$pid"; wait "$pid" 2> /dev/null
    rm -rf "$dir"
  done
done
