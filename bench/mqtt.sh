#!/usr/bin/env bash
# MQTT endpoint capacity: idle device connections held by one server (and its RSS per
# connection), and the time from a tenant-wide assignment until every one of N connected
# ThingsBoard-style devices has had its new firmware attributes pushed.
# Usage: bench/mqtt.sh [IDLE_CONNECTIONS] [PUSH_DEVICES]   (default 19000 10000)
# This workplace caps open files at 20,000 per process (hard limit), which caps the idle count.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
idle_n=${1:-19000}
push_n=${2:-10000}
ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p updraft-cli
cargo build --release -q -p updraft-server --example device_load
load="$bin/examples/device_load"
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

"$bin/updraft" serve --data-dir "$work/data" --http 127.0.0.1:0 --mqtt 127.0.0.1:0 --coap off --lwm2m off \
  --notify-per-second 1000000 > "$work/serve.out" 2>/dev/null &
server=$!; pids+=("$server")
wait_for "$work/serve.out" "listening on" "$server"
url=$(sed -n 's/^updraft listening on //p' "$work/serve.out")
mqtt=$(sed -n 's/^updraft mqtt on //p' "$work/serve.out")
admin=$(cat "$work/data/admin.token")
api() { curl -sf -H "Authorization: Bearer $admin" "$@"; }
token=$(api -H 'Content-Type: application/json' -d '{"id":"idle"}' "$url/api/v1/devices" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
rss() { awk '/VmRSS/ {print $2}' "/proc/$server/status"; }

before=$(rss)
mkfifo "$work/hold"
"$load" idle "$mqtt" "$token" "$idle_n" < "$work/hold" > "$work/idle.out" &
gen=$!; pids+=("$gen")
exec 3> "$work/hold"
wait_for "$work/idle.out" "^held" "$gen"
after=$(rss)
exec 3>&-
wait "$gen" || true

head -c 1024 /dev/urandom > "$work/fw.bin"
api -X POST -T "$work/fw.bin" -H 'Content-Type: application/octet-stream' "$url/api/v1/artifacts?title=push&version=1" > /dev/null
push_out=$("$load" push "$mqtt" "$url" "$admin" "$push_n" push@1 | tail -1)

echo "| measurement | result |"
echo "|---|---|"
printf "| idle MQTT connections held | %s |\n" "$(sed -n 's/^held //p' "$work/idle.out")"
printf "| server RSS before → while holding them | %.1f MB → %.1f MB |\n" "$(echo "$before/1024" | bc -l)" "$(echo "$after/1024" | bc -l)"
printf "| RSS per idle connection | %.1f KB |\n" "$(echo "($after-$before)/$idle_n" | bc -l)"
printf "| %d connected devices, tenant-wide assignment → every device pushed its attributes | %s |\n" "$push_n" "$push_out"
