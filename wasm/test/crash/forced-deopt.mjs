// Deterministic lazy deoptimizations inside the package's calls into wasm: the
// crash of wasm/README.md ("The V8 crash") forced instead of waited for.
//
//   node --allow-natives-syntax forced-deopt.mjs <scenario>
//   POINTLOCK_PKG=/path/to/pkg node --allow-natives-syntax forced-deopt.mjs charge
//
// A caller that makes one kind of call (withLock, charge, point, ...) is
// optimized by TurboFan, which inlines the package's methods and their calls
// into wasm. Then, in the armed call, the first JavaScript function the module
// calls back while it runs (Date.now for the clock, queueMicrotask and
// setTimeout for tasks and timers, the template tables' methods) deoptimizes
// the caller: V8 carries that out lazily, when the call into wasm returns into
// the caller's optimized frame. Twenty rounds per scenario. Prints
// `{ scenario, rounds, injected, underWasm, rejected }` (`underWasm`: deopts
// made while a wasm frame was on the stack) and exits 0; on the affected V8, a
// package whose export returns an object or a Promise dies with SIGTRAP here.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const pkg = process.env.POINTLOCK_PKG ?? fileURLToPath(new URL('../../pkg', import.meta.url));
const { KeyedLock, PointService } = require(pkg);

let armed = false;
let target = null;
let injected = 0;
let underWasm = 0;
Error.stackTraceLimit = 200;
function deoptimizeTarget() {
  if (!armed) return;
  armed = false;
  injected += 1;
  if (new Error().stack.includes('wasm://')) underWasm += 1;
  %DeoptimizeFunction(target);
}

// Every way the module calls back into JavaScript during a call.
const now = Date.now;
Date.now = function dateNow() { deoptimizeTarget(); return now(); };
const queue = globalThis.queueMicrotask;
globalThis.queueMicrotask = function queueMicrotask(f) { deoptimizeTarget(); return queue(f); };
const timeout = globalThis.setTimeout;
globalThis.setTimeout = function setTimeout(...args) { deoptimizeTarget(); return timeout(...args); };

// The template's tables, synchronous: the first poll calls them within the call.
class Points {
  constructor() { this.rows = new Map(); }
  selectById(id) { deoptimizeTarget(); return this.rows.get(id) ?? { id, point: 0, updateMillis: 0 }; }
  insertOrUpdate(id, point) {
    deoptimizeTarget();
    const row = { id, point, updateMillis: now() };
    this.rows.set(id, row);
    return row;
  }
}
class Histories {
  constructor() { this.rows = []; }
  insert(userId, amount, type, timeMillis) {
    deoptimizeTarget();
    const row = { id: this.rows.length + 1, userId, amount, type, timeMillis };
    this.rows.push(row);
    return row;
  }
  selectAllByUserId(userId) { deoptimizeTarget(); return this.rows.filter((r) => r.userId === userId); }
}

const lock = new KeyedLock({ timeoutMs: 60000 });
const memory = new PointService({ maxBalance: 1e15, lockTimeoutMs: 60000 });
const slow = new PointService({ maxBalance: 1e15, simulateLatencyMs: 1 });
const tables = new PointService({ userPointTable: new Points(), pointHistoryTable: new Histories() });

// One caller per scenario (each its own function, so its own feedback).
const callers = {
  'withLock-number': (i) => lock.withLock(i & 7, () => i),
  'withLock-string': (i) => lock.withLock(`k${i & 7}`, () => i),
  'withLock-queued': (i) => { lock.withLock(-1, () => i); return lock.withLock(-1, async () => i); },
  charge: (i) => memory.charge(1 + (i & 7), 1),
  'charge-key': (i) => memory.charge(1 + (i & 7), 1, `key-${i}`),
  use: (i) => memory.use(100 + (i & 7), 1),
  point: (i) => memory.point(1000 + i), // users never charged: their time is read now
  histories: (i) => memory.histories(1 + (i & 7)),
  sweep: () => memory.sweepIdempotencyKeys(10),
  'latency-charge': (i) => slow.charge(1 + (i & 7), 1),
  'tables-charge': (i) => tables.charge(1 + (i & 7), 1),
  'tables-histories': (i) => tables.histories(1 + (i & 7)),
};

const scenario = process.argv[2];
const caller = callers[scenario];
if (!caller) {
  console.error(`scenarios: ${Object.keys(callers).join(', ')}`);
  process.exit(2);
}
target = caller;

let rejected = 0;
const settle = (p) => p.then(() => {}, (e) => { rejected += 1; console.error(e); });
for (let id = 100; id < 108; id++) await memory.charge(id, 1e6);

const rounds = 20;
for (let round = 0; round < rounds; round++) {
  %PrepareFunctionForOptimization(caller);
  for (let i = 0; i < 60; i++) await settle(caller(i));
  %OptimizeFunctionOnNextCall(caller);
  armed = true;
  const call = caller(round);
  armed = false;
  await settle(call);
}
console.log(JSON.stringify({ scenario, rounds, injected, underWasm, rejected }));
