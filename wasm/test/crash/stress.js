// The issue's reproduction and shapes like it: the package alternating with
// async-mutex in one process, as a Node user migrating from a Map of Mutexes
// would run them. Before the fix, `issue` died in 8 of 37 runs (3 of 5 in the
// issue's report), `alternate` in 5 of 20, `charge` in 2 of 10 (`mixed` in none
// of 10) with "Fatal error ... unreachable code" in V8's deoptimizer
// (wasm/README.md, "The V8 crash"). A crash is a non-zero exit or a signal;
// crash.test.js runs each shape several times in fresh processes.
//
//   node wasm/test/crash/stress.js issue|alternate|charge|mixed [scale]
//   POINTLOCK_PKG=/path/to/pkg node wasm/test/crash/stress.js issue
//
// `scale` (default 1) multiplies the number of calls.
'use strict';

const path = require('node:path');
const { Mutex } = require('async-mutex');
const { JsPointService } = require('../../bench/baselines');

const { KeyedLock, PointService } = require(process.env.POINTLOCK_PKG ?? path.join(__dirname, '..', '..', 'pkg'));
const shape = process.argv[2];
const scale = Number(process.argv[3] ?? 1);

// The issue's script, as given (the package's path and the scale aside).
class JsKeyed { constructor() { this.m = new Map(); }
  withLock(k, fn) { let x = this.m.get(k); if (!x) { x = new Mutex(); this.m.set(k, x); } return x.runExclusive(fn); } }
async function run(lock, users, n, b) {
  let c = 0;
  for (let d = 0; d < n; d += b) { const ps = []; for (let i = 0; i < b; i++) ps.push(lock.withLock(1 + ((d + i) % users), async () => { c++; })); await Promise.all(ps); }
  if (c !== n) throw new Error(`${c} of ${n} functions ran`);
}

async function charges(svc, users, n, b) {
  for (let d = 0; d < n; d += b) {
    const ps = [];
    for (let i = 0; i < b; i++) ps.push(svc.charge(1 + ((d + i) % users), 1));
    await Promise.all(ps);
  }
}

// Strings keys with a timeout, uses and reads, keyed charges, beside async-mutex.
async function mixed(lock, svc, users, n, b) {
  for (let d = 0; d < n; d += b) {
    const ps = [];
    for (let i = 0; i < b; i++) {
      const user = 1 + ((d + i) % users);
      switch (i % 4) {
        case 0: ps.push(lock.withLock(`user-${user}`, async () => user)); break;
        case 1: ps.push(svc.charge(user, 2, `k-${d + i}`)); break;
        case 2: ps.push(svc.use(user, 1).catch((e) => { if (e.code !== 'INSUFFICIENT_BALANCE') throw e; })); break;
        default: ps.push(svc.point(user));
      }
    }
    await Promise.all(ps);
  }
}

const shapes = {
  async issue() {
    for (const users of [10000, 1]) {
      for (let i = 0; i < 3; i++) {
        await run(new KeyedLock({}), users, 200000 * scale, 1000);
        await run(new JsKeyed(), users, 200000 * scale, 1000);
      }
    }
  },
  // The issue's alternation with shorter phases, three times as many switches.
  async alternate() {
    for (let i = 0; i < 6; i++) {
      for (const users of [10000, 1]) {
        await run(new KeyedLock({}), users, 50000 * scale, 1000);
        await run(new JsKeyed(), users, 50000 * scale, 1000);
      }
    }
  },
  async charge() {
    for (const users of [10000, 1]) {
      for (let i = 0; i < 3; i++) {
        await charges(new PointService({ maxBalance: 1e12 }), users, 200000 * scale, 1000);
        await charges(new JsPointService({ maxBalance: 1e12 }), users, 200000 * scale, 1000);
      }
    }
  },
  async mixed() {
    for (const users of [10000, 1]) {
      for (let i = 0; i < 3; i++) {
        await mixed(new KeyedLock({ timeoutMs: 60000 }), new PointService({ maxBalance: 1e12, lockTimeoutMs: 60000 }), users, 100000 * scale, 1000);
        await run(new JsKeyed(), users, 100000 * scale, 1000);
        await charges(new JsPointService({ maxBalance: 1e12 }), users, 50000 * scale, 1000);
      }
    }
  },
};

if (!shapes[shape]) {
  console.error(`shapes: ${Object.keys(shapes).join(', ')}`);
  process.exit(2);
}
const started = Date.now();
shapes[shape]().then(
  () => console.log(JSON.stringify({ shape, scale, seconds: (Date.now() - started) / 1000 })),
  (e) => { console.error(e); process.exit(1); },
);
