#!/usr/bin/env node
// Self time by function in a `node --cpu-prof` profile, highest first.
//   node --cpu-prof --cpu-prof-dir=/tmp/prof wasm/bench/compare.js --cells lock-spread --rounds 1
//   node wasm/bench/profile-top.js /tmp/prof/*.cpuprofile [--top 25]
'use strict';
const fs = require('node:fs');
const args = process.argv.slice(2);
const top = args.includes('--top') ? Number(args[args.indexOf('--top') + 1]) : 25;
const file = args.find((a) => a.endsWith('.cpuprofile'));
const profile = JSON.parse(fs.readFileSync(file, 'utf8'));
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const self = new Map();
const dt = profile.timeDeltas;
let total = 0;
profile.samples.forEach((id, i) => {
  const node = byId.get(id);
  const f = node.callFrame;
  const where = f.url ? `${f.url.split('/').slice(-2).join('/')}:${f.lineNumber + 1}` : '';
  const key = `${f.functionName || '(anonymous)'} ${where}`.trim();
  const t = dt[i] ?? 0;
  self.set(key, (self.get(key) ?? 0) + t);
  total += t;
});
console.log(`total ${(total / 1000).toFixed(0)} ms sampled`);
// Where the time went, coarsely: the module, its generated glue, the rest.
const category = (k) => {
  if (k.startsWith('wasm-function') || k.includes('.wasm')) return 'wasm (Rust)';
  if (/pointlock(_raw)?\.js|node\/methods\.js/.test(k)) return 'package JavaScript (glue)';
  if (k.startsWith('(garbage collector)')) return 'garbage collector';
  if (/async-mutex|tslib|Semaphore|Mutex/.test(k)) return 'async-mutex + tslib';
  if (k.includes('bench/')) return 'benchmark loop';
  return 'other (V8 builtins, idle, program)';
};
const byCategory = new Map();
for (const [k, t] of self) byCategory.set(category(k), (byCategory.get(category(k)) ?? 0) + t);
for (const [k, t] of [...byCategory].sort((a, b) => b[1] - a[1])) {
  console.log(`${((100 * t) / total).toFixed(1).padStart(5)}%  [${k}]`);
}
console.log('');
for (const [k, t] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) {
  console.log(`${((100 * t) / total).toFixed(1).padStart(5)}%  ${k}`);
}
