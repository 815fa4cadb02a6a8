#!/usr/bin/env bash
# Polling benchmark, in one run on one machine, with a baseline build when given: the
# release server on PostgreSQL + Redis, driven by `pollbench` (loadgen/src/bin).
#
# 1. Polls of the dashboard's query as fast as they are answered (closed loop,
#    BENCH_POLL_CLIENTS at once): polls/s, p50/p99 and the server's CPU-ms per poll, for
#    the POST the dashboard sent before, a GET answered in full and a GET answered 304.
# 2. Idle dashboards (BENCH_DASHBOARDS of them, BENCH_IDLE_SECONDS, nothing changing):
#    the old dashboard (a POST every 2 s) against the long-polling one: requests per
#    dashboard-minute and server CPU-ms per dashboard-minute.
# 3. The RSS cost of 1 000 parked long polls (BENCH_PARKED), each on a connection of
#    its own, spread over 16 clients (each within its 64 requests at once while they
#    arrive).
# 4. From a payment on one instance to the answer of a poll parked on another, through
#    Redis (BENCH_WAKES payments, one at a time): p50 and p99, from the payment's send
#    (an upper bound on from-its-commit) and from its acknowledgement (a lower bound).
#
#   bash bench/polling.sh
#   BASELINE_BIN=/path/to/older/payments-ledger bash bench/polling.sh
#
# Environment: LEDGER_BENCH_DATABASE_URL (admin URL, default
# postgres://postgres@127.0.0.1:5432/postgres), LEDGER_BENCH_REDIS_URL (default
# redis://127.0.0.1:6379), BENCH_SECONDS (default 10), BENCH_POLL_CLIENTS (16),
# BENCH_DASHBOARDS (200), BENCH_IDLE_SECONDS (60), BENCH_PARKED (1000), BENCH_WAKES (200),
# BENCH_SECTIONS (which of the four to run, default "1 2 3 4").
# Creates and drops its own databases; stops every server it started on every path.
set -euo pipefail
cd "$(dirname "$0")/.."

ADMIN_URL=${LEDGER_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS_URL=${LEDGER_BENCH_REDIS_URL:-redis://127.0.0.1:6379}
RUN_SECONDS=${BENCH_SECONDS:-10}
POLL_CLIENTS=${BENCH_POLL_CLIENTS:-16}
DASHBOARDS=${BENCH_DASHBOARDS:-200}
IDLE_SECONDS=${BENCH_IDLE_SECONDS:-60}
PARKED=${BENCH_PARKED:-1000}
WAKES=${BENCH_WAKES:-200}
PORT=${BENCH_PORT:-18090}
OTHER_PORT=$((PORT + 1))
TARGET=${CARGO_TARGET_DIR:-target}
BASELINE_BIN=${BASELINE_BIN:-}
SECTIONS=${BENCH_SECTIONS:-"1 2 3 4"}

cargo build --release -p payments-ledger -p loadgen >&2
POLLBENCH_BIN="$TARGET/release/pollbench"
LOADGEN_BIN="$TARGET/release/loadgen"
# Each parked poll is a connection, at both ends.
ulimit -n "$(( PARKED * 2 + 1024 ))" 2>/dev/null || true

declare -A BIN URL KEYS
BUILDS="this"
BIN[this]="$TARGET/release/payments-ledger"
if [ -n "$BASELINE_BIN" ]; then
  BUILDS="baseline this"
  BIN[baseline]=$BASELINE_BIN
fi
BASE_URL="${ADMIN_URL%/*}"
SERVER_PID=""
OTHER_PID=""
POLLS_PID=""

cleanup() {
  for pid in $POLLS_PID $OTHER_PID $SERVER_PID; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  for build in $BUILDS; do
    psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS ledger_bench_polling_${build}_$$ WITH (FORCE)" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

for build in $BUILDS; do
  URL[$build]="$BASE_URL/ledger_bench_polling_${build}_$$"
  psql -q "$ADMIN_URL" -c "CREATE DATABASE ledger_bench_polling_${build}_$$" >/dev/null
  DATABASE_URL="${URL[$build]}" "${BIN[$build]}" migrate >/dev/null 2>&1
  keys=""
  for n in $(seq 1 16); do
    keys="$keys,$(DATABASE_URL="${URL[$build]}" "${BIN[$build]}" client create "bench-$n" | tail -n 1)"
  done
  KEYS[$build]=${keys#,}
done

# start BUILD PORT: a server, its pid in STARTED_PID once it is ready.
start() {
  DATABASE_URL="${URL[$1]}" REDIS_URL="$REDIS_URL" LISTEN_ADDR="127.0.0.1:$2" \
    CACHE_NAMESPACE="ledger-bench-polling-$$-$1" RUST_LOG=warn SHUTDOWN_DRAIN_SECONDS=0 \
    "${BIN[$1]}" serve >/dev/null 2>&1 &
  STARTED_PID=$!
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$2/readyz" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "the $1 server did not start on port $2" >&2
  exit 1
}

stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# shellcheck source=bench/lib.sh
. bench/lib.sh

field() { python3 -c 'import json,sys; print(json.loads(sys.stdin.readlines()[-1])[sys.argv[1]])' "$1"; }
first_key() { echo "${KEYS[$1]%%,*}"; }

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); PostgreSQL $(psql -Atc 'SHOW server_version' "$ADMIN_URL"); Redis $(redis-server --version | awk '{ print $3 }')"
section() { [[ " $SECTIONS " == *" $1 "* ]]; }

if section 1; then
echo
echo "1. The dashboard's query polled as fast as it is answered ($POLL_CLIENTS clients, ${RUN_SECONDS} s each; 20 accounts and the last 50 payments in every answer):"
echo
echo "| build | request | polls/s | p50 ms | p99 ms | server CPU-ms per poll | ÷ baseline POST (CPU per poll) |"
echo "|---|---|---:|---:|---:|---:|---:|"
BASELINE_CPU=""
for build in $BUILDS; do
  start "$build" "$PORT"; SERVER_PID=$STARTED_PID
  "$LOADGEN_BIN" --url "http://127.0.0.1:$PORT" --api-key "$(first_key "$build")" --concurrency 4 \
    --duration 3s --accounts 20 --no-poller --quiet >/dev/null 2>&1 || true
  styles="post get get304"
  [ "$build" = baseline ] && styles="post"
  for style in $styles; do
    before=$(server_cpu_seconds)
    out=$("$POLLBENCH_BIN" throughput --url "http://127.0.0.1:$PORT" --keys "$(first_key "$build")" \
      --count "$POLL_CLIENTS" --seconds "$RUN_SECONDS" --style "$style")
    cpu=$(python3 -c "print($(server_cpu_seconds) - $before)")
    polls=$(field polls <<<"$out")
    cpu_ms=$(python3 -c "print('%.3f' % ($cpu * 1000 / max($polls, 1)))")
    versus=""
    if [ "$build" = baseline ]; then
      BASELINE_CPU=$cpu_ms
    elif [ -n "$BASELINE_CPU" ]; then
      versus=$(python3 -c "print('%.2f' % ($cpu_ms / $BASELINE_CPU))")
    fi
    label=$style
    [ "$style" = post ] && label="POST, query text"
    [ "$style" = get ] && label="GET by documentId, full answer"
    [ "$style" = get304 ] && label="GET with If-None-Match, 304"
    printf '| %s | %s | %.0f | %.2f | %.2f | %s | %s |\n' "$build" "$label" "$(field polls_per_second <<<"$out")" \
      "$(field p50_ms <<<"$out")" "$(field p99_ms <<<"$out")" "$cpu_ms" "$versus"
  done
  stop "$SERVER_PID"; SERVER_PID=""
done
fi

if section 2; then
echo
echo "2. $DASHBOARDS idle dashboards for ${IDLE_SECONDS} s (nothing changes):"
echo
echo "| build | dashboard | requests/s (all) | requests per dashboard-minute | server CPU-ms per dashboard-minute |"
echo "|---|---|---:|---:|---:|"
for build in $BUILDS; do
  start "$build" "$PORT"; SERVER_PID=$STARTED_PID
  styles="old long"
  [ "$build" = baseline ] && styles="old"
  for style in $styles; do
    before=$(server_cpu_seconds)
    out=$("$POLLBENCH_BIN" dashboards --url "http://127.0.0.1:$PORT" --keys "${KEYS[$build]}" \
      --count "$DASHBOARDS" --seconds "$IDLE_SECONDS" --style "$style")
    cpu=$(python3 -c "print($(server_cpu_seconds) - $before)")
    label="POST every 2 s (before)"
    [ "$style" = long ] && label="long poll, wait=25"
    python3 -c 'import sys; requests, seconds, dashboards, cpu = map(float, sys.argv[1:5]); minutes = seconds / 60 * dashboards; print("| %s | %s | %.1f | %.2f | %.2f |" % (sys.argv[5], sys.argv[6], requests / seconds, requests / minutes, cpu * 1000 / minutes))' \
      "$(field requests <<<"$out")" "$IDLE_SECONDS" "$DASHBOARDS" "$cpu" "$build" "$label"
  done
  stop "$SERVER_PID"; SERVER_PID=""
done
fi

if section 3; then
# Twice: with mimalloc's defaults, and with arena memory committed as it is used
# (MIMALLOC_ARENA_EAGER_COMMIT=0, as the Dockerfile sets it).
for allocator in "defaults" "MIMALLOC_ARENA_EAGER_COMMIT=0"; do
[ "$allocator" = defaults ] || export MIMALLOC_ARENA_EAGER_COMMIT=0
echo
start this "$PORT"; SERVER_PID=$STARTED_PID
idle_rss=$(rss_mib)
"$POLLBENCH_BIN" park --url "http://127.0.0.1:$PORT" --keys "${KEYS[this]}" --count "$PARKED" --seconds 60 >/dev/null 2>&1 &
POLLS_PID=$!
parked=0
for _ in $(seq 1 600); do
  parked=$(curl -fsS "http://127.0.0.1:$PORT/metrics" | awk '/^ledger_long_polls_parked / { print $2 }')
  [ "${parked%.*}" -ge "$PARKED" ] && break
  sleep 0.1
done
sleep 1
parked_rss=$(rss_mib)
echo "3. $PARKED long polls parked at once (16 clients, a connection each; mimalloc $allocator): $parked parked; server RSS $idle_rss MiB idle, $parked_rss MiB with them parked: +$((parked_rss - idle_rss)) MiB ($(python3 -c "print('%.1f' % (($parked_rss - $idle_rss) * 1024 / max($PARKED, 1)))") KiB a poll)"
kill "$POLLS_PID" 2>/dev/null; wait "$POLLS_PID" 2>/dev/null || true; POLLS_PID=""
stop "$SERVER_PID"; SERVER_PID=""
unset MIMALLOC_ARENA_EAGER_COMMIT
done
fi

if section 4; then
start this "$PORT"; SERVER_PID=$STARTED_PID
start this "$OTHER_PORT"; OTHER_PID=$STARTED_PID
out=$("$POLLBENCH_BIN" wake --url "http://127.0.0.1:$OTHER_PORT" --pay-url "http://127.0.0.1:$PORT" \
  --keys "$(first_key this)" --payments "$WAKES")
echo
echo "4. A payment on one instance, a poll parked on the other ($WAKES payments, through Redis): woken $(field woken <<<"$out"), missed $(field missed <<<"$out");"
echo "   from the payment's send: p50 $(field from_send_p50_ms <<<"$out") ms, p99 $(field from_send_p99_ms <<<"$out") ms; from its acknowledgement: p50 $(field from_ack_p50_ms <<<"$out") ms, p99 $(field from_ack_p99_ms <<<"$out") ms"
fi
