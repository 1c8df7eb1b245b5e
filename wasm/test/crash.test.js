// The V8 crash (wasm/README.md, "The V8 crash"): what triggers it,
// proof that the package no longer has that shape, and the stress test, each
// scenario in fresh processes (a crash is a signal or a non-zero exit).
//
// POINTLOCK_STRESS_RUNS (default 4) sets how many times each stress shape runs;
// POINTLOCK_PKG tests another build of the package (the one before the fix dies
// in every forced scenario, and in 8 of 37 runs of the issue's script).
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { exportedFunctions, singleReferenceResults } = require('./wasm-exports');
const { bytes: minimalModule } = require('./crash/module-bytes');

const pkg = process.env.POINTLOCK_PKG ?? path.join(__dirname, '..', 'pkg');
const runs = Number(process.env.POINTLOCK_STRESS_RUNS ?? 4);
const crash = (name) => path.join(__dirname, 'crash', name);

/** Run `node ...args` in a fresh process; its status, signal, output. */
function node(args, timeoutMs = 120000) {
  const result = spawnSync(process.execPath, args, {
    encoding: 'utf8',
    timeout: timeoutMs,
    env: { ...process.env, POINTLOCK_PKG: pkg },
  });
  const tail = (s) => (s ?? '').split('\n').slice(-15).join('\n');
  return { ...result, report: `status ${result.status}, signal ${result.signal}\n${tail(result.stdout)}\n${tail(result.stderr)}` };
}

function assertSurvived(result, what) {
  assert.equal(result.error, undefined, `${what}: ${result.error}`);
  assert.equal(result.signal, null, `${what} died: ${result.report}`);
  assert.equal(result.status, 0, `${what} failed: ${result.report}`);
}

test('no export of the package returns a single reference', () => {
  const wasm = fs.readFileSync(path.join(pkg, 'node', 'pointlock_bg.wasm'));
  const all = exportedFunctions(wasm);
  assert.ok(all.some((f) => f.name === 'keyedlock___lockNumber'), 'the checker reads the exports');
  assert.deepEqual(singleReferenceResults(wasm).map((f) => f.name), []);
});

test('negative control: the export check finds the shape in the minimal module', () => {
  assert.deepEqual(singleReferenceResults(Buffer.from(minimalModule)).map((f) => f.name), ['externref']);
});

test('the V8 bug alone: a lazy deopt inside an inlined call returning externref', () => {
  for (const shape of ['f64', 'i32']) {
    const result = node(['--allow-natives-syntax', crash('minimal.mjs'), shape]);
    assertSurvived(result, `minimal ${shape}`);
    assert.deepEqual(JSON.parse(result.stdout.trim().split('\n').pop()),
      { shape, optimized: true, deoptimized: true, returned: true }, 'the deopt happened, and the call returned');
  }
  const externref = node(['--allow-natives-syntax', crash('minimal.mjs'), 'externref']);
  if (process.versions.v8.startsWith('11.')) {
    // Node 20's V8: the harness can crash, and this is the crash the issue saw.
    assert.equal(externref.signal, 'SIGTRAP', `expected V8's fatal error: ${externref.report}`);
    assert.match(externref.stderr, /unreachable code/);
  } else {
    test.diagnostic(`V8 ${process.versions.v8}: the externref shape ${externref.signal ?? `exited ${externref.status}`}`);
  }
});

// Each kind of call, with a deopt forced from within its call into wasm; the
// scenarios where the module calls back into JavaScript must have had one.
const forced = {
  'withLock-number': false, // no call back into JavaScript: nowhere to inject
  'withLock-string': false,
  'withLock-queued': false,
  charge: true,
  'charge-key': true,
  use: true,
  point: true,
  histories: false, // a read of a known user: no clock, no call back
  sweep: true,
  'latency-charge': true,
  'tables-charge': true,
  'tables-histories': true,
};
for (const [scenario, reachable] of Object.entries(forced)) {
  test(`forced deopts inside the package's calls: ${scenario}`, () => {
    const result = node(['--allow-natives-syntax', crash('forced-deopt.mjs'), scenario]);
    assertSurvived(result, scenario);
    const report = JSON.parse(result.stdout.trim().split('\n').pop());
    assert.equal(report.rejected, 0, 'every call settled as expected');
    if (reachable) assert.equal(report.underWasm, report.rounds, 'a deopt landed inside a wasm call in every round');
  });
}

// The issue's script and shapes like it, the GC-triggered crash as it happened.
for (const shape of ['issue', 'alternate', 'charge', 'mixed']) {
  test(`stress: ${shape}, ${runs} runs in fresh processes`, () => {
    for (let run = 1; run <= runs; run++) {
      assertSurvived(node([crash('stress.js'), shape]), `${shape} run ${run}`);
    }
  });
}
