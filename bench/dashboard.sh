#!/usr/bin/env bash
# The dashboard at fleet scale, on SQLite and on PostgreSQL (a throwaway cluster from the system's
# binaries): the `fleet_page` example writes a fleet with one update per device in bulk, signs in,
# and times the fleet overview computed afresh (once per few seconds per tenant), the fleet page, the first page of devices, a filtered page and one device's page
# through the router in-process (median of 21 each).
# Usage: bench/dashboard.sh [SIZES…]   (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(100000)
cargo build --release -q -p updraft-server --example fleet_page
page="$bin/examples/fleet_page"
work=$(mktemp -d); chmod 755 "$work"
cleanup() {
  stop_pg "$work"
  rm -rf "$work"
}
trap cleanup EXIT
if [ -n "$pgbin" ]; then start_pg "$work"; fi

echo "| store | devices | fleet overview computed | fleet page | devices, first page | devices, filtered (fw.version==2.0) | one device |"
echo "|---|---|---|---|---|---|---|"
for n in "${sizes[@]}"; do
  "$page" sqlite "$n" 2>/dev/null | grep "^|"
  if [ -n "$pgbin" ]; then
    db="bench_$n"
    as_pg "$pgbin/psql" -h "$work/pg" -p "$port" -U postgres -q -c "CREATE DATABASE $db" > /dev/null
    "$page" postgresql "$n" "postgres://postgres@127.0.0.1:$port/$db" 2>/dev/null | grep "^|"
  fi
done
