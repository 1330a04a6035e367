#!/usr/bin/env bash
# Upload throughput and server memory: streams artifacts of several sizes to a release build of
# `updraft serve` (embedded defaults, SQLite, blobs on local disk) and reports MB/s and the
# server's peak RSS (VmHWM) after each. Memory must stay flat as the file grows.
# Usage: bench/upload.sh [SIZES_MB...]   (default: 20 200)
# Prints a Markdown table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(20 200)
cargo build --release -q -p updraft-cli
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for mb in "${sizes[@]}"; do
  head -c $((mb * 1024 * 1024)) /dev/urandom > "$work/fw-$mb.bin"
done
echo "| artifact | upload time | throughput | server peak RSS after upload |"
echo "|---|---|---|---|"
for mb in "${sizes[@]}"; do
  # A fresh server per size, so that each peak RSS is that upload's alone.
  data="$work/data-$mb"
  "$bin/updraft" serve --data-dir "$data" --http 127.0.0.1:0 --mqtt 127.0.0.1:0 --coap 127.0.0.1:0 --lwm2m off > "$work/serve.out" 2>/dev/null &
  pid=$!
  wait_for "$work/serve.out" "listening on" "$pid"
  url=$(sed -n 's/^updraft listening on //p' "$work/serve.out")
  token=$(cat "$data/admin.token")
  sha=$(sha256sum "$work/fw-$mb.bin" | cut -d' ' -f1)
  start=$(date +%s.%N)
  curl -sf -X POST -T "$work/fw-$mb.bin" -H "Authorization: Bearer $token" \
    -H "Content-Type: application/octet-stream" \
    "$url/api/v1/artifacts?title=bench&version=$mb&checksum_algorithm=SHA256&checksum=$sha" > /dev/null
  end=$(date +%s.%N)
  rss_kb=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
  kill $pid; wait $pid 2>/dev/null || true
  secs=$(echo "$end - $start" | bc -l)
  printf "| %d MB | %.2f s | %.1f MB/s | %.1f MB |\n" "$mb" "$secs" "$(echo "$mb / $secs" | bc -l)" "$(echo "$rss_kb / 1024" | bc -l)"
done
