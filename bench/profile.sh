#!/usr/bin/env bash
# Where a device check-in spends its time: samples `updraft serve` with `perf record` (software
# clock, call graphs) while wrk drives one endpoint, and prints the hottest symbols.
# Usage: bench/profile.sh [ddi|frugal|download] [SECONDS]   (needs perf: Debian's linux-perf)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
what=${1:-ddi}
secs=${2:-8}
cargo build --release -q -p updraft-cli
work=$(mktemp -d); chmod 755 "$work"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
"$bin/updraft" serve --data-dir "$work/data" --http 127.0.0.1:0 --mqtt off --coap off --lwm2m off > "$work/serve.out" 2>/dev/null &
server=$!; pids+=("$server")
wait_for "$work/serve.out" "listening on" "$server"
url=$(sed -n 's/^updraft listening on //p' "$work/serve.out")
admin=$(cat "$work/data/admin.token")
token=$(curl -sf -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' -d '{"id":"dev01"}' "$url/api/v1/devices" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
case $what in
  ddi) target="$url/DEFAULT/controller/v1/dev01"; header="Authorization: TargetToken $token" ;;
  frugal) otakey=$(curl -sf -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' -d '{"project":"lotus","profile":"esp8266-sht"}' "$url/api/v1/frugal/keys" | sed -n 's/.*"secret":"\([^"]*\)".*/\1/p')
          target="$url/ota_update/default/lotus/esp-1/$otakey"; header="x-ESP8266-sketch-md5: 0123456789abcdef0123456789abcdef"
          curl -s -o /dev/null -H "$header" "$target" ;;
  download)
    head -c 2097152 /dev/urandom > "$work/fw.bin"
    id=$(curl -sf -X POST -T "$work/fw.bin" -H "Authorization: Bearer $admin" -H 'Content-Type: application/octet-stream' \
      "$url/api/v1/artifacts?title=fw&version=1&filename=fw.bin" | sed -n 's/^{"id":\([0-9]*\).*/\1/p')
    curl -sf -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' -d '{"device":"dev01","artifact":"fw@1"}' "$url/api/v1/assignments" > /dev/null
    curl -sf -H "Authorization: TargetToken $token" "$url/DEFAULT/controller/v1/dev01" > /dev/null
    target="$url/DEFAULT/controller/v1/dev01/softwaremodules/$id/artifacts/fw.bin"; header="Authorization: TargetToken $token" ;;
esac
wrk -t2 -c64 -d"$((secs + 2))s" -H "$header" "$target" > "$work/wrk.out" &
load=$!
sleep 1
perf record -F 499 -g -o "$work/perf.data" -p "$server" -- sleep "$secs" 2> "$work/perf.err" || { cat "$work/perf.err" >&2; exit 1; }
wait "$load"
grep -E "Requests/sec|Transfer/sec" "$work/wrk.out"
perf report -i "$work/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
  | grep -E '^ +[0-9]' | head -25
