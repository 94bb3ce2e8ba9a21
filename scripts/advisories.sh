#!/usr/bin/env bash
# Checks Cargo.lock (the gateway's and the fuzzers') against the RustSec
# advisory database, failing on any advisory.
#
#   scripts/advisories.sh                 # the database from its Git host
#   scripts/advisories.sh /path/to/clone  # a local clone of rustsec/advisory-db
#
# The second form is for machines that cannot reach the database's host but
# have a copy of it: cargo-deny always updates its database from the
# `origin` remote of its own clone, so this points that remote at the copy.
# .ci/run uses the first form where the host is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deny >/dev/null 2>&1 || cargo install cargo-deny --locked --version 0.20.2

config=deny.toml
if [ $# -gt 0 ]; then
  source_db=$(cd "$1" && pwd)
  git -C "$source_db" rev-parse --verify -q HEAD >/dev/null \
    || { echo "$source_db is not a Git clone of the advisory database" >&2; exit 2; }
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # The directory name cargo-deny 0.20 derives from the default database URL.
  git clone -q "$source_db" "$work/db/advisory-db-3157b0e258782691"
  git -C "$work/db/advisory-db-3157b0e258782691" checkout -q -B main
  { cat deny.toml; printf '\n[advisories]\ndb-path = "%s"\n' "$work/db"; } >"$work/deny.toml"
  config="$work/deny.toml"
  echo "advisory database: $(git -C "$source_db" log -1 --format='%h of %cs')"
fi
for manifest in Cargo.toml fuzz/Cargo.toml; do
  echo "== $manifest"
  cargo deny --log-level warn --manifest-path "$manifest" --config "$config" check advisories
done
