#!/usr/bin/env bash
# Run every check and test pointlock has, installing what is missing first.
# Used as-is by CI (.ci/run). Safe to re-run: installed tools are skipped.
set -euo pipefail
exec 2>&1 # one stream: CI reads cargo's summary from stdout
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# A clean clone gains nothing from incremental state, and it costs disk
# (gigabytes across the test binaries); CI machines have little to spare.
if [ "${CI:-}" = "true" ]; then export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"; fi

step "toolchain: rustfmt, clippy, wasm32 target"
if ! rustup component list --installed | grep -q '^rustfmt'; then rustup component add rustfmt; fi
if ! rustup component list --installed | grep -q '^clippy'; then rustup component add clippy; fi
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "core stays runtime-free: no tokio/hyper in pointlock-core's dependencies"
if cargo tree -p pointlock-core -e normal --prefix none --locked | grep -E '^(tokio|hyper|mio|rusqlite) '; then
  echo "pointlock-core must not depend on an async runtime, I/O or SQLite" >&2
  exit 1
fi

step "keylock stands alone: no wallet, store, JWT or metrics crate in its dependencies (all features)"
if cargo tree -p keylock --all-features -e normal --prefix none --locked \
  | grep -E '^(pointlock-core|pointlock-server|rusqlite|tokio-postgres|jsonwebtoken|prometheus-client) '; then
  echo "keylock must depend on neither the wallet nor any store, JWT or metrics crate" >&2
  exit 1
fi

step "core builds for wasm32-unknown-unknown"
cargo build -p pointlock-core --target wasm32-unknown-unknown --locked

step "rustdoc: no broken links or doc warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "PostgreSQL: a throwaway cluster for the tests (installs Debian's postgresql when missing)"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then sudo_=""; else sudo_="sudo"; fi
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq postgresql
fi
pg_dir="$(mktemp -d)"
# Stopped (and its directory removed) however this script ends.
stop_pg() {
  status=$?
  if [ "$status" != 0 ] && [ -f "$pg_dir/postgres.log" ]; then
    echo "--- last lines of the test cluster's log ($pg_dir/postgres.log)"
    tail -n 40 "$pg_dir/postgres.log" || true
  fi
  if ./scripts/pg-cluster.sh stop "$pg_dir"; then rm -rf "$pg_dir"; fi
  exit "$status"
}
trap stop_pg EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
./scripts/pg-cluster.sh start "$pg_dir"
set -a
# shellcheck disable=SC1091
. "$pg_dir/env"
set +a

step "cargo test --workspace (PostgreSQL at $POINTLOCK_TEST_PG_URL)"
cargo test --workspace --locked

step "loom: the keyed lock's models, every interleaving up to 3 preemptions (scripts/loom.sh; own target dir)"
LOOM_MAX_PREEMPTIONS=3 ./scripts/loom.sh

step "fuzz targets: fmt, clippy, rustdoc, corpus replay and a bounded random run (fuzz/README.md)"
# fuzz/ is a workspace of its own (fuzz/Cargo.toml says why), so the workspace
# steps above do not cover it; sharing their target directory reuses their
# builds (the ~30 crates whose versions or features differ there, bolero and
# an older indexmap among them, are built again: ~1.5 min cold). Each of the 8 bolero targets
# replays its corpus, then runs random inputs for BOLERO_RANDOM_TEST_TIME_MS
# (7 s; two at a time on two cores: ~35 s in all).
fuzz_target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
cargo fmt --manifest-path fuzz/Cargo.toml --all --check
CARGO_TARGET_DIR="$fuzz_target_dir" cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --locked -- -D warnings
CARGO_TARGET_DIR="$fuzz_target_dir" RUSTDOCFLAGS="-D warnings" cargo doc --manifest-path fuzz/Cargo.toml --no-deps --locked
CARGO_TARGET_DIR="$fuzz_target_dir" BOLERO_RANDOM_TEST_TIME_MS="${BOLERO_RANDOM_TEST_TIME_MS:-7000}" \
  cargo test --manifest-path fuzz/Cargo.toml --locked

step "crash test against the release binary (kill -9 mid-load, several rounds)"
cargo build --release -p pointlock --bin pointlock --locked
release_bin="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/pointlock"
# The release binary is built without `test-util`: its negative controls'
# hidden flags must not exist (clap refuses an unknown flag before --help).
for control in "--test-negative-control dirty-reads" "--test-unconditional-commits"; do
  # shellcheck disable=SC2086
  if "$release_bin" $control --help >/dev/null 2>&1; then
    echo "the release binary accepts $control: it was built with test-util" >&2
    exit 1
  fi
done
POINTLOCK_TEST_BIN="$release_bin" cargo test -p pointlock --test crash --test crash_hot_user --locked

step "schemathesis against GET /openapi.json on the release binary (memory and SQLite; installs schemathesis from PyPI once)"
ST_MAX_TIME="${ST_MAX_TIME:-60}" ./scripts/schemathesis.sh "$release_bin"

step "benches keep compiling (cargo bench --no-run)"
cargo bench --workspace --no-run --locked

step "wasm: clippy for wasm32 (the crate is empty on native targets)"
cargo clippy -p pointlock-wasm --target wasm32-unknown-unknown --all-targets --locked -- -D warnings

step "wasm: npm dev tools (binaryen's wasm-opt, playwright-core)"
(cd wasm && npm ci --no-audit --no-fund)

step "wasm: build and pack the npm package (installs wasm-bindgen-cli at the locked version if needed)"
./wasm/build.sh

step "wasm: the TypeScript declarations compile under --strict"
(cd wasm && npm run -s typecheck)

step "wasm: wasm-bindgen-test in Node"
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test -p pointlock-wasm --target wasm32-unknown-unknown --locked

step "browser: Debian's chromium for the demo-page test"
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then sudo_=""; else sudo_="sudo"; fi
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq chromium
fi

step "wasm: node --test on the package (Node, the V8-crash stress test, the demo page in Chromium)"
# wasm/test/crash.test.js runs the V8 crash's reproduction and shapes like it,
# POINTLOCK_STRESS_RUNS (default 4) times each in fresh processes, plus forced
# deoptimizations inside every kind of call: a crash (signal or non-zero exit)
# fails it. About a minute.
node --test wasm/test/*.test.js

step "wasm: the NestJS example, installed from the packed tarball: its contract and concurrency tests over HTTP"
# npm ci installs wasm/dist/pointlock-<version>.tgz (packed by build.sh above;
# wasm/test/package.test.js checked it) with the example's locked dependencies;
# the tests start the app on free 127.0.0.1 ports (~15 s).
(cd wasm/examples/nestjs && npm ci --no-audit --no-fund && npm run -s build && npm test)

echo
echo "all checks passed"
