#!/usr/bin/env bash
# Hostile traffic, in one run on one machine: the release server on PostgreSQL, a
# normal client paying over 200 accounts (loadgen, 4 at once), and beside it each
# attack of issue 10 in turn. For each: requests the attack sent, the server's peak
# RSS, the normal client's payments/s and p99, and its failures (requests it gave up
# on, plus the verifier's violations: lost or duplicated acknowledged payments).
# Prints one markdown table; a first row runs the normal client alone as the baseline.
#
#   bash bench/hostile.sh
#
# Environment: LEDGER_BENCH_DATABASE_URL (admin URL, default
# postgres://postgres@127.0.0.1:5432/postgres), BENCH_SECONDS per attack (default 15).
# LEDGER_BENCH_SERVER_BIN (a server binary to run instead of this build). Needs wrk and
# curl. Creates and drops its own database.
set -euo pipefail
cd "$(dirname "$0")/.."

ADMIN_URL=${LEDGER_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
RUN_SECONDS=${BENCH_SECONDS:-15}
PORT=${BENCH_PORT:-18090}
TARGET=${CARGO_TARGET_DIR:-target}
URL="http://127.0.0.1:$PORT"

cargo build --release -p payments-ledger -p loadgen >&2
# LEDGER_BENCH_SERVER_BIN runs another build (an earlier one, to compare).
SERVER_BIN=${LEDGER_BENCH_SERVER_BIN:-"$TARGET/release/payments-ledger"}
LOADGEN_BIN="$TARGET/release/loadgen"
DB="ledger_bench_hostile_$$"
DB_URL="${ADMIN_URL%/*}/$DB"
WORK=$(mktemp -d)
SERVER_PID=""
LOCK_PID=""

cleanup() {
  [ -n "$LOCK_PID" ] && kill "$LOCK_PID" 2>/dev/null
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

psql -q "$ADMIN_URL" -c "CREATE DATABASE $DB" >/dev/null
KEY=$(DATABASE_URL="$DB_URL" "$SERVER_BIN" client create normal | tail -n 1)
ATTACKER_KEY=$(DATABASE_URL="$DB_URL" "$SERVER_BIN" client create attacker | tail -n 1)
DATABASE_URL="$DB_URL" LISTEN_ADDR="127.0.0.1:$PORT" RUST_LOG=error "$SERVER_BIN" serve >/dev/null 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
  curl -fsS "$URL/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

graphql() { # KEY QUERY -> response body
  curl -fsS "$URL/graphql" -H 'content-type: application/json' ${1:+-H "authorization: Bearer $1"} \
    --data "$(python3 -c 'import json,sys; print(json.dumps({"query": sys.argv[1]}))' "$2")"
}

# The attacker's own accounts, and one of the normal client's to lock.
ATTACKER_ACCOUNT=$(graphql "$ATTACKER_KEY" 'mutation { createAccount(input: { idempotencyKey: "a1", currency: "USD", balanceRule: UNBOUNDED }) { account { id } } }' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["createAccount"]["account"]["id"])')
LOCKED_ACCOUNT=$(graphql "$KEY" 'mutation { createAccount(input: { idempotencyKey: "locked", currency: "USD", balanceRule: UNBOUNDED }) { account { id } } }' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["createAccount"]["account"]["id"])')

# wrk scripts: one body per attack (some vary per request).
wrk_script() { # NAME LUA
  printf '%s\n' "$2" >"$WORK/$1.lua"
}
body_lua() { # BODY_JSON [KEY] -> lua sending that body
  printf 'wrk.method = "POST"\nwrk.headers["content-type"] = "application/json"\n'
  if [ -n "${2:-}" ]; then
    printf 'wrk.headers["authorization"] = "Bearer %s"\n' "$2"
  fi
  printf 'wrk.body = %s\n' "$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1")"
}
aliases() { # COUNT FIELD -> a query of COUNT aliases of FIELD
  python3 -c 'import sys; n=int(sys.argv[1]); print("{" + " ".join("a%d: %s" % (i, sys.argv[2]) for i in range(n)) + " }")' "$1" "$2"
}
as_body() { python3 -c 'import json,sys; print(json.dumps({"query": sys.argv[1]}))' "$1"; }

wrk_script introspection "$(body_lua "$(as_body "$(aliases 290 '__schema { types { name fields { name } } }')")")"
wrk_script introspection_once "$(body_lua "$(as_body '{ __schema { types { name fields { name args { name } type { name } } } } }')")"
wrk_script aliased_feeds "$(body_lua "$(as_body "$(aliases 300 "payments(accountId: \"$ATTACKER_ACCOUNT\", first: 1) { nodes { id } }")")" "$ATTACKER_KEY")"
wrk_script strong_balances "$(body_lua "$(as_body "$(aliases 300 "account(id: \"$ATTACKER_ACCOUNT\") { balance(consistency: STRONG) { amount } }")")" "$ATTACKER_KEY")"
wrk_script distinct_documents "$(printf '%s\n' \
  'wrk.method = "POST"' \
  'wrk.headers["content-type"] = "application/json"' \
  "wrk.headers[\"authorization\"] = \"Bearer $ATTACKER_KEY\"" \
  'local filler = string.rep("x", 16000)' \
  'request = function()' \
  '  return wrk.format(nil, nil, nil, string.format("{\"query\": \"{ __typename } # %d %s\"}", math.random(1, 1000000000), filler))' \
  'end')"
wrk_script bogus_keys "$(printf '%s\n' \
  'wrk.method = "POST"' \
  'wrk.headers["content-type"] = "application/json"' \
  'wrk.body = "{\"query\": \"{ accounts { nodes { id } } }\"}"' \
  'request = function()' \
  '  wrk.headers["authorization"] = string.format("Bearer lk_bogus%034d", math.random(1, 1000000000))' \
  '  return wrk.format()' \
  'end')"
wrk_script made_up_methods "$(printf '%s\n' \
  'request = function()' \
  '  return wrk.format(string.format("BOGUS%d", math.random(1, 1000000)), "/graphql")' \
  'end')"

# shellcheck source=bench/lib.sh
. bench/lib.sh

# run ATTACK_NAME ATTACK_COMMAND...: the normal client for RUN_SECONDS while the attack
# runs, sampling RSS; prints one table row.
run() {
  local name=$1
  shift
  local out="$WORK/loadgen.json" attack_out="$WORK/attack.out" peak attack_pid=""
  if [ $# -gt 0 ]; then
    "$@" >"$attack_out" 2>&1 &
    attack_pid=$!
    sleep 1
  fi
  "$LOADGEN_BIN" --url "$URL" --api-key "$KEY" --concurrency 4 --duration "${RUN_SECONDS}s" \
    --accounts 200 --no-poller --quiet --json >"$out" &
  peak=$(peak_rss_while $!)
  if [ -n "$attack_pid" ]; then
    kill "$attack_pid" 2>/dev/null || true
    wait "$attack_pid" 2>/dev/null || true
  fi
  local sent
  sent=$( { awk '/requests in/ { print $1 }' "$attack_out" 2>/dev/null || true; } | head -n 1)
  python3 - "$out" "$name" "${sent:--}" "$peak" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
failures = report["gave_up"] + len(report["violations"])
print("| %s | %s | %s | %.0f | %.2f | %d |" % (
    sys.argv[2], sys.argv[3], sys.argv[4], report["payments_per_second"],
    report["payment_latency_ms"]["p99"], failures))
PY
}

wrk_for() { # SCRIPT CONNECTIONS
  wrk -t 1 -c "$2" -d "$((RUN_SECONDS + 2))s" -s "$WORK/$1.lua" "$URL/graphql"
}

# Holds a row lock on one of the normal client's accounts, as a psql session would.
hold_lock() {
  psql -q "$DB_URL" -c "BEGIN" -c "SELECT id FROM accounts WHERE id = '${LOCKED_ACCOUNT#acc_}' FOR UPDATE" \
    -c "SELECT pg_sleep($((RUN_SECONDS + 3)))" -c "ROLLBACK" >/dev/null
}
# Pays from the locked account over and over: each answers RETRY_LATER after the lock
# timeout, while the normal client's other payments go on.
pay_locked() {
  hold_lock &
  LOCK_PID=$!
  sleep 0.5
  local index=0 target
  target=$(graphql "$KEY" 'mutation { createAccount(input: { idempotencyKey: "locked-to", currency: "USD", balanceRule: UNBOUNDED }) { account { id } } }' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["createAccount"]["account"]["id"])')
  while kill -0 "$LOCK_PID" 2>/dev/null; do
    index=$((index + 1))
    graphql "$KEY" "mutation { createPayment(input: { idempotencyKey: \"locked-$index\", fromAccountId: \"$LOCKED_ACCOUNT\", toAccountId: \"$target\", amount: \"1.00\", currency: \"USD\" }) { payment { id } } }" >/dev/null || true
  done
  echo "$index requests in"
}

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); PostgreSQL $(psql -Atc 'SHOW server_version' "$ADMIN_URL"); ${RUN_SECONDS} s per attack; the normal client pays with 4 at once over 200 accounts"
echo
echo "| attack | attack requests | server peak RSS MiB | normal payments/s | normal payment p99 ms | normal client failures |"
echo "|---|---:|---:|---:|---:|---:|"
run "none (baseline)"
run "one account row-locked (payments on it, 1 at a time)" pay_locked
run "290 aliases of __schema, no key (64 connections)" wrk_for introspection 64
run "one large introspection, no key (64 connections)" wrk_for introspection_once 64
run "300 aliased payments(accountId:) feeds (64 connections)" wrk_for aliased_feeds 64
run "300 aliased STRONG balances (64 connections)" wrk_for strong_balances 64
run "distinct 16 KB documents (16 connections)" wrk_for distinct_documents 16
run "made-up API keys (64 connections)" wrk_for bogus_keys 64
run "made-up HTTP methods (16 connections)" wrk_for made_up_methods 16
echo
echo "server RSS after all attacks: $(rss_mib) MiB; /metrics is $(curl -fsS "$URL/metrics" | wc -c) bytes"
