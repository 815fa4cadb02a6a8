#!/usr/bin/env bash
# Write benchmark, in one run on one machine: the release server on PostgreSQL (+ Redis)
# driven by loadgen at 1, 16 and 64 concurrent clients, next to pgbench's built-in
# TPC-B-like transaction on the same PostgreSQL at the same client counts, plus a run
# with half of all payments on one hot account, and a row at 16 clients with group commit
# off (one transaction per payment, 16 at once) as its baseline, and a row of holds each
# captured at once (hold+capture pairs: two writes each). Prints one markdown table.
#
#   bash bench/writes.sh
#   BASELINE_BIN=/path/to/older/payments-ledger bash bench/writes.sh
#
# With BASELINE_BIN (a server binary built from an earlier commit), every row is run
# for that build and for this one, alternating, each on its own database, and a last
# column gives this build's payments/s as a ratio of the baseline's: a before/after
# comparison measured in one run on one machine.
#
# Environment: LEDGER_BENCH_DATABASE_URL (admin URL, default
# postgres://postgres@127.0.0.1:5432/postgres), LEDGER_BENCH_REDIS_URL (default
# redis://127.0.0.1:6379), BENCH_SECONDS per run (default 15), BENCH_CLIENTS (default
# "1 16 64"), PGBENCH_SCALE (default 16). Creates and drops its own databases.
set -euo pipefail
cd "$(dirname "$0")/.."

ADMIN_URL=${LEDGER_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS_URL=${LEDGER_BENCH_REDIS_URL:-redis://127.0.0.1:6379}
RUN_SECONDS=${BENCH_SECONDS:-15}
CLIENTS=${BENCH_CLIENTS:-"1 16 64"}
SCALE=${PGBENCH_SCALE:-16}
PORT=${BENCH_PORT:-18080}
TARGET=${CARGO_TARGET_DIR:-target}

cargo build --release -p payments-ledger -p loadgen >&2
SERVER_BIN="$TARGET/release/payments-ledger"
LOADGEN_BIN="$TARGET/release/loadgen"

BASELINE_BIN=${BASELINE_BIN:-}
LEDGER_DB="ledger_bench_writes_$$"
BASELINE_DB="ledger_bench_baseline_$$"
PGBENCH_DB="ledger_bench_pgbench_$$"
BASE_URL="${ADMIN_URL%/*}"
LEDGER_URL="$BASE_URL/$LEDGER_DB"
BASELINE_URL="$BASE_URL/$BASELINE_DB"
PGBENCH_URL="$BASE_URL/$PGBENCH_DB"
SERVER_PID=""

cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $LEDGER_DB WITH (FORCE)" -c "DROP DATABASE IF EXISTS $PGBENCH_DB WITH (FORCE)" -c "DROP DATABASE IF EXISTS $BASELINE_DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

psql -q "$ADMIN_URL" -c "CREATE DATABASE $LEDGER_DB" -c "CREATE DATABASE $PGBENCH_DB" >/dev/null
echo "pgbench: initializing scale $SCALE" >&2
pgbench -i -q -s "$SCALE" "$PGBENCH_URL" >/dev/null 2>&1

declare -A BIN URL KEYS
BUILDS="this"
BIN[this]=$SERVER_BIN
URL[this]=$LEDGER_URL
if [ -n "$BASELINE_BIN" ]; then
  BUILDS="baseline this"
  BIN[baseline]=$BASELINE_BIN
  URL[baseline]=$BASELINE_URL
  psql -q "$ADMIN_URL" -c "CREATE DATABASE $BASELINE_DB" >/dev/null
fi
for build in $BUILDS; do
  KEYS[$build]=$(DATABASE_URL="${URL[$build]}" "${BIN[$build]}" client create bench | tail -n 1)
done

# start_server BUILD ISOLATION [WRITE_BATCH_MAX WRITE_BATCHES_IN_FLIGHT]
start_server() {
  KEY=${KEYS[$1]}
  WRITE_BATCH_MAX="${3:-64}" WRITE_BATCHES_IN_FLIGHT="${4:-1}" DATABASE_URL="${URL[$1]}" REDIS_URL="$REDIS_URL" LISTEN_ADDR="127.0.0.1:$PORT" \
    CACHE_NAMESPACE="ledger-bench-$$-$1" DATABASE_MAX_CONNECTIONS=32 RUST_LOG=warn \
    POSTGRES_WRITE_ISOLATION="$2" "${BIN[$1]}" serve >/dev/null 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  SERVER_PID=""
}

# shellcheck source=bench/lib.sh
. bench/lib.sh

# Runs loadgen (with any further flags) while sampling the server's RSS; prints
# "payments/s p99_ms max_rss_mib violations".
run_loadgen() {
  local clients=$1 hot=$2
  shift 2
  local out peak
  out=$(mktemp)
  "$LOADGEN_BIN" --url "http://127.0.0.1:$PORT" --api-key "$KEY" --concurrency "$clients" \
    --duration "${RUN_SECONDS}s" --accounts 200 --hot-share "$hot" --no-poller --quiet --json "$@" >"$out" &
  peak=$(peak_rss_while $!)
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%.1f %.2f %s %d" % (r["payments_per_second"], r["payment_latency_ms"]["p99"], sys.argv[2], len(r["violations"])))' "$out" "$peak"
  rm -f "$out"
}

run_pgbench() {
  local clients=$1 threads=$1
  [ "$threads" -gt 2 ] && threads=2
  pgbench -n -c "$clients" -j "$threads" -T "$RUN_SECONDS" "$PGBENCH_URL" 2>/dev/null \
    | awk '/^tps = / { printf "%.1f", $3; exit }'
}

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); PostgreSQL $(psql -Atc 'SHOW server_version' "$ADMIN_URL"); ${RUN_SECONDS} s per run; pgbench scale $SCALE; loadgen over 200 accounts"
echo
echo "| build | isolation | group commit | clients | hot share | payments/s | p99 ms | server RSS MiB (peak) | pgbench TPC-B tps | payments/s ÷ tps | verifier | ÷ baseline |"
echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"
declare -A TPS
for clients in $CLIENTS 16; do
  [ -n "${TPS[$clients]:-}" ] || TPS[$clients]=$(run_pgbench "$clients")
done
declare -A BASELINE_RATE
row() {
  local build=$1 isolation=$2 grouping=$3 clients=$4 hot=$5 payments p99 rss violations ratio versus="" id
  shift 5
  read -r payments p99 rss violations <<<"$(run_loadgen "$clients" "$hot" "$@")"
  ratio=$(python3 -c "print('%.2f' % ($payments / ${TPS[$clients]}))")
  id="$isolation/$grouping/$clients/$hot"
  if [ "$build" = baseline ]; then
    BASELINE_RATE[$id]=$payments
  elif [ -n "${BASELINE_RATE[$id]:-}" ]; then
    versus=$(python3 -c "print('%.2f' % ($payments / ${BASELINE_RATE[$id]}))")
  fi
  echo "| $build | $isolation | $grouping | $clients | $hot | $payments | $p99 | $rss | ${TPS[$clients]} | $ratio | $([ "$violations" = 0 ] && echo ok || echo "$violations violations") | $versus |"
}
for isolation in serializable read-committed; do
  for clients in $CLIENTS; do
    for build in $BUILDS; do
      start_server "$build" "$isolation"
      row "$build" "$isolation" on "$clients" 0
      stop_server
    done
  done
  for build in $BUILDS; do
    start_server "$build" "$isolation"
    row "$build" "$isolation" on 16 0.5
    stop_server
    # The baseline for group commit itself: one transaction per payment, up to 16 at
    # once (the write path as it was before group commit).
    start_server "$build" "$isolation" 1 16
    row "$build" "$isolation" off 16 0
    stop_server
  done
  # Holds, each captured as soon as it is acknowledged: payments/s counts pairs (a
  # baseline build from before holds cannot run it).
  start_server this "$isolation"
  row this "$isolation" "on, hold+capture pairs" 16 0 --hold-and-capture
  stop_server
done
