#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (FUZZ_SECONDS each, default
# 60) on its corpus in fuzz/corpus/. Installs cargo-fuzz when missing; needs
# the nightly toolchain (libFuzzer and the sanitizer build use it).
# A crash fails the script and leaves the input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-60}

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "the nightly toolchain is required for cargo-fuzz" >&2
  exit 1
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2

targets=$(cargo +nightly fuzz list)
cargo +nightly fuzz build
for target in $targets; do
  mkdir -p "corpus/$target"
  echo "== fuzz $target for ${seconds}s"
  # -max_len: pages and cookies of a few KiB reach every branch.
  log=$(mktemp)
  if ! cargo +nightly fuzz run "$target" "corpus/$target" -- \
      -max_total_time="$seconds" -max_len=8192 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz target $target failed (log above); a crashing input is kept in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|new_units_added)|^Done' "$log" || true
  rm -f "$log"
done
