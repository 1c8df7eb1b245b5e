#!/usr/bin/env bash
# HTTP load: the release `pointlock --store memory` against the bare hyper baseline
# (benches/baseline_server.rs), back to back in one run, on loopback, with wrk.
#
#   ./benches/load.sh                     # 10 s per scenario, 64 connections
#   DURATION=20 ROUNDS=3 ./benches/load.sh
#   PIN=1 ./benches/load.sh               # server on CPU 0, wrk on CPU 1 (steadier)
#
# Scenarios (benches/load/wallet.lua): GET over 10,000 users; charge 1 over 10,000
# users; one hot user alternating charge/use of 1. For each: req/s, p50, p99,
# non-2xx, and (pointlock) the lock table size and RSS after the run.
# Results: target/load/results.jsonl (one JSON object per run) and a markdown
# table on stdout. Every loop is bounded: wrk runs for DURATION seconds, each
# start-up waits at most 30 s, and each wrk call is killed after DURATION+30 s.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-1}
ROUNDS=${ROUNDS:-1}
USERS=${USERS:-10000}
HOT_USER=${HOT_USER:-20000}
POINTLOCK_PORT=${POINTLOCK_PORT:-18080}
BASELINE_PORT=${BASELINE_PORT:-18081}
SCENARIOS=${SCENARIOS:-"get charge hot"}
OUT=${OUT:-target/load}
# PIN=1: each server gets CPU 0 (so its runtime starts one worker) and wrk CPU 1,
# instead of all three sharing both CPUs; ratios then vary much less between rounds.
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

if [ "${BUILD:-1}" = 1 ]; then # BUILD=0: use the binaries already in target/release
  echo "==> building release binaries"
  cargo build --release --locked -p pointlock-server --bin pointlock
  cargo build --release --locked --example baseline_server
fi
mkdir -p "$OUT"
results="$OUT/results.jsonl"
: >"$results"

server_pid=""
stop_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -INT "$server_pid"
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}
trap stop_server EXIT

wait_ready() { # url
  for _ in $(seq 300); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "server did not answer $1 within 30 s" >&2
  return 1
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# CPU time (user + system, all threads) a process has used, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# run_wrk NAME PORT SCENARIO ROUND -> appends one JSON line to $results
# Besides wrk's own figures it records the CPU time per request of the server and
# of wrk (user + system, from /proc and bash's `time`): on 2 shared cores the
# req/s of a round moves with whatever else the host runs, CPU per request much
# less, and the req/s ratio follows from them (wrk's share is the same for both).
run_wrk() {
  local name=$1 port=$2 scenario=$3 round=$4 line keys=null rss cpu_before cpu_after wrk_cpu
  local TIMEFORMAT='%U %S'
  cpu_before=$(cpu_ticks "$server_pid")
  { time SCENARIO=$scenario USERS=$USERS HOT_USER=$HOT_USER \
    timeout $((DURATION + 30)) "${on_client_cpu[@]}" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" \
    --timeout 5s -s benches/load/wallet.lua "http://127.0.0.1:$port" >"$OUT/wrk.out" 2>"$OUT/wrk.err"; } 2>"$OUT/wrk.time"
  cpu_after=$(cpu_ticks "$server_pid")
  line=$(grep '^RESULT ' "$OUT/wrk.out" | cut -c8-)
  wrk_cpu=$(awk '{print $1 + $2}' "$OUT/wrk.time")
  if [ "$name" = pointlock ]; then
    keys=$(curl -fsS "http://127.0.0.1:$port/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["lock"]["keys"])')
  fi
  rss=$(rss_kib "$server_pid")
  python3 - "$line" "$name" "$round" "$keys" "$rss" "$CONNECTIONS" \
    "$((cpu_after - cpu_before))" "$(getconf CLK_TCK)" "$wrk_cpu" >>"$results" <<'PY'
import json, sys
line, name, round_, keys, rss, conns, ticks, hz, wrk_cpu = sys.argv[1:]
r = json.loads(line)
n = max(r["requests"], 1)
r.update(server=name, round=int(round_), connections=int(conns),
         lock_keys_after=None if keys == "null" else int(keys), rss_kib=int(rss),
         server_cpu_us_per_req=round(int(ticks) / int(hz) * 1e6 / n, 2),
         wrk_cpu_us_per_req=round(float(wrk_cpu) * 1e6 / n, 2))
print(json.dumps(r))
PY
  tail -n 1 "$results"
}

run_server() { # NAME PORT ROUND
  local name=$1 port=$2 round=$3
  if [ "$name" = pointlock ]; then
    RUST_LOG=warn "${on_server_cpu[@]}" target/release/pointlock --store memory --addr "127.0.0.1:$port" &
  else
    "${on_server_cpu[@]}" target/release/examples/baseline_server "127.0.0.1:$port" &
  fi
  server_pid=$!
  wait_ready "http://127.0.0.1:$port/health"
  # The hot user starts mid-range so alternating charge/use never hits a policy limit.
  curl -fsS -o /dev/null -X PATCH -H 'content-type: application/json' \
    -d '{"amount":5000}' "http://127.0.0.1:$port/point/$HOT_USER/charge"
  # Warm-up (not recorded): connections, allocator, caches.
  SCENARIO=get USERS=$USERS timeout 30 "${on_client_cpu[@]}" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d2s \
    -s benches/load/wallet.lua "http://127.0.0.1:$port" >/dev/null
  for scenario in $SCENARIOS; do
    run_wrk "$name" "$port" "$scenario" "$round"
  done
  stop_server
}

echo "==> load: ${DURATION}s per scenario, $CONNECTIONS connections, wrk threads $WRK_THREADS, $(nproc) cores, PIN=$PIN"
for round in $(seq "$ROUNDS"); do
  run_server pointlock "$POINTLOCK_PORT" "$round"
  run_server baseline "$BASELINE_PORT" "$round"
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(server, scenario, key):
    vals = [r[key] for r in rows if r["server"] == server and r["scenario"] == scenario]
    return statistics.median(vals) if vals else None
scenarios = []
for r in rows:
    if r["scenario"] not in scenarios:
        scenarios.append(r["scenario"])
print()
def ratios(s):
    by_round = {}
    for r in rows:
        if r["scenario"] == s:
            by_round.setdefault(r["round"], {})[r["server"]] = r["rps"]
    return [v["pointlock"] / v["baseline"] for v in by_round.values() if len(v) == 2]
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
PY
