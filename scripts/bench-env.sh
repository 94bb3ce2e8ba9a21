#!/usr/bin/env bash
# The bench's world, sourced by scripts/bench.sh, scripts/instructions.sh and
# scripts/ab.sh:
# an nginx origin serving the bench pages, nginx as the peer proxy,
# membergate and the floor (plain and injecting) on loopback, a member
# logged in through the real form. It sets the ports (ORIGIN, NGX_PLAIN,
# NGX_TLS, MG_PLAIN, MG_TLS, MG_ADMIN, FLOOR_PLAIN, FLOOR_INJECT), the pids,
# $work (removed on exit with everything started here), $session (the
# member's cookie value) and $page, and defines membergate_config_on (a
# second membergate's configuration). Reads WORKERS, MEMBERGATE_BIN and
# FLOOR_BIN; installs nginx, wrk, h2load and openssl when missing.

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need wrk || ! need h2load || ! need openssl; then
  echo "installing nginx, wrk, nghttp2-client, openssl" >&2
  apt-get update -qq && apt-get install -y -qq nginx-light wrk nghttp2-client openssl >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [ -z "${MEMBERGATE_BIN:-}" ]; then
  (cd "$here" && cargo build --profile production --quiet)
  MEMBERGATE_BIN="$here/target/production/membergate"
fi
if [ -z "${FLOOR_BIN:-}" ]; then
  (cd "$here" && cargo build --profile production --quiet --example floor-proxy)
  FLOOR_BIN="$here/target/production/examples/floor-proxy"
fi

work=$(mktemp -d)
# nginx workers drop root privileges: let them read the docroot and certificate.
chmod 755 "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() {
  for _ in $(seq 1 100); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  exit 1
}

# --- content and certificate -------------------------------------------------
mkdir -p "$work/www"
python3 - "$work/www" <<'PY'
import sys
root = sys.argv[1]
para = ("<p>The keepers wrote in the logbook every four hours: wind, sea state, visibility, "
        "ships sighted, and the oil burnt by the lamp. This paragraph stands in for an article.</p>\n")
def page(size):
    head = ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<title>Benchmark page</title><link rel="stylesheet" href="/s.css"></head>\n<body>\n')
    tail = "</body></html>\n"
    body = para * ((size - len(head) - len(tail)) // len(para) + 1)
    return (head + body)[: size - len(tail)] + tail
import os
open(f"{root}/page.html", "w").write(page(20 * 1024))
os.makedirs(f"{root}/members", exist_ok=True)
open(f"{root}/members/page.html", "w").write(page(20 * 1024))
os.makedirs(f"{root}/inject", exist_ok=True)
open(f"{root}/inject/page.html", "w").write(page(20 * 1024))
open(f"{root}/inject/page-1mb.html", "w").write(page(1024 * 1024))
open(f"{root}/page-1mb.html", "w").write(page(1024 * 1024))
PY
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$work/key.pem" -out "$work/cert.pem" -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost" 2>/dev/null

ORIGIN=$(free_port); NGX_PLAIN=$(free_port); NGX_TLS=$(free_port)
MG_PLAIN=$(free_port); MG_TLS=$(free_port); MG_ADMIN=$(free_port)
FLOOR_PLAIN=$(free_port); FLOOR_INJECT=$(free_port)

# --- nginx: origin and peer proxy ----------------------------------------------
cat >"$work/origin.conf" <<NGX
worker_processes 1;
daemon off;
pid $work/origin.pid;
error_log $work/origin-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  sendfile on;
  server {
    listen 127.0.0.1:$ORIGIN;
    root $work/www;
    default_type text/html;
  }
}
NGX
cat >"$work/proxy.conf" <<NGX
worker_processes $WORKERS;
daemon off;
pid $work/proxy.pid;
error_log $work/proxy-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 128; }
  ssl_certificate $work/cert.pem;
  ssl_certificate_key $work/key.pem;
  # Debian's nginx 1.22 leaves TLS 1.3 out of its defaults; without this line it
  # would resume TLS 1.2 sessions (no key exchange at all) against our TLS 1.3.
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:SSL:10m;
  ssl_session_tickets on;
  server {
    listen 127.0.0.1:$NGX_PLAIN;
    listen 127.0.0.1:$NGX_TLS ssl http2;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
    }
    location /inject/ {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Accept-Encoding "";
      sub_filter '</head>' '<script>window.hsConversationsSettings={identificationEmail:"a@example.com",identificationToken:"x"};</script></head>';
      sub_filter_once on;
    }
  }
}
NGX
"$NGINX" -c "$work/origin.conf" -p "$work" & pids+=($!)
origin_pid=$!
"$NGINX" -c "$work/proxy.conf" -p "$work" & pids+=($!)
proxy_pid=$!

# --- membergate ----------------------------------------------------------------
cat >"$work/membergate.toml" <<TOML
[server]
workers = $WORKERS
https_listen = "127.0.0.1:$MG_TLS"
http_listen = "127.0.0.1:$MG_PLAIN"
http_mode = "serve"
[limits]
# Every request comes from one address (the load generator), 320 at once
# over HTTP/2 (h2load -c32 -m10): no per-address cap, as nginx has none.
max_connections_per_ip = 0
[admin]
listen = "127.0.0.1:$MG_ADMIN"
[log]
level = "warn"
access_log = false
[tls]
dev_certificate = false
session_tickets = true
[[tls.certificates]]
cert_file = "$work/cert.pem"
key_file = "$work/key.pem"
hosts = ["localhost"]
[members]
database = "$work/members.db"
secret_file = "$work/membergate.secret"
public_url = "http://127.0.0.1:$MG_PLAIN"
cookie_name = "membergate"
cookie_secure = false
require_verification = false
[[sites]]
name = "bench"
hosts = ["localhost", "127.0.0.1"]
  [[sites.routes]]
  path = "/"
  upstream = "http://127.0.0.1:$ORIGIN"
  [[sites.rules]]
  path = "/members/"
  policy = "members"
  # The widget only under /inject/, for members (identified, token cached).
  [sites.chat]
  provider = "builtin"
  widget_url = "/chat.js"
  show = "never"
    [[sites.chat.rules]]
    path = "/inject"
    show = "members"
TOML
echo "bench-password-1" | "$MEMBERGATE_BIN" member --config "$work/membergate.toml" \
  add bench@example.com --first-name Bench >/dev/null
"$MEMBERGATE_BIN" serve --config "$work/membergate.toml" >"$work/membergate.out" 2>"$work/membergate.err" & pids+=($!)
# The same configuration (database, secret, origin) for a second membergate
# beside the first: plain HTTP on PORT, TLS and admin on free ports.
membergate_config_on() { # PORT OUT
  sed -e "s/127.0.0.1:$MG_PLAIN/127.0.0.1:$1/g" \
    -e "s/127.0.0.1:$MG_TLS/127.0.0.1:$(free_port)/" \
    -e "s/127.0.0.1:$MG_ADMIN/127.0.0.1:$(free_port)/" \
    "$work/membergate.toml" >"$2"
}
mg_pid=$!
"$FLOOR_BIN" "127.0.0.1:$FLOOR_PLAIN" "127.0.0.1:$ORIGIN" spawn & pids+=($!)
floor_plain_pid=$!
"$FLOOR_BIN" "127.0.0.1:$FLOOR_INJECT" "127.0.0.1:$ORIGIN" spawn inject & pids+=($!)
floor_inject_pid=$!
for port in $ORIGIN $NGX_PLAIN $NGX_TLS $MG_PLAIN $MG_TLS $FLOOR_PLAIN $FLOOR_INJECT; do wait_port "$port"; done


page=/page.html
check=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$MG_PLAIN$page")
[ "$check" = 200 ] || { echo "membergate answered $check for $page" >&2; exit 1; }

# Log in through the real form (CSRF token from the page, our own Origin) and
# keep the session cookie for the members-only rows.
mg="http://127.0.0.1:$MG_PLAIN"
csrf=$(curl -s -c "$work/jar" "$mg/_membergate/login" | sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p')
curl -s -o /dev/null -b "$work/jar" -c "$work/jar" -H "Origin: $mg" \
  --data-urlencode "csrf=$csrf" --data-urlencode "return_to=/" \
  --data-urlencode "email=bench@example.com" --data-urlencode "password=bench-password-1" \
  "$mg/_membergate/login"
session=$(awk '$6 == "membergate" {print $7}' "$work/jar")
[ -n "$session" ] || { echo "login failed: no session cookie" >&2; exit 1; }
check=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: membergate=$session" "$mg/members$page")
[ "$check" = 200 ] || { echo "membergate answered $check for /members$page with a session" >&2; exit 1; }
check=$(curl -s -o /dev/null -w '%{http_code}' "$mg/members$page")
[ "$check" = 302 ] || { echo "membergate answered $check for /members$page without a session" >&2; exit 1; }
# grep reads all of the page: grep -q would stop early, curl would die of
# SIGPIPE, and pipefail would call the check failed.
curl -s -H "Cookie: membergate=$session" "$mg/inject$page" | grep identificationToken >/dev/null \
  || { echo "membergate did not inject the widget into /inject$page" >&2; exit 1; }
curl -s "http://127.0.0.1:$NGX_PLAIN/inject$page" | grep hsConversationsSettings >/dev/null \
  || { echo "nginx sub_filter did not inject into /inject$page" >&2; exit 1; }
curl -s "http://127.0.0.1:$FLOOR_INJECT/inject$page" | grep hsConversationsSettings >/dev/null \
  || { echo "the floor proxy did not inject into /inject$page" >&2; exit 1; }

