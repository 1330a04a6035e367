#!/usr/bin/env bash
# What an idle MQTT connection holds: a dhat heap profile of the server (`examples/heap_serve.rs`
# with `--mqtt`) while the load generator holds N idle MQTT 3.1.1 connections of one device (as
# bench/mqtt.sh does; every one answers a PINGREQ before the profile is taken), stopped with
# SIGTERM while they are held. Prints the heap's peak, the allocation sites that held the most of
# it, and the heap per connection.
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
kill -TERM "$server"
exec 3>&-
wait "$gen" 2>/dev/null || true
wait "$server" 2>/dev/null || true
[ -s "$work/dhat-heap.json" ] || { echo "no dhat-heap.json: the server did not exit cleanly" >&2; exit 1; }
python3 bench/dhat_table.py "$work/dhat-heap.json" "$n idle MQTT connections of one device" "$rss"
python3 - "$work/dhat-heap.json" "$n" <<'PY'
import json, sys
profile, n = json.load(open(sys.argv[1])), int(sys.argv[2])
peak = sum(pp.get("gb", 0) for pp in profile["pps"])
print(f"| **heap per idle connection** (the peak over {n}, the server's own start-up included) | {peak / n / 1e3:.1f} KB | |")
PY
