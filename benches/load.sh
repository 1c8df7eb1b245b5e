#!/usr/bin/env bash
# HTTP load on loopback with wrk: the release `pointlock` on its stores (memory,
# SQLite, PostgreSQL with one or several instances) and the bare hyper baseline
# (benches/baseline_server.rs), back to back in one run.
#
#   ./benches/load.sh                     # memory store vs baseline: 10 s per scenario, 64 connections
#   DURATION=20 ROUNDS=3 ./benches/load.sh
#   PIN=1 ./benches/load.sh               # servers on CPU 0, wrk on CPU 1 (steadier)
#   STORES="memory sqlite pg pg4" ./benches/load.sh   # every store; pg4 = 4 processes on one database
#   STORES="memory memory-metrics-off" BASELINE=0 ROUNDS=3 ./benches/load.sh
#                                         # the cost of the metrics: the same binary with --metrics off
#
# Scenarios (benches/load/wallet.lua): GET over 10,000 users; charge 1 over 10,000
# users; one hot user alternating charge/use of 1. For each: req/s (and 2xx/s),
# p50, p99, non-2xx, CPU per request of the server(s), of wrk and (PostgreSQL) of
# the database, and (pointlock) the lock table size and RSS after the run.
# Also (pointlock): the non-2xx answers broken down by status (the difference
# of pointlock_http_requests_total in the instances' GET /metrics before and
# after the run; none with --metrics off) and, for charge and hot, the
# database's CPU per change (per 2xx answer): the last table.
#
# STORES (default "memory"): which pointlock configurations run, each started
# fresh per round: `memory`; `memory-metrics-off` (the memory store with
# `--metrics off`); `sqlite` (a new file under $OUT); `sqlite-serial` (the
# same without pipelining: `--sqlite-pipeline off`); `pg-pipelined` (one
# instance with `--pg-pipeline on`); `pg` / `pgN`: N
# pointlock processes (pg = 1) on one fresh PostgreSQL database, on ports
# PG_PORT_BASE.. . With N > 1, one wrk runs N threads, thread i sending to
# instance i (CONNECTIONS/N connections each), so the instances are loaded at
# the same time and wrk's figures are already the sum (req/s) and the merged
# distribution (p50/p99) over all of them. BASELINE=0 skips the baseline server.
# The PostgreSQL cluster: PG_URL (a superuser URL: a database is created per run;
# PG_DATA, its data directory, for its CPU time; PG_BIN, where psql is) if given,
# else a throwaway one started by scripts/pg-cluster.sh in $PG_DIR and stopped
# on exit.
#
# Results: $OUT/results.jsonl (one JSON object per run) and markdown tables on
# stdout. Every loop is bounded: wrk runs for DURATION seconds, each start-up
# waits at most 30 s, and each wrk call is killed after DURATION+30 s.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-1}
ROUNDS=${ROUNDS:-1}
USERS=${USERS:-10000}
# Fresh users for every run (ratios.sh's MILLION mode): see run_wrk.
ID_BASE_STEP=${ID_BASE_STEP:-0}
ID_STRIDE=${ID_STRIDE:-1}
THREAD_SPAN=${THREAD_SPAN:-7919}
runs_done=0
HOT_USER=${HOT_USER:-20000}
POINTLOCK_PORT=${POINTLOCK_PORT:-18080}
BASELINE_PORT=${BASELINE_PORT:-18081}
PG_PORT_BASE=${PG_PORT_BASE:-18090}
SCENARIOS=${SCENARIOS:-"get charge hot"}
STORES=${STORES:-memory}
BASELINE=${BASELINE:-1}
OUT=${OUT:-target/load}
PG_DIR=${PG_DIR:-target/load/pg}
# The binaries cargo builds: under $CARGO_TARGET_DIR when set.
BIN_DIR=${CARGO_TARGET_DIR:-target}/release
# PIN=1: each server gets CPU 0 (so its runtime starts one worker) and wrk CPU 1,
# instead of all three sharing both CPUs; ratios then vary much less between rounds.
# (PostgreSQL itself is not pinned.)
PIN=${PIN:-0}
if [ "$PIN" = 1 ]; then
  command -v taskset >/dev/null || { echo "PIN=1 needs taskset (util-linux)" >&2; exit 1; }
  on_server_cpu=(taskset -c 0)
  on_client_cpu=(taskset -c 1)
else
  on_server_cpu=()
  on_client_cpu=()
fi

command -v wrk >/dev/null || {
  echo "wrk is missing: apt-get install wrk (Debian)" >&2
  exit 1
}
command -v curl >/dev/null || { echo "curl is missing" >&2; exit 1; }

for store in $STORES; do
  case $store in
    memory | memory-metrics-off | sqlite | sqlite-serial | pg | pg[1-9] | pg[1-9][0-9] | pg-pipelined) ;;
    *) echo "unknown store in STORES: $store (memory, memory-metrics-off, sqlite, sqlite-serial, pg, pgN, pg-pipelined)" >&2; exit 2 ;;
  esac
done
needs_pg=0
case " $STORES " in *" pg"*) needs_pg=1 ;; esac

if [ "${BUILD:-1}" = 1 ]; then # BUILD=0: use the binaries already in $BIN_DIR
  echo "==> building release binaries"
  cargo build --release --locked -p pointlock --bin pointlock
  if [ "$BASELINE" = 1 ]; then
    cargo build --release --locked --example baseline_server
  fi
fi
mkdir -p "$OUT"
results="$OUT/results.jsonl"
: >"$results"
rm -f "$OUT"/server-*.log

server_pids=()
pg_started=0
stop_servers() {
  local pid
  for pid in "${server_pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -INT "$pid"
    fi
  done
  for pid in "${server_pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  server_pids=()
}
cleanup() {
  stop_servers
  if [ "$pg_started" = 1 ]; then
    scripts/pg-cluster.sh stop "$PG_DIR" || true
  fi
}
trap cleanup EXIT

if [ "$needs_pg" = 1 ]; then
  if [ -z "${PG_URL:-}" ]; then
    echo "==> starting a throwaway PostgreSQL cluster in $PG_DIR"
    scripts/pg-cluster.sh start "$PG_DIR" >/dev/null
    pg_started=1
    PG_URL=$(sed -n 's/^POINTLOCK_TEST_PG_URL=//p' "$PG_DIR/env")
    PG_DATA=$(sed -n 's/^POINTLOCK_TEST_PG_DATA=//p' "$PG_DIR/env")
    PG_BIN=$(sed -n 's/^POINTLOCK_TEST_PG_BIN=//p' "$PG_DIR/env")
  fi
  PG_DATA=${PG_DATA:-${POINTLOCK_TEST_PG_DATA:-}}
  PG_BIN=${PG_BIN:-${POINTLOCK_TEST_PG_BIN:-}}
  if [ -z "$PG_BIN" ]; then
    command -v psql >/dev/null || { echo "psql is missing (set PG_BIN)" >&2; exit 1; }
    PG_BIN=$(dirname "$(command -v psql)")
  fi
  echo "==> PostgreSQL: $PG_URL"
fi

# `postgres://USER@HOST:PORT/DB` with DB replaced.
pg_url_for() { # DB
  local base=${PG_URL%%\?*}
  echo "${base%/*}/$1"
}
# A fresh database for one run.
pg_fresh_db() { # DB
  "$PG_BIN/psql" -q -v ON_ERROR_STOP=1 "$PG_URL" \
    -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" >/dev/null
}

wait_ready() { # url
  for _ in $(seq 300); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "server did not answer $1 within 30 s" >&2
  return 1
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# CPU time (user + system, all threads) of processes, in clock ticks.
cpu_ticks() { # PID...
  local pid total=0 t
  for pid in "$@"; do
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  echo "$total"
}

# CPU time of the PostgreSQL cluster in microseconds: time on a CPU
# (/proc/PID/schedstat, nanoseconds) of the postmaster (DATA/postmaster.pid) and
# of every process whose parent it is, plus the postmaster's reaped children
# (cutime + cstime): a backend that exits keeps counting. (utime + stime per
# process is in whole clock ticks, which under-counts many short-lived, briefly
# busy backends.) 0 without PG_DATA.
pg_cpu_us() {
  [ -n "${PG_DATA:-}" ] && [ -r "$PG_DATA/postmaster.pid" ] || { echo 0; return; }
  python3 - "$PG_DATA/postmaster.pid" "$(getconf CLK_TCK)" <<'PY'
import os, sys
master = open(sys.argv[1]).readline().strip()
hz = int(sys.argv[2])
def stat(pid):
    text = open(f"/proc/{pid}/stat").read()
    return text[text.rfind(")") + 2:].split()
def sched(pid):
    return int(open(f"/proc/{pid}/schedstat").read().split()[0])
try:
    m = stat(master)
    total = (int(m[13]) + int(m[14])) / hz * 1e9 + sched(master)  # cutime + cstime; own time
except OSError:
    print(0)
    sys.exit()
for pid in os.listdir("/proc"):
    if pid.isdigit() and pid != master:
        try:
            if stat(pid)[1] == master:
                total += sched(pid)
        except OSError:
            pass
print(int(total / 1000))
PY
}

# Answers of pointlock instances by HTTP status, summed over PORT...: the
# counter pointlock_http_requests_total of GET /metrics (every route but
# /metrics itself), as JSON {"200": n, "503": n, ...}; null when an instance
# has no metrics (--metrics off). The difference before/after a wrk run breaks
# wrk's non-2xx count down by status.
http_statuses() { # PORT...
  local port text=""
  for port in "$@"; do
    if ! text+=$(curl -fsS --max-time 5 "http://127.0.0.1:$port/metrics" 2>/dev/null); then
      echo null
      return
    fi
    text+=$'\n'
  done
  python3 -c '
import json, re, sys
total = {}
for m in re.finditer(r"^pointlock_http_requests_total\{(.*)\} (\d+)$", sys.stdin.read(), re.M):
    labels = dict(re.findall(r"(\w+)=\"([^\"]*)\"", m.group(1)))
    if labels.get("route") != "/metrics":
        status = labels.get("status", "?")
        total[status] = total.get(status, 0) + int(m.group(2))
print(json.dumps(total))' <<<"$text"
}

# run_wrk NAME PORTS SCENARIO ROUND -> appends one JSON line to $results
# Besides wrk's own figures it records the CPU time per request of the server(s)
# and of wrk (user + system, from /proc and bash's `time`), and of the database:
# on 2 shared cores the req/s of a round moves with whatever else the host runs,
# CPU per request much less, and the req/s ratio follows from them (wrk's share
# is the same for both).
run_wrk() {
  local name=$1 ports=$2 scenario=$3 round=$4 line keys=0 rss=0 cpu_before cpu_after wrk_cpu
  local pg_before pg_after addrs="" threads=$WRK_THREADS port pid k
  local -a port_list
  read -r -a port_list <<<"$ports"
  if [ "${#port_list[@]}" -gt 1 ]; then
    for port in "${port_list[@]}"; do addrs="$addrs${addrs:+,}127.0.0.1:$port"; done
    threads=${#port_list[@]}
  fi
  local TIMEFORMAT='%U %S' status_before=null status_after=null
  if [ "$name" != baseline ]; then status_before=$(http_statuses "${port_list[@]}"); fi
  cpu_before=$(cpu_ticks "${server_pids[@]}")
  pg_before=$(pg_cpu_us)
  # Each run of a round starts ID_BASE_STEP ids further (0: every run
  # reuses the same users); ID_STRIDE scatters them (benches/load/wallet.lua).
  local id_base=$((runs_done * ID_BASE_STEP))
  runs_done=$((runs_done + 1))
  { time SCENARIO=$scenario USERS=$USERS HOT_USER=$HOT_USER ADDRS=$addrs \
    ID_BASE=$id_base ID_STRIDE=$ID_STRIDE THREAD_SPAN=$THREAD_SPAN \
    timeout $((DURATION + 30)) "${on_client_cpu[@]}" wrk -t"$threads" -c"$CONNECTIONS" -d"${DURATION}s" \
    --timeout 5s -s benches/load/wallet.lua "http://127.0.0.1:${port_list[0]}" >"$OUT/wrk.out" 2>"$OUT/wrk.err"; } 2>"$OUT/wrk.time"
  cpu_after=$(cpu_ticks "${server_pids[@]}")
  pg_after=$(pg_cpu_us)
  if [ "$name" != baseline ]; then status_after=$(http_statuses "${port_list[@]}"); fi
  line=$(grep '^RESULT ' "$OUT/wrk.out" | cut -c8-)
  wrk_cpu=$(awk '{print $1 + $2}' "$OUT/wrk.time")
  if [ "$name" != baseline ]; then
    keys=0
    for port in "${port_list[@]}"; do
      k=$(curl -fsS "http://127.0.0.1:$port/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["lock"]["keys"])')
      keys=$((keys + k))
    done
  else
    keys=null
  fi
  for pid in "${server_pids[@]}"; do rss=$((rss + $(rss_kib "$pid"))); done
  python3 - "$line" "$name" "$round" "$keys" "$rss" "$CONNECTIONS" \
    "$((cpu_after - cpu_before))" "$(getconf CLK_TCK)" "$wrk_cpu" "${#port_list[@]}" \
    "$((pg_after - pg_before))" "$threads" "$status_before" "$status_after" >>"$results" <<'PY'
import json, sys
line, name, round_, keys, rss, conns, ticks, hz, wrk_cpu, instances, pg_us, threads = sys.argv[1:13]
status_before, status_after = (json.loads(x) for x in sys.argv[13:15])
r = json.loads(line)
n = max(r["requests"], 1)
r.update(server=name, round=int(round_), connections=int(conns), instances=int(instances),
         wrk_threads=int(threads),
         ok_rps=round((r["requests"] - r["non2xx"]) / r["seconds"], 1),
         lock_keys_after=None if keys == "null" else int(keys), rss_kib=int(rss),
         server_cpu_us_per_req=round(int(ticks) / int(hz) * 1e6 / n, 2),
         wrk_cpu_us_per_req=round(float(wrk_cpu) * 1e6 / n, 2),
         db_cpu_us_per_req=round(int(pg_us) / n, 2) if name.startswith("pointlock-pg") else None)
# Added fields: the non-2xx answers by status (from the servers' /metrics; null
# without metrics) and, for the scenarios that change balances, the database
# CPU per change (per 2xx answer: a refused change changed nothing).
if status_before is not None and status_after is not None:
    diff = {s: status_after.get(s, 0) - status_before.get(s, 0) for s in status_after}
    r["non2xx_by_status"] = {s: c for s, c in sorted(diff.items()) if c > 0 and not s.startswith("2")}
else:
    r["non2xx_by_status"] = None
changes = r["requests"] - r["non2xx"]
r["db_cpu_us_per_change"] = (round(int(pg_us) / changes, 2)
                             if name.startswith("pointlock-pg") and r["scenario"] in ("charge", "hot") and changes > 0
                             else None)
print(json.dumps(r))
PY
  tail -n 1 "$results"
  # Why the non-2xx answers were refused (PostgreSQL: conflicts between instances).
  if [ "$name" != baseline ] && [ "$(tail -n 1 "$results" | python3 -c 'import json,sys; print(json.load(sys.stdin)["non2xx"])')" != 0 ]; then
    for port in "${port_list[@]}"; do
      curl -fsS "http://127.0.0.1:$port/stats" | python3 -c 'import json,sys; s=json.load(sys.stdin); print("    stats:", json.dumps({"service": s.get("service"), "store": s.get("store")}))' || true
    done
  fi
}

# Each instance's log (warnings: e.g. one line per 503) goes to $OUT/server-PORT.log.
start_pointlock() { # PORT STORE-SPEC [FLAG...]
  local port=$1 spec=$2
  shift 2
  RUST_LOG=warn "${on_server_cpu[@]}" "$BIN_DIR/pointlock" --store "$spec" --addr "127.0.0.1:$port" "$@" \
    2>>"$OUT/server-$port.log" &
  server_pids+=($!)
}

run_server() { # NAME ROUND
  local name=$1 round=$2 ports i n db
  case $name in
    baseline)
      ports=$BASELINE_PORT
      "${on_server_cpu[@]}" "$BIN_DIR/examples/baseline_server" "127.0.0.1:$ports" &
      server_pids+=($!)
      ;;
    pointlock) # the memory store (the name the earlier results and charts use)
      ports=$POINTLOCK_PORT
      start_pointlock "$ports" memory
      ;;
    pointlock-metrics-off)
      ports=$POINTLOCK_PORT
      start_pointlock "$ports" memory --metrics off
      ;;
    pointlock-sqlite)
      ports=$POINTLOCK_PORT
      rm -f "$OUT/load.db" "$OUT/load.db-wal" "$OUT/load.db-shm"
      start_pointlock "$ports" "sqlite:$OUT/load.db"
      ;;
    pointlock-sqlite-serial) # the SQLite store without pipelining (a user locked until durable)
      ports=$POINTLOCK_PORT
      rm -f "$OUT/load.db" "$OUT/load.db-wal" "$OUT/load.db-shm"
      start_pointlock "$ports" "sqlite:$OUT/load.db" --sqlite-pipeline off
      ;;
    pointlock-pg-pipelined) # one instance, --pg-pipeline on
      db="pointlock_load_pgp"
      pg_fresh_db "$db"
      ports=$PG_PORT_BASE
      start_pointlock "$ports" "$(pg_url_for "$db")" --pg-pipeline on
      ;;
    pointlock-pg*)
      n=${name#pointlock-pg}
      n=${n:-1}
      db="pointlock_load_pg$n"
      pg_fresh_db "$db"
      ports=""
      # The first instance migrates the schema; the others start on top of it.
      for i in $(seq 0 $((n - 1))); do
        start_pointlock "$((PG_PORT_BASE + i))" "$(pg_url_for "$db")"
        ports="$ports${ports:+ }$((PG_PORT_BASE + i))"
      done
      ;;
  esac
  local port
  for port in $ports; do
    wait_ready "http://127.0.0.1:$port/health"
  done
  set -- $ports
  # The hot user starts mid-range so alternating charge/use never hits a policy limit.
  curl -fsS -o /dev/null -X PATCH -H 'content-type: application/json' \
    -d '{"amount":5000}' "http://127.0.0.1:$1/point/$HOT_USER/charge"
  # Warm-up (not recorded): connections, allocator, caches, the pools.
  local addrs="" threads=$WRK_THREADS
  if [ $# -gt 1 ]; then
    for port in $ports; do addrs="$addrs${addrs:+,}127.0.0.1:$port"; done
    threads=$#
  fi
  SCENARIO=get USERS=$USERS ADDRS=$addrs timeout 30 "${on_client_cpu[@]}" wrk -t"$threads" -c"$CONNECTIONS" -d2s \
    -s benches/load/wallet.lua "http://127.0.0.1:$1" >/dev/null
  for scenario in $SCENARIOS; do
    run_wrk "$name" "$ports" "$scenario" "$round"
  done
  stop_servers
}

servers=()
for store in $STORES; do
  case $store in
    memory) servers+=(pointlock) ;;
    memory-metrics-off) servers+=(pointlock-metrics-off) ;;
    *) servers+=("pointlock-$store") ;;
  esac
done
if [ "$BASELINE" = 1 ]; then servers+=(baseline); fi

echo "==> load: ${DURATION}s per scenario, $CONNECTIONS connections, wrk threads $WRK_THREADS, $(nproc) cores, PIN=$PIN, servers: ${servers[*]}"
for round in $(seq "$ROUNDS"); do
  for server in "${servers[@]}"; do
    run_server "$server" "$round"
  done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(server, scenario, key):
    vals = [r[key] for r in rows if r["server"] == server and r["scenario"] == scenario and r.get(key) is not None]
    return statistics.median(vals) if vals else None
scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
servers = list(dict.fromkeys(r["server"] for r in rows))
print()
if "pointlock" in servers and "baseline" in servers:
    def ratios(s):
        by_round = {}
        for r in rows:
            if r["scenario"] == s:
                by_round.setdefault(r["round"], {})[r["server"]] = r["rps"]
        return [v["pointlock"] / v["baseline"] for v in by_round.values() if "pointlock" in v and "baseline" in v]
    print("| scenario | pointlock req/s | baseline req/s | ratio | ratio per round | server CPU us/req pointlock / baseline | wrk CPU us/req | p50 / p99 (ms) pointlock | p50 / p99 (ms) baseline | non-2xx | lock keys after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in scenarios:
        p, b = med("pointlock", s, "rps"), med("baseline", s, "rps")
        non2xx = sum(r["non2xx"] for r in rows if r["server"] == "pointlock" and r["scenario"] == s)
        keys = max(r["lock_keys_after"] or 0 for r in rows if r["server"] == "pointlock" and r["scenario"] == s)
        ratio = f"{p / b:.2f}" if p and b else "-"
        def lat(server):
            return f'{med(server, s, "p50_us") / 1000:.2f} / {med(server, s, "p99_us") / 1000:.2f}'
        per_round = " ".join(f"{x:.2f}" for x in ratios(s))
        cpu = f'{med("pointlock", s, "server_cpu_us_per_req"):.1f} / {med("baseline", s, "server_cpu_us_per_req"):.1f}'
        wrk_cpu = f'{med("pointlock", s, "wrk_cpu_us_per_req"):.1f} / {med("baseline", s, "wrk_cpu_us_per_req"):.1f}'
        print(f"| {s} | {p:,.0f} | {b:,.0f} | {ratio} | {per_round} | {cpu} | {wrk_cpu} | {lat('pointlock')} | {lat('baseline')} | {non2xx} | {keys} |")
    hot, spread = med("pointlock", "hot", "rps"), med("pointlock", "charge", "rps")
    if hot and spread:
        print(f"\nhot user / spread charge (pointlock): {hot / spread:.2f}")

stores = [s for s in servers if s.startswith("pointlock")]
if len(stores) > 1 or stores != ["pointlock"]:
    names = {"pointlock": "memory", "pointlock-sqlite": "SQLite", "pointlock-sqlite-serial": "SQLite, not pipelined",
             "pointlock-metrics-off": "memory, --metrics off",
             "pointlock-pg-pipelined": "PostgreSQL x1, pipelined"}
    def label(s):
        if s in names:
            return names[s]
        n = s[len("pointlock-pg"):] or "1"
        return f"PostgreSQL x{n}"
    def per_round(server, s):
        # ratio to the memory store of the same round
        by_round = {}
        for r in rows:
            if r["scenario"] == s:
                by_round.setdefault(r["round"], {})[r["server"]] = r["ok_rps"]
        return [v[server] / v["pointlock"] for v in by_round.values() if server in v and v.get("pointlock")]
    print()
    print("| scenario | store | 2xx/s (median) | rounds | / memory (per round) | p50 / p99 ms | non-2xx | server CPU us/req | database CPU us/req | wrk CPU us/req |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in scenarios:
        for server in stores:
            ok = med(server, s, "ok_rps")
            if ok is None:
                continue
            n = len([r for r in rows if r["server"] == server and r["scenario"] == s])
            rr = per_round(server, s)
            ratio = f'{statistics.median(rr):.2f} ({" ".join(f"{x:.2f}" for x in rr)})' if rr and server != "pointlock" else "-"
            non2xx = sum(r["non2xx"] for r in rows if r["server"] == server and r["scenario"] == s)
            db = med(server, s, "db_cpu_us_per_req")
            print(f'| {s} | {label(server)} | {ok:,.0f} | {n} | {ratio} | {med(server, s, "p50_us") / 1000:.2f} / {med(server, s, "p99_us") / 1000:.2f} | {non2xx} '
                  f'| {med(server, s, "server_cpu_us_per_req"):.1f} | {"-" if db is None else f"{db:.1f}"} | {med(server, s, "wrk_cpu_us_per_req"):.1f} |')

    # Errors by kind and the database's CPU per change (2xx answer of a change).
    print()
    print("| scenario | store | non-2xx by status (all rounds) | socket errors | database CPU us/change |")
    print("|---|---|---|---|---|")
    for s in scenarios:
        for server in stores:
            of = [r for r in rows if r["server"] == server and r["scenario"] == s]
            if not of:
                continue
            by_status = {}
            for r in of:
                for code, count in (r.get("non2xx_by_status") or {}).items():
                    by_status[code] = by_status.get(code, 0) + count
            known = all(r.get("non2xx_by_status") is not None for r in of)
            statuses = ", ".join(f"{code}: {count:,}" for code, count in sorted(by_status.items())) or ("none" if known else "-")
            sockets = sum(r["socket_errors"] for r in of)
            per_change = med(server, s, "db_cpu_us_per_change")
            print(f'| {s} | {label(server)} | {statuses} | {sockets} | {"-" if per_change is None else f"{per_change:.1f}"} |')
PY
