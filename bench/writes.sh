#!/usr/bin/env bash
# Write benchmark, in one run on one machine: the release server on PostgreSQL (+ Redis)
# driven at 1, 16 and 64 concurrent clients and at 16 with half of all payments on one hot
# account, next to pgbench's built-in TPC-B-like transaction on the same PostgreSQL at
# the same client counts. Two drivers: loadgen (which verifies every payment it was
# acknowledged) and wrk (a light C client: bench/payments.lua, a new key per request; its
# payments are counted in the database and audited by `payments-ledger verify`). Prints
# one markdown table: payments/s, p50 and p99, the server's peak RSS, the CPU-seconds
# per 1 000 payments of the server and of PostgreSQL (every postgres process, while the
# driver runs; with loadgen this includes its closing checks), pgbench's tps and the
# ratio. Then bulk rows: payments sent 100 and 1 000 at a time with createPaymentBatch
# (loadgen --bulk) from 1 and 4 connections, beside the single-payment rows.
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
# "1 16 64"), BENCH_DRIVERS (default "wrk loadgen"), BENCH_ISOLATIONS (default
# "serializable"; "serializable read-committed" for both), BENCH_EXTRA=1 for two more
# rows per isolation (group commit off; holds each captured at once), BENCH_BULK (batch
# sizes of the bulk rows, default "100 1000"; empty for none), BENCH_BULK_CLIENTS
# (default "1 4"), PGBENCH_SCALE (default 16), BENCH_PARKED_POLLS (default 0: that
# many dashboards watch the paying client during every run, as the built-in one does:
# this build's long-poll, `pollbench dashboards --style long`; the baseline's POST every
# 2 s, `--style old`, as the dashboard did before long polls). Creates and drops its
# own databases.
set -euo pipefail
cd "$(dirname "$0")/.."

ADMIN_URL=${LEDGER_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS_URL=${LEDGER_BENCH_REDIS_URL:-redis://127.0.0.1:6379}
RUN_SECONDS=${BENCH_SECONDS:-15}
CLIENTS=${BENCH_CLIENTS:-"1 16 64"}
DRIVERS=${BENCH_DRIVERS:-"wrk loadgen"}
ISOLATIONS=${BENCH_ISOLATIONS:-serializable}
EXTRA=${BENCH_EXTRA:-0}
BULK=${BENCH_BULK:-"100 1000"}
BULK_CLIENTS=${BENCH_BULK_CLIENTS:-"1 4"}
SCALE=${PGBENCH_SCALE:-16}
PARKED_POLLS=${BENCH_PARKED_POLLS:-0}
PORT=${BENCH_PORT:-18080}
TARGET=${CARGO_TARGET_DIR:-target}

cargo build --release -p payments-ledger -p loadgen >&2
SERVER_BIN="$TARGET/release/payments-ledger"
LOADGEN_BIN="$TARGET/release/loadgen"
POLLBENCH_BIN="$TARGET/release/pollbench"

BASELINE_BIN=${BASELINE_BIN:-}
LEDGER_DB="ledger_bench_writes_$$"
BASELINE_DB="ledger_bench_baseline_$$"
PGBENCH_DB="ledger_bench_pgbench_$$"
BASE_URL="${ADMIN_URL%/*}"
LEDGER_URL="$BASE_URL/$LEDGER_DB"
BASELINE_URL="$BASE_URL/$BASELINE_DB"
PGBENCH_URL="$BASE_URL/$PGBENCH_DB"
SERVER_PID=""
POLLER_PID=""

cleanup() {
  [ -n "$POLLER_PID" ] && kill "$POLLER_PID" 2>/dev/null && wait "$POLLER_PID" 2>/dev/null
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $LEDGER_DB WITH (FORCE)" -c "DROP DATABASE IF EXISTS $PGBENCH_DB WITH (FORCE)" -c "DROP DATABASE IF EXISTS $BASELINE_DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

psql -q "$ADMIN_URL" -c "CREATE DATABASE $LEDGER_DB" -c "CREATE DATABASE $PGBENCH_DB" >/dev/null
echo "pgbench: initializing scale $SCALE" >&2
pgbench -i -q -s "$SCALE" "$PGBENCH_URL" >/dev/null 2>&1
psql -q -f bench/bare_sql.sql "$PGBENCH_URL" >/dev/null

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

# The CPU time so far (user + system) of every PostgreSQL process, in seconds: the
# backends serving the server and the WAL writer, checkpointer and friends. Steadier
# than throughput on a shared VM, so a change to the SQL or the guards shows here.
postgres_cpu_seconds() {
  local stat total=0
  for stat in /proc/[0-9]*/stat; do
    read -r -a fields <"$stat" 2>/dev/null || continue
    [ "${fields[1]}" = "(postgres)" ] || continue
    total=$((total + fields[13] + fields[14]))
  done
  awk -v total="$total" -v ticks="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", total / ticks }'
}

# Runs loadgen (with any further flags) while sampling the server's RSS; prints
# "payments/s p50_ms p99_ms max_rss_mib payments violations".
run_loadgen() {
  local clients=$1 hot=$2
  shift 2
  local out peak pg_cpu
  out=$(mktemp)
  pg_cpu=$(postgres_cpu_seconds)
  "$LOADGEN_BIN" --url "http://127.0.0.1:$PORT" --api-key "$KEY" --concurrency "$clients" \
    --duration "${RUN_SECONDS}s" --accounts 200 --hot-share "$hot" --no-poller --quiet --json "$@" >"$out" &
  peak=$(peak_rss_while $!)
  pg_cpu=$(python3 -c "print($(postgres_cpu_seconds) - $pg_cpu)")
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); l=r["payment_latency_ms"]; print("%.1f %.2f %.2f %s %d %d %s" % (r["payments_per_second"], l["p50"], l["p99"], sys.argv[2], r["payments"], len(r["violations"]), sys.argv[3]))' "$out" "$peak" "$pg_cpu"
  rm -f "$out"
}

# Creates 200 UNBOUNDED accounts (20 per request) on the running server; prints their
# ids comma-separated.
create_wrk_accounts() {
  local request aliases ids=""
  for request in $(seq 1 10); do
    aliases=""
    for n in $(seq 1 20); do
      aliases="$aliases a$n: createAccount(input: {idempotencyKey: \\\"wrk-account-$$-$request-$n\\\", currency: \\\"USD\\\", balanceRule: UNBOUNDED}) { account { id } }"
    done
    ids="$ids$(curl -fsS "http://127.0.0.1:$PORT/graphql" -H 'Content-Type: application/json' \
      -H "Authorization: Bearer $KEY" -d "{\"query\": \"mutation { $aliases }\"}" \
      | python3 -c 'import json,sys; print(",".join(a["account"]["id"] for a in json.load(sys.stdin)["data"].values()), end=",")')"
  done
  echo "${ids%,}"
}

# Runs wrk with bench/payments.lua while sampling the server's RSS; counts the payments
# it made in the database and audits the ledger. Prints the same fields as run_loadgen.
run_wrk() {
  local clients=$1 hot=$2 build=$3
  local out peak run accounts threads=$1 stored verified pg_cpu
  [ "$threads" -gt 2 ] && threads=2
  out=$(mktemp)
  run="wrk-$$-$RANDOM$RANDOM"
  accounts=$(create_wrk_accounts)
  pg_cpu=$(postgres_cpu_seconds)
  API_KEY=$KEY ACCOUNTS=$accounts HOT_SHARE=$hot RUN=$run \
    wrk -t "$threads" -c "$clients" -d "${RUN_SECONDS}s" --timeout 10s -s bench/payments.lua \
    "http://127.0.0.1:$PORT" >"$out" 2>&1 &
  peak=$(peak_rss_while $!)
  pg_cpu=$(python3 -c "print($(postgres_cpu_seconds) - $pg_cpu)")
  read -r _ responses errors p50 p99 seconds <<<"$(grep '^wrk-result' "$out")"
  stored=$(psql -Atc "SELECT count(*) FROM payments WHERE idempotency_key LIKE '$run-%'" "${URL[$build]}")
  verified=0
  DATABASE_URL="${URL[$build]}" "${BIN[$build]}" verify >/dev/null 2>&1 || verified=1
  # Violations: a response that is not a payment, an acknowledged payment the database
  # does not have, more payments than requests (beyond the ones still in flight when
  # wrk stopped), or a failed audit.
  python3 -c 'import sys; s, r, e, c, sec, p50, p99, peak, v = map(float, sys.argv[1:10]); print("%.1f %.3f %.3f %d %d %d" % (s / sec, p50, p99, peak, s, e + max(0, r - e - s) + max(0, s - r - c) + v), sys.argv[10])' \
    "$stored" "$responses" "$errors" "$clients" "$seconds" "$p50" "$p99" "$peak" "$verified" "$pg_cpu"
  rm -f "$out"
}

# run_pgbench CLIENTS [SCRIPT]: TPC-B-like by default, else the custom SCRIPT; prints tps.
run_pgbench() {
  local clients=$1 threads=$1
  [ "$threads" -gt 2 ] && threads=2
  pgbench -n -c "$clients" -j "$threads" -T "$RUN_SECONDS" ${2:+-f "$2"} "$PGBENCH_URL" 2>/dev/null \
    | awk '/^tps = / { printf "%.1f", $3; exit }'
}

echo
[ "$PARKED_POLLS" -gt 0 ] && echo "$PARKED_POLLS dashboards watch the paying client during every run (this build: long polls; baseline: a POST every 2 s)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); PostgreSQL $(psql -Atc 'SHOW server_version' "$ADMIN_URL"); ${RUN_SECONDS} s per run; pgbench scale $SCALE; 200 accounts"
echo
echo "| build | driver | isolation | group commit | clients | hot share | payments/s | p50 ms | p99 ms | server RSS MiB (peak) | server CPU s / 1000 payments | PostgreSQL CPU s / 1000 payments | pgbench TPC-B tps | payments/s ÷ tps | verifier | ÷ baseline |"
echo "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"
declare -A TPS
for clients in $CLIENTS 16 $([ -n "$BULK" ] && echo "$BULK_CLIENTS"); do
  [ -n "${TPS[$clients]:-}" ] || TPS[$clients]=$(run_pgbench "$clients")
done
declare -A BASELINE_RATE
# row BUILD DRIVER ISOLATION GROUPING CLIENTS HOT [LOADGEN FLAGS...]
row() {
  local build=$1 driver=$2 isolation=$3 grouping=$4 clients=$5 hot=$6
  local rate p50 p99 rss payments violations ratio versus="" id cpu_before cpu_per_1000 pg_cpu pg_cpu_per_1000
  shift 6
  if [ "$PARKED_POLLS" -gt 0 ]; then
    "$POLLBENCH_BIN" dashboards --url "http://127.0.0.1:$PORT" --keys "$KEY" --count "$PARKED_POLLS" \
      --seconds $((RUN_SECONDS + 30)) --style "$([ "$build" = baseline ] && echo old || echo long)" >/dev/null 2>&1 &
    POLLER_PID=$!
    sleep 1
  fi
  cpu_before=$(server_cpu_seconds)
  if [ "$driver" = wrk ]; then
    read -r rate p50 p99 rss payments violations pg_cpu <<<"$(run_wrk "$clients" "$hot" "$build")"
  else
    read -r rate p50 p99 rss payments violations pg_cpu <<<"$(run_loadgen "$clients" "$hot" "$@")"
  fi
  if [ -n "$POLLER_PID" ]; then
    kill "$POLLER_PID" 2>/dev/null || true
    wait "$POLLER_PID" 2>/dev/null || true
    POLLER_PID=""
  fi
  cpu_per_1000=$(python3 -c "print('%.2f' % (($(server_cpu_seconds) - $cpu_before) * 1000 / max($payments, 1)))")
  pg_cpu_per_1000=$(python3 -c "print('%.2f' % ($pg_cpu * 1000 / max($payments, 1)))")
  ratio=$(python3 -c "print('%.2f' % ($rate / ${TPS[$clients]}))")
  id="$driver/$isolation/$grouping/$clients/$hot"
  if [ "$build" = baseline ]; then
    BASELINE_RATE[$id]=$rate
  elif [ -n "${BASELINE_RATE[$id]:-}" ]; then
    versus=$(python3 -c "print('%.2f' % ($rate / ${BASELINE_RATE[$id]}))")
  fi
  echo "| $build | $driver | $isolation | $grouping | $clients | $hot | $rate | $p50 | $p99 | $rss | $cpu_per_1000 | $pg_cpu_per_1000 | ${TPS[$clients]} | $ratio | $([ "$violations" = 0 ] && echo ok || echo "$violations violations") | $versus |"
}
for isolation in $ISOLATIONS; do
  for driver in $DRIVERS; do
    for load in $CLIENTS "16 0.5"; do
      read -r clients hot <<<"$load"
      for build in $BUILDS; do
        start_server "$build" "$isolation"
        row "$build" "$driver" "$isolation" on "$clients" "${hot:-0}"
        stop_server
      done
    done
  done
  [ "$EXTRA" = 1 ] || continue
  for build in $BUILDS; do
    # The baseline for group commit itself: one transaction per payment, up to 16 at
    # once (the write path as it was before group commit).
    start_server "$build" "$isolation" 1 16
    row "$build" loadgen "$isolation" off 16 0
    stop_server
  done
  # Holds, each captured as soon as it is acknowledged: payments/s counts pairs (a
  # baseline build from before holds cannot run it).
  start_server this "$isolation"
  row this loadgen "$isolation" "on, hold+capture pairs" 16 0 --hold-and-capture
  stop_server
done
# Bulk: new payments sent N at a time with createPaymentBatch (loadgen --bulk N), from
# 1 and 4 connections, this build only (a baseline from before createPaymentBatch cannot
# run it). p50/p99 are per request (a whole batch), payments/s counts payments.
for isolation in $ISOLATIONS; do
  for size in $BULK; do
    for clients in $BULK_CLIENTS; do
      start_server this "$isolation"
      row this "loadgen, batches of $size" "$isolation" on "$clients" 0 --bulk "$size"
      stop_server
    done
  done
done

echo
echo "Bare-SQL baselines in the same run (pgbench on bench/bare_sql.sql's tables: a key, the payment, two entries and two account moves per payment; no checks, no guards, no server):"
echo
echo "| statement | clients | payments/s |"
echo "|---|---:|---:|"
for clients in $CLIENTS; do
  echo "| one payment (bench/bare_payment.pgbench) | $clients | $(run_pgbench "$clients" bench/bare_payment.pgbench) |"
done
if [ -n "$BULK" ]; then
  for clients in $BULK_CLIENTS; do
    tps=$(run_pgbench "$clients" bench/bare_bulk.pgbench)
    echo "| 1 000 payments (bench/bare_bulk.pgbench) | $clients | $(python3 -c "print('%.0f' % ($tps * 1000))") |"
  done
fi
