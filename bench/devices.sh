#!/usr/bin/env bash
# Device check-ins and downloads, Updraft side by side with nginx on the same machine in the same
# run: DDI polls (nginx: a static JSON of the same size), Frugal-IoT's 304 path (nginx: a static
# 304), and ranged artifact downloads (nginx: the same file with sendfile).
# Needs nginx and wrk (Debian: nginx-light, wrk).
# Usage: bench/devices.sh [SECONDS]   (default 10 per measurement). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
secs=${1:-10}
command -v wrk >/dev/null && command -v nginx >/dev/null || { echo "needs wrk and nginx (apt-get install wrk nginx-light)" >&2; exit 1; }
cargo build --release -q -p updraft-cli
work=$(mktemp -d); chmod 755 "$work"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

# Updraft on embedded defaults.
"$bin/updraft" serve --data-dir "$work/data" --http 127.0.0.1:0 --mqtt 127.0.0.1:0 --coap 127.0.0.1:0 --lwm2m off > "$work/serve.out" 2>/dev/null &
server=$!; pids+=("$server")
wait_for "$work/serve.out" "listening on" "$server"
url=$(sed -n 's/^updraft listening on //p' "$work/serve.out")
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

measure() { # name url auth extra-args... → "req/s p99 transfer/s"
  local out
  out=$(wrk -t2 -c64 -d"${secs}s" --latency "${@:3}" -H "$2" "$1")
  local rps p99 tput
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  tput=$(awk '/Transfer\/sec/ {print $2}' <<<"$out")
  echo "$rps $p99 $tput"
}

module() { api "$url/api/v1/artifacts?title=fw$1" | sed -n 's/.*"id":\([0-9]*\).*/\1/p' | head -1; }
echo "| measurement | Updraft | nginx | Updraft / nginx |"
echo "|---|---|---|---|"
read -r u_rps u_p99 _ < <(measure "$url/DEFAULT/controller/v1/dev01" "Authorization: TargetToken $token")
read -r n_rps n_p99 _ < <(measure "http://127.0.0.1:$nport/poll" "X-Bench: 1")
printf "| DDI poll, no update pending (%s B JSON), 64 connections | %s req/s, p99 %s | %s req/s, p99 %s | %.2f |\n" \
  "$(wc -c < "$work/poll.json")" "$u_rps" "$u_p99" "$n_rps" "$n_p99" "$(echo "$u_rps / $n_rps" | bc -l)"
# Frugal-IoT: a registered node with nothing to do gets 304.
esp=(-H "x-ESP8266-sketch-md5: 0123456789abcdef0123456789abcdef" -H "x-ESP8266-free-space: 1000000" -H "x-ESP8266-mode: sketch")
otakey=$(api -H 'Content-Type: application/json' -d '{"project":"lotus","profile":"esp8266-sht"}' "$url/api/v1/frugal/keys" | sed -n 's/.*"secret":"\([^"]*\)".*/\1/p')
frugal="$url/ota_update/default/lotus/esp8266-95a754/$otakey"
curl -s -o /dev/null "${esp[@]}" "$frugal"
read -r u_rps u_p99 _ < <(measure "$frugal" "User-Agent: ESP8266-http-Update" "${esp[@]}")
read -r n_rps n_p99 _ < <(measure "http://127.0.0.1:$nport/ota304" "User-Agent: ESP8266-http-Update")
printf "| Frugal-IoT check-in, nothing to do (304), 64 connections | %s req/s, p99 %s | %s req/s, p99 %s | %.2f |\n" \
  "$u_rps" "$u_p99" "$n_rps" "$n_p99" "$(echo "$u_rps / $n_rps" | bc -l)"
for mb in 2 100; do
  id=$(module "$mb")
  size=$((mb * 1024 * 1024))
  sed "s/^local counter = 0/local counter = 0\nsize = $size\npath = '\/DEFAULT\/controller\/v1\/dev01\/softwaremodules\/$id\/artifacts\/fw-$mb.bin'/" "$work/ranges.lua" > "$work/u.lua"
  sed "s/^local counter = 0/local counter = 0\nsize = $size\npath = '\/fw-$mb.bin'/" "$work/ranges.lua" > "$work/n.lua"
  read -r u_rps u_p99 u_tput < <(measure "$url/DEFAULT/controller/v1/dev01/softwaremodules/$id/artifacts/fw-$mb.bin" "Authorization: TargetToken $token" -s "$work/u.lua")
  read -r n_rps n_p99 n_tput < <(measure "http://127.0.0.1:$nport/fw-$mb.bin" "X-Bench: 1" -s "$work/n.lua")
  printf "| 64 concurrent 1 MiB ranged downloads of a %d MB artifact | %s/s (%s req/s, p99 %s) | %s/s (%s req/s, p99 %s) | %.2f |\n" \
    "$mb" "$u_tput" "$u_rps" "$u_p99" "$n_tput" "$n_rps" "$n_p99" "$(echo "$u_rps / $n_rps" | bc -l)"
done
echo
echo "Updraft peak RSS during the run: $(awk '/VmHWM/ {printf "%.1f MB", $2/1024}' /proc/$server/status)"
