#!/usr/bin/env bash
# Quiet when healthy: two release servers on one PostgreSQL database and one Redis, each
# driven by its own loadgen with 20 % duplicates, races, the lifecycle mix (holds,
# captures, voids, refunds) and payment groups. Prints, per build, the payments/s of both
# drivers together, the WARN and ERROR lines the two servers logged, and the ERROR and
# WARNING lines PostgreSQL logged for the run's database; then `payments-ledger verify`.
# A healthy run logs nothing at WARN or above, on either side.
#
#   bash bench/quiet.sh
#   BASELINE_BIN=/path/to/older/payments-ledger bash bench/quiet.sh
#
# With BASELINE_BIN the same run is made for that build first, on its own database.
# Environment: LEDGER_BENCH_DATABASE_URL (admin URL, default
# postgres://postgres@127.0.0.1:5432/postgres), LEDGER_BENCH_REDIS_URL (default
# redis://127.0.0.1:6379), BENCH_SECONDS (default 12), LEDGER_BENCH_PG_LOG (PostgreSQL's
# log file; default Debian's /var/log/postgresql/postgresql-*-main.log). Creates and
# drops its own databases.
set -euo pipefail
cd "$(dirname "$0")/.."

ADMIN_URL=${LEDGER_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS_URL=${LEDGER_BENCH_REDIS_URL:-redis://127.0.0.1:6379}
RUN_SECONDS=${BENCH_SECONDS:-12}
PG_LOG=${LEDGER_BENCH_PG_LOG:-$(ls /var/log/postgresql/postgresql-*-main.log 2>/dev/null | head -n 1)}
TARGET=${CARGO_TARGET_DIR:-target}
PORTS=(18101 18102)

cargo build --release -p payments-ledger -p loadgen >&2
LOADGEN_BIN="$TARGET/release/loadgen"
WORK=$(mktemp -d)
PIDS=()
DATABASES=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
  for db in "${DATABASES[@]}"; do
    psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

# run BUILD BINARY: prints one result line for that build.
run() {
  local build=$1 bin=$2 db="ledger_bench_quiet_$$_$1"
  local url="${ADMIN_URL%/*}/$db" log_start=0 i
  psql -q "$ADMIN_URL" -c "CREATE DATABASE $db" >/dev/null
  DATABASES+=("$db")
  DATABASE_URL="$url" "$bin" migrate >/dev/null 2>&1 || true
  [ -n "$PG_LOG" ] && log_start=$(stat -c %s "$PG_LOG")
  PIDS=()
  for i in 0 1; do
    DATABASE_URL="$url" REDIS_URL="$REDIS_URL" LISTEN_ADDR="127.0.0.1:${PORTS[$i]}" \
      CACHE_NAMESPACE="ledger-bench-quiet-$$-$build" RUST_LOG=warn NO_COLOR=1 \
      "$bin" serve >"$WORK/$build-server-$i.log" 2>&1 &
    PIDS+=($!)
  done
  for i in 0 1; do
    for _ in $(seq 1 100); do
      curl -fsS "http://127.0.0.1:${PORTS[$i]}/readyz" >/dev/null 2>&1 && break
      sleep 0.1
    done
  done
  local drivers=()
  for i in 0 1; do
    KEY=$(DATABASE_URL="$url" "$bin" client create "quiet-$i" | tail -n 1)
    "$LOADGEN_BIN" --url "http://127.0.0.1:${PORTS[$i]}" --api-key "$KEY" --concurrency 16 \
      --duration "${RUN_SECONDS}s" --accounts 40 --duplicate-rate 0.2 --race-rate 0.05 \
      --lifecycle 0.3 --groups 0.1 --retries 30 --quiet --json >"$WORK/$build-loadgen-$i.json" 2>"$WORK/$build-loadgen-$i.err" &
    drivers+=($!)
  done
  local status=0
  for pid in "${drivers[@]}"; do wait "$pid" || status=$?; done
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
  PIDS=()
  local server_lines pg_lines=n/a
  server_lines=$(cat "$WORK/$build"-server-*.log | grep -cE ' (WARN|ERROR) ' || true)
  if [ -n "$PG_LOG" ]; then
    pg_lines=$(tail -c +"$((log_start + 1))" "$PG_LOG" | grep -E "@$db " | grep -cE ' (ERROR|WARNING): ' || true)
  fi
  python3 - "$build" "$server_lines" "$pg_lines" "$status" "$WORK/$build"-loadgen-*.json <<'EOF'
import json, sys
build, server, pg, status, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
reports = [json.load(open(f)) for f in files]
rate = sum(r["payments_per_second"] for r in reports)
payments = sum(r["payments"] for r in reports)
violations = sum(len(r["violations"]) for r in reports)
print(f"| {build} | {rate:.0f} | {payments} | {violations} | {server} | {pg} | {status} |")
EOF
  echo "server WARN/ERROR lines ($build), most frequent first:" >&2
  cat "$WORK/$build"-server-*.log | grep -E ' (WARN|ERROR) ' | sed -E 's/^[^ ]+ +//; s/[0-9a-f-]{36}/…/g' | cut -c1-160 | sort | uniq -c | sort -rn | head -5 >&2 || true
  if [ -n "$PG_LOG" ]; then
    echo "PostgreSQL ERROR/WARNING lines ($build), most frequent first:" >&2
    tail -c +"$((log_start + 1))" "$PG_LOG" | grep -E "@$db " | grep -E ' (ERROR|WARNING): ' | sed -E 's/^.*(ERROR|WARNING): /\1: /' | cut -c1-160 | sort | uniq -c | sort -rn | head -5 >&2 || true
  fi
  echo "payments-ledger verify ($build):" >&2
  DATABASE_URL="$url" "$bin" verify >&2
}

echo "| build | payments/s (both drivers) | payments | violations | server WARN+ERROR lines | PostgreSQL ERROR+WARNING lines | loadgen exit |"
echo "|---|---|---|---|---|---|---|"
if [ -n "${BASELINE_BIN:-}" ]; then
  run baseline "$BASELINE_BIN"
fi
run this "$TARGET/release/payments-ledger"
