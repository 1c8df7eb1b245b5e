#!/usr/bin/env bash
# The throughput goals of docs/performance.md as same-run ratios, from one run:
# the bare hyper server (benches/baseline_server.rs), pointlock on the memory
# store and on the default store (SQLite), each scenario (GET over 10,000
# users, charge over 10,000 users, one hot user) in alternating rounds, then a
# table of ratios per round and their medians (scripts/bench_ratios.py).
#
#   ./benches/ratios.sh                 # 3 rounds x 5 s per scenario, wrk 2 threads, 64 connections
#   MILLION=1 ./benches/ratios.sh       # also: the default store as its table grows past a million users
#   ROUNDS=5 DURATION=10 ./benches/ratios.sh
#
# MILLION=1 adds one server on the default store taking RUNS (default 8) runs of
# charges back to back, DURATION s each, to ids scattered over 100 million,
# every change a new user (each run starts 10 million ids further, each wrk
# thread 5 million from the other; the ids advance by a stride of 7,919, a
# permutation of the space); the summary
# compares the rate of the first run that starts with at least a million
# users against the spread charge rate over 10,000 users of the same run.
#
# Loopback only; every wrk run is bounded (load.sh). Nothing here asserts: the
# figures are for docs/performance.md; CI does not assert on timing.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/ratios}
export DURATION=${DURATION:-5} ROUNDS=${ROUNDS:-3} WRK_THREADS=${WRK_THREADS:-2}
export CONNECTIONS=${CONNECTIONS:-64}
mkdir -p "$OUT"
OUT="$OUT/spread" STORES="memory sqlite" BASELINE=1 ./benches/load.sh
args=("$OUT/spread/results.jsonl")
if [ "${MILLION:-0}" = 1 ]; then
  runs=${RUNS:-8}
  scenarios=$(for _ in $(seq "$runs"); do printf 'charge '; done)
  OUT="$OUT/million" STORES=sqlite BASELINE=0 ROUNDS=1 USERS=100000000 \
    ID_BASE_STEP=10000000 THREAD_SPAN=5000000 ID_STRIDE=7919 \
    SCENARIOS="$scenarios" ./benches/load.sh
  args+=("$OUT/million/results.jsonl")
fi
python3 scripts/bench_ratios.py "${args[@]}"
