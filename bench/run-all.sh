#!/usr/bin/env bash
# Runs every benchmark on this machine and rewrites the tables of BENCHMARKS.md in place: the text
# between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` becomes the fresh table, the command that
# produced it, the machine and the date. The prose around the tables is kept.
# Usage: bench/run-all.sh            full run, rewrites BENCHMARKS.md (tens of minutes)
#        bench/run-all.sh --only a,b  those benchmarks only (their tables rewritten)
#        bench/run-all.sh --smoke    tiny sizes, writes nothing: checks that the scripts still run
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=false; [ "${1:-}" = "--smoke" ] && smoke=true
# --only NAME,NAME: just those benchmarks (their tables rewritten, the others kept).
only=""; [ "${1:-}" = "--only" ] && only=",${2:?--only needs a list of names},"

# The load tools, installed by this script rather than by hand.
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v bc >/dev/null 2>&1 || need+=(bc)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -q && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

if $smoke; then
  runs=(
    "upload|bench/upload.sh 2"
    "devices|bench/devices.sh 1"
    "mqtt|bench/mqtt.sh 50 20"
    "dfu|bench/dfu.sh 5 4"
    "aws|bench/aws.sh 5 8"
    "lwm2m|bench/lwm2m.sh 10"
    "campaign|bench/campaign.sh 10 0.2 4"
    "heap|bench/heap.sh 10 0.2"
    "mqttheap|bench/mqtt-heap.sh 20"
    "rollouts|bench/rollouts.sh 1000"
    "dashboard|bench/dashboard.sh 1000"
    "scaleout|bench/scaleout.sh 200 5 0.5"
    "micro|cargo bench -q -p updraft-core --bench hot_paths -- --warm-up-time 0.1 --measurement-time 0.2 --sample-size 10"
  )
else
  runs=(
    "upload|bench/upload.sh 20 200"
    "devices|bench/devices.sh 10"
    "mqtt|bench/mqtt.sh 19000 10000"
    "dfu|bench/dfu.sh 1000 32"
    "aws|bench/aws.sh 1000 256 4096"
    "lwm2m|bench/lwm2m.sh 10000"
    "campaign|bench/campaign.sh 10000 5 500"
    "heap|bench/heap.sh 2000 5"
    "mqttheap|bench/mqtt-heap.sh 5000"
    "rollouts|bench/rollouts.sh 100000 1000000"
    "dashboard|bench/dashboard.sh 100000"
    "scaleout|bench/scaleout.sh 10000 200 5"
    "micro|cargo bench -q -p updraft-core --bench hot_paths --"
  )
fi
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit + uncommitted changes"
machine="$(nproc) cores (${cpu:-unknown CPU}), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, commit $commit"
mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)
pgv=$(ls /usr/lib/postgresql/*/bin/postgres 2>/dev/null | sort -V | tail -1)
tool() { "$@" 2>&1 || true; }
versions="nginx $(tool nginx -v | sed 's|.*nginx/||'), mosquitto $(tool "$mosq" -h | sed -n 's/^mosquitto version //p'), PostgreSQL $([ -n "$pgv" ] && tool "$pgv" --version | awk '{print $3}'), $(tool wrk -v | head -1 | awk '{print $1, $2}')"
today=$(date +%Y-%m-%d)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
if [ -n "$only" ]; then
  kept=()
  for run in "${runs[@]}"; do
    case "$only" in *",${run%%|*},"*) kept+=("$run") ;; esac
  done
  [ ${#kept[@]} -gt 0 ] || { echo "no benchmark named in --only ${only//,/ }" >&2; exit 1; }
  runs=("${kept[@]}")
fi
for run in "${runs[@]}"; do
  name=${run%%|*}; command=${run#*|}
  echo "== $name: $command" >&2
  if [ "$name" = micro ]; then
    # criterion's bencher lines as a table.
    $command --output-format bencher 2>/dev/null | sed -n 's/^test \(.*\) \.\.\. bench: *\([0-9,]*\) ns\/iter (+\/- \([0-9,]*\))$/| \1 | \2 ns | ± \3 ns |/p' > "$out/$name.rows"
    { echo "| benchmark | time per iteration | spread |"; echo "|---|---|---|"; cat "$out/$name.rows"; } > "$out/$name.md"
  else
    $command > "$out/$name.md"
  fi
  grep -q '^|' "$out/$name.md" || { echo "bench $name printed no table" >&2; exit 1; }
  # Values, not only a table: a zero rate or a NaN fails the run (the scripts check the rest —
  # wrk's error answers, every device UPDATED).
  if grep -Eq '(^|[^0-9.])0(\.0+)? ?(MB/s|GB/s|req/s|registrations/s)|\b(NaN|nan|inf)\b' "$out/$name.md"; then
    echo "bench $name printed a zero or undefined rate:" >&2; cat "$out/$name.md" >&2; exit 1
  fi
  { cat "$out/$name.md"; echo; echo "Command: \`$command\` — $machine; $versions; $today."; } > "$out/$name.section"
done
if $smoke; then
  echo "smoke run: every benchmark script ran and printed its table" >&2
  exit 0
fi
for run in "${runs[@]}"; do
  name=${run%%|*}
  python3 - "$name" "$out/$name.section" <<'PY'
import re, sys
name, section = sys.argv[1], open(sys.argv[2]).read().strip()
text = open("BENCHMARKS.md").read()
pattern = re.compile(rf"(<!-- bench:{name} -->).*?(<!-- /bench:{name} -->)", re.S)
if not pattern.search(text):
    sys.exit(f"BENCHMARKS.md has no markers for {name}")
text = pattern.sub(lambda m: m.group(1) + "\n" + section + "\n" + m.group(2), text)
open("BENCHMARKS.md", "w").write(text)
PY
done
echo "BENCHMARKS.md rewritten" >&2
