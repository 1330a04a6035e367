#!/usr/bin/env bash
# Where the server's memory goes during a campaign: a dhat heap profile of the server
# (`examples/heap_serve.rs`: `updraft serve`'s defaults under dhat's profiler) while `updraft sim` updates N DDI devices (1 MB, tenant-wide
# assignment, as bench/campaign.sh does), stopped with SIGTERM when all are UPDATED. Prints the
# heap's peak and the allocation sites that held the most of it at that moment.
# Usage: bench/heap.sh [DEVICES] [POLL_SECONDS]   (default 2000 5; dhat slows the server down)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
n=${1:-2000}
poll=${2:-5}
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d); chmod 755 "$work"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [ -n "${HEAP_KEEP:-}" ] && cp "$work/dhat-heap.json" "$HEAP_KEEP" 2>/dev/null; rm -rf "$work"' EXIT
cargo build --release -q -p updraft-cli
cargo build --release -q -p updraft-server --example heap_serve
(cd "$work" && exec "$bin/examples/heap_serve" "$work/data" > "$work/serve.out" 2>/dev/null) &
server=$!; pids+=("$server")
wait_for "$work/serve.out" "listening on" "$server"
url=$(sed -n 's/^updraft listening on //p' "$work/serve.out")
export UPDRAFT_SERVER=$url UPDRAFT_TOKEN=$(cat "$work/data/admin.token")
head -c 1000000 /dev/urandom > "$work/fw.bin"
"$bin/updraft" artifact upload "$work/fw.bin" --title heap --version 1 > /dev/null
summary=$("$bin/updraft" sim --devices "$n" --poll "$poll" --assign heap@1 --until-done --timeout 1800 --json)
rss=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$server/status")
kill -TERM "$server"; wait "$server" 2>/dev/null || true
[ -s "$work/dhat-heap.json" ] || { echo "no dhat-heap.json: the server did not exit cleanly" >&2; exit 1; }
updated=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["final_states"].get("UPDATED", 0))' <<<"$summary")
[ "$updated" = "$n" ] || { echo "$updated of $n devices UPDATED" >&2; exit 1; }
python3 bench/dhat_table.py "$work/dhat-heap.json" "$n DDI devices, 1 MB, tenant-wide assignment" "$rss"
