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
  [ -f "$work/pg/data/postmaster.pid" ] && as_pg "$pgbin/pg_ctl" -D "$work/pg/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
as_pg() { if [ "$(id -u)" -eq 0 ]; then setpriv --reuid=postgres --regid=postgres --clear-groups -- "$@"; else "$@"; fi; }
if [ -n "$pgbin" ]; then
  mkdir -p "$work/pg"; [ "$(id -u)" -eq 0 ] && chown postgres "$work/pg"
  as_pg "$pgbin/initdb" -U postgres --auth=trust --no-sync -E UTF8 --locale=C -D "$work/pg/data" > /dev/null
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  as_pg "$pgbin/pg_ctl" -D "$work/pg/data" -o "-p $port -k $work/pg -c listen_addresses=127.0.0.1" -w start > /dev/null
fi

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
