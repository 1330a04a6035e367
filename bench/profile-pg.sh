#!/usr/bin/env bash
# Where the PostgreSQL campaign's time goes: a 10,000-device DDI campaign (as bench/campaign.sh
# runs it) on a throwaway cluster with pg_stat_statements; prints the CPU of the server, of
# PostgreSQL's processes and of the simulator, the machine's idle share, and the statements that
# took the most of PostgreSQL's time. Needs PostgreSQL's contrib module pg_stat_statements
# (in Debian's postgresql package).
# Usage: bench/profile-pg.sh [DEVICES]   (default 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
n=${1:-10000}
ulimit -n "$(ulimit -Hn)"
[ -n "$pgbin" ] || { echo "needs PostgreSQL's binaries (Debian: postgresql)" >&2; exit 1; }
cargo build --release -q -p updraft-cli
work=$(mktemp -d); chmod 755 "$work"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; stop_pg "$work"; rm -rf "$work"' EXIT
start_pg "$work" "-c max_connections=200 -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"
as_pg "$pgbin/psql" -h "$work/pg" -p "$port" -U postgres -q -c "CREATE EXTENSION pg_stat_statements" > /dev/null
db="postgres://postgres@127.0.0.1:$port/postgres"
"$bin/updraft" serve --data-dir "$work/data" --http 127.0.0.1:0 --mqtt off --coap off --lwm2m off \
  --max-connections $((n + 1000)) --database-url "$db" > "$work/serve.out" 2>/dev/null &
server=$!; pids+=("$server")
wait_for "$work/serve.out" "listening on" "$server"
export UPDRAFT_SERVER=$(sed -n 's/^updraft listening on //p' "$work/serve.out") UPDRAFT_TOKEN=$(cat "$work/data/admin.token")
head -c 1000000 /dev/urandom > "$work/fw.bin"
"$bin/updraft" artifact upload "$work/fw.bin" --title camp --version 1 > /dev/null
pgcpu() { local t=0; for p in $(pgrep -u postgres postgres); do t=$((t + $(awk '{print $14+$15+$16+$17}' /proc/$p/stat 2>/dev/null || echo 0))); done; echo $t; }
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
idle() { awk '/^cpu / {print $5+$6, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
as_pg "$pgbin/psql" -h "$work/pg" -p "$port" -U postgres -q -c "SELECT pg_stat_statements_reset()" > /dev/null
s0=$(cpu $server); p0=$(pgcpu); read -r i0 t0 < <(idle); start=$(date +%s.%N)
"$bin/updraft" sim --devices "$n" --poll 5 --assign camp@1 --until-done --timeout 1800 --json > "$work/sum.json" 2>/dev/null &
sim=$!
simcpu=0
while kill -0 $sim 2>/dev/null; do simcpu=$(cpu $sim 2>/dev/null || echo $simcpu); sleep 0.5; done
wait $sim || true
s1=$(cpu $server); p1=$(pgcpu); read -r i1 t1 < <(idle); end=$(date +%s.%N)
tck=$(getconf CLK_TCK)
python3 - "$work/sum.json" <<PY
import json,sys
s=json.load(open(sys.argv[1]))
wall=$end-$start
print("campaign", round(s["campaign_seconds"],1), "s; UPDATED", s["final_states"].get("UPDATED"))
print("window %.1f s; CPU-s: server %.1f, postgres %.1f, simulator %.1f; machine idle %.0f %%" % (wall, ($s1-$s0)/$tck, ($p1-$p0)/$tck, $simcpu/$tck, 100*($i1-$i0)/max(1,($t1-$t0))))
PY
as_pg "$pgbin/psql" -h "$work/pg" -p "$port" -U postgres -A -F ' | ' -c "SELECT calls, round(total_exec_time::numeric/1000,1) AS exec_s, round((100*total_exec_time/sum(total_exec_time) over ())::numeric,0) AS pct, left(regexp_replace(query, '\\s+', ' ', 'g'), 110) FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 14"
as_pg "$pgbin/psql" -h "$work/pg" -p "$port" -U postgres -A -c "SELECT sum(calls) AS statements, round(sum(total_exec_time)::numeric/1000,1) AS exec_s FROM pg_stat_statements"
