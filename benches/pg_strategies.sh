#!/usr/bin/env bash
# Driver of the strategy benchmark (benches/pg_strategies.rs):
# build it, start a throwaway PostgreSQL cluster (scripts/pg-cluster.sh) unless
# POINTLOCK_TEST_PG_URL is set, run it, stop the cluster.
#
#   ./benches/pg_strategies.sh                      # every cell, 3 rounds (~4 min)
#   ./benches/pg_strategies.sh --rounds 1 --loads hot --instances 4
#   ./benches/pg_strategies.sh --strategies pointlock,unconditional --loads hot --instances 4 --rounds 1
#                                                   # negative control: must report lost updates
#
# Arguments go to the benchmark (`--help` lists them). Results: a markdown table
# on stdout, per-cell lines on stderr, JSON in target/pg_strategies/results.json
# (or --json PATH), drawn by scripts/plot_performance.py into docs/perf-pg.svg.
#
# QUIET=1 (default) waits, at most 10 minutes, until no compiler runs on the
# machine (a concurrent rustc changes every figure). The benchmark itself prints
# (and records in its JSON) how busy the CPUs were in the 2 s before it started.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_DIR=${PG_DIR:-target/pg_strategies/pg}
QUIET=${QUIET:-1}

if [ "${BUILD:-1}" = 1 ]; then
  cargo build --release --locked --example pg_strategies
fi

started=0
cleanup() {
  if [ "$started" = 1 ]; then
    scripts/pg-cluster.sh stop "$PG_DIR" || true
  fi
}
trap cleanup EXIT

if [ -z "${POINTLOCK_TEST_PG_URL:-}" ]; then
  scripts/pg-cluster.sh start "$PG_DIR" >/dev/null
  started=1
  set -a
  # shellcheck disable=SC1091
  . "$PG_DIR/env"
  set +a
fi

if [ "$QUIET" = 1 ]; then
  for _ in $(seq 120); do
    busy=$(ps -eo comm= | grep -cxE 'rustc|cargo|cc1|ld|clippy-driver|rustdoc' || true)
    [ "$busy" = 0 ] && break
    echo "waiting for $busy compiler process(es) to finish..." >&2
    sleep 5
  done
fi

target/release/examples/pg_strategies "$@"
