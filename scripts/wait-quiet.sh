#!/usr/bin/env bash
# Wait, at most 10 minutes, until no compiler runs on the machine: a
# concurrent rustc changes every benchmark figure. Used by the benchmark
# drivers (their QUIET=1, the default).
set -euo pipefail
for _ in $(seq 120); do
  busy=$(ps -eo comm= | grep -cxE 'rustc|cargo|cc1|ld|clippy-driver|rustdoc' || true)
  [ "$busy" = 0 ] && exit 0
  echo "waiting for $busy compiler process(es) to finish..." >&2
  sleep 5
done
echo "compilers still running after 10 minutes; measuring anyway" >&2
