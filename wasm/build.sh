#!/usr/bin/env bash
# Build the npm package `pointlock` at wasm/pkg from scratch:
#   cargo build (wasm32, profile wasm-release) -> wasm-bindgen --target nodejs and --target web
#   -> wasm-opt -Oz when available -> the entry modules (the generated bindings plus
#   wasm/js/methods.js) -> the export check -> package.json, README, licenses
#   -> npm pack into wasm/dist/pointlock-<version>.tgz.
# wasm-bindgen-cli is installed at exactly the wasm-bindgen version in Cargo.lock when
# missing or mismatched (no wasm-pack: it downloads binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
pkg=wasm/pkg

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi

version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
[ -n "$version" ] || { echo "wasm-bindgen not found in Cargo.lock" >&2; exit 1; }
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$version" ]; then
  echo "installing wasm-bindgen-cli $version (takes ~10 min the first time)"
  # Not --locked: the CLI's own lockfile pins a crate version the registry no longer serves.
  cargo install wasm-bindgen-cli --version "$version"
fi

cargo build -p pointlock-wasm --target wasm32-unknown-unknown --profile wasm-release --locked
wasm=${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/wasm-release/pointlock_wasm.wasm

rm -rf "$pkg"
wasm-bindgen "$wasm" --target nodejs --out-dir "$pkg/node" --out-name pointlock
wasm-bindgen "$wasm" --target web --out-dir "$pkg/web" --out-name pointlock

# The generated bindings become pointlock_bindings.js (they load pointlock_bg.wasm
# by that name, whatever their own); pointlock.js is the entry: it installs the
# Promise-returning methods of wasm/js/methods.js on the generated classes and
# exports the public API only (README, "How the package is built").
for target in node web; do
  mv "$pkg/$target/pointlock.js" "$pkg/$target/pointlock_bindings.js"
  mv "$pkg/$target/pointlock.d.ts" "$pkg/$target/pointlock_bindings.d.ts"
done
{ cat wasm/js/methods.js; echo; echo 'module.exports = { install };'; } > "$pkg/node/methods.js"
{ cat wasm/js/methods.js; echo; echo 'export { install };'; } > "$pkg/web/methods.js"
cat > "$pkg/node/pointlock.js" <<'JS'
'use strict';
// pointlock for Node: the generated bindings with the methods of methods.js.
const bindings = require('./pointlock_bindings.js');
require('./methods.js').install(bindings);
exports.KeyedLock = bindings.KeyedLock;
exports.PointService = bindings.PointService;
JS
cat > "$pkg/node/pointlock.d.ts" <<'TS'
export * from './pointlock_bindings';
TS
cat > "$pkg/web/pointlock.js" <<'JS'
// pointlock for browsers and bundlers: await init() first (the default export).
import * as bindings from './pointlock_bindings.js';
import { install } from './methods.js';
install(bindings);
export { KeyedLock, PointService, initSync } from './pointlock_bindings.js';
export { default } from './pointlock_bindings.js';
JS
cat > "$pkg/web/pointlock.d.ts" <<'TS'
export * from './pointlock_bindings';
export { default } from './pointlock_bindings';
TS

if [ ! -x wasm/node_modules/.bin/wasm-opt ] && command -v npm >/dev/null; then
  (cd wasm && npm ci --no-audit --no-fund) || echo "npm ci failed: continuing without npm's binaryen"
fi
wasm_opt=""
if [ -x wasm/node_modules/.bin/wasm-opt ]; then wasm_opt=wasm/node_modules/.bin/wasm-opt
elif command -v wasm-opt >/dev/null; then wasm_opt=wasm-opt
fi
if [ -n "$wasm_opt" ]; then
  for f in "$pkg"/node/pointlock_bg.wasm "$pkg"/web/pointlock_bg.wasm; do
    "$wasm_opt" -Oz --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
      --enable-mutable-globals "$f" -o "$f"
  done
else
  echo "wasm-opt not found: skipping the size pass (npm's binaryen or Debian's binaryen provide it)"
fi

# No export may return a single externref (README, "The V8 crash"); the tests
# check it too, so a machine without node only skips it here.
if command -v node >/dev/null; then
  node wasm/test/wasm-exports.js "$pkg/node/pointlock_bg.wasm"
else
  echo "node not found: the export check is left to the tests"
fi

crate_version=$(awk -F'"' '/^version = / { print $2; exit }' Cargo.toml)
repository=$(awk -F'"' '/^repository = / { print $2; exit }' Cargo.toml)
cat > "$pkg/package.json" <<JSON
{
  "name": "pointlock",
  "version": "$crate_version",
  "description": "Per-user point wallet with a FIFO keyed lock, compiled from Rust to WebAssembly",
  "license": "MIT OR Apache-2.0",
  "repository": { "type": "git", "url": "$repository" },
  "main": "./node/pointlock.js",
  "types": "./node/pointlock.d.ts",
  "exports": {
    ".": {
      "types": "./node/pointlock.d.ts",
      "node": "./node/pointlock.js",
      "browser": "./web/pointlock.js",
      "default": "./web/pointlock.js"
    },
    "./package.json": "./package.json"
  },
  "files": ["node", "web", "README.md", "LICENSE-MIT", "LICENSE-APACHE"]
}
JSON
cp wasm/README.md "$pkg/README.md"
cp LICENSE-MIT LICENSE-APACHE "$pkg/"

size=$(stat -c %s "$pkg/node/pointlock_bg.wasm")
echo "built $pkg: pointlock_bg.wasm is $size bytes ($(( (size + 1023) / 1024 )) KiB)"

# The installable package: wasm/dist/pointlock-<version>.tgz, what the NestJS
# example installs (wasm/README.md, "NestJS"); checked by wasm/test/package.test.js.
if command -v npm >/dev/null; then
  rm -f wasm/dist/pointlock-*.tgz
  mkdir -p wasm/dist
  tarball=$(cd "$pkg" && npm pack --silent --pack-destination ../dist)
  echo "packed wasm/dist/$tarball ($(stat -c %s "wasm/dist/$tarball") bytes)"
else
  echo "npm not found: no tarball (wasm/dist) packed"
fi
