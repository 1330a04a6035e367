#!/usr/bin/env bash
# Device check-ins and downloads, Updraft side by side with nginx on the same machine in the same
# run: DDI polls (nginx: a static JSON of the same size), Frugal-IoT's 304 path (nginx: a static
# 304), the other protocols' "anything for me?" (a Drogue DFU Status, a ThingsBoard attribute
# request over MQTT, an AWS IoT Jobs $next/get — each against the DDI poll), and ranged artifact
# downloads (nginx: the same file with sendfile). Every figure is the median of RUNS runs, with
# the slowest and fastest beside it.
# Needs nginx and wrk (Debian: nginx-light, wrk).
# Usage: bench/devices.sh [SECONDS] [RUNS]   (default 10 s per measurement, 3 runs). Prints a
# Markdown table; exits non-zero when a rate is zero or wrk saw a non-2xx/3xx answer.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
secs=${1:-10}
runs=${2:-3}
command -v wrk >/dev/null && command -v nginx >/dev/null || { echo "needs wrk and nginx (apt-get install wrk nginx-light)" >&2; exit 1; }
cargo build --release -q -p updraft-cli
cargo build --release -q -p updraft-server --example device_load
load="$bin/examples/device_load"
work=$(mktemp -d); chmod 755 "$work"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

# Updraft on embedded defaults.
"$bin/updraft" serve --data-dir "$work/data" --http 127.0.0.1:0 --mqtt 127.0.0.1:0 --coap 127.0.0.1:0 --lwm2m off > "$work/serve.out" 2>/dev/null &
server=$!; pids+=("$server")
wait_for "$work/serve.out" "listening on" "$server"
url=$(sed -n 's/^updraft listening on //p' "$work/serve.out")
mqtt=$(sed -n 's/^updraft mqtt on //p' "$work/serve.out")
admin=$(cat "$work/data/admin.token")
api() { curl -sf -H "Authorization: Bearer $admin" "$@"; }
token=$(api -H 'Content-Type: application/json' -d '{"id":"dev01"}' "$url/api/v1/devices" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
curl -sf -H "Authorization: TargetToken $token" "$url/DEFAULT/controller/v1/dev01" > "$work/poll.json"

# The same files for nginx.
mkdir -p "$work/www"; chmod 755 "$work/www"
cp "$work/poll.json" "$work/www/poll.json"
for mb in 2 100; do
  head -c $((mb * 1024 * 1024)) /dev/urandom > "$work/www/fw-$mb.bin"
  api -X POST -T "$work/www/fw-$mb.bin" -H 'Content-Type: application/octet-stream' \
    "$url/api/v1/artifacts?title=fw$mb&version=1&filename=fw-$mb.bin" > /dev/null
done
chmod 644 "$work/www/"*
cat > "$work/nginx.conf" <<CONF
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on; tcp_nopush on;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:0;
    root $work/www;
    location = /poll { default_type application/hal+json; alias $work/www/poll.json; }
    location = /ota304 { return 304; }
  }
}
CONF
# nginx cannot listen on port 0: pick a free port.
nport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed -i "s/127.0.0.1:0/127.0.0.1:$nport/" "$work/nginx.conf"
nginx -c "$work/nginx.conf" -g 'daemon off;' &
ngx=$!; pids+=("$ngx")
until curl -sf "http://127.0.0.1:$nport/poll" > /dev/null; do
  kill -0 "$ngx" 2>/dev/null || { echo "nginx did not start:" >&2; cat "$work/nginx-error.log" >&2; exit 1; }
  sleep 0.05
done

# Downloads need the device to hold an action for the artifact: assign, then poll once.
for mb in 2 100; do
  api -H 'Content-Type: application/json' -d "{\"device\":\"dev01\",\"artifact\":\"fw$mb@1\"}" "$url/api/v1/assignments" > /dev/null
  curl -sf -H "Authorization: TargetToken $token" "$url/DEFAULT/controller/v1/dev01" > /dev/null
done
# An idle poll again for the poll benchmark: unassign, so the device has nothing to do.
api -X DELETE "$url/api/v1/assignments?device=dev01" > /dev/null || true

# Each request fetches one 1 MiB range at a rotating offset of the file.
cat > "$work/ranges.lua" <<'LUA'
local counter = 0
request = function()
  counter = counter + 1
  local start = (counter * 1048576) % (size - 1048576 + 1)
  wrk.headers["Range"] = "bytes=" .. start .. "-" .. (start + 1048575)
  return wrk.format("GET", path)
end
LUA

measure() { # url header extra-args... → "req/s p99 transfer/s"; fails on non-2xx/3xx answers
  local out
  out=$(wrk -t2 -c64 -d"${secs}s" --latency "${@:3}" -H "$2" "$1")
  if grep -q "Non-2xx or 3xx responses" <<<"$out"; then
    echo "wrk got error answers from $1:" >&2; echo "$out" >&2; exit 1
  fi
  local rps p99 tput
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  tput=$(awk '/Transfer\/sec/ {print $2}' <<<"$out")
  echo "$rps $p99 ${tput:-0}"
}

# median OUTFILE COMMAND... : runs COMMAND `runs` times (each prints "rate p99 [throughput]");
# OUTFILE gets "median-rate min max p99 throughput" (p99 and throughput of the median run).
median() {
  local file=$1; shift
  local results=()
  for _ in $(seq "$runs"); do results+=("$("$@")"); done
  printf '%s\n' "${results[@]}" | python3 -c '
import sys
rows = [l.split() for l in sys.stdin if l.strip()]
rows.sort(key=lambda r: float(r[0]))
mid = rows[len(rows) // 2]
if float(mid[0]) <= 0: sys.exit("a rate of zero")
print(mid[0], rows[0][0], rows[-1][0], mid[1], mid[2] if len(mid) > 2 else "-")' > "$file"
}

fmt() { # FILE UNIT → "12345 req/s (11000–13000), p99 3.1ms"
  read -r m lo hi p99 _ < "$1"
  printf "%.0f %s (%.0f–%.0f), p99 %s" "$m" "$2" "$lo" "$hi" "$p99"
}
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$(cut -d' ' -f1 "$1")" "$(cut -d' ' -f1 "$2")"; }
row() { # label updraft-file reference-file unit
  echo "| $1 | $(fmt "$2" "$4") | $(fmt "$3" "$4") | $(ratio "$2" "$3") |"
}
mqtt_requests() { # tb|aws → "req/s p99"
  "$load" requests "$1" "$mqtt" "$url" "$admin" 64 "$secs"
}

module() { api "$url/api/v1/artifacts?title=fw$1" | sed -n 's/.*"id":\([0-9]*\).*/\1/p' | head -1; }

# Frugal-IoT: a node enrolled by its project key, up to date with the firmware assigned to it.
otakey=$(api -H 'Content-Type: application/json' -d '{"project":"lotus","profile":"esp8266-sht"}' "$url/api/v1/frugal/keys" | sed -n 's/.*"secret":"\([^"]*\)".*/\1/p')
frugal="$url/ota_update/default/lotus/esp8266-95a754/$otakey"
esp=(-H "x-ESP8266-sketch-md5: 0123456789abcdef0123456789abcdef" -H "x-ESP8266-free-space: 1000000" -H "x-ESP8266-mode: sketch")
curl -s -o /dev/null "${esp[@]}" "$frugal"
head -c 300000 /dev/urandom > "$work/esp.bin"
api -X POST -T "$work/esp.bin" -H 'Content-Type: application/octet-stream' "$url/api/v1/artifacts?title=esp&version=1&filename=esp.bin" > /dev/null
api -H 'Content-Type: application/json' -d '{"device":"esp8266-95a754","artifact":"esp@1"}' "$url/api/v1/assignments" > /dev/null
md5=$(md5sum "$work/esp.bin" | cut -d' ' -f1)
esp=(-H "x-ESP8266-sketch-md5: $md5" -H "x-ESP8266-free-space: 1000000" -H "x-ESP8266-mode: sketch")
curl -s -o /dev/null "${esp[@]}" "$frugal"
api "$url/api/v1/devices/esp8266-95a754" | grep -q '"UPDATED"' || { echo "the Frugal node did not end UPDATED" >&2; exit 1; }

# Drogue DFU: a device with nothing to do posts its first Status.
dfutoken=$(api -H 'Content-Type: application/json' -d '{"id":"dfu01"}' "$url/api/v1/devices" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
"$load" dfu-status-body "$work/status.cbor"
cat > "$work/dfu.lua" <<LUA
local f = io.open("$work/status.cbor", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/cbor"
LUA
dfuauth="Authorization: Basic $(printf 'dfu01@default:%s' "$dfutoken" | base64 -w0)"

echo "| measurement (median of $runs runs, slowest–fastest) | Updraft | compared with | ratio |"
echo "|---|---|---|---|"
median "$work/ddi" measure "$url/DEFAULT/controller/v1/dev01" "Authorization: TargetToken $token"
median "$work/ngx-poll" measure "http://127.0.0.1:$nport/poll" "X-Bench: 1"
row "DDI poll, no update pending ($(wc -c < "$work/poll.json") B JSON), 64 connections, vs nginx serving the same bytes" "$work/ddi" "$work/ngx-poll" "req/s"
median "$work/frugal" measure "$frugal" "User-Agent: ESP8266-http-Update" "${esp[@]}"
median "$work/ngx-304" measure "http://127.0.0.1:$nport/ota304" "User-Agent: ESP8266-http-Update"
row "Frugal-IoT check-in, node up to date with its assigned firmware (304), vs nginx \`return 304\`" "$work/frugal" "$work/ngx-304" "req/s"
median "$work/dfu" measure "$url/v1/dfu" "$dfuauth" -s "$work/dfu.lua"
row "Drogue DFU Status, nothing to do, 64 connections, vs the DDI poll" "$work/dfu" "$work/ddi" "req/s"
median "$work/tb" mqtt_requests tb
row "ThingsBoard attribute request over MQTT (firmware keys), 64 devices, vs the DDI poll" "$work/tb" "$work/ddi" "req/s"
median "$work/aws" mqtt_requests aws
row "AWS IoT Jobs \`\$next/get\` over MQTT, nothing pending, 64 devices, vs the DDI poll" "$work/aws" "$work/ddi" "req/s"
for mb in 2 100; do
  id=$(module "$mb")
  size=$((mb * 1024 * 1024))
  sed "s/^local counter = 0/local counter = 0\nsize = $size\npath = '\/DEFAULT\/controller\/v1\/dev01\/softwaremodules\/$id\/artifacts\/fw-$mb.bin'/" "$work/ranges.lua" > "$work/u.lua"
  sed "s/^local counter = 0/local counter = 0\nsize = $size\npath = '\/fw-$mb.bin'/" "$work/ranges.lua" > "$work/n.lua"
  median "$work/dl" measure "$url/DEFAULT/controller/v1/dev01/softwaremodules/$id/artifacts/fw-$mb.bin" "Authorization: TargetToken $token" -s "$work/u.lua"
  median "$work/ngx-dl" measure "http://127.0.0.1:$nport/fw-$mb.bin" "X-Bench: 1" -s "$work/n.lua"
  echo "| 64 concurrent 1 MiB ranged downloads of a $mb MB artifact, vs nginx \`sendfile\` (MiB/s = req/s) | $(fmt "$work/dl" "req/s") | $(fmt "$work/ngx-dl" "req/s") | $(ratio "$work/dl" "$work/ngx-dl") |"
done
echo
anon=$(awk '/RssAnon/ {printf "%.1f MB", $2/1024}' /proc/$server/status)
echo "Updraft peak RSS during the run: $(awk '/VmHWM/ {printf "%.1f MB", $2/1024}' /proc/$server/status) (now: $anon of its own memory; the rest is the page cache of the blobs it maps)."
