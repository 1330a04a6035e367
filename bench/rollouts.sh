#!/usr/bin/env bash
# Rollouts at fleet scale, on SQLite and on PostgreSQL (a throwaway cluster from the system's
# binaries): for each fleet size, the `rollout_scale` example writes the fleet in bulk, then times
# creating a rollout over all of it (`1%,9%,90%`), starting it, the scheduler's first pass and the
# progress overview (median of 21), through the management API in-process.
# Usage: bench/rollouts.sh [SIZES…]   (default 100000 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(100000 1000000)
cargo build --release -q -p updraft-server --example rollout_scale
scale="$bin/examples/rollout_scale"
work=$(mktemp -d); chmod 755 "$work"
cleanup() {
  stop_pg "$work"
  rm -rf "$work"
}
trap cleanup EXIT
if [ -n "$pgbin" ]; then start_pg "$work"; fi

echo "| store | devices | create | start | create + start | first pass (group 1 activated) | progress overview (median) |"
echo "|---|---|---|---|---|---|---|"
for n in "${sizes[@]}"; do
  "$scale" sqlite "$n" 2>/dev/null | grep "^|"
  if [ -n "$pgbin" ]; then
    db="bench_$n"
    as_pg "$pgbin/psql" -h "$work/pg" -p "$port" -U postgres -q -c "CREATE DATABASE $db" > /dev/null
    "$scale" postgresql "$n" "postgres://postgres@127.0.0.1:$port/$db" 2>/dev/null | grep "^|"
  fi
done
