#!/usr/bin/env bash
# schemathesis against a running pointlock: every operation of GET /openapi.json
# exercised with generated requests (examples, boundary values, fuzzing and
# stateful sequences): no 5xx, every response matching its documented status,
# headers and schema. Bounded: at most $ST_MAX_EXAMPLES examples per operation
# and $ST_MAX_TIME seconds per run.
#
#   scripts/schemathesis.sh [path/to/pointlock]   # default: target/release/pointlock
#
# schemathesis is installed from PyPI (pinned) into a cached virtualenv the
# first time; the server runs on a free loopback port, once per store (memory,
# SQLite), and is stopped afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-${CARGO_TARGET_DIR:-target}/release/pointlock}
version=4.32.5
venv=${POINTLOCK_CACHE:-$HOME/.cache/pointlock}/schemathesis-$version
max_examples=${ST_MAX_EXAMPLES:-40}
max_time=${ST_MAX_TIME:-120}

if [ ! -x "$venv/bin/st" ]; then
  echo "installing schemathesis $version into $venv"
  if ! python3 -c 'import ensurepip' 2>/dev/null; then
    if [ "$(id -u)" = 0 ]; then sudo_=""; else sudo_="sudo"; fi
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq python3-venv
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

for store in memory "sqlite:$work/st.db"; do
  echo "--- schemathesis against pointlock --store $store"
  "$bin" --store "$store" --addr 127.0.0.1:0 >"$work/out.log" 2>"$work/server.log" &
  pid=$!
  addr=
  for _ in $(seq 100); do
    addr=$(sed -n 's/.*listening on http:\/\/\([0-9.:]*\).*/\1/p' "$work/server.log" | head -1)
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { cat "$work/server.log"; echo "pointlock did not start" >&2; exit 1; }
  "$venv/bin/st" --no-color --config-file scripts/schemathesis.toml run "http://$addr/openapi.json" \
    --checks all --max-examples "$max_examples" --max-time "$max_time" --seed 20261130
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=
done
