#!/usr/bin/env bash
# Where the server's memory goes during a campaign: a dhat heap profile of the server
# (`examples/heap_serve.rs`: `updraft serve`'s defaults under dhat's profiler) while `updraft sim` updates N DDI devices (1 MB, tenant-wide
# assignment, as bench/campaign.sh does), stopped with SIGTERM when all are UPDATED. Prints the
# heap's peak and the allocation sites that held the most of it at that moment.
# Usage: bench/heap.sh [DEVICES] [POLL_SECONDS]   (default 2000 5; dhat slows the server down)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
n=${1:-2000}
poll=${2:-5}
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d); chmod 755 "$work"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [ -n "${HEAP_KEEP:-}" ] && cp "$work/dhat-heap.json" "$HEAP_KEEP" 2>/dev/null; rm -rf "$work"' EXIT
cargo build --release -q -p updraft-cli
cargo build --release -q -p updraft-server --example heap_serve
(cd "$work" && exec "$bin/examples/heap_serve" "$work/data" > "$work/serve.out" 2>/dev/null) &
server=$!; pids+=("$server")
wait_for "$work/serve.out" "listening on" "$server"
url=$(sed -n 's/^updraft listening on //p' "$work/serve.out")
export UPDRAFT_SERVER=$url UPDRAFT_TOKEN=$(cat "$work/data/admin.token")
head -c 1000000 /dev/urandom > "$work/fw.bin"
"$bin/updraft" artifact upload "$work/fw.bin" --title heap --version 1 > /dev/null
summary=$("$bin/updraft" sim --devices "$n" --poll "$poll" --assign heap@1 --until-done --timeout 1800 --json)
rss=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$server/status")
kill -TERM "$server"; wait "$server" 2>/dev/null || true
[ -s "$work/dhat-heap.json" ] || { echo "no dhat-heap.json: the server did not exit cleanly" >&2; exit 1; }
python3 - "$work/dhat-heap.json" "$n" "$rss" "$summary" <<'PY'
import json, sys
profile, n, rss, summary = json.load(open(sys.argv[1])), int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
updated = summary["final_states"].get("UPDATED", 0)
if updated != n:
    sys.exit(f"{updated} of {n} devices UPDATED")
frames = profile["ftbl"]
def strip(name):
    # Generic arguments out, so that a frame reads as its path: a<b<c>>::d -> a::d.
    out, depth = [], 0
    for ch in name:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(depth - 1, 0)
        elif depth == 0:
            out.append(ch)
    return "".join(out)
# Frames of the allocator and of std's containers: the site is the first frame after them.
SKIP_FILES = ("dhat-", "alloc/src/", "src/raw_vec/", "src/vec/", "src/boxed", "src/sync",
              "src/rc.rs", "bytes_mut.rs", "hashbrown-", "src/string.rs", "src/slice.rs",
              "src/collections/", "src/alloc.rs", "src/fmt/", "src/str/")
def site(pp):
    # "function (file:line)" of the first frame past the allocator and std's containers.
    for i in pp["fs"]:
        frame = frames[i].split(": ", 1)[-1]
        name, _, where = frame.partition(" (")
        where = where.rstrip(")")
        if not any(skip in where for skip in SKIP_FILES):
            return f"{strip(name)} ({where.rsplit(':', 1)[0]})"[:110]
    return "?"
peak = sum(pp.get("gb", 0) for pp in profile["pps"])
print(f"| {n} DDI devices, 1 MB, tenant-wide assignment | bytes at the heap's peak | share |")
print("|---|---|---|")
print(f"| **the heap at its peak** (server peak RSS {rss} MB, with dhat's own bookkeeping) | {peak / 1e6:.1f} MB | 100 % |")
by_site = {}
for pp in profile["pps"]:
    by_site[site(pp)] = by_site.get(site(pp), 0) + pp.get("gb", 0)
for name, size in sorted(by_site.items(), key=lambda kv: -kv[1])[:10]:
    print(f"| `{name}` | {size / 1e6:.1f} MB | {100 * size / max(peak, 1):.0f} % |")
PY
