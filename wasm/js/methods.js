// The package's methods that return Promises: KeyedLock.prototype.withLock and
// PointService.prototype.{point, histories, charge, use, sweepIdempotencyKeys},
// installed by the entry module (pkg/node/pointlock.js, pkg/web/pointlock.js) on
// the classes wasm-bindgen generates (pointlock_bindings.js).
//
// The Rust side keeps the lock (the core's KeyedLock: FIFO queues, hand-over,
// timeouts counted) and the wallet; this side keeps the Promises. They talk in
// numbers: no export returns an object or a Promise, because an export returning
// a single externref crashes Node 20 (V8 11.3) when a lazy deoptimization lands
// inside an inlined call to it (wasm/README.md, "The V8 crash"). It is also
// what makes a call cheap: an uncontended withLock is two calls into wasm that
// take and return numbers, and a charge on the memory store is one call, done
// before it returns, whose answer is built here from numbers.
//
// build.sh appends `module.exports = { install };` (node) or
// `export { install };` (web) to this file.
'use strict';

/** An `Error` with a `code`, as every rejection of the package. */
function codedError(code, message) {
  const error = new Error(message);
  error.code = code;
  return error;
}

// The status protocol of wasm/src/outcome.rs: a number >= 0 is the answer.
const FAILED = -1;
const PENDING = -2;

function install(bindings) {
  const { KeyedLock, PointService } = bindings;
  const release = bindings.__plRelease;
  const granted = bindings.__plGranted;
  const abandon = bindings.__plAbandon;
  const lastMillis = bindings.__plMillis;
  const lastRows = bindings.__plRows;
  const lastError = bindings.__plError;
  const park = bindings.__plPark;

  const method = (cls, name, fn) => Object.defineProperty(cls.prototype, name, {
    value: fn, writable: true, configurable: true, enumerable: false,
  });

  // --- KeyedLock ---------------------------------------------------------------

  /** Queued calls by ticket: `{ resolve, reject, timer }`. */
  const waiters = [];

  /** A thrown non-object becomes an `Error` with code ERROR. */
  const asError = (e) => (typeof e === 'object' && e !== null
    ? e
    : codedError('ERROR', typeof e === 'string' ? e : String(e)));

  /** Give the key of `ticket` up; run the waiter it is handed to, if any. */
  function releaseTicket(ticket) {
    for (let next = release(ticket); next !== 0; next = granted()) wake(next);
  }

  function wake(ticket) {
    const waiter = waiters[ticket];
    waiters[ticket] = undefined;
    if (waiter.timer !== undefined) clearTimeout(waiter.timer);
    waiter.resolve();
  }

  function timedOut(ticket) {
    const waiter = waiters[ticket];
    if (waiter === undefined) return; // granted meanwhile
    waiters[ticket] = undefined;
    for (let next = abandon(-ticket); next !== 0; next = granted()) wake(next);
    waiter.reject(codedError('LOCK_TIMEOUT', "timed out waiting for the key's lock"));
  }

  /** The key was free: this call holds it. */
  async function runHeld(ticket, fn) {
    // fn runs after the caller's synchronous code, never inside withLock's call.
    await undefined;
    try {
      return await fn();
    } catch (e) {
      throw asError(e);
    } finally {
      releaseTicket(ticket);
    }
  }

  /** Queued behind the key's holder: runs when the key is handed over. */
  async function runQueued(ticket, fn, timeoutMs) {
    await new Promise((resolve, reject) => {
      const timer = timeoutMs >= 0 ? setTimeout(timedOut, timeoutMs, ticket) : undefined;
      waiters[ticket] = { resolve, reject, timer };
    });
    try {
      return await fn();
    } catch (e) {
      throw asError(e);
    } finally {
      releaseTicket(ticket);
    }
  }

  method(KeyedLock, 'withLock', function withLock(key, fn) {
    let ticket;
    if (typeof key === 'number') {
      if (typeof fn !== 'function') return Promise.reject(codedError('INVALID_ARGUMENT', 'withLock needs a function'));
      ticket = this.__lockNumber(key);
    } else if (typeof key === 'string') {
      if (typeof fn !== 'function') return Promise.reject(codedError('INVALID_ARGUMENT', 'withLock needs a function'));
      ticket = this.__lockString(key);
    } else {
      return Promise.reject(codedError('INVALID_KEY', 'key must be a number or a string'));
    }
    return ticket > 0 ? runHeld(ticket, fn) : runQueued(-ticket, fn, this.__timeoutMs);
  });

  // --- PointService ------------------------------------------------------------

  /** Ids and amounts must be numbers; anything else is validated as NaN (invalid). */
  const num = (x) => (typeof x === 'number' ? x : NaN);

  function failed() {
    const both = lastError();
    const at = both.indexOf(':');
    return Promise.reject(codedError(both.slice(0, at), both.slice(at + 1)));
  }

  /** The call answered PENDING: it goes on in Rust and settles this Promise. */
  function later(done) {
    return new Promise((resolve, reject) => {
      park(done(resolve), (code, message) => reject(codedError(code, message)));
    });
  }

  function userPoint(id, status) {
    if (status >= 0) return Promise.resolve({ id, point: status, updateMillis: lastMillis() });
    if (status === FAILED) return failed();
    return later((resolve) => (point, updateMillis) => resolve({ id, point, updateMillis }));
  }

  function historyRows(flat) {
    const rows = new Array(flat.length / 5);
    for (let i = 0, r = 0; i < flat.length; i += 5, r++) {
      rows[r] = {
        id: flat[i],
        userId: flat[i + 1],
        type: flat[i + 2] === 0 ? 'CHARGE' : 'USE',
        amount: flat[i + 3],
        timeMillis: flat[i + 4],
      };
    }
    return rows;
  }

  function apply(service, kind, id, amount, key) {
    if (key === undefined || key === null) return service.__apply(kind, num(id), num(amount));
    // A key that is not a string is validated as '' (invalid), after the id and amount.
    return service.__applyKeyed(kind, num(id), num(amount), typeof key === 'string' ? key : '');
  }

  method(PointService, 'charge', function charge(id, amount, idempotencyKey) {
    return userPoint(id, apply(this, 0, id, amount, idempotencyKey));
  });

  method(PointService, 'use', function use(id, amount, idempotencyKey) {
    return userPoint(id, apply(this, 1, id, amount, idempotencyKey));
  });

  method(PointService, 'point', function point(id) {
    return userPoint(id, this.__point(num(id)));
  });

  method(PointService, 'histories', function histories(id) {
    const status = this.__histories(num(id));
    if (status >= 0) return Promise.resolve(historyRows(lastRows()));
    if (status === FAILED) return failed();
    return later((resolve) => (flat) => resolve(historyRows(flat)));
  });

  method(PointService, 'sweepIdempotencyKeys', function sweepIdempotencyKeys(limit) {
    const status = this.__sweep(limit === undefined || limit === null ? 1000 : num(limit));
    if (status >= 0) return Promise.resolve(status);
    if (status === FAILED) return failed();
    return later((resolve) => resolve);
  });
}
