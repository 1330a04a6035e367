# A dhat heap profile as a table (for bench/heap.sh and bench/mqtt-heap.sh): the heap's peak and
# the ten allocation sites that held the most of it at that moment.
# Usage: python3 bench/dhat_table.py DHAT_JSON TITLE PEAK_RSS_MB [peak|end]
# (`end`: the heap when the profile was written instead of at its peak)
import json, sys
profile, title, rss = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
when = sys.argv[4] if len(sys.argv) > 4 else "peak"
field = {"peak": "gb", "end": "eb"}[when]
moment = {"peak": "at the heap's peak", "end": "held when profiled"}[when]
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
              "src/collections/", "src/alloc.rs", "src/fmt/", "src/str/",
              # the profiled binary's `#[global_allocator]` (its `__rust_alloc` frame)
              "examples/heap_serve.rs")
def site(pp):
    # "function (file:line)" of the first frame past the allocator and std's containers.
    for i in pp["fs"]:
        frame = frames[i].split(": ", 1)[-1]
        name, _, where = frame.partition(" (")
        where = where.rstrip(")")
        if not any(skip in where for skip in SKIP_FILES):
            return f"{strip(name)} ({where.rsplit(':', 1)[0]})"[:110]
    return "?"
peak = sum(pp.get(field, 0) for pp in profile["pps"])
print(f"| {title} | bytes {moment} | share |")
print("|---|---|---|")
heap = {"peak": "the heap at its peak", "end": "the heap when profiled"}[when]
print(f"| **{heap}** (server peak RSS {rss} MB, with dhat's own bookkeeping) | {peak / 1e6:.1f} MB | 100 % |")
by_site = {}
for pp in profile["pps"]:
    by_site[site(pp)] = by_site.get(site(pp), 0) + pp.get(field, 0)
for name, size in sorted(by_site.items(), key=lambda kv: -kv[1])[:10]:
    print(f"| `{name}` | {size / 1e6:.1f} MB | {100 * size / max(peak, 1):.0f} % |")
