#!/usr/bin/env bash
# MQTT endpoint capacity: idle device connections held by one server (and its RSS per
# connection) beside mosquitto holding the same connections from the same generator in the same
# run, and the time from a tenant-wide assignment until every one of N connected
# ThingsBoard-style devices has had its new firmware attributes pushed.
# Needs mosquitto (Debian: mosquitto).
# Usage: bench/mqtt.sh [IDLE_CONNECTIONS] [PUSH_DEVICES]   (default 19000 10000)
# This workplace caps open files at 20,000 per process (hard limit), which caps the idle count.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || { echo "needs mosquitto (apt-get install mosquitto)" >&2; exit 1; }
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
idle_n=${1:-19000}
push_n=${2:-10000}
ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p updraft-cli
cargo build --release -q -p updraft-server --example device_load
load="$bin/examples/device_load"
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

# The idle connections all log in as one device: its connection cap is raised to hold them.
printf '[limits]\nmax-connections-per-device = %d\n' "$((idle_n + 10))" > "$work/limits.toml"
"$bin/updraft" serve --data-dir "$work/data" --http 127.0.0.1:0 --mqtt 127.0.0.1:0 --coap off --lwm2m off \
  --notify-per-second 1000000 --max-connections "$((idle_n + push_n + 100))" --config "$work/limits.toml" > "$work/serve.out" 2>/dev/null &
server=$!; pids+=("$server")
wait_for "$work/serve.out" "listening on" "$server"
url=$(sed -n 's/^updraft listening on //p' "$work/serve.out")
mqtt=$(sed -n 's/^updraft mqtt on //p' "$work/serve.out")
admin=$(cat "$work/data/admin.token")
api() { curl -sf -H "Authorization: Bearer $admin" "$@"; }
token=$(api -H 'Content-Type: application/json' -d '{"id":"idle"}' "$url/api/v1/devices" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# hold PID ADDR OUT: RSS of PID (KiB) before and while the generator holds idle_n connections.
hold() {
  local pid=$1 addr=$2 out=$3 before after gen
  before=$(rss "$pid")
  rm -f "$work/hold"; mkfifo "$work/hold"
  "$load" idle "$addr" "$token" "$idle_n" < "$work/hold" > "$out" &
  gen=$!; pids+=("$gen")
  exec 3> "$work/hold"
  wait_for "$out" "^held" "$gen" 300
  after=$(rss "$pid")
  exec 3>&-
  wait "$gen" || true
  echo "$before $after"
}
read -r before after < <(hold "$server" "$mqtt" "$work/idle.out")

# mosquitto, the same connections from the same generator.
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_connections -1\npersistence false\nlog_dest none\n' "$mport" > "$work/mosquitto.conf"
"$mosquitto" -c "$work/mosquitto.conf" > "$work/mosquitto.out" 2>&1 &
mosq=$!; pids+=("$mosq")
until (exec 3<>"/dev/tcp/127.0.0.1/$mport") 2>/dev/null; do kill -0 "$mosq" || { cat "$work/mosquitto.out" >&2; exit 1; }; sleep 0.05; done
read -r m_before m_after < <(hold "$mosq" "127.0.0.1:$mport" "$work/mosq-idle.out")
kill "$mosq"

head -c 1024 /dev/urandom > "$work/fw.bin"
api -X POST -T "$work/fw.bin" -H 'Content-Type: application/octet-stream' "$url/api/v1/artifacts?title=push&version=1" > /dev/null
push_out=$("$load" push "$mqtt" "$url" "$admin" "$push_n" push@1 | tail -1)

echo "| measurement | result |"
echo "|---|---|"
printf "| idle MQTT connections held (each answered a PINGREQ) | %s (Updraft), %s (mosquitto %s) |\n" "$(sed -n 's/^held //p' "$work/idle.out")" "$(sed -n 's/^held //p' "$work/mosq-idle.out")" "$("$mosquitto" -h | sed -n 's/^mosquitto version //p')"
printf "| Updraft RSS before → while holding them | %.1f MB → %.1f MB |\n" "$(echo "$before/1024" | bc -l)" "$(echo "$after/1024" | bc -l)"
printf "| mosquitto RSS before → while holding them | %.1f MB → %.1f MB |\n" "$(echo "$m_before/1024" | bc -l)" "$(echo "$m_after/1024" | bc -l)"
printf "| RSS per idle connection: Updraft / mosquitto | %.1f KB / %.1f KB |\n" "$(echo "($after-$before)/$idle_n" | bc -l)" "$(echo "($m_after-$m_before)/$idle_n" | bc -l)"
printf "| %d connected devices, tenant-wide assignment → every device pushed its attributes | %s |\n" "$push_n" "$push_out"
