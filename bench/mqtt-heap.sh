#!/usr/bin/env bash
# What an idle MQTT connection holds: a dhat heap profile of the server (`examples/heap_serve.rs`
# with `--mqtt`) while the load generator holds N idle MQTT 3.1.1 connections of one device (as
# bench/mqtt.sh does; every one answers a PINGREQ before the profile is taken), written on SIGUSR1
# while they are held: the heap at that moment (not its peak, which is their connecting), the
# allocation sites that hold the most of it, and the heap per connection.
# Usage: bench/mqtt-heap.sh [CONNECTIONS]   (default 5000; dhat slows the server down)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
n=${1:-5000}
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d); chmod 755 "$work"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
cargo build --release -q -p updraft-server --example heap_serve --example device_load
(cd "$work" && exec "$bin/examples/heap_serve" "$work/data" --mqtt "$n" > "$work/serve.out" 2>/dev/null) &
server=$!; pids+=("$server")
wait_for "$work/serve.out" "listening on" "$server"
url=$(sed -n 's/^updraft listening on //p' "$work/serve.out")
mqtt=$(sed -n 's/^updraft mqtt on //p' "$work/serve.out")
admin=$(cat "$work/data/admin.token")
token=$(curl -sf -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' -d '{"id":"idle"}' \
  "$url/api/v1/devices" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
mkfifo "$work/hold"
"$bin/examples/device_load" idle "$mqtt" "$token" "$n" < "$work/hold" > "$work/idle.out" &
gen=$!; pids+=("$gen")
exec 3> "$work/hold"
wait_for "$work/idle.out" "^held" "$gen" 600
rss=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$server/status")
kill -USR1 "$server"
tries=0
until [ -s "$work/dhat-heap.json" ] && python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$work/dhat-heap.json" 2>/dev/null; do
  kill -0 "$server" 2>/dev/null || { echo "the server ended before writing its profile" >&2; exit 1; }
  tries=$((tries + 1)); [ "$tries" -lt 1200 ] || { echo "no dhat-heap.json after 60 s" >&2; exit 1; }
  sleep 0.05
done
grep -q "^held" "$work/idle.out"
kill -TERM "$server"
exec 3>&-
wait "$gen" 2>/dev/null || true
wait "$server" 2>/dev/null || true
python3 bench/dhat_table.py "$work/dhat-heap.json" "$n idle MQTT connections of one device" "$rss" end
python3 - "$work/dhat-heap.json" "$n" <<'PY'
import json, sys
profile, n = json.load(open(sys.argv[1])), int(sys.argv[2])
held = sum(pp.get("eb", 0) for pp in profile["pps"])
print(f"| **heap per idle connection** (the heap when profiled over {n}, the server's own included) | {held / n / 1e3:.2f} KB | |")
PY
