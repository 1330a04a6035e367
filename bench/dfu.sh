#!/usr/bin/env bash
# Drogue DFU image throughput: N embedded-update devices at once writing the same image through
# Status → Write exchanges (packed CBOR over HTTP) at two MTUs, next to the same N devices
# downloading it through hawkBit DDI, in the same run.
# Usage: bench/dfu.sh [DEVICES] [IMAGE_KB]   (default 1000 32)
# PROFILE=1 prints a perf profile of the server for each MTU's run (bench/lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
n=${1:-1000}
kb=${2:-32}
ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p updraft-cli
cargo build --release -q -p updraft-server --example device_load
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
"$bin/updraft" serve --data-dir "$work/data" --http 127.0.0.1:0 --mqtt off --coap off --lwm2m off > "$work/serve.out" 2>/dev/null &
server=$!; pids+=("$server")
wait_for "$work/serve.out" "listening on" "$server"
url=$(sed -n 's/^updraft listening on //p' "$work/serve.out")
admin=$(cat "$work/data/admin.token")
head -c $((kb * 1024)) /dev/urandom > "$work/image.bin"
module=$(curl -sf -X POST -T "$work/image.bin" -H "Authorization: Bearer $admin" -H 'Content-Type: application/octet-stream' \
  "$url/api/v1/artifacts?title=dfu&version=1&filename=image.bin" | sed -n 's/^{"id":\([0-9]*\).*/\1/p')
echo "| $n devices at once, $kb KiB image | Drogue DFU | hawkBit DDI download |"
echo "|---|---|---|"
for mtu in 512 4096; do
  profile_start "$server"
  line=$("$bin/examples/device_load" dfu "$url" "$admin" "$n" "$mtu" dfu@1 "$module" image.bin)
  profile_report "DFU and DDI download, MTU $mtu"
  dfu=$(sed -n 's/.*= \([0-9.]*\) MB\/s; ddi.*/\1/p' <<<"$line")
  ddi=$(sed -n 's/.*ddi: .* = \([0-9.]*\) MB\/s$/\1/p' <<<"$line")
  echo "| MTU $mtu | $dfu MB/s | $ddi MB/s |"
done
