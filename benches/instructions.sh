#!/usr/bin/env bash
# Instructions per request (user space), counted by valgrind's callgrind: repeatable
# whatever else the machine does, unlike req/s. Runs the release `pointlock --store
# memory` and the bare hyper baseline under callgrind, each for a bounded wrk run
# (8 connections, 4 s) of one scenario, and prints instructions per request.
#
#   ./benches/instructions.sh            # SCENARIO=charge (or get, hot)
#   ANNOTATE=1 ./benches/instructions.sh # also the top functions of pointlock
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIO=${SCENARIO:-charge}
PORT=${PORT:-18097}
OUT=${OUT:-target/instructions}
command -v valgrind >/dev/null || { echo "valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is missing (apt-get install wrk)" >&2; exit 1; }
if [ "${BUILD:-1}" = 1 ]; then
  cargo build --release --locked -p pointlock-server --bin pointlock
  cargo build --release --locked --example baseline_server
fi
mkdir -p "$OUT"

measure() { # NAME CMD...
  local name=$1 pid reqs total
  shift
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$name.callgrind" "$@" >"$OUT/$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 150); do
    curl -fsS -o /dev/null "http://127.0.0.1:$PORT/health" 2>/dev/null && break
    sleep 0.2
  done
  reqs=$(SCENARIO=$SCENARIO timeout 60 wrk -t1 -c8 -d4s -s benches/load/wallet.lua \
    "http://127.0.0.1:$PORT" | sed -n 's/^RESULT //p' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
  kill -INT "$pid"
  wait "$pid" || true
  total=$(callgrind_annotate "$OUT/$name.callgrind" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
  echo "$name $((total / reqs))" | tee -a "$OUT/summary.txt"
}

: >"$OUT/summary.txt"
measure baseline target/release/examples/baseline_server "127.0.0.1:$PORT"
measure pointlock target/release/pointlock --store memory --addr "127.0.0.1:$PORT"
awk '{v[$1]=$2} END {printf "instructions per %s request: pointlock %d, baseline %d, ratio %.2f\n", "'"$SCENARIO"'", v["pointlock"], v["baseline"], v["pointlock"]/v["baseline"]}' "$OUT/summary.txt"
if [ "${ANNOTATE:-0}" = 1 ]; then
  callgrind_annotate "$OUT/pointlock.callgrind" | head -40
fi
