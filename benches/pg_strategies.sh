#!/usr/bin/env bash
# Driver of the strategy benchmark (benches/pg_strategies/, the package
# pointlock-pg-strategies): build it, start a throwaway PostgreSQL cluster
# (scripts/pg-cluster.sh) unless POINTLOCK_TEST_PG_URL is set and a throwaway
# redis-server for strategy (e) unless POINTLOCK_BENCH_REDIS_URL is set, run it,
# stop both.
#
#   ./benches/pg_strategies.sh                      # every cell, 3 rounds (~1.5 min)
#   ./benches/pg_strategies.sh --rounds 1 --loads hot --instances 4
#   ./benches/pg_strategies.sh --strategies pointlock,unconditional --loads hot --instances 4 --rounds 1
#                                                   # negative control: must report lost updates
#   ./benches/pg_strategies.sh --strategies pointlock,redis-lock --rounds 1
#
# Arguments go to the benchmark (`--help` lists them). Results: a markdown table
# on stdout, per-cell lines on stderr, JSON in target/pg_strategies/results.json
# (or --json PATH), drawn by scripts/plot_performance.py into docs/perf-pg.svg.
#
# Strategy (e), the Redis lock per user, runs when Debian's redis-server is
# installed (apt-get install redis-server): this script starts one on 127.0.0.1
# on a free port, in a temporary directory, without persistence (`--save ''
# --appendonly no`), and stops it on exit. Without redis-server, (e) is skipped
# with a message. REDIS=0 skips it too.
#
# QUIET=1 (default) waits, at most 10 minutes, until no compiler runs on the
# machine (a concurrent rustc changes every figure). The benchmark itself prints
# (and records in its JSON) how busy the CPUs were in the 2 s before it started.
# BUILD=0 runs the binary already built (under $CARGO_TARGET_DIR, else target/).
set -euo pipefail
cd "$(dirname "$0")/.."

PG_DIR=${PG_DIR:-target/pg_strategies/pg}
QUIET=${QUIET:-1}
REDIS=${REDIS:-1}
BIN=${CARGO_TARGET_DIR:-target}/release/pg_strategies

if [ "${BUILD:-1}" = 1 ]; then
  # test-util: the negative control `--strategies unconditional`.
  cargo build --release --locked -p pointlock-pg-strategies --features test-util
fi

started=0
redis_pid=""
redis_dir=""
cleanup() {
  if [ -n "$redis_pid" ] && kill -0 "$redis_pid" 2>/dev/null; then
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
  if [ -n "$redis_dir" ]; then
    rm -rf "$redis_dir"
  fi
  if [ "$started" = 1 ]; then
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

if [ -z "${POINTLOCK_TEST_PG_URL:-}" ]; then
  scripts/pg-cluster.sh start "$PG_DIR" >/dev/null
  started=1
  set -a
  # shellcheck disable=SC1091
  . "$PG_DIR/env"
  set +a
fi

if [ -n "${POINTLOCK_BENCH_REDIS_URL:-}" ]; then
  echo "redis-lock (e): Redis at $POINTLOCK_BENCH_REDIS_URL" >&2
elif [ "$REDIS" != 1 ]; then
  echo "redis-lock (e): skipped (REDIS=$REDIS)" >&2
elif ! command -v redis-server >/dev/null; then
  echo "redis-lock (e): skipped: no redis-server (apt-get install redis-server)" >&2
else
  redis_dir=$(mktemp -d)
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
  redis-server --bind 127.0.0.1 --port "$port" --dir "$redis_dir" --save '' --appendonly no \
    --daemonize no --logfile "$redis_dir/redis.log" &
  redis_pid=$!
  ready=0
  for _ in $(seq 100); do # at most 10 s
    if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null || true)" = PONG ]; then
      ready=1
      break
    fi
    kill -0 "$redis_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ "$ready" != 1 ]; then
    tail -n 20 "$redis_dir/redis.log" >&2 2>/dev/null || true
    echo "redis-server did not answer on 127.0.0.1:$port within 10 s" >&2
    exit 1
  fi
  export POINTLOCK_BENCH_REDIS_URL="redis://127.0.0.1:$port/"
  export POINTLOCK_BENCH_REDIS_PID=$redis_pid
  echo "redis-lock (e): $(redis-server --version | cut -d' ' -f1-3) on 127.0.0.1:$port (pid $redis_pid)" >&2
fi

"$BIN" "$@"
