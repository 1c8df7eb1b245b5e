// What a Node user would write without pointlock, the baselines of compare.js:
// a Map of async-mutex Mutexes (the issue's `JsKeyed`, the seeds' design), and
// the wallet's policy over a Map behind that lock map.
'use strict';

const { Mutex } = require('async-mutex');

/** A per-key mutex map: one async-mutex `Mutex` per key, never removed. */
class JsKeyedLock {
  constructor() { this.m = new Map(); }
  withLock(k, fn) {
    let x = this.m.get(k);
    if (!x) { x = new Mutex(); this.m.set(k, x); }
    return x.runExclusive(fn);
  }
}

const coded = (code, message) => Object.assign(new Error(message), { code });
const positiveSafeInteger = (n) => Number.isSafeInteger(n) && n > 0;

/**
 * The package's policy by hand: balances and histories in Maps, one user's calls
 * serialised by `JsKeyedLock`. Same answers as `PointService` on the memory store
 * (`{ id, point, updateMillis }`, the same codes), same work per call (balance row,
 * history row with a per-user id), no idempotency keys.
 */
class JsPointService {
  constructor({ maxBalance = 10000 } = {}) {
    this.maxBalance = maxBalance;
    this.points = new Map(); // id -> { point, updateMillis }
    this.rows = new Map(); // id -> [{ id, userId, type, amount, timeMillis }]
    this.lock = new JsKeyedLock();
  }

  charge(id, amount) { return this.apply(id, amount, 'CHARGE'); }

  use(id, amount) { return this.apply(id, amount, 'USE'); }

  point(id) {
    if (!positiveSafeInteger(id)) return Promise.reject(coded('INVALID_USER_ID', 'bad id'));
    return this.lock.withLock(id, async () => {
      const row = this.points.get(id);
      return { id, point: row ? row.point : 0, updateMillis: row ? row.updateMillis : Date.now() };
    });
  }

  apply(id, amount, type) {
    if (!positiveSafeInteger(id)) return Promise.reject(coded('INVALID_USER_ID', 'bad id'));
    if (!positiveSafeInteger(amount)) return Promise.reject(coded('INVALID_AMOUNT', 'bad amount'));
    return this.lock.withLock(id, async () => {
      const row = this.points.get(id);
      const balance = row ? row.point : 0;
      let point;
      if (type === 'CHARGE') {
        if (balance + amount > this.maxBalance) throw coded('MAX_BALANCE_EXCEEDED', 'max balance exceeded');
        point = balance + amount;
      } else {
        if (amount > balance) throw coded('INSUFFICIENT_BALANCE', 'insufficient balance');
        point = balance - amount;
      }
      const updateMillis = Date.now();
      this.points.set(id, { point, updateMillis });
      let history = this.rows.get(id);
      if (!history) { history = []; this.rows.set(id, history); }
      history.push({ id: history.length + 1, userId: id, type, amount, timeMillis: updateMillis });
      return { id, point, updateMillis };
    });
  }
}

module.exports = { JsKeyedLock, JsPointService };
