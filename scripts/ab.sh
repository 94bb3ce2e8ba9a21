#!/usr/bin/env bash
# Before and after, by the clock: two membergate binaries side by side in the
# bench's world (scripts/bench-env.sh), on the same origin, database and
# member session, measured in alternating order, round after round. Prints
# each round and the medians of the per-round ratios (after / before), which
# cancel most of a shared VM's drift. For what a change costs in
# instructions, scripts/instructions.sh is the finer measure.
#
#   BEFORE_BIN=/path/to/old/membergate scripts/ab.sh
#   BEFORE_BIN=... MEMBERGATE_BIN=... ROUNDS=8 DURATION=5s scripts/ab.sh
#
# MEMBERGATE_BIN ("after") defaults to a production build of this tree.
# nginx `sub_filter` on the injected page runs in each round too, as a
# yardstick.
set -euo pipefail

: "${BEFORE_BIN:?set BEFORE_BIN to the membergate binary to compare against}"
ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-32}
WORKERS=1
# shellcheck source=scripts/bench-env.sh
source "$(dirname "$0")/bench-env.sh"

# The "before" binary on ports of its own, with the bench's database and secret.
before_port=$(free_port)
membergate_config_on "$before_port" "$work/before.toml"
"$BEFORE_BIN" serve --config "$work/before.toml" >"$work/before.out" 2>&1 & pids+=($!)
wait_port "$before_port"

rps() { wrk -t1 -c"$CONNS" -d"$DURATION" "$@" | awk '/^Requests\/sec/ {print $2}'; }
rows="$work/ab.txt"
: >"$rows"
for round in $(seq 1 "$ROUNDS"); do
  order=(after before)
  [ $((round % 2)) -eq 0 ] && order=(before after)
  for who in "${order[@]}"; do
    port=$MG_PLAIN
    [ "$who" = before ] && port=$before_port
    injected=$(rps -H "Cookie: membergate=$session" "http://127.0.0.1:$port/inject$page")
    public=$(rps "http://127.0.0.1:$port$page")
    echo "$round $who injected $injected public $public" | tee -a "$rows" >&2
  done
  nginx=$(rps "http://127.0.0.1:$NGX_PLAIN/inject$page")
  echo "$round nginx injected $nginx" | tee -a "$rows" >&2
done

python3 - "$rows" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
def of(who, page):
    return [float(r[r.index(page) + 1]) for r in rows if r[1] == who and page in r]
print("| page | before req/s | after req/s | after/before, paired |")
print("|---|---|---|---|")
for page in ("injected", "public"):
    before, after = of("before", page), of("after", page)
    paired = statistics.median(a / b for a, b in zip(after, before))
    print(f"| {page} | {statistics.median(before):,.0f} | {statistics.median(after):,.0f} | {paired:.3f}x |")
nginx = statistics.median(of("nginx", "injected"))
after = statistics.median(of("after", "injected"))
print(f"\nnginx sub_filter, injected page: {nginx:,.0f} req/s; after/nginx {after / nginx:.2f}x")
PY
