#!/usr/bin/env bash
# A whole campaign: N simulated DDI devices (real updraft-agents in `updraft sim`), a 1 MB
# artifact assigned to all, until every device is UPDATED — wall time, server CPU seconds and peak
# RSS, on SQLite and on PostgreSQL (a throwaway cluster from the system's binaries).
# With PACE, each store also runs the campaign as a rollout with --max-downloads PACE (at most PACE
# devices queued, told or downloading at once) beside the unpaced assignment. Each store also runs
# ThingsBoard's own OTA scenario: N simulated ThingsBoard MQTT devices of one profile, the firmware
# assigned to the profile, downloaded in `v2/fw/request/…/chunk/…` chunks.
# Exits non-zero unless every device ends UPDATED.
# Usage: bench/campaign.sh [DEVICES] [POLL_SECONDS] [PACE]   (default 10000 5, no paced run)
# ROWS=REGEX runs only the rows whose key (`sqlite-ddi`, `sqlite-thingsboard`, `sqlite-paced`,
# `postgresql-…`) matches; PROFILE=1 prints a perf profile of the server for each row (bench/lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
n=${1:-10000}
poll=${2:-5}
pace=${3:-}
ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p updraft-cli
work=$(mktemp -d); chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_pg "$work"
  rm -rf "$work"
}
trap cleanup EXIT

campaign() { # name database-url-or-empty [pace] [protocol]
  local name=$1 db=$2 pace=${3:-} protocol=${4:-ddi} data="$work/data-$1${3:+-paced}-${4:-ddi}"
  local key="$1-${4:-ddi}"; [ -n "$pace" ] && key="$1-paced"
  [[ "$key" =~ ${ROWS:-.} ]] || return 0
  local extra=(); [ -n "$db" ] && extra=(--database-url "$db")
  "$bin/updraft" serve --data-dir "$data" --http 127.0.0.1:0 --mqtt 127.0.0.1:0 --coap off --lwm2m off \
    --max-connections $((n + 1000)) "${extra[@]}" > "$work/serve-$name.out" 2>/dev/null &
  local server=$!; pids+=("$server")
  wait_for "$work/serve-$name.out" "listening on" "$server"
  local url; url=$(sed -n 's/^updraft listening on //p' "$work/serve-$name.out")
  local mqtt; mqtt=$(sed -n 's/^updraft mqtt on //p' "$work/serve-$name.out")
  export UPDRAFT_SERVER=$url UPDRAFT_TOKEN=$(cat "$data/admin.token")
  head -c 1000000 /dev/urandom > "$work/fw.bin"
  "$bin/updraft" artifact upload "$work/fw.bin" --title camp --version 1 > /dev/null
  local summary
  profile_start "$server"
  if [ -n "$pace" ]; then
    "$bin/updraft" sim --devices "$n" --create-only > /dev/null
    "$bin/updraft" rollout create camp --artifact camp@1 --filter 'id==sim-*' --max-downloads "$pace" > /dev/null
    summary=$("$bin/updraft" sim --devices "$n" --poll "$poll" --rollout camp --until-done --timeout 1800 --json)
    name="$name, paced (max $pace downloading)"
  elif [ "$protocol" = thingsboard ]; then
    summary=$("$bin/updraft" sim --protocol thingsboard --mqtt "$mqtt" --profile tb-camp --devices "$n" --poll "$poll" --assign camp@1 --until-done --timeout 1800 --json)
    name="$name, ThingsBoard MQTT chunks (profile assignment)"
  else
    summary=$("$bin/updraft" sim --devices "$n" --poll "$poll" --assign camp@1 --until-done --timeout 1800 --json)
  fi
  profile_report "$name"
  local ticks; ticks=$(getconf CLK_TCK)
  local cpu; cpu=$(awk -v t="$ticks" '{printf "%.1f", ($14 + $15) / t}' "/proc/$server/stat")
  local rss; rss=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$server/status")
  local secs updated p50 p99
  secs=$(python3 -c 'import json,sys; s=json.load(sys.stdin); print(round(s["campaign_seconds"],1), s["final_states"].get("UPDATED",0), round(s["poll_latency_ms"]["p50"] or 0,1), round(s["poll_latency_ms"]["p99"] or 0,1))' <<<"$summary")
  read -r secs updated p50 p99 <<<"$secs"
  echo "| $name | $n | $updated | $secs s | $cpu s | $rss MB | $p50 / $p99 ms |"
  [ "$updated" = "$n" ] || { echo "$name: $updated of $n devices UPDATED" >&2; exit 1; }
  kill "$server"; wait "$server" 2>/dev/null || true
}

echo "| store | devices | UPDATED | campaign wall time | server CPU | server peak RSS | poll latency p50 / p99 |"
echo "|---|---|---|---|---|---|---|"
campaign sqlite ""
campaign sqlite "" "" thingsboard
if [ -n "$pace" ]; then campaign sqlite "" "$pace"; fi
if [ -n "$pgbin" ]; then
  start_pg "$work" "-c max_connections=200"
  campaign postgresql "postgres://postgres@127.0.0.1:$port/postgres"
  as_pg "$pgbin/psql" -h "$work/pg" -p "$port" -U postgres -q -c "CREATE DATABASE tb" > /dev/null
  campaign postgresql "postgres://postgres@127.0.0.1:$port/tb" "" thingsboard
  if [ -n "$pace" ]; then
    as_pg "$pgbin/psql" -h "$work/pg" -p "$port" -U postgres -q -c "CREATE DATABASE paced" > /dev/null
    campaign postgresql "postgres://postgres@127.0.0.1:$port/paced" "$pace"
  fi
fi
