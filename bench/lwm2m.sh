#!/usr/bin/env bash
# LwM2M: N clients (one UDP socket each) register at once — registrations per second — and are
# then held registered and observed: after a tenant-wide assignment the server reads their Device
# object, observes /5/0/3 and /5/0/5 and writes each a Package URI. Server RSS before and while
# holding them gives the memory per registered, observing client.
# Usage: bench/lwm2m.sh [CLIENTS]   (default 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
n=${1:-10000}
ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p updraft-cli
cargo build --release -q -p updraft-server --example device_load
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
"$bin/updraft" serve --data-dir "$work/data" --http 127.0.0.1:0 --mqtt off --coap off --lwm2m 127.0.0.1:0 \
  --notify-per-second 1000000 > "$work/serve.out" 2>/dev/null &
server=$!; pids+=("$server")
wait_for "$work/serve.out" "listening on" "$server"
url=$(sed -n 's/^updraft listening on //p' "$work/serve.out")
lwm2m=$(sed -n 's/^updraft lwm2m on //p' "$work/serve.out")
admin=$(cat "$work/data/admin.token")
head -c 4096 /dev/urandom > "$work/fw.bin"
curl -sf -X POST -T "$work/fw.bin" -H "Authorization: Bearer $admin" -H 'Content-Type: application/octet-stream' \
  "$url/api/v1/artifacts?title=lw&version=1" > /dev/null
rss() { awk '/VmRSS/ {print $2}' "/proc/$server/status"; }
before=$(rss)
mkfifo "$work/hold"
"$bin/examples/device_load" lwm2m "$lwm2m" "$url" "$admin" "$n" lw@1 < "$work/hold" > "$work/load.out" &
gen=$!; pids+=("$gen")
exec 3> "$work/hold"
wait_for "$work/load.out" "^held" "$gen" 900
after=$(rss)
exec 3>&-
wait "$gen" || true
echo "| measurement | result |"
echo "|---|---|"
printf "| %d clients registering at once | %s |\n" "$n" "$(sed -n 's/^registered .* = //p' "$work/load.out")"
printf "| … and each one's Device object read by the server (3 reads), from the first Register | %s |\n" "$(sed -n 's/^device objects read .* in //p' "$work/load.out")"
printf "| tenant-wide assignment → all %d observed (/5/0/3, /5/0/5) and given a Package URI | %s |\n" "$n" "$(sed -n 's/^observed and told .* in //p' "$work/load.out")"
printf "| server RSS before → holding them | %.1f MB → %.1f MB |\n" "$(echo "$before/1024" | bc -l)" "$(echo "$after/1024" | bc -l)"
printf "| RSS per registered, observing client | %.1f KB |\n" "$(echo "($after-$before)/$n" | bc -l)"
