#!/usr/bin/env bash
# Soak run: mixed traffic at a fixed rate against the real gateway on loopback,
# reporting errors, p99 latency and the gateway's RSS at start and end (the
# session and token caches are bounded, so memory must level off).
#
#   scripts/soak.sh                      # 10 minutes at 800 requests/s
#   DURATION=60s RATE=400 scripts/soak.sh
#   MEMBERGATE_BIN=target/release/membergate scripts/soak.sh
#
# The mix, per connection in turn: the public home page, a members-only page
# with a session (widget injected, identified), a knowledge-base article, a
# login form POST with a wrong password (the rate limiter answers 401/429),
# and a token API mint. The login POSTs hash a password (argon2id, about
# 20-50 ms of CPU each), so they set the p99. Not part of the test suite.
set -euo pipefail

DURATION=${DURATION:-600s}
RATE=${RATE:-800}
CONNS=${CONNS:-16}
here=$(cd "$(dirname "$0")/.." && pwd)

command -v wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
if [ -z "${MEMBERGATE_BIN:-}" ]; then
  (cd "$here" && cargo build --release --quiet)
  MEMBERGATE_BIN="$here/target/release/membergate"
fi

work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
PORT=$(free_port); ADMIN=$(free_port)
API_KEY="soak-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
API_HASH=$(printf %s "$API_KEY" | sha256sum | cut -d' ' -f1)

cat >"$work/membergate.toml" <<TOML
[server]
workers = 1
https_listen = ""
http_listen = "127.0.0.1:$PORT"
http_mode = "serve"
[admin]
listen = "127.0.0.1:$ADMIN"
[log]
level = "warn"
access_log = false
[members]
database = "$work/members.db"
secret_file = "$work/secret"
public_url = "http://127.0.0.1:$PORT"
cookie_name = "membergate"
cookie_secure = false
require_verification = false
max_attempts_per_ip = 600
max_attempts_per_account = 600
[mail]
outbox_dir = "$work/outbox"
[identification]
  [[identification.api_keys]]
  name = "soak"
  key_sha256 = "$API_HASH"
  scopes = ["create", "verify"]
[[sites]]
name = "soak"
hosts = ["127.0.0.1"]
  [[sites.rules]]
  path = "/members"
  policy = "members"
  [sites.chat]
  provider = "builtin"
  widget_url = "/assets/chat-widget.js"
  [[sites.routes]]
  path = "/"
  upstream = "dir:$here/examples/site"
TOML
echo "soak-password-1" | "$MEMBERGATE_BIN" member --config "$work/membergate.toml" add soak@example.com >/dev/null
"$MEMBERGATE_BIN" serve --config "$work/membergate.toml" >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

mg="http://127.0.0.1:$PORT"
csrf=$(curl -s -c "$work/jar" "$mg/_membergate/login" | sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p')
curl -s -o /dev/null -b "$work/jar" -c "$work/jar" -H "Origin: $mg" \
  --data-urlencode "csrf=$csrf" --data-urlencode "email=soak@example.com" \
  --data-urlencode "password=soak-password-1" "$mg/_membergate/login"
session=$(awk '$6 == "membergate" {print $7}' "$work/jar")
csrf_cookie=$(awk '$6 == "membergate-csrf" {print $7}' "$work/jar")
login_csrf=$(curl -s -b "membergate-csrf=$csrf_cookie" "$mg/_membergate/login" | sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p')
[ -n "$session" ] || { echo "login failed" >&2; exit 1; }

# Each connection sends one request every CONNS*1000/RATE ms: a fixed rate.
delay_ms=$(python3 -c "print(max(1, round($CONNS * 1000 / $RATE)))")
cat >"$work/mix.lua" <<LUA
local session, api_key = "$session", "$API_KEY"
local csrf_cookie, login_csrf = "$csrf_cookie", "$login_csrf"
local n = 0
local statuses = {}
request = function()
  n = n + 1
  local kind = n % 5
  if kind == 0 then
    return wrk.format("GET", "/", {})
  elseif kind == 1 then
    return wrk.format("GET", "/members/", {["Cookie"] = "membergate=" .. session})
  elseif kind == 2 then
    return wrk.format("GET", "/kb/getting-started.html", {})
  elseif kind == 3 then
    return wrk.format("POST", "/_membergate/login", {
      ["Cookie"] = "membergate-csrf=" .. csrf_cookie,
      ["Origin"] = "http://127.0.0.1:$PORT",
      ["Content-Type"] = "application/x-www-form-urlencoded"},
      "csrf=" .. login_csrf .. "&email=soak%40example.com&password=wrong-password-" .. n)
  else
    return wrk.format("POST", "/_membergate/api/conversations/v3/visitor-identification/tokens/create", {
      ["Authorization"] = "Bearer " .. api_key, ["Content-Type"] = "application/json"},
      '{"email": "visitor' .. n .. '@example.com", "firstName": "Soak"}')
  end
end
delay = function() return $delay_ms end
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("requests=%d rate=%.0f/s transport_errors=%d p50_us=%d p99_us=%d max_us=%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6), errors,
    latency:percentile(50), latency:percentile(99), latency.max))
end
LUA

rss() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
start_rss=$(rss)
echo "soak: $DURATION at about $RATE requests/s over $CONNS connections (one request each every ${delay_ms} ms)" >&2
# wrk counts responses other than 2xx/3xx as errors; the login POSTs answer
# 401 or 429 on purpose, so count statuses from the gateway's metrics instead.
wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s "$work/mix.lua" "$mg/" | grep '^requests='
end_rss=$(rss)
metrics=$(curl -s "http://127.0.0.1:$ADMIN/metrics")
server_errors=$(awk '/^membergate_requests_total\{.*status="5[0-9][0-9]"/ {s += $2} END {print s + 0}' <<<"$metrics")
echo "rss_start_kib=$start_rss rss_end_kib=$end_rss server_5xx=$server_errors"
awk '/^membergate_(logins|identification_tokens|session_cache_entries)/ {print "  " $0}' <<<"$metrics"
kill -0 "$pid" || { echo "the gateway died" >&2; exit 1; }
