#!/usr/bin/env bash
# Runs every fuzz target (or those named) for a bounded time, one after another, and
# prints each one's figures (docs/FUZZING.md):
#
#   fuzz/run.sh                   # every target, 180 s each
#   FUZZ_SECONDS=600 fuzz/run.sh http_api shard_file
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); runs without a sanitizer (`-s none`),
# which works on the stable toolchain. New corpus entries go to fuzz/corpus/<target>
# (not committed); the committed seeds in fuzz/seeds/<target> are read too. A crash
# leaves its input in fuzz/artifacts/<target>/: copy it to fuzz/regressions/<target>/
# so `cargo test` replays it for ever.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${FUZZ_SECONDS:-180}
ALL=(key_codec command_decode cut_decode manifest_decode shard_file url_decode http_api)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL[@]}")

cargo fuzz build -s none
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target" "fuzz/logs"
  dict=()
  [ -f "fuzz/dicts/$target.dict" ] && dict=("-dict=fuzz/dicts/$target.dict")
  echo "== $target: ${SECONDS_EACH} s"
  cargo fuzz run -s none "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$SECONDS_EACH" -print_final_stats=1 -rss_limit_mb=2048 \
    -max_len=4096 "${dict[@]}" ${FUZZ_ARGS:-} 2>&1 | tee "fuzz/logs/$target.log" | grep -E "^(#[0-9]+\s+(INITED|DONE)|Done|stat::|==[0-9]+==|SUMMARY|.*panicked)" || true
done
