#!/usr/bin/env bash
# The database-alone anchor: what PostgreSQL itself does with pointlock's
# tables when every change is ONE autocommit statement with the policy in SQL
# (no application, no HTTP, no lock): pgbench, the same 64 clients as
# benches/load.sh, the same two loads. pointlock's and the strategy benchmark's
# figures read against it.
#
#   ./benches/pgbench.sh                          # spread and hot, 10 s each, 64 clients
#   DURATION=20 LOADS=hot ./benches/pgbench.sh
#   PG_URL=postgres://postgres@127.0.0.1:5432/postgres PG_DATA=/path/to/data ./benches/pgbench.sh
#
# The statement (benches/pgbench/*.sql; pgbench -M prepared, so the values are
# bound parameters like pointlock's):
#   WITH changed AS (UPDATE user_point SET point = point + 1, update_millis = $now
#                    WHERE id = $id AND point + 1 <= $max RETURNING id)
#   INSERT INTO point_history (user_id, type, amount, time_millis)
#   SELECT id, 'CHARGE', 1, $now FROM changed
# Loads: `spread`, a charge of 1 for a random user among USERS (10,000);
# `hot`, one user (id 1, starting at HOT_START = 5,000) charged or used 1 at
# random with equal weights (hot_charge.sql@1, hot_use.sql@1; the use needs a
# balance of at least 1), so the balance walks around its start and never
# meets the policy's bounds. Rows of users 1..USERS exist (balance 0) before
# each run; a refused change changes nothing and is counted as refused.
#
# The cluster: PG_URL (a superuser URL: the database $DB is dropped and created)
# with PG_DATA (its data directory, for its CPU time) and PG_BIN (where pgbench
# and psql are) if given, else a throwaway one started by scripts/pg-cluster.sh
# in PG_DIR and stopped on exit. The schema: the release binary
# ($CARGO_TARGET_DIR/release/pointlock, else target/release/pointlock; built
# when missing), started once against the database on loopback, migrates it
# and is stopped: pointlock's own migrations, never a copy. Autovacuum
# is off on the two tables; each run starts from truncated, re-seeded, VACUUM
# ANALYZEd tables after a CHECKPOINT (as in the strategy benchmark).
#
# Per run: changes/s (pgbench's tps, without connection time, times the share
# of transactions that changed a row), p50/p99 latency (from pgbench's
# per-transaction log, -l), errors (failed transactions and aborted clients),
# refused changes, database CPU per change (utime + stime of the postmaster,
# every process whose parent it is and the children it has reaped, from
# /proc/PID/stat before and after, divided by the changes; also the same from
# /proc/PID/schedstat, as load.sh and the strategy benchmark count it), pgbench's
# own CPU per change, and a check (history rows = changes; balances = history).
# How busy the CPUs were in the 2 s before each run and the load average are
# recorded with it: QUIET=1 (default) first waits, at most 10 minutes, until no
# compiler runs.
#
# Results: a JSON line per run in $OUT/results.jsonl (OUT=target/pgbench),
# pgbench's output and logs in $OUT/LOAD/, a markdown table on stdout.
# Bounded: each pgbench call runs DURATION seconds and is killed after
# DURATION+60 s; every wait is a bounded loop; loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-64}
THREADS=${THREADS:-2}
USERS=${USERS:-10000}
HOT_START=${HOT_START:-5000}
MAX_BALANCE=${MAX_BALANCE:-10000}
LOADS=${LOADS:-"spread hot"}
OUT=${OUT:-target/pgbench}
PG_DIR=${PG_DIR:-target/pgbench/pg}
DB=${DB:-pointlock_pgbench}
QUIET=${QUIET:-1}
POINTLOCK_BIN=${POINTLOCK_BIN:-${CARGO_TARGET_DIR:-target}/release/pointlock}
HOT_ID=1

for load in $LOADS; do
  case $load in
    spread | hot) ;;
    *) echo "unknown load in LOADS: $load (spread, hot)" >&2; exit 2 ;;
  esac
done
if [ "$HOT_START" -lt 1 ] || [ "$HOT_START" -ge "$MAX_BALANCE" ]; then
  echo "HOT_START must be within 1..MAX_BALANCE-1" >&2
  exit 2
fi

pg_started=0
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -INT "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ "$pg_started" = 1 ]; then
    scripts/pg-cluster.sh stop "$PG_DIR" || true
  fi
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$QUIET" = 1 ]; then
  scripts/wait-quiet.sh
fi

if [ -z "${PG_URL:-}" ]; then
  echo "==> starting a throwaway PostgreSQL cluster in $PG_DIR" >&2
  scripts/pg-cluster.sh start "$PG_DIR" >/dev/null
  pg_started=1
  PG_URL=$(sed -n 's/^POINTLOCK_TEST_PG_URL=//p' "$PG_DIR/env")
  PG_DATA=$(sed -n 's/^POINTLOCK_TEST_PG_DATA=//p' "$PG_DIR/env")
  PG_BIN=$(sed -n 's/^POINTLOCK_TEST_PG_BIN=//p' "$PG_DIR/env")
fi
PG_DATA=${PG_DATA:-}
PG_BIN=${PG_BIN:-}
# pgbench and psql: PG_BIN's, else Debian's newest, else PATH's.
find_pg_tool() { # NAME
  local dir
  for dir in "$PG_BIN" $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
    if [ -n "$dir" ] && [ -x "$dir/$1" ]; then
      echo "$dir/$1"
      return
    fi
  done
  command -v "$1" || { echo "$1 is missing (apt-get install postgresql-client, or set PG_BIN)" >&2; return 1; }
}
PGBENCH=$(find_pg_tool pgbench)
PSQL=$(find_pg_tool psql)
[ -n "$PG_DATA" ] || echo "note: no PG_DATA: no database CPU figures" >&2

# `postgres://USER@HOST:PORT/DB` with DB replaced.
base=${PG_URL%%\?*}
DB_URL="${base%/*}/$DB"
psql_admin() { "$PSQL" -X -q -v ON_ERROR_STOP=1 "$PG_URL" "$@"; }
psql_db() { "$PSQL" -X -q -v ON_ERROR_STOP=1 "$DB_URL" "$@"; }

pg_version=$("$PSQL" -X -At "$PG_URL" -c 'SHOW server_version')
echo "==> PostgreSQL: $PG_URL ($pg_version); $("$PGBENCH" --version)" >&2
psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null

# The schema.
mkdir -p "$OUT"
if [ ! -x "$POINTLOCK_BIN" ]; then
  cargo build --release --locked --bin pointlock
fi
[ -x "$POINTLOCK_BIN" ] || { echo "no $POINTLOCK_BIN after cargo build" >&2; exit 1; }
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
RUST_LOG=warn "$POINTLOCK_BIN" --store "$DB_URL" --addr "127.0.0.1:$port" 2>"$OUT/migrate.log" &
server_pid=$!
ready=0
for _ in $(seq 300); do # at most 30 s
  if curl -fsS -o /dev/null "http://127.0.0.1:$port/health" 2>/dev/null; then
    ready=1
    break
  fi
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
kill -INT "$server_pid" 2>/dev/null || true
wait "$server_pid" 2>/dev/null || true
server_pid=""
if [ "$ready" != 1 ]; then
  tail -n 20 "$OUT/migrate.log" >&2 || true
  echo "$POINTLOCK_BIN did not become healthy within 30 s" >&2
  exit 1
fi
schema_source="migrated by $POINTLOCK_BIN"
psql_db -c "ALTER TABLE user_point SET (autovacuum_enabled = false)" \
  -c "ALTER TABLE point_history SET (autovacuum_enabled = false)" >/dev/null
echo "==> schema: $schema_source" >&2

# CPU seconds of the cluster, as JSON {"ticks": utime + stime, "sched":
# schedstat}: the postmaster (DATA/postmaster.pid), every process whose parent
# it is, and the postmaster's reaped children (cutime + cstime), so a backend
# that exits (pgbench's, at the end) keeps counting. null without PG_DATA.
pg_cpu() {
  python3 - "${PG_DATA:+$PG_DATA/postmaster.pid}" "$(getconf CLK_TCK)" <<'PY'
import json, os, sys
path, hz = sys.argv[1], int(sys.argv[2])
def stat(pid):
    text = open(f"/proc/{pid}/stat").read()
    return text[text.rfind(")") + 2:].split()  # [0] = state, [1] = ppid, [11] = utime
def sched(pid):
    return int(open(f"/proc/{pid}/schedstat").read().split()[0]) / 1e9
try:
    master = open(path).readline().strip()
    m = stat(master)
except (OSError, ValueError):
    print("null")
    sys.exit()
reaped = (int(m[13]) + int(m[14])) / hz
ticks = (int(m[11]) + int(m[12])) / hz + reaped
sched_s = sched(master) + reaped
for pid in os.listdir("/proc"):
    if pid.isdigit() and pid != master:
        try:
            s = stat(pid)
            if s[1] == master:
                ticks += (int(s[11]) + int(s[12])) / hz
                sched_s += sched(pid)
        except (OSError, IndexError):
            pass
print(json.dumps({"ticks": ticks, "sched": sched_s}))
PY
}

# How busy both CPUs were over 2 s (percent), from /proc/stat.
cpu_busy() {
  python3 - <<'PY'
import time
def sample():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return sum(f), f[3] + f[4]
t0, i0 = sample()
time.sleep(2)
t1, i1 = sample()
print(round(100 * ((t1 - t0) - (i1 - i0)) / max(t1 - t0, 1), 1))
PY
}

# Until pgbench's backends have exited (at most 10 s): their time is then in
# the postmaster's cutime/cstime.
wait_backends_gone() {
  local left
  for _ in $(seq 100); do
    left=$("$PSQL" -X -At "$PG_URL" -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'")
    [ "$left" = 0 ] && return 0
    sleep 0.1
  done
  echo "note: pgbench's connections still open after 10 s" >&2
}

reset_tables() { # LOAD
  local hot_point=0
  [ "$1" = hot ] && hot_point=$HOT_START
  psql_db -c "TRUNCATE user_point, point_history RESTART IDENTITY" \
    -c "INSERT INTO user_point (id, point, update_millis) SELECT g, 0, 0 FROM generate_series(1, $USERS) g" \
    -c "UPDATE user_point SET point = $hot_point WHERE id = $HOT_ID" \
    -c "VACUUM ANALYZE user_point" -c "VACUUM ANALYZE point_history" >/dev/null
  psql_admin -c "CHECKPOINT" >/dev/null
}

results="$OUT/results.jsonl"
: >"$results"

run() { # LOAD
  local load=$1 dir="$OUT/$1" status=0 busy loadavg cpu_before cpu_after
  local -a scripts
  case $load in
    spread) scripts=(-f benches/pgbench/charge.sql) ;;
    hot) scripts=(-f benches/pgbench/hot_charge.sql@1 -f benches/pgbench/hot_use.sql@1) ;;
  esac
  rm -rf "$dir"
  mkdir -p "$dir"
  reset_tables "$load"
  busy=$(cpu_busy)
  loadavg=$(cut -d' ' -f1-3 /proc/loadavg)
  echo "==> $load: ${DURATION}s, $CLIENTS clients, $THREADS threads (CPUs ${busy}% busy over the 2 s before; load average $loadavg)" >&2
  cpu_before=$(pg_cpu)
  local TIMEFORMAT='%U %S'
  { time timeout $((DURATION + 60)) "$PGBENCH" -n -M prepared -c "$CLIENTS" -j "$THREADS" -T "$DURATION" \
    -D users="$USERS" -D max="$MAX_BALANCE" -D hot="$HOT_ID" -D now="$(date +%s%3N)" \
    "${scripts[@]}" -l --log-prefix="$dir/log" "$DB_URL" >"$dir/pgbench.out" 2>"$dir/pgbench.err" \
    || status=$?; } 2>"$dir/pgbench.time"
  wait_backends_gone
  cpu_after=$(pg_cpu)
  psql_db -At -F ' ' -c "SELECT
      (SELECT count(*) FROM point_history),
      (SELECT count(*) FROM point_history WHERE type = 'CHARGE'),
      (SELECT count(*) FROM point_history WHERE type = 'USE'),
      (SELECT coalesce(sum(point), 0) FROM user_point WHERE id <> $HOT_ID),
      (SELECT point FROM user_point WHERE id = $HOT_ID),
      (SELECT count(*) FROM point_history WHERE user_id = $HOT_ID AND type = 'CHARGE'),
      (SELECT count(*) FROM point_history WHERE user_id = $HOT_ID AND type = 'USE')" >"$dir/check.txt"
  python3 - "$load" "$dir" "$status" "$cpu_before" "$cpu_after" "$busy" "$loadavg" \
    "$DURATION" "$CLIENTS" "$THREADS" "$USERS" "$HOT_START" "$schema_source" "$pg_version" >>"$results" <<'PY'
import glob, json, math, re, sys
(load, d, status, before, after, busy, loadavg, duration, clients, threads, users,
 hot_start, schema, pg_version) = sys.argv[1:]
out = open(f"{d}/pgbench.out").read()
err = open(f"{d}/pgbench.err").read()
def grab(pattern, text=out, cast=float):
    m = re.search(pattern, text, re.M)
    return cast(m.group(1)) if m else None
processed = grab(r"^number of transactions actually processed: (\d+)", cast=int) or 0
failed = grab(r"^number of failed transactions: (\d+)", cast=int) or 0
tps = grab(r"^tps = ([\d.]+) \(without initial connection time\)") or 0.0
aborted = len(re.findall(r"^client \d+ aborted", err, re.M))
# Per-transaction log lines: client_id transaction_no time script_no time_epoch time_us;
# `time` is the latency in microseconds (a word instead for a failed one).
lat = []
for path in glob.glob(f"{d}/log.*"):
    for line in open(path):
        f = line.split()
        if len(f) >= 3 and f[2].isdigit():
            lat.append(int(f[2]))
lat.sort()
def pct(p):
    return lat[min(max(math.ceil(len(lat) * p), 1), len(lat)) - 1] / 1000 if lat else None
rows, charges, uses, others, hot_point, hot_charges, hot_uses = (
    int(x) for x in open(f"{d}/check.txt").read().split())
changes = rows
refused = processed - changes
hot_start = int(hot_start) if load == "hot" else 0
check_ok = (others + hot_point == charges - uses + hot_start
            and hot_point == hot_start + hot_charges - hot_uses)
b, a = json.loads(before), json.loads(after)
per_change = lambda seconds: round(seconds * 1e6 / changes, 2) if changes else None
db_ticks = per_change(a["ticks"] - b["ticks"]) if a and b else None
db_sched = per_change(a["sched"] - b["sched"]) if a and b else None
user_s, sys_s = (float(x) for x in open(f"{d}/pgbench.time").read().split())
r = dict(
    load=load, clients=int(clients), threads=int(threads), duration_s=int(duration),
    users=int(users) if load == "spread" else 1,
    transactions=processed, tps=round(tps, 1), changes=changes, refused=refused,
    changes_per_s=round(tps * changes / processed, 1) if processed else 0.0,
    p50_ms=pct(0.50), p99_ms=pct(0.99), latencies=len(lat),
    errors=failed + aborted, failed_transactions=failed, aborted_clients=aborted,
    pgbench_exit=int(status),
    db_cpu_us_per_change=db_ticks, db_cpu_sched_us_per_change=db_sched,
    pgbench_cpu_us_per_change=per_change(user_s + sys_s),
    check_ok=check_ok, schema=schema, postgres=pg_version,
    before=dict(cpu_busy_percent=float(busy), loadavg=loadavg),
)
print(json.dumps(r))
PY
  tail -n 1 "$results" >&2
  if [ "$status" != 0 ]; then
    echo "note: pgbench exited $status (see $dir/pgbench.err)" >&2
    tail -n 5 "$dir/pgbench.err" >&2 || true
  fi
}

for load in $LOADS; do
  run "$load"
done

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def f(x, fmt):
    return "-" if x is None else format(x, fmt)
print()
print("| load | clients | changes/s | p50 / p99 ms | errors | refused | database CPU µs/change (utime+stime / schedstat) | pgbench CPU µs/change | check | CPUs busy before, % |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f'| {r["load"]} | {r["clients"]} | {r["changes_per_s"]:,.0f} | {f(r["p50_ms"], ".2f")} / {f(r["p99_ms"], ".2f")} '
          f'| {r["errors"]} | {r["refused"]} | {f(r["db_cpu_us_per_change"], ".1f")} / {f(r["db_cpu_sched_us_per_change"], ".1f")} '
          f'| {f(r["pgbench_cpu_us_per_change"], ".1f")} | {"ok" if r["check_ok"] else "FAILED"} | {r["before"]["cpu_busy_percent"]} |')
bad = [r["load"] for r in rows if not r["check_ok"]]
if bad:
    print(f"\nFAILED: balances and history disagree for {bad}", file=sys.stderr)
    sys.exit(1)
PY
