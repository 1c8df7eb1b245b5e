#!/usr/bin/env bash
# Instructions per request (user space), counted by valgrind's callgrind: repeatable
# whatever else the machine does, unlike req/s. Runs the release `pointlock --store
# memory` and the bare hyper baseline under callgrind, each for a bounded wrk run
# (8 connections, 4 s) of one scenario, and prints instructions per request.
#
#   ./benches/instructions.sh            # SCENARIO=charge (or get, hot)
#   ANNOTATE=1 ./benches/instructions.sh # also the top functions of pointlock
#   SERVERS="baseline pointlock pointlock-metrics-off" ROUNDS=3 ./benches/instructions.sh
#                                        # metrics on vs off, medians of 3 rounds
#
# SERVERS (default "baseline pointlock"): `baseline`, `pointlock` (as started by
# default: metrics on), `pointlock-metrics-off` (`--metrics off`) and
# `pointlock-jwt-hs256`, `pointlock-jwt-rs256`, `pointlock-jwt-es256` (bearer
# JWT on, every request with an admin token minted by examples/mint_jwt.rs
# from the test-only keys of tests/auth/), measured in that order in every
# round. The binaries are taken from $CARGO_TARGET_DIR
# (default target/); POINTLOCK=path measures another pointlock binary.
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIO=${SCENARIO:-charge}
PORT=${PORT:-18097}
OUT=${OUT:-target/instructions}
SERVERS=${SERVERS:-"baseline pointlock"}
ROUNDS=${ROUNDS:-1}
BIN_DIR=${CARGO_TARGET_DIR:-target}/release
POINTLOCK=${POINTLOCK:-$BIN_DIR/pointlock}
command -v valgrind >/dev/null || { echo "valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is missing (apt-get install wrk)" >&2; exit 1; }
if [ "${BUILD:-1}" = 1 ]; then # BUILD=0: use the binaries already built
  cargo build --release --locked -p pointlock --bin pointlock
  cargo build --release --locked --example baseline_server
  case " $SERVERS " in
    *" pointlock-jwt-"*) cargo build --release --locked --example mint_jwt ;;
  esac
fi
mkdir -p "$OUT"

measure() { # NAME CMD... (AUTHORIZATION, if set, goes on every request)
  local name=$1 pid reqs total result
  shift
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$name.callgrind" "$@" >"$OUT/$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 150); do
    curl -fsS -o /dev/null "http://127.0.0.1:$PORT/health" 2>/dev/null && break
    sleep 0.2
  done
  result=$(SCENARIO=$SCENARIO timeout 60 wrk -t1 -c8 -d4s -s benches/load/wallet.lua \
    "http://127.0.0.1:$PORT" | sed -n 's/^RESULT //p')
  reqs=$(echo "$result" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
  non2xx=$(echo "$result" | python3 -c 'import json,sys; print(json.load(sys.stdin)["non2xx"])')
  if [ "$non2xx" != 0 ]; then echo "$name: $non2xx answers were not 2xx" >&2; fi
  kill -INT "$pid"
  wait "$pid" || true
  total=$(callgrind_annotate "$OUT/$name.callgrind" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
  echo "$name $((total / reqs))" | tee -a "$OUT/summary.txt"
}

: >"$OUT/summary.txt"
for round in $(seq "$ROUNDS"); do
  for server in $SERVERS; do
    case $server in
      baseline) measure baseline "$BIN_DIR/examples/baseline_server" "127.0.0.1:$PORT" ;;
      pointlock) measure pointlock "$POINTLOCK" --store memory --addr "127.0.0.1:$PORT" ;;
      pointlock-metrics-off)
        measure pointlock-metrics-off "$POINTLOCK" --store memory --metrics off --addr "127.0.0.1:$PORT" ;;
      pointlock-jwt-hs256 | pointlock-jwt-rs256 | pointlock-jwt-es256)
        jwt_dir=$(mktemp -d)
        case $server in
          *hs256)
            printf 'instructions.sh benchmark secret, not for real use\n' >"$jwt_dir/secret"
            key_flag=(--jwt-hs256-secret-file "$jwt_dir/secret")
            mint_flag=(--hs256-secret-file "$jwt_dir/secret") ;;
          *rs256)
            key_flag=(--jwt-public-key-file tests/auth/rsa-public.pem)
            mint_flag=(--private-key-file tests/auth/rsa-private.pem) ;;
          *es256)
            key_flag=(--jwt-public-key-file tests/auth/ec-public.pem)
            mint_flag=(--private-key-file tests/auth/ec-private.pem) ;;
        esac
        token=$("$BIN_DIR/examples/mint_jwt" "${mint_flag[@]}" --sub bench --scope points:admin)
        AUTHORIZATION="Bearer $token" measure "$server" "$POINTLOCK" --store memory "${key_flag[@]}" \
          --addr "127.0.0.1:$PORT"
        rm -rf "$jwt_dir" ;;
      *) echo "unknown server in SERVERS: $server" >&2; exit 2 ;;
    esac
  done
done
python3 - "$OUT/summary.txt" "$SCENARIO" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
runs = {}
for name, value in rows:
    runs.setdefault(name, []).append(int(value))
med = {name: statistics.median(values) for name, values in runs.items()}
print(f"instructions per {sys.argv[2]} request (median of {max(len(v) for v in runs.values())}):")
for name, values in runs.items():
    line = f"  {name} {med[name]:,.0f} ({' '.join(f'{v:,}' for v in values)})"
    if name != "baseline" and "baseline" in med:
        line += f", ratio to baseline {med[name] / med['baseline']:.2f}"
    print(line)
if "pointlock" in med and "pointlock-metrics-off" in med:
    on, off = med["pointlock"], med["pointlock-metrics-off"]
    print(f"  metrics on vs off: {on - off:+,.0f} instructions ({(on / off - 1) * 100:+.2f} %)")
for name in ("pointlock-jwt-hs256", "pointlock-jwt-rs256", "pointlock-jwt-es256"):
    if "pointlock" in med and name in med:
        on, off = med[name], med["pointlock"]
        print(f"  {name} vs pointlock: {on - off:+,.0f} instructions ({(on / off - 1) * 100:+.2f} %)")
PY
if [ "${ANNOTATE:-0}" = 1 ]; then
  callgrind_annotate "$OUT/pointlock.callgrind" | head -40
fi
