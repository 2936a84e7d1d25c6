#!/usr/bin/env bash
# The cost of security, measured A B A B in one run so the machine's noise hits both:
# a three-node cluster of `cairn server` processes on loopback (ports 28081-28083,
# 29081-29083), plaintext and without tokens (A), then with TLS (HTTPS, mutual TLS
# between peers) and a token on every request (B); each round runs `cairn bench`
# against node 1..3 and prints its write and read lines.
#
#   scripts/bench-tls.sh [BINARY] [CONCURRENCY] [SECONDS] [ROUNDS]
#
# e.g. cargo build --release && scripts/bench-tls.sh target/release/cairn 64 10 2
set -u
BIN=${1:-target/release/cairn}; C=${2:-64}; D=${3:-10}; ROUNDS=${4:-2}
work=$(mktemp -d /tmp/cairn-bench-tls.XXXX)
trap 'kill $(jobs -p) 2> /dev/null; rm -rf "$work"' EXIT
"$BIN" certs create-ca --dir "$work/certs" 2> /dev/null
for id in 1 2 3; do "$BIN" certs create-node "$id" --dir "$work/certs" 2> /dev/null; done
"$BIN" token root "$work/root.token" 2> /dev/null
cluster="1=127.0.0.1:29081,2=127.0.0.1:29082,3=127.0.0.1:29083"
for round in $(seq 1 "$ROUNDS"); do
  for label in A B; do
    scheme=http; secure=(); client=()
    if [ "$label" = B ]; then
      scheme=https
      client=(--ca-file "$work/certs/ca.crt" --token-file "$work/root.token")
    fi
    pids=()
    for id in 1 2 3; do
      [ "$label" = B ] && secure=(--tls-ca "$work/certs/ca.crt" --tls-cert "$work/certs/node-$id.crt"
        --tls-key "$work/certs/node-$id.key" --root-token-file "$work/root.token")
      "$BIN" server --id "$id" --data-dir "$work/data-$round-$label/$id" \
        --http "127.0.0.1:2808$id" --peer "127.0.0.1:2908$id" --initial-cluster "$cluster" \
        "${secure[@]}" > "$work/node-$id.log" 2>&1 &
      pids+=($!)
    done
    for _ in $(seq 1 150); do
      ready=0
      for id in 1 2 3; do
        curl -sfk "$scheme://127.0.0.1:2808$id/ready" > /dev/null && ready=$((ready + 1))
      done
      [ "$ready" = 3 ] && break
      sleep 0.2
    done
    what="plaintext, no tokens"; [ "$label" = B ] && what="TLS and mutual TLS, a token per request"
    echo "== round $round $label: $what, $C clients"
    "$BIN" bench --endpoints "$scheme://127.0.0.1:28081,$scheme://127.0.0.1:28082,$scheme://127.0.0.1:28083" \
      --concurrency "$C" --duration "$D" --keys 10000 --value-size 256 "${client[@]}" 2>&1 |
      grep -E "writes:|reads:"
    kill -TERM "${pids[@]}"; wait "${pids[@]}" 2> /dev/null
  done
done
