// The Promise-returning methods of wasm/js/methods.js over the numeric exports:
// tickets, hand-over, timeouts in the middle of a queue, the status protocol of
// the service (done within the call, failed, pending), result shapes.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { PointService, KeyedLock } = require('../pkg');
const { UserPointTable, PointHistoryTable, sleep } = require('./tables');

test('withLock: the function never runs inside the withLock call', async () => {
  const lock = new KeyedLock();
  const order = [];
  const free = lock.withLock(1, () => order.push('free key'));
  const queued = lock.withLock(1, () => order.push('queued'));
  order.push('caller');
  await Promise.all([free, queued]);
  assert.deepEqual(order, ['caller', 'free key', 'queued']);
});

test('withLock: numbers compare like Map keys, strings apart from numbers', async () => {
  const lock = new KeyedLock();
  const overlap = async (a, b) => {
    let inside = 0;
    let most = 0;
    const enter = async () => { inside++; most = Math.max(most, inside); await sleep(5); inside--; };
    await Promise.all([lock.withLock(a, enter), lock.withLock(b, enter)]);
    return most === 2;
  };
  assert.equal(await overlap(0, -0), false, '0 and -0 are one key');
  assert.equal(await overlap(NaN, NaN), false, 'NaN is one key');
  assert.equal(await overlap(1, 1.0), false);
  assert.equal(await overlap(1, '1'), true, "1 and '1' are different keys");
  assert.equal(await overlap('a', 'b'), true);
  assert.equal(await overlap(1, 2), true);
  assert.equal(lock.size, 0);
});

test('withLock: invalid arguments reject and queue nothing', async () => {
  const lock = new KeyedLock();
  for (const key of [undefined, null, {}, [], true, 1n]) {
    await assert.rejects(lock.withLock(key, () => 1), { code: 'INVALID_KEY' }, String(key));
  }
  for (const fn of [undefined, 42, 'fn', {}]) {
    await assert.rejects(lock.withLock(1, fn), { code: 'INVALID_ARGUMENT' });
    await assert.rejects(lock.withLock('k', fn), { code: 'INVALID_ARGUMENT' });
  }
  assert.equal(lock.size, 0);
  assert.equal(await lock.withLock(1, () => 'free'), 'free');
});

test('withLock: a thrown non-object rejects with an Error coded ERROR; the key is released', async () => {
  const lock = new KeyedLock();
  await assert.rejects(lock.withLock(1, () => { throw 'plain string'; }),
    (e) => e instanceof Error && e.code === 'ERROR' && e.message === 'plain string');
  await assert.rejects(lock.withLock(1, () => Promise.reject(42)), (e) => e.code === 'ERROR' && e.message === '42');
  const thrown = { why: 'object' };
  await assert.rejects(lock.withLock(1, () => { throw thrown; }), (e) => e === thrown, 'objects are kept as they are');
  assert.equal(lock.size, 0);
});

test('withLock: 1,000 calls on one key run one at a time, in call order', async () => {
  const lock = new KeyedLock();
  const order = [];
  let inside = 0;
  const calls = Array.from({ length: 1000 }, (_, i) => lock.withLock('hot', async () => {
    assert.equal(++inside, 1, 'one at a time');
    if (i % 100 === 0) await sleep(1);
    order.push(i);
    inside--;
    return i;
  }));
  assert.deepEqual(await Promise.all(calls), order);
  assert.deepEqual(order, Array.from({ length: 1000 }, (_, i) => i));
  assert.equal(lock.size, 0);
});

test('withLock: a timeout in the middle of a queue; the calls behind it keep their order', async () => {
  const lock = new KeyedLock({ timeoutMs: 100 });
  let open;
  const order = [];
  const holder = lock.withLock(1, () => new Promise((r) => { open = r; }));
  const early = lock.withLock(1, () => order.push('early'));
  await sleep(50);
  const late = lock.withLock(1, () => order.push('late'));
  // `early` times out at 100 ms; `late` (queued at 50 ms) still waits behind the holder.
  await assert.rejects(early, { code: 'LOCK_TIMEOUT' });
  open();
  await holder;
  await late;
  assert.deepEqual(order, ['late'], 'the timed-out function never ran');
  assert.equal(lock.size, 0);
});

test('withLock: two locks with the same keys are independent', async () => {
  const a = new KeyedLock();
  const b = new KeyedLock();
  let open;
  const held = a.withLock(1, () => new Promise((r) => { open = r; }));
  assert.equal(await b.withLock(1, () => 'b ran'), 'b ran', 'b is not blocked by a');
  open();
  await held;
  assert.equal(a.size + b.size, 0);
});

test('PointService on the memory store: results have the documented shapes', async () => {
  const svc = new PointService();
  const charged = await svc.charge(3, 100);
  assert.deepEqual(Object.keys(charged), ['id', 'point', 'updateMillis']);
  assert.equal(charged.id, 3);
  assert.equal(charged.point, 100);
  assert.ok(Math.abs(charged.updateMillis - Date.now()) < 5000);
  assert.equal((await svc.use(3, 30)).point, 70);
  const rows = await svc.histories(3);
  assert.deepEqual(rows.map((r) => Object.keys(r)), [['id', 'userId', 'type', 'amount', 'timeMillis'], ['id', 'userId', 'type', 'amount', 'timeMillis']]);
  assert.deepEqual(rows.map(({ userId, type, amount }) => [userId, type, amount]), [[3, 'CHARGE', 100], [3, 'USE', 30]]);
  assert.ok(rows[0].id < rows[1].id);
  assert.deepEqual(await svc.histories(4), []);
  const fresh = await svc.point(4);
  assert.deepEqual([fresh.id, fresh.point], [4, 0]);
  assert.equal(await svc.sweepIdempotencyKeys(), 0);
  assert.equal(svc.lockedUsers, 0);
});

test('PointService: calls behind a slow one queue in order, then the user is free again', async () => {
  // With latency the first call is pending; the calls made meanwhile must not
  // overtake it, whether or not they could have been done at once.
  const svc = new PointService({ simulateLatencyMs: 5 });
  const calls = [svc.charge(1, 10), svc.charge(1, 20), svc.use(1, 5), svc.point(1), svc.charge(1, 1, 'k')];
  const answers = await Promise.all(calls);
  assert.deepEqual(answers.map((a) => a.point), [10, 30, 25, 25, 26]);
  assert.equal(svc.lockedUsers, 0);
  assert.deepEqual((await svc.histories(1)).map((h) => h.amount), [10, 20, 5, 1]);
});

test('PointService: lockTimeoutMs on the memory store with latency', async () => {
  const svc = new PointService({ simulateLatencyMs: 100, lockTimeoutMs: 1 });
  const results = await Promise.allSettled(Array.from({ length: 5 }, () => svc.charge(1, 1)));
  const codes = results.map((r) => (r.status === 'fulfilled' ? 'ok' : r.reason.code));
  assert.equal(codes[0], 'ok');
  assert.ok(codes.slice(1).includes('LOCK_TIMEOUT'), `queued calls time out: ${codes}`);
  const applied = codes.filter((c) => c === 'ok').length;
  assert.equal((await svc.point(1)).point, applied, 'only the calls that ran were applied');
});

test('PointService: errors are Errors with codes, messages from the core', async () => {
  const svc = new PointService({ maxBalance: 100 });
  const cases = [
    [svc.charge(1, 101), 'MAX_BALANCE_EXCEEDED', /max balance exceeded: balance 0 \+ charge 101 > max 100/],
    [svc.use(1, 1), 'INSUFFICIENT_BALANCE', /insufficient balance: balance 0, requested 1/],
    [svc.point('1'), 'INVALID_USER_ID', /safe integer/],
    [svc.histories(0), 'INVALID_USER_ID', /safe integer/],
    [svc.charge(1, 10, 42), 'INVALID_IDEMPOTENCY_KEY', /visible ASCII/],
    [svc.charge(0, 10, 42), 'INVALID_USER_ID', /user id/], // the id first, then the amount, then the key
    [svc.sweepIdempotencyKeys('10'), 'INVALID_ARGUMENT', /non-negative integer/],
  ];
  for (const [call, code, message] of cases) {
    await assert.rejects(call, (e) => e instanceof Error && e.code === code && message.test(e.message), code);
  }
});

test('template tables: a table method that calls the service back works', async () => {
  // The first poll runs within the call, so a table method runs inside charge();
  // calling the service from there must neither deadlock nor confuse answers.
  const points = new UserPointTable(0);
  const history = new PointHistoryTable(0);
  let svc;
  const select = points.selectById.bind(points);
  const seen = [];
  points.selectById = async (id) => {
    if (id === 1) seen.push((await svc.point(2)).point);
    return select(id);
  };
  svc = new PointService({ userPointTable: points, pointHistoryTable: history });
  await svc.charge(2, 7);
  assert.equal((await svc.charge(1, 5)).point, 5);
  assert.ok(seen.length > 0 && seen.every((p) => p === 7));
  assert.equal(svc.lockedUsers, 0);
});
