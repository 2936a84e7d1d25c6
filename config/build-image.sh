#!/usr/bin/env bash
# Build the `cairn:dev` image from scratch: the release binary plus the shared
# libraries `ldd` says it links (and the dynamic loader), at their host paths.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p cairn-server
stage=target/image
rm -rf "$stage"
mkdir -p "$stage/usr/local/bin" "$stage/tmp"
cp target/release/cairn "$stage/usr/local/bin/cairn"
ldd target/release/cairn | grep -oE '/[^ ]+' | sort -u | while read -r lib; do
  mkdir -p "$stage$(dirname "$lib")"
  cp -L "$lib" "$stage$lib"
done
docker build -f config/Dockerfile -t cairn:dev .
echo "built cairn:dev; start the cluster with: docker-compose up"
