#!/usr/bin/env bash
# User-space instructions per request, counted by callgrind. Wall-clock
# figures on a shared VM move by tens of percent between runs; these counts
# repeat within 1-2% (background tasks and timers run too), so a hot-path
# change can be judged by what it costs (decisions 0019, 0023). Same world as
# scripts/bench.sh.
#
#   scripts/instructions.sh                  # 1000 requests per row
#   REQUESTS=2000 CRATES=1 scripts/instructions.sh   # and a split by crate
#   MEMBERGATE_BIN=... FLOOR_BIN=... scripts/instructions.sh
#
# Each row starts its program under callgrind twice, on ports of its own,
# against the bench's origin and with its member's session. One keep-alive
# connection sends 50 requests to warm up, then BASE requests in the first
# run and BASE + REQUESTS in the second. The difference of the two totals,
# divided by REQUESTS, is one request's cost, with start-up and warm-up
# cancelled out. valgrind hides SHA-NI, so the session's SHA-256 counts
# about 10k more than the real binary runs.
set -euo pipefail

REQUESTS=${REQUESTS:-1000}
BASE=200
WORKERS=1
if ! command -v valgrind >/dev/null 2>&1; then
  echo "installing valgrind" >&2
  apt-get update -qq && apt-get install -y -qq valgrind >/dev/null
fi
# shellcheck source=scripts/bench-env.sh
source "$(dirname "$0")/bench-env.sh"

cat >"$work/client.py" <<'PY'
import http.client, sys
port, path, count, cookie = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
headers = {"Cookie": "membergate=" + cookie} if cookie else {}
conn = http.client.HTTPConnection("127.0.0.1", int(port))
for _ in range(count):
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"{path}: {response.status}")
PY

# One callgrind run: start, wait, warm up, send `count` requests, stop.
profile() { # out port count path cookie program args...
  local out=$1 port=$2 count=$3 path=$4 cookie=$5; shift 5
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$out.log" 2>&1 &
  local pid=$!
  pids+=("$pid") # stopped on exit too, should a request fail
  for _ in $(seq 1 300); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.2
  done
  python3 "$work/client.py" "$port" "$path" 50 "$cookie"
  python3 "$work/client.py" "$port" "$path" "$count" "$cookie"
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
}
total() { awk '/^(summary|totals):/ {print $2; exit}' "$1"; }

rows="$work/rows.txt"
: >"$rows"
# One row: the program's cost per request for one page.
measure() { # label path cookie port program args...
  local label=$1 path=$2 cookie=$3 port=$4; shift 4
  local a="$work/$label.a.out" b="$work/$label.b.out"
  profile "$a" "$port" "$BASE" "$path" "$cookie" "$@"
  profile "$b" "$port" "$((BASE + REQUESTS))" "$path" "$cookie" "$@"
  local per
  per=$(( ($(total "$b") - $(total "$a")) / REQUESTS ))
  echo "$label $per $a $b" | tee -a "$rows" >&2
}

# membergate on ports of its own, with the bench's database and secret.
cg_plain=$(free_port)
membergate_config_on "$cg_plain" "$work/callgrind.toml"
mg=("$MEMBERGATE_BIN" serve --config "$work/callgrind.toml")
cg_floor=$(free_port)
measure floor-plain /page.html "" "$cg_floor" \
  "$FLOOR_BIN" "127.0.0.1:$cg_floor" "127.0.0.1:$ORIGIN" spawn
measure floor-injected /inject/page.html "" "$cg_floor" \
  "$FLOOR_BIN" "127.0.0.1:$cg_floor" "127.0.0.1:$ORIGIN" spawn inject
measure membergate-public /page.html "" "$cg_plain" "${mg[@]}"
measure membergate-members-only /members/page.html "$session" "$cg_plain" "${mg[@]}"
measure membergate-injected-member /inject/page.html "$session" "$cg_plain" "${mg[@]}"

python3 - "$rows" "$REQUESTS" "${CRATES:-0}" <<'PY'
import collections, re, subprocess, sys
rows = [line.split() for line in open(sys.argv[1])]
requests, crates = int(sys.argv[2]), sys.argv[3] == "1"
print()
print(f"| program and page | instructions per request ({requests} requests) |")
print("|---|---|")
for label, per, _, _ in rows:
    print(f"| {label} | {int(per):,} |")
if not crates:
    sys.exit()

def by_function(path):
    out = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    costs = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(?:\*\s+)?(\S.*)", line)
        if m and "PROGRAM TOTALS" not in line:
            costs[m[2]] += int(m[1].replace(",", ""))
    return costs

def crate(name):
    # "path:function": a registry path names its crate; the standard
    # library's code (/rustc/) counts for the crate whose function it was
    # inlined into, which is where the work was asked for.
    path, _, function = name.partition(":")
    m = re.search(r"/([a-z_0-9-]+)-\d+\.\d+\.\d+[^/]*/", path)
    if m:
        return m[1].replace("-", "_")
    if path.startswith("/rustc/"):
        m = re.match(r"[<&\s]*(?:mut\s+)?([a-z_0-9]+)::", function)
        return m[1] if m else "std"
    if "/benches/floor/" in path:
        return "floor_proxy"
    if path.startswith("/") and "/src/" in path:
        return "membergate"
    if "sysdeps" in path or path.startswith("./"):
        return "libc"
    return "other"

split = {}
for label, _, a, b in rows:
    before, after = by_function(a), by_function(b)
    per = collections.Counter()
    for name in after:
        per[crate(name)] += (after[name] - before[name]) / requests
    split[label] = per
names = sorted(set().union(*split.values()), key=lambda n: -max(abs(s[n]) for s in split.values()))[:16]
print()
print("| crate | " + " | ".join(split) + " |")
print("|---|" + "---|" * len(split))
for n in names:
    print(f"| {n} | " + " | ".join(f"{s[n] / 1000:.1f}k" for s in split.values()) + " |")
PY
