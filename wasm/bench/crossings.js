#!/usr/bin/env node
// Per call of the package: how many times JavaScript calls into the wasm module
// (exports) and the module calls back into JavaScript (imports), by name; or,
// with --heap, how many bytes of JavaScript heap each call allocates.
//
//   node wasm/bench/crossings.js [--pkg DIR] [--n 10000]
//   node --expose-gc --min-semi-space-size=256 --max-semi-space-size=256 \
//     wasm/bench/crossings.js --heap [--pkg DIR] [--n 10000]
//
// Crossings: WebAssembly.Instance is wrapped before the package loads, so every
// import and export function goes through a counter (the counters cost time and
// allocate: this script counts, compare.js measures speed). Heap (no counters):
// a young generation larger than what N calls allocate, a full GC before, none
// during (checked), so the growth of the used heap over the N calls is what they
// allocated, the promises and result objects the caller receives included.
// Rust heap allocations per call are reported too when the module exports
// `__plAllocs()` (a count kept by a counting global allocator: a throwaway patch
// for measuring, not part of the package; docs/perf-wasm.md shows it).
'use strict';

const path = require('node:path');
const v8 = require('node:v8');
const { PerformanceObserver } = require('node:perf_hooks');

const args = process.argv.slice(2);
const arg = (name, dflt) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : dflt; };
const pkg = path.resolve(arg('--pkg', path.join(__dirname, '..', 'pkg')));
const n = Number(arg('--n', 10000));
const heap = args.includes('--heap');
if (heap && !global.gc) throw new Error('--heap needs node --expose-gc (and a large semi-space)');

const counts = new Map();
let counting = false;
let rawExports = null; // the module's own exports, for __plAllocs
const counted = (kind, name, f) => function (...a) {
  if (counting) { const k = `${kind} ${name}`; counts.set(k, (counts.get(k) ?? 0) + 1); }
  return f.apply(this, a);
};
const RealInstance = WebAssembly.Instance;
if (!heap) WebAssembly.Instance = function Instance(module, imports) {
  const wrapped = {};
  for (const [ns, fns] of Object.entries(imports)) {
    wrapped[ns] = {};
    for (const [name, f] of Object.entries(fns)) {
      wrapped[ns][name] = typeof f === 'function' ? counted('wasm->js', name.replace(/_[0-9a-f]{16}$/, ''), f) : f;
    }
  }
  const instance = new RealInstance(module, wrapped);
  rawExports = instance.exports;
  const exports = {};
  for (const [name, e] of Object.entries(instance.exports)) {
    exports[name] = typeof e === 'function' ? counted('js->wasm', name.replace(/_[0-9a-f]{16}$/, ''), e) : e;
  }
  return { exports };
};
const { KeyedLock, PointService } = require(pkg);
const { JsKeyedLock, JsPointService } = require('./baselines');

const scenarios = {
  'withLock, 10,000 keys': [() => new KeyedLock({}), (l, i) => l.withLock(1 + (i % 10000), async () => {})],
  'withLock, 1 key': [() => new KeyedLock({}), (l) => l.withLock(1, async () => {})],
  'withLock, string keys': [() => new KeyedLock({}), (l, i) => l.withLock(`user-${i % 10000}`, async () => {})],
  'charge, 10,000 users': [() => new PointService({ maxBalance: 1e12 }), (s, i) => s.charge(1 + (i % 10000), 1)],
  'charge, 1 user': [() => new PointService({ maxBalance: 1e12 }), (s) => s.charge(1, 1)],
  'charge with a key': [() => new PointService({ maxBalance: 1e12 }), (s, i) => s.charge(1 + (i % 10000), 1, `k${i}`)],
  'point': [() => new PointService(), (s, i) => s.point(1 + (i % 10000))],
  // The baselines of compare.js, for the heap column (no wasm: no crossings).
  'async-mutex map, 10,000 keys': [() => new JsKeyedLock(), (l, i) => l.withLock(1 + (i % 10000), async () => {}), true],
  'async-mutex map, 1 key': [() => new JsKeyedLock(), (l) => l.withLock(1, async () => {}), true],
  'JS service charge, 10,000 users': [() => new JsPointService({ maxBalance: 1e12 }), (s, i) => s.charge(1 + (i % 10000), 1), true],
  'JS service charge, 1 user': [() => new JsPointService({ maxBalance: 1e12 }), (s) => s.charge(1, 1), true],
};

let gcs = 0;
new PerformanceObserver((list) => { gcs += list.getEntries().length; }).observe({ entryTypes: ['gc'] });

async function batch(make, call, calls) {
  const target = make();
  const ps = [];
  for (let i = 0; i < calls; i++) ps.push(call(target, i));
  await Promise.all(ps);
}

(async () => {
  console.log(`${pkg}: per call, mean over ${n} calls issued at once\n`);
  const allocs = () => (rawExports && rawExports.__plAllocs ? rawExports.__plAllocs() : NaN);
  console.log(heap ? '| scenario | JS heap bytes |\n|---|---:|' : '| scenario | js->wasm | wasm->js | Rust allocations | crossings by name |\n|---|---:|---:|---:|---|');
  for (const [name, [make, call, baseline]] of Object.entries(scenarios)) {
    if (baseline && !heap) continue;
    await batch(make, call, n); // warm up
    if (heap) {
      global.gc();
      await new Promise((r) => setTimeout(r, 50)); // the observer reports that GC late
      const before = v8.getHeapStatistics().used_heap_size;
      const gcsBefore = gcs;
      await batch(make, call, n);
      const grown = v8.getHeapStatistics().used_heap_size - before;
      await new Promise((r) => setTimeout(r, 50)); // let the observer report
      const bytes = gcs === gcsBefore ? Math.round(grown / n) : 'GC ran: raise the semi-space';
      console.log(`| ${name} | ${bytes} |`);
      continue;
    }
    counts.clear();
    counting = true;
    const allocsBefore = allocs();
    await batch(make, call, n);
    const allocated = (allocs() - allocsBefore) / n;
    counting = false;
    const per = (dir) => [...counts].filter(([k]) => k.startsWith(dir)).reduce((s, [, c]) => s + c, 0) / n;
    const names = [...counts].sort((a, b) => b[1] - a[1]).map(([k, c]) => `${k} ${+(c / n).toFixed(2)}`).join(', ');
    console.log(`| ${name} | ${per('js->wasm').toFixed(2)} | ${per('wasm->js').toFixed(2)} | ${Number.isNaN(allocated) ? 'n/a' : allocated.toFixed(2)} | ${names} |`);
  }
})();
