#!/usr/bin/env bash
# The keyed lock under the loom model checker: the models in
# keylock/src/lock/loom_tests.rs, each run in every interleaving of its threads
# up to LOOM_MAX_PREEMPTIONS preemptions (default here 3; the negative controls
# need at least 2), in release mode as loom advises.
#
# Built with RUSTFLAGS="--cfg loom" in its own target directory,
# ${CARGO_TARGET_DIR:-target}/loom, so the main build is not invalidated.
# Arguments go to the test binary, e.g. `scripts/loom.sh --nocapture` prints the
# executions each model took and what each negative control failed with.
# See docs/concurrency.md, "Model checking".
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }--cfg loom"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom"
exec cargo test -p keylock --release --locked --lib lock::loom_tests -- "$@"
