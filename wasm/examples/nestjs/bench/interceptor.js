#!/usr/bin/env node
// The lock's share of a request, without HTTP: the example's own
// UserLockInterceptor, called the way Nest calls it (a context whose request
// has `params.id`, a handler answering at once), with pointlock's KeyedLock (as
// the app makes it: 30 s timeout) and with the async-mutex MutexMap; N calls in
// batches of B awaited together (B: wrk's connections in bench/compare.js),
// over 10,000 users and on one. An untimed warm-up round, then ROUNDS rounds
// in a rotating order; reported: median ns per call and the ratio of the
// medians (docs/perf-wasm.md, "The NestJS example over HTTP").
//
//   npm run build && node bench/interceptor.js [--rounds 5] [--n 200000] [--batch 64]
'use strict';

require('reflect-metadata');
const { KeyedLock } = require('pointlock');
const { of, lastValueFrom } = require('rxjs');
const { UserLockInterceptor } = require('../dist/point/user-lock.interceptor');
const { MutexMap } = require('../dist/point/mutex-map');

const opts = { rounds: 5, n: 200000, batch: 64 };
for (let i = 2; i < process.argv.length; i += 2) {
  const key = process.argv[i].replace(/^--/, '');
  const value = Number(process.argv[i + 1]);
  if (!(key in opts) || !Number.isInteger(value) || value < 1 || value > 10_000_000) {
    throw new Error(`usage: [--rounds R] [--n N] [--batch B] (integers), got ${process.argv[i]} ${process.argv[i + 1]}`);
  }
  opts[key] = value;
}

const CONTENDERS = {
  'keyed-lock': () => new KeyedLock({ timeoutMs: 30000 }),
  'async-mutex': () => new MutexMap(),
};
const CELLS = { spread: 10000, hot: 1 };
const answer = { id: 1, point: 1, updateMillis: 0 };
const handler = { handle: () => of(answer) };
const contexts = (users) => Array.from({ length: users }, (_, i) => {
  const request = { params: { id: String(i + 1) } };
  const http = { getRequest: () => request };
  return { switchToHttp: () => http };
});

async function run(makeLock, users) {
  const interceptor = new UserLockInterceptor(makeLock());
  const ctx = contexts(users);
  let answered = 0;
  const started = process.hrtime.bigint();
  for (let done = 0; done < opts.n; done += opts.batch) {
    const calls = [];
    for (let i = 0; i < opts.batch; i++) calls.push(lastValueFrom(interceptor.intercept(ctx[(done + i) % users], handler)));
    for (const result of await Promise.all(calls)) if (result === answer) answered += 1;
  }
  const ns = Number(process.hrtime.bigint() - started) / opts.n;
  if (answered !== Math.ceil(opts.n / opts.batch) * opts.batch) throw new Error(`answered ${answered}`);
  return ns;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

(async () => {
  const names = Object.keys(CONTENDERS);
  console.log(`node ${process.version}; ${opts.rounds} rounds of ${opts.n} calls in batches of ${opts.batch}`);
  for (const [cell, users] of Object.entries(CELLS)) {
    const ns = Object.fromEntries(names.map((name) => [name, []]));
    for (let round = -1; round < opts.rounds; round++) {
      for (let i = 0; i < names.length; i++) {
        const name = names[(i + Math.max(round, 0)) % names.length];
        const t = await run(CONTENDERS[name], users);
        if (round >= 0) ns[name].push(t);
      }
    }
    const base = median(ns['async-mutex']);
    for (const name of names) {
      const m = median(ns[name]);
      console.log(`${cell.padEnd(6)} ${name.padEnd(11)} ${m.toFixed(0).padStart(5)} ns/call  ${(m / base).toFixed(2)}x the time of async-mutex  (rounds: ${ns[name].map((t) => t.toFixed(0)).join(', ')})`);
    }
  }
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
