#!/usr/bin/env bash
# High availability, for real, from Debian's binaries on free ports in a temp dir:
#
#   primary (P) ──sync──▶ standby (S, application_name standby1)
#        └──────async───▶ replica (R, application_name replica1)
#   pgbouncer PB1 ▶ P, pgbouncer PB2 ▶ S (transaction pooling)
#   instance A: DATABASE_URL=PB1,PB2 (target_session_attrs=read-write), DATABASE_POOLER=transaction
#   instance B: DATABASE_URL=P,S     (target_session_attrs=read-write)
#   both: DATABASE_REPLICA_URLS=R, one Redis
#
# One loadgen per instance pays with duplicates, races, the lifecycle mix and groups
# (and reads balances) while the script kills -9 the primary, promotes the standby
# (`pg_ctl promote`, as a failover tool or a person would), stops the replica (already
# stale: it followed the dead primary) and restarts the pgbouncer in front of the new
# primary. Then it prints what was acknowledged, lost and duplicated, the longest pause
# without an acknowledged payment around the failover, the share of replica-eligible
# reads the replica served, and `payments-ledger verify --acknowledged` on the new
# primary. Exit 1 when anything was lost or duplicated, or an invariant fails.
#
#   bash bench/ha.sh
#
# Environment: HA_SECONDS (default 30), HA_KEEP=1 keeps the logs (and data) in the
# temp dir. Everything it starts is stopped, and its
# directory removed, on every exit path.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_SECONDS=${HA_SECONDS:-30}
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release -p payments-ledger -p loadgen >&2
SERVER_BIN=$(realpath "$TARGET/release/payments-ledger")
LOADGEN_BIN=$(realpath "$TARGET/release/loadgen")
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
command -v pgbouncer >/dev/null || { echo "pgbouncer is not installed (apt-get install pgbouncer)" >&2; exit 1; }

WORK=$(mktemp -d)
chmod 755 "$WORK"
AS_PG=()
if [ "$(id -u)" = 0 ]; then
  AS_PG=(runuser -u postgres --)
  chown postgres:postgres "$WORK"
fi
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  for pidfile in "$WORK"/pgbouncer-*.pid "$WORK"/redis.pid; do
    [ -f "$pidfile" ] && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
  done
  for cluster in primary standby replica; do
    [ -d "$WORK/$cluster" ] && "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$WORK/$cluster" -m immediate stop >/dev/null 2>&1 || true
  done
  if [ -n "${HA_KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

PORTS=($(python3 - <<'EOF'
import socket
sockets = [socket.socket() for _ in range(8)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
EOF
))
P=${PORTS[0]} S=${PORTS[1]} R=${PORTS[2]} PB1=${PORTS[3]} PB2=${PORTS[4]} REDIS=${PORTS[5]} A=${PORTS[6]} B=${PORTS[7]}

pg_start() { # NAME PORT [EXTRA -c SETTINGS]
  "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$WORK/$1" -l "$WORK/$1.log" -w start -o \
    "-p $2 -c listen_addresses=127.0.0.1 -c unix_socket_directories=$WORK -c wal_level=replica \
     -c max_wal_senders=10 -c hot_standby=on -c max_connections=200 ${3:-}" >/dev/null
}
psql_at() { psql -h 127.0.0.1 -p "$1" -U postgres -d "${3:-postgres}" -v ON_ERROR_STOP=1 -Atc "$2"; }
now_ms() { date +%s%3N; }

echo "building the topology in $WORK" >&2
"${AS_PG[@]}" "$PG_BIN/initdb" -D "$WORK/primary" -U postgres --auth=trust --encoding=UTF8 --locale=C >/dev/null
echo "host replication all 127.0.0.1/32 trust" >>"$WORK/primary/pg_hba.conf"
# On the command line, not in a file: a standby copied from the primary must not wait
# for a synchronous standby of its own once promoted.
pg_start primary "$P" "-c synchronous_standby_names=standby1 -c synchronous_commit=on"
for standby in standby:$S:standby1 replica:$R:replica1; do
  IFS=: read -r name port application <<<"$standby"
  "${AS_PG[@]}" "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$P" -U postgres -D "$WORK/$name" -R -X stream
  echo "primary_conninfo = 'host=127.0.0.1 port=$P user=postgres application_name=$application'" \
    | "${AS_PG[@]}" tee -a "$WORK/$name/postgresql.auto.conf" >/dev/null
  pg_start "$name" "$port"
done
for _ in $(seq 1 200); do
  [ "$(psql_at "$P" "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")" = 2 ] && break
  sleep 0.05
done
psql_at "$P" "SELECT application_name, sync_state FROM pg_stat_replication" >&2
psql_at "$P" "CREATE DATABASE ledger" >/dev/null

pgbouncer_start() { # N UPSTREAM_PORT LISTEN_PORT
  cat >"$WORK/pgbouncer-$1.ini" <<EOF
[databases]
ledger = host=127.0.0.1 port=$2 dbname=ledger
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $3
unix_socket_dir =
auth_type = trust
auth_file = $WORK/users.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 1000
; A client queued for a server that cannot be reached (the primary died) gets an error
; after this instead of waiting 120 s: the server then retries on the new primary.
query_wait_timeout = 3
pidfile = $WORK/pgbouncer-$1.pid
logfile = $WORK/pgbouncer-$1.log
EOF
  echo '"postgres" ""' >"$WORK/users.txt"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$WORK/pgbouncer-$1.ini" "$WORK/users.txt"
  "${AS_PG[@]}" pgbouncer -d "$WORK/pgbouncer-$1.ini"
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$3") 2>/dev/null && return; sleep 0.05; done
}
pgbouncer_start 1 "$P" "$PB1"
pgbouncer_start 2 "$S" "$PB2"
redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
  --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log" --dir "$WORK"

DIRECT="postgres://postgres@127.0.0.1:$P/ledger"
DATABASE_URL="$DIRECT" "$SERVER_BIN" migrate >/dev/null
KEY=$(DATABASE_URL="$DIRECT" "$SERVER_BIN" client create ha | tail -n 1)
REPLICA="postgres://postgres@127.0.0.1:$R/ledger"

serve() { # NAME PORT DATABASE_URL [POOLER]
  POSTGRES_WRITE_ISOLATION=${HA_ISOLATION:-serializable} DATABASE_URL="$3" DATABASE_POOLER="${4:-none}" DATABASE_REPLICA_URLS="$REPLICA" \
    DATABASE_ACQUIRE_TIMEOUT_SECONDS=2 REDIS_URL="redis://127.0.0.1:$REDIS" \
    LISTEN_ADDR="127.0.0.1:$2" RUST_LOG=warn,payments_ledger::db=info NO_COLOR=1 \
    "$SERVER_BIN" serve >"$WORK/server-$1.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$2/readyz" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "instance $1 did not start:" >&2
  cat "$WORK/server-$1.log" >&2
  exit 1
}
# Reads first, before anything fails: a read-heavy mix (90 % balance reads) against an
# instance with the replica and one without, alternating, neither with Redis and with
# balances leaving L1 at once, so every read reaches a database.
READ_SECONDS=${HA_READ_SECONDS:-8}
read_run() { # NAME REPLICA_URLS
  DATABASE_URL="$DIRECT" DATABASE_REPLICA_URLS="$2" CACHE_L1_BALANCE_TTL_MS=1 \
    LISTEN_ADDR="127.0.0.1:$A" RUST_LOG=warn NO_COLOR=1 "$SERVER_BIN" serve >"$WORK/server-reads-$1.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$A/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  sleep 1 # the replica's lag is known after the first samples
  "$LOADGEN_BIN" --url "http://127.0.0.1:$A" --api-key "$KEY" --concurrency 16 --duration "${READ_SECONDS}s" \
    --accounts 200 --read-ratio 0.9 --quiet --json >"$WORK/reads-$1.json" 2>/dev/null || true
  curl -fsS "http://127.0.0.1:$A/metrics" >"$WORK/reads-$1.metrics" 2>/dev/null || true
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
for round in 1 2; do
  read_run "none-$round" ""
  read_run "replica-$round" "$REPLICA"
done
echo "read-heavy mix (90 % CACHED balance reads, 16 clients, ${READ_SECONDS} s each, no Redis, L1 off):"
echo "| run | reads/s | payments/s | read p50 ms | read p99 ms | reads the replica served |"
echo "|---|---:|---:|---:|---:|---:|"
for run in none-1 replica-1 none-2 replica-2; do
  python3 - "$run" "$WORK/reads-$run.json" "$WORK/reads-$run.metrics" "127.0.0.1:$R" <<'EOF'
import json, sys
run, report, metrics, replica = sys.argv[1:]
r = json.load(open(report))
served = {"replica": 0.0, "primary": 0.0}
for line in open(metrics):
    if line.startswith("ledger_database_replica_eligible_reads_total"):
        who = "replica" if replica in line else "primary"
        served[who] += float(line.split()[-1])
total = served["replica"] + served["primary"]
share = f"{100 * served['replica'] / total:.0f} %" if total else "-"
lat = r.get("read_latency_ms", {})
print(f"| {run} | {r['reads'] / r['elapsed_seconds']:.0f} | {r['payments_per_second']:.0f} | {lat.get('p50', 0):.2f} | {lat.get('p99', 0):.2f} | {share} |")
EOF
done
echo

serve A "$A" "postgres://postgres@127.0.0.1:$PB1,127.0.0.1:$PB2/ledger?target_session_attrs=read-write" transaction
serve B "$B" "postgres://postgres@127.0.0.1:$P,127.0.0.1:$S/ledger?target_session_attrs=read-write"

DRIVERS=()
DRIVERS_END=$(( $(now_ms) + RUN_SECONDS * 1000 ))
for instance in A:$A B:$B; do
  IFS=: read -r name port <<<"$instance"
  "$LOADGEN_BIN" --url "http://127.0.0.1:$port" --api-key "$KEY" --concurrency 8 \
    --duration "${RUN_SECONDS}s" --accounts 40 --duplicate-rate 0.2 --race-rate 0.05 \
    --lifecycle 0.3 --groups 0.1 --read-ratio 0.3 --retries 60 --timeout 5s \
    --acknowledged-log "$WORK/acknowledged-$name.log" --quiet >"$WORK/loadgen-$name.out" 2>&1 &
  DRIVERS+=($!)
done
( while :; do
    echo "$(now_ms) $(cat "$WORK"/acknowledged-*.log 2>/dev/null | wc -l) $(cat "$WORK/acknowledged-A.log" 2>/dev/null | wc -l)"
    sleep 0.05
  done ) >"$WORK/samples" &
SAMPLER=$!
PIDS+=("$SAMPLER")

sleep "$((RUN_SECONDS / 4))"
KILLED_AT=$(now_ms)
kill -9 "$(head -n 1 "$WORK/primary/postmaster.pid")"
echo "kill -9 of the primary at $(cat "$WORK"/acknowledged-*.log | wc -l) acknowledged payments" >&2
sleep 2
"${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$WORK/standby" -w promote >/dev/null
PROMOTED_AT=$(now_ms)
echo "standby promoted $((PROMOTED_AT - KILLED_AT)) ms after the kill" >&2
sleep "$((RUN_SECONDS / 4))"
"${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$WORK/replica" -m fast stop >/dev/null
echo "replica stopped" >&2
sleep "$((RUN_SECONDS / 8))"
kill -9 "$(cat "$WORK/pgbouncer-2.pid")"
while (exec 3<>"/dev/tcp/127.0.0.1/$PB2") 2>/dev/null; do sleep 0.05; done
rm -f "$WORK/pgbouncer-2.pid"
pgbouncer_start 2 "$S" "$PB2"
echo "pgbouncer in front of the new primary restarted" >&2

STATUS=0
for pid in "${DRIVERS[@]}"; do wait "$pid" || STATUS=$?; done
kill "$SAMPLER" 2>/dev/null || true

NEW_PRIMARY="postgres://postgres@127.0.0.1:$S/ledger"
cat "$WORK"/acknowledged-*.log >"$WORK/acknowledged.log"
RESULT=$(psql "$NEW_PRIMARY" -q -At -v ON_ERROR_STOP=1 <<EOF
CREATE TEMP TABLE acknowledged (key text, id text);
\copy acknowledged FROM '$WORK/acknowledged.log'
SELECT
  (SELECT count(*) FROM acknowledged),
  (SELECT count(*) FROM acknowledged a WHERE NOT EXISTS
     (SELECT 1 FROM payments p WHERE p.id = replace(a.id, 'pay_', '')::uuid)),
  -- A group's payments share its key; anything else sharing a key is a duplicate.
  (SELECT count(*) FROM (SELECT client_id, idempotency_key FROM payments
     GROUP BY 1, 2 HAVING count(DISTINCT coalesce(group_id, id)) > 1) d);
EOF
)
read -r ACKED LOST DUPLICATED <<<"$(echo "$RESULT" | tail -n 1 | tr '|' ' ')"
PAUSE=$(awk -v from="$KILLED_AT" -v to="$DRIVERS_END" '
  { if ($2 > count) { if (last && $1 >= from && $1 <= to && $1 - last > gap) gap = $1 - last; last = $1; count = $2 } }
  END { print gap + 0 }' "$WORK/samples")
echo "acknowledged payments per 2 s (all instances / instance A through pgbouncer):" >&2
awk -v start="$(head -n 1 "$WORK/samples" | cut -d" " -f1)" -v killed="$KILLED_AT" '
  { bucket = int(($1 - start) / 2000); all[bucket] = $2; a[bucket] = $3; if (bucket > last) last = bucket }
  END { for (b = 0; b <= last; b++) printf "  %3d s%s %6d %6d\n", 2 * b, (killed >= start + 2000 * b && killed < start + 2000 * (b + 1)) ? " (kill)" : "       ", all[b] - all[b - 1], a[b] - a[b - 1] }' "$WORK/samples" >&2

metric_sum() { # NAME_AND_LABELS
  for port in "$A" "$B"; do curl -fsS "http://127.0.0.1:$port/metrics" 2>/dev/null || true; done \
    | awk -v name="$1" 'index($0, name) == 1 { sum += $NF } END { print sum + 0 }'
}
REPLICA_READS=$(metric_sum "ledger_database_replica_eligible_reads_total{served_by=\"127.0.0.1:$R\"}")
PRIMARY_READS=$(metric_sum 'ledger_database_replica_eligible_reads_total{served_by="primary"}')
SWITCHES=$(metric_sum ledger_database_host_switches_total)

echo
for name in A B; do
  echo "loadgen against instance $name:"
  cat "$WORK/loadgen-$name.out"
  echo
done
echo "instance log lines about the database hosts and replicas:"
grep -hE "database host|replica|no database host" "$WORK"/server-*.log | sed -E 's/^[^ ]+ +//' | cut -c1-200 | sort | uniq -c | sort -rn | head -12
echo
echo "| acknowledged | lost | duplicated | longest pause without an acknowledged payment after the kill | replica-eligible reads served by the replica | pool host switches |"
echo "|---:|---:|---:|---:|---:|---:|"
python3 - "$ACKED" "$LOST" "$DUPLICATED" "$PAUSE" "$REPLICA_READS" "$PRIMARY_READS" "$SWITCHES" <<'EOF'
import sys
acked, lost, duplicated, pause, replica, primary, switches = sys.argv[1:]
total = float(replica) + float(primary)
share = f"{100 * float(replica) / total:.0f} % ({float(replica):.0f} of {total:.0f})" if total else "n/a"
print(f"| {acked} | {lost} | {duplicated} | {pause} ms | {share} | {float(switches):.0f} |")
EOF
echo
echo "payments-ledger verify --acknowledged on the promoted standby ($ACKED acknowledged payments):"
VERIFY=0
DATABASE_URL="$NEW_PRIMARY" DATABASE_MIGRATIONS=check "$SERVER_BIN" verify --acknowledged "$WORK/acknowledged.log" || VERIFY=$?
[ "$STATUS" = 0 ] && [ "$VERIFY" = 0 ] && [ "$LOST" = 0 ] && [ "$DUPLICATED" = 0 ]
