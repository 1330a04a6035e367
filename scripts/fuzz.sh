#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for a while with cargo fuzz (libFuzzer, nightly
# Rust), installing cargo-fuzz and the nightly toolchain when missing. Usage:
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 20; the test command runs it short)
# A crash leaves its input under fuzz/artifacts/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
[ -n "${CARGO_HOME:-}" ] || export PATH="$HOME/.cargo/bin:$PATH"

if ! cargo +nightly --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi

cd fuzz
for target in $(cargo +nightly fuzz list); do
  echo "fuzzing $target for ${seconds}s"
  mkdir -p "corpus/$target"
  # Seeds committed beside the target, if any, start the corpus.
  [ -d "seeds/$target" ] && cp -n "seeds/$target"/* "corpus/$target/" 2>/dev/null || true
  log=$(mktemp)
  status=0
  cargo +nightly fuzz run "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?
  # libFuzzer's chatter is long: show the summary, and everything when it failed.
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log"
    echo "fuzz target $target failed (exit $status): its input is under fuzz/artifacts/$target"
    exit 1
  fi
  grep -E '^(Done|stat::number_of_executed_units)' "$log" || true
  rm -f "$log"
done
