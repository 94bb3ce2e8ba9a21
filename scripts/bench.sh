#!/usr/bin/env bash
# Side-by-side benchmark on loopback: membergate vs nginx doing the same job,
# and the origin served directly, measured in one run with interleaved rounds.
#
#   scripts/bench.sh                 # 5 rounds of 6 s per measurement, 1 worker each
#   ROUNDS=3 DURATION=10s CONNS=64 WORKERS=2 scripts/bench.sh
#   ONLY=https-h2 scripts/bench.sh   # the scenarios whose names match
#   MEMBERGATE_BIN=target/production/membergate FLOOR_BIN=target/production/examples/floor-proxy \
#     scripts/bench.sh                                             # skip the builds
#
# membergate is built with the production profile (fat LTO), as deployed.
#
# nginx is Debian's (1.22: `listen ... ssl http2`). Origin: nginx, 1 worker, serving a 20 KB HTML page. Peer proxy: nginx with an
# upstream keep-alive pool, plain and TLS (same certificate as membergate).
# Tools: wrk (HTTP/1.1, plain and TLS; p50/p99 from its latency histogram),
# h2load (HTTP/2). Everything listens on 127.0.0.1 and is stopped on exit.
# The floor: benches/floor/proxy.rs, the least a hyper 1 proxy can do for a
# page (no pool, no hygiene, no session), plain and with lol_html putting a
# fixed script before </head>: how much of a gap to nginx is hyper's and
# how much membergate's own work (decision 0023).
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-6s}
CONNS=${CONNS:-32}
WORKERS=${WORKERS:-1}
# shellcheck source=scripts/bench-env.sh
source "$(dirname "$0")/bench-env.sh"

# --- measurement -----------------------------------------------------------------
cat >"$work/report.lua" <<'LUA'
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT rps=%.1f p50=%d p99=%d errors=%d requests=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99), errors,
    summary.requests))
end
LUA
results="$work/results.txt"
: >"$results"

# CPU time (user + system, in clock ticks) used so far by the processes
# that serve a target: membergate, nginx's proxy workers, or the origin's.
# Throughput on a small shared VM swings with where the scheduler puts the
# three busy processes; the serving process's CPU per request does not, so
# each row reports both.
clock_ticks=$(getconf CLK_TCK)
serving_pids() {
  case $1 in
    membergate) echo "$mg_pid" ;;
    nginx) pgrep -P "$proxy_pid" ;;
    direct) pgrep -P "$origin_pid" ;;
    floor) echo "$floor_plain_pid" "$floor_inject_pid" ;;
  esac
}
cpu_ticks() { # target -> "user system", in clock ticks
  local pid user=0 system=0 u s
  for pid in $(serving_pids "$1"); do
    read -r u s < <(awk '{print $14, $15}' "/proc/$pid/stat")
    user=$((user + u)); system=$((system + s))
  done
  echo "$user $system"
}
# CPU per request in microseconds, in all and split into user and kernel time:
# the kernel's share (loopback TCP, wakeups) is alike for any proxy, so the
# user share is where one proxy's own work shows.
cpu_per_request() { # "user system" before, "user system" after, requests
  python3 -c "
u0, s0 = map(int, '$1'.split()); u1, s1 = map(int, '$2'.split()); n = max($3, 1)
us = lambda t: round(t * 1e6 / $clock_ticks / n, 1)
print(f'cpu_us={us(u1 - u0 + s1 - s0)} user_us={us(u1 - u0)} sys_us={us(s1 - s0)}')"
}

run_wrk() { # scenario target url [extra wrk args...]
  local scenario=$1 target=$2 url=$3; shift 3
  local line before requests
  before=$(cpu_ticks "$target")
  line=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s "$work/report.lua" "$@" "$url" | grep '^RESULT')
  requests=${line##*requests=}
  line=${line% requests=*}
  echo "$scenario $target ${line#RESULT } $(cpu_per_request "$before" "$(cpu_ticks "$target")" "$requests")" \
    | tee -a "$results"
}
run_h2load() { # scenario target url
  local scenario=$1 target=$2 url=$3 out rps mean max before answered
  before=$(cpu_ticks "$target")
  out=$(h2load -c "$CONNS" -m 10 -D "${DURATION%s}" -t 1 "$url" 2>&1)
  answered=$(awk '/^requests:/ {print $6}' <<<"$out")
  rps=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
  # "time for request:  min  max  mean  sd  +/- sd" with units (us/ms/s).
  read -r mean max < <(awk '/^time for request:/ {print $6, $5}' <<<"$out" | python3 -c '
import sys
def us(v):
    for unit, f in (("us", 1), ("ms", 1000), ("s", 1000000)):
        if v.endswith(unit): return round(float(v[:-len(unit)]) * f)
    return 0
m, x = sys.stdin.read().split()
print(us(m), us(x))')
  # Failed, errored and timed-out requests, and 4xx/5xx answers (like wrk's errors):
  # "requests: N total, N started, N done, N succeeded, F failed, E errored, T timeout"
  # "status codes: A 2xx, B 3xx, C 4xx, D 5xx"
  errors=$(awk '/^requests:/ {e += $10 + $12 + $14} /^status codes:/ {e += $7 + $9} END {print e + 0}' <<<"$out")
  echo "$scenario $target rps=$rps p50=$mean p99=$max errors=${errors:-0} $(cpu_per_request "$before" "$(cpu_ticks "$target")" "${answered:-0}")" \
    | tee -a "$results"
}

# Full handshakes, one connection at a time (wrk resumes sessions, so its
# Connection: close rows measure resumed TLS 1.3 handshakes).
run_s_time() { # scenario target port
  local scenario=$1 target=$2 port=$3 out count secs
  out=$(openssl s_time -connect "127.0.0.1:$port" -new -time "${DURATION%s}" -www "$page" 2>&1)
  count=$(sed -n 's/^\([0-9]*\) connections in [0-9.]*s;.*/\1/p' <<<"$out" | head -1)
  secs=$(sed -n 's/^[0-9]* connections in \([0-9]*\) real seconds.*/\1/p' <<<"$out" | head -1)
  echo "$scenario $target rps=$(python3 -c "print(round(${count:-0} / max(${secs:-1}, 1), 1))") errors=0" \
    | tee -a "$results"
}

# Largest resident set of membergate while a command runs: the kernel's
# high-water mark (VmHWM), reset first (clear_refs 5). Sampling VmRSS from a
# shell loop instead forked a process ten times a second during membergate's
# rows only, which cost it 2-9% of its throughput in those rows.
peak_rss_during() {
  echo 5 >"/proc/$mg_pid/clear_refs"
  "$@"
  awk '/^VmHWM/ {print $2}' "/proc/$mg_pid/status"
}
run_injected() { # scenario target url [wrk args...]
  local scenario=$1 target=$2 url=$3; shift 3
  if [ "$target" = membergate ]; then
    local rss line
    rss=$(peak_rss_during run_wrk "$scenario" "$target" "$url" "$@" | tail -1)
    # run_wrk appended its line; add the peak RSS to it.
    line=$(tail -1 "$results")
    sed -i '$d' "$results"
    echo "$line rss_kb=$rss" | tee -a "$results"
  else
    run_wrk "$scenario" "$target" "$url" "$@"
  fi
}
# The nginx and membergate rows of a scenario run back to back, in an order
# that alternates by round: this host's speed drifts by tens of percent over
# minutes, and a drift then falls on both alike. The report's paired ratio is
# the median of the per-round ratios, which that drift cancels out of.
pair() { # runner scenario nginx-target membergate-target [args for both...]
  local runner=$1 scenario=$2 ngx_target=$3 mg_target=$4; shift 4
  if ((round % 2)); then
    "$runner" "$scenario" nginx "$ngx_target" "$@"
    "$runner" "$scenario" membergate "$mg_target" "$@"
  else
    "$runner" "$scenario" membergate "$mg_target" "$@"
    "$runner" "$scenario" nginx "$ngx_target" "$@"
  fi
}
# ONLY=REGEX runs the scenarios whose names match it (ONLY=https-h2).
want() { [[ "$1" =~ ${ONLY:-.} ]]; }
for round in $(seq 1 "$ROUNDS"); do
  echo "--- round $round of $ROUNDS" >&2
  if want plain-http; then
    run_wrk plain-http direct "http://127.0.0.1:$ORIGIN$page"
    run_wrk plain-http floor "http://127.0.0.1:$FLOOR_PLAIN$page"
    pair run_wrk plain-http "http://127.0.0.1:$NGX_PLAIN$page" "http://127.0.0.1:$MG_PLAIN$page"
  fi
  want members-only-with-session &&
    run_wrk members-only-with-session membergate "http://127.0.0.1:$MG_PLAIN/members$page" \
      -H "Cookie: theme=dark; membergate=$session"
  if want injected-20k; then
    # Both get the session cookie: the same request bytes; nginx ignores it.
    pair run_injected injected-20k "http://127.0.0.1:$NGX_PLAIN/inject$page" \
      "http://127.0.0.1:$MG_PLAIN/inject$page" -H "Cookie: membergate=$session"
    run_wrk injected-20k floor "http://127.0.0.1:$FLOOR_INJECT/inject$page" -H "Cookie: membergate=$session"
  fi
  want injected-1mb &&
    pair run_injected injected-1mb "http://127.0.0.1:$NGX_PLAIN/inject/page-1mb.html" \
      "http://127.0.0.1:$MG_PLAIN/inject/page-1mb.html" -H "Cookie: membergate=$session"
  want https-h1-keepalive &&
    pair run_wrk https-h1-keepalive "https://localhost:$NGX_TLS$page" "https://localhost:$MG_TLS$page"
  want https-h2 &&
    pair run_h2load https-h2 "https://localhost:$NGX_TLS$page" "https://localhost:$MG_TLS$page"
  want tls-resumed-handshake-per-request &&
    pair run_wrk tls-resumed-handshake-per-request "https://localhost:$NGX_TLS$page" \
      "https://localhost:$MG_TLS$page" -H "Connection: close"
  want tls-full-handshake-sequential &&
    pair run_s_time tls-full-handshake-sequential "$NGX_TLS" "$MG_TLS"
done

# --- report ----------------------------------------------------------------------
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
python3 - "$results" "$(date -u +%Y-%m-%d)" "$(nproc)" "$cpu" "$WORKERS" "$CONNS" "$DURATION" "$ROUNDS" <<'PY'
import sys, statistics, collections
path, date, cores, cpu, workers, conns, duration, rounds = sys.argv[1:]
runs = collections.defaultdict(list)
for line in open(path):
    scenario, target, *fields = line.split()
    values = dict(f.split("=") for f in fields)
    runs[(scenario, target)].append({k: float(v or 0) for k, v in values.items()})
def med(scenario, target, key):
    rows = runs.get((scenario, target))
    return statistics.median(r[key] for r in rows) if rows else None
print()
print(f"## {date}: {cores} cores ({cpu}), {workers} worker(s) each, wrk -t1 -c{conns} -d{duration}, "
      f"h2load -c{conns} -m10, {rounds} rounds, medians; paired: the median of per-round ratios, "
      f"each pair run back to back in alternating order")
print()
print("| scenario | membergate req/s | nginx req/s | direct req/s | floor req/s | mg/nginx | mg/nginx paired "
      "| mg/direct | mg/floor | mg p50/p99 µs | nginx p50/p99 µs | CPU µs/req mg / nginx / floor (user+kernel) | errors mg/nginx/floor |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for scenario in dict.fromkeys(s for s, _ in runs):
    mg, ng, di, fl = (med(scenario, t, "rps") for t in ("membergate", "nginx", "direct", "floor"))
    fmt = lambda v: f"{v:,.0f}" if v else "-"
    ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "-"
    lat = lambda t: (f"{med(scenario, t, 'p50'):,.0f} / {med(scenario, t, 'p99'):,.0f}"
                     if (scenario, t) in runs and "p50" in runs[(scenario, t)][0] else "-")
    err = lambda t: f"{med(scenario, t, 'errors'):.0f}" if med(scenario, t, "errors") is not None else "-"
    cpu = lambda t: (f"{med(scenario, t, 'cpu_us'):.1f} ({med(scenario, t, 'user_us'):.1f}+{med(scenario, t, 'sys_us'):.1f})"
                     if (scenario, t) in runs and "cpu_us" in runs[(scenario, t)][0] else "-")
    def paired(scenario):
        a, b = runs.get((scenario, "membergate")), runs.get((scenario, "nginx"))
        if not a or not b or len(a) != len(b) or not all(r["rps"] for r in b):
            return "-"
        return f"{statistics.median(x['rps'] / y['rps'] for x, y in zip(a, b)):.2f}x"
    print(f"| {scenario} | {fmt(mg)} | {fmt(ng)} | {fmt(di)} | {fmt(fl)} | {ratio(mg, ng)} | {paired(scenario)} "
          f"| {ratio(mg, di)} | {ratio(mg, fl)} "
          f"| {lat('membergate')} | {lat('nginx')} | {cpu('membergate')} / {cpu('nginx')} / {cpu('floor')} "
          f"| {err('membergate')}/{err('nginx')}/{err('floor')} |")
print()
public, member = med("plain-http", "membergate", "rps"), med("members-only-with-session", "membergate", "rps")
if public and member:
    print(f"Members-only page with a cached session vs the public page, both through membergate: "
          f"{member / public:.3f}x.")
    print()
rss = {s: med(s, "membergate", "rss_kb") for s in ("injected-20k", "injected-1mb")}
if all(rss.values()):
    print(f"membergate peak RSS while injecting: 20 KB pages {rss['injected-20k'] / 1024:.1f} MiB, "
          f"1 MB pages {rss['injected-1mb'] / 1024:.1f} MiB ({int(conns)} connections).")
    print()
print("h2load reports no percentiles: its rows show mean / max instead of p50 / p99.")
PY
