#!/usr/bin/env bash
# Two commits' servers side by side (an earlier Updraft and this one), in one run on one machine,
# with the same load generator (the newer commit's `device_load`) against both: ThingsBoard firmware downloads
# over MQTT in 4 KiB chunks (the chunk path), and the time from a tenant-wide assignment until
# every connected device has been told (the notification queue). Runs alternate between the two
# servers; each figure is the median of RUNS runs.
# Usage: bench/compare.sh OLD [RUNS] [CHUNK_DEVICES] [PUSH_DEVICES]   (default 5 200 2000)
# OLD and HEAD are each built from a git worktree of the commit into /var/tmp (the working tree's
# uncommitted changes are not measured). Prints a table.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
rev=${1:?usage: bench/compare.sh OLD [RUNS] [CHUNK_DEVICES] [PUSH_DEVICES]}
runs=${2:-5}
chunk_n=${3:-200}
push_n=${4:-2000}
ulimit -n "$(ulimit -Hn)"
old_commit=$(git rev-parse --short "$rev")
new_commit=$(git rev-parse --short HEAD)

# build COMMIT TARGET PACKAGE_ARGS...: builds the commit's tree (a detached worktree) in release.
build() {
  local commit=$1 target=$2 tree=/var/tmp/updraft-bench-tree-$1
  shift 2
  [ -d "$tree" ] || git worktree add -q --detach "$tree" "$commit"
  (cd "$tree" && CARGO_TARGET_DIR=$target cargo build --release -q "$@")
}
old_target=/var/tmp/updraft-bench-target-old
new_target=/var/tmp/updraft-bench-target-new
build "$old_commit" "$old_target" -p updraft-cli
build "$new_commit" "$new_target" -p updraft-cli
build "$new_commit" "$new_target" -p updraft-server --example device_load
old_bin=$old_target/release/updraft
new_bin=$new_target/release/updraft
load=$new_target/release/examples/device_load

work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
head -c 262144 /dev/urandom > "$work/fw.bin"

# run_once BINARY NAME: one server, both measurements; appends "chunks_rps chunks_mbs push_s".
run_once() {
  local binary=$1 name=$2
  local data="$work/data-$name-$RANDOM"
  "$binary" serve --data-dir "$data" --http 127.0.0.1:0 --mqtt 127.0.0.1:0 --coap off --lwm2m off \
    --notify-per-second 1000000 > "$work/serve.out" 2>/dev/null &
  local server=$!; pids+=("$server")
  wait_for "$work/serve.out" "listening on" "$server"
  local url mqtt admin
  url=$(sed -n 's/^updraft listening on //p' "$work/serve.out")
  mqtt=$(sed -n 's/^updraft mqtt on //p' "$work/serve.out")
  admin=$(cat "$data/admin.token")
  curl -sf -X POST -T "$work/fw.bin" -H "Authorization: Bearer $admin" \
    -H 'Content-Type: application/octet-stream' "$url/api/v1/artifacts?title=fw&version=1" > /dev/null
  local chunks push
  chunks=$("$load" chunks "$mqtt" "$url" "$admin" "$chunk_n" 4096 fw@1 | tail -1)
  # A second tenant-wide assignment for the push: a new version, new devices.
  curl -sf -X POST -T "$work/fw.bin" -H "Authorization: Bearer $admin" \
    -H 'Content-Type: application/octet-stream' "$url/api/v1/artifacts?title=fw&version=2" > /dev/null
  push=$("$load" push "$mqtt" "$url" "$admin" "$push_n" fw@2 | tail -1)
  kill "$server"; wait "$server" 2>/dev/null || true
  local rps mbs told
  rps=$(sed -n 's/.*: \([0-9.]*\) chunk requests\/s.*/\1/p' <<<"$chunks")
  mbs=$(sed -n 's/.*, \([0-9.]*\) MB\/s.*/\1/p' <<<"$chunks")
  told=$(sed -n 's/.*devices told \([0-9.]*\) s.*/\1/p' <<<"$push")
  echo "$rps $mbs $told" >> "$work/$name.runs"
}

for _ in $(seq "$runs"); do
  run_once "$old_bin" old
  run_once "$new_bin" new
done

median() { sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
col() { awk -v c="$2" '{print $c}' "$work/$1.runs" | median; }
echo "| measurement | Updraft $old_commit | Updraft $new_commit |"
echo "|---|---|---|"
echo "| $chunk_n devices download 256 KiB over MQTT in 4 KiB chunks: chunk requests/s | $(col old 1) | $(col new 1) |"
echo "| the same: MB/s | $(col old 2) | $(col new 2) |"
echo "| $push_n connected devices, tenant-wide assignment → every device told (s) | $(col old 3) | $(col new 3) |"
echo
echo "Median of $runs alternating runs each; $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM."
