#!/usr/bin/env bash
# AWS IoT OTA block throughput: N devices at once take their job (start-next) and, once all have
# it, fetch the same image from its MQTT stream in CBOR blocks (128 KiB per GetStream request),
# next to the same N devices downloading it through hawkBit DDI over HTTP, in the same run. Both
# rates time the transfer only; the time the things took to connect and take their jobs is a row
# of its own.
# Usage: bench/aws.sh [DEVICES] [IMAGE_KB] [BLOCK]   (default 1000 256 4096)
# PROFILE=1 prints a perf profile of the server over both phases (bench/lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
n=${1:-1000}
kb=${2:-256}
block=${3:-4096}
ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p updraft-cli
cargo build --release -q -p updraft-server --example device_load
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
"$bin/updraft" serve --data-dir "$work/data" --http 127.0.0.1:0 --mqtt 127.0.0.1:0 --coap off --lwm2m off > "$work/serve.out" 2>/dev/null &
server=$!; pids+=("$server")
wait_for "$work/serve.out" "listening on" "$server"
url=$(sed -n 's/^updraft listening on //p' "$work/serve.out")
mqtt=$(sed -n 's/^updraft mqtt on //p' "$work/serve.out")
admin=$(cat "$work/data/admin.token")
head -c $((kb * 1024)) /dev/urandom > "$work/image.bin"
# A stand-in signature: devices check it, the server only passes it on (no profile certificate).
module=$(curl -sf -X POST -T "$work/image.bin" -H "Authorization: Bearer $admin" -H 'Content-Type: application/octet-stream' \
  "$url/api/v1/artifacts?title=ota&version=1&filename=image.bin&signature=c3RhbmQtaW4%3D" | sed -n 's/^{"id":\([0-9]*\).*/\1/p')
profile_start "$server"
line=$("$bin/examples/device_load" aws "$mqtt" "$url" "$admin" "$n" "$block" ota@1 "$module" image.bin)
profile_report "AWS stream and DDI download, $n devices"
rss=$(ps -o rss= -p "$server" | tr -d ' ')
aws=$(sed -n 's/.*= \([0-9.]*\) MB\/s; ddi.*/\1/p' <<<"$line")
ddi=$(sed -n 's/.*ddi: .* = \([0-9.]*\) MB\/s$/\1/p' <<<"$line")
jobs=$(sed -n 's/.*had their jobs in \([0-9.]*\) s.*/\1/p' <<<"$line")
echo "| $n devices at once, $kb KiB image | AWS IoT MQTT stream, CBOR, $block B blocks | hawkBit DDI download | ratio | server RSS after |"
echo "|---|---|---|---|---|"
echo "| MB/s (the transfer only) | $aws | $ddi | $(printf "%.2f" "$(echo "scale=4; $aws / $ddi" | bc)") | $((rss / 1024)) MB |"
echo "| before it: $n things connect and take their job (start-next) | $jobs s | | | |"
