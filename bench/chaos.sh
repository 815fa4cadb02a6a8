#!/usr/bin/env bash
# The kill -9 test, repeatable: the release server on PostgreSQL, loadgen paying with
# duplicates and races, holds, captures, voids, expiries and refunds (--lifecycle), atomic
# payment groups (--groups); beside it a second loadgen sending its payments in
# batches of CHAOS_BULK (default 50) with createPaymentBatch (--bulk), with items and
# whole batches resent and batches raced; both logging every acknowledged payment as
# it arrives, and the
# server killed with SIGKILL and restarted KILLS times during the run. Afterwards
# `payments-ledger verify --acknowledged` checks from the database that every
# invariant holds and that every acknowledged key has exactly its payment; loadgen's
# own verdict (its pollers retry through the restarts) is printed too. Exit 1 on any
# violation.
#
#   bash bench/chaos.sh
#
# Environment: LEDGER_BENCH_DATABASE_URL (admin URL, default
# postgres://postgres@127.0.0.1:5432/postgres), CHAOS_SECONDS (default 30), KILLS
# (default 3). Creates and drops its own database.
set -euo pipefail
cd "$(dirname "$0")/.."

ADMIN_URL=${LEDGER_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
RUN_SECONDS=${CHAOS_SECONDS:-30}
KILLS=${KILLS:-3}
PORT=${BENCH_PORT:-18095}
TARGET=${CARGO_TARGET_DIR:-target}

cargo build --release -p payments-ledger -p loadgen >&2
SERVER_BIN="$TARGET/release/payments-ledger"
LOADGEN_BIN="$TARGET/release/loadgen"
DB="ledger_bench_chaos_$$"
DB_URL="${ADMIN_URL%/*}/$DB"
WORK=$(mktemp -d)
SERVER_PID=""

cleanup() {
  [ -n "$SERVER_PID" ] && kill -9 "$SERVER_PID" 2>/dev/null
  psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

start_server() {
  DATABASE_URL="$DB_URL" LISTEN_ADDR="127.0.0.1:$PORT" RUST_LOG=error "$SERVER_BIN" serve >>"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && return
    sleep 0.05
  done
}

psql -q "$ADMIN_URL" -c "CREATE DATABASE $DB" >/dev/null
KEY=$(DATABASE_URL="$DB_URL" "$SERVER_BIN" client create chaos | tail -n 1)
start_server

"$LOADGEN_BIN" --url "http://127.0.0.1:$PORT" --api-key "$KEY" --concurrency 16 \
  --duration "${RUN_SECONDS}s" --accounts 50 --duplicate-rate 0.2 --race-rate 0.05 --lifecycle 0.3 \
  --groups 0.1 \
  --retries 30 --acknowledged-log "$WORK/acknowledged.log" --quiet >"$WORK/loadgen.out" 2>&1 &
LOADGEN_PID=$!
"$LOADGEN_BIN" --url "http://127.0.0.1:$PORT" --api-key "$KEY" --concurrency 2 \
  --bulk "${CHAOS_BULK:-50}" --duration "${RUN_SECONDS}s" --accounts 50 --duplicate-rate 0.2 \
  --race-rate 0.05 --retries 30 --acknowledged-log "$WORK/acknowledged-bulk.log" --quiet \
  >"$WORK/loadgen-bulk.out" 2>&1 &
BULK_PID=$!
for kill in $(seq 1 "$KILLS"); do
  sleep "$((RUN_SECONDS / (KILLS + 1)))"
  kill -9 "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  echo "kill -9 number $kill at $(cat "$WORK"/acknowledged*.log | wc -l) acknowledged payments; restarting" >&2
  start_server
done
LOADGEN_STATUS=0
wait "$LOADGEN_PID" || LOADGEN_STATUS=$?
BULK_STATUS=0
wait "$BULK_PID" || BULK_STATUS=$?
echo "loadgen (exit $LOADGEN_STATUS):"
cat "$WORK/loadgen.out"
echo
echo "loadgen --bulk (exit $BULK_STATUS):"
cat "$WORK/loadgen-bulk.out"
echo
cat "$WORK/acknowledged.log" "$WORK/acknowledged-bulk.log" >"$WORK/acknowledged-all.log"
echo "payments-ledger verify --acknowledged ($(wc -l <"$WORK/acknowledged-all.log") acknowledged payments, $(wc -l <"$WORK/acknowledged-bulk.log") of them in batches):"
DATABASE_URL="$DB_URL" "$SERVER_BIN" verify --acknowledged "$WORK/acknowledged-all.log"
[ "$LOADGEN_STATUS" = 0 ] && [ "$BULK_STATUS" = 0 ]
