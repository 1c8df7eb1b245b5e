// The npm package used exactly as a user would: require('../pkg').
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { PointService, KeyedLock } = require('../pkg');
const { UserPointTable, PointHistoryTable, TransactionType, sleep } = require('./tables');

const templateService = () =>
  new PointService({
    userPointTable: new UserPointTable(),
    pointHistoryTable: new PointHistoryTable(),
  }); // default: no lock timeout, however slow the tables


test('100 concurrent charges on template tables sum exactly', async () => {
  const svc = templateService();
  const results = await Promise.all(Array.from({ length: 100 }, () => svc.charge(1, 10)));
  const running = new Set(results.map((r) => r.point));
  assert.equal(running.size, 100, 'each call saw a distinct running balance');
  assert.deepEqual(await svc.point(1).then((p) => [p.id, p.point]), [1, 1000]);
  const history = await svc.histories(1);
  assert.equal(history.length, 100);
  assert.ok(history.every((h) => h.type === 'CHARGE' && h.userId === 1 && h.amount === 10));
  assert.equal(svc.lockedUsers, 0);
});

test('negative control: the same charges straight on the tables lose updates', async () => {
  const points = new UserPointTable();
  const history = new PointHistoryTable();
  await Promise.all(
    Array.from({ length: 100 }, async () => {
      const row = await points.selectById(1);
      await points.insertOrUpdate(1, row.point + 10);
      await history.insert(1, 10, TransactionType.CHARGE, Date.now());
    }),
  );
  const balance = (await points.selectById(1)).point;
  assert.ok(balance < 1000, `without the lock updates must be lost, got ${balance}`);
});

test('mixed concurrent charge/use is conserved, never negative, and replays', async () => {
  const svc = templateService();
  await svc.charge(1, 300);
  let expected = 300;
  const calls = Array.from({ length: 100 }, (_, i) =>
    (i % 2 ? svc.use(1, 11) : svc.charge(1, 7)).then(
      (r) => { expected += i % 2 ? -11 : 7; assert.ok(r.point >= 0); },
      (e) => assert.equal(e.code, 'INSUFFICIENT_BALANCE'),
    ),
  );
  await Promise.all(calls);
  const balance = (await svc.point(1)).point;
  assert.equal(balance, expected);
  const replay = (await svc.histories(1)).reduce(
    (sum, h) => sum + (h.type === 'CHARGE' ? h.amount : -h.amount), 0);
  assert.equal(replay, balance);
});

test('different users run concurrently', async () => {
  // Tables whose commits wait until all four users are in the table at once.
  let waiting = 0;
  let release;
  const all = new Promise((r) => { release = r; });
  const points = new UserPointTable(0);
  const insertOrUpdate = points.insertOrUpdate.bind(points);
  points.insertOrUpdate = async (id, point) => {
    if (++waiting === 4) release();
    let timer;
    const serialised = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error('users were serialised')), 5000);
    });
    try { await Promise.race([all, serialised]); } finally { clearTimeout(timer); }
    return insertOrUpdate(id, point);
  };
  const svc = new PointService({ userPointTable: points, pointHistoryTable: new PointHistoryTable(0) });
  const results = await Promise.all([1, 2, 3, 4].map((id) => svc.charge(id, 5)));
  assert.deepEqual(results.map((r) => r.point), [5, 5, 5, 5]);
});

test('errors carry codes and change nothing', async () => {
  const svc = new PointService({ maxBalance: 10000 });
  await svc.charge(1, 100);
  const cases = [
    [() => svc.charge(0, 1), 'INVALID_USER_ID'],
    [() => svc.charge(-1, 1), 'INVALID_USER_ID'],
    [() => svc.charge('1', 1), 'INVALID_USER_ID'],
    [() => svc.point(1.5), 'INVALID_USER_ID'],
    [() => svc.charge(2 ** 53, 1), 'INVALID_USER_ID'],
    [() => svc.charge(1, 0), 'INVALID_AMOUNT'],
    [() => svc.charge(1, 1.5), 'INVALID_AMOUNT'],
    [() => svc.charge(1, NaN), 'INVALID_AMOUNT'],
    [() => svc.charge(1, Number.MAX_SAFE_INTEGER + 1), 'INVALID_AMOUNT'],
    [() => svc.charge(1, '5'), 'INVALID_AMOUNT'],
    [() => svc.use(1, 101), 'INSUFFICIENT_BALANCE'],
    [() => svc.charge(1, 9901), 'MAX_BALANCE_EXCEEDED'],
  ];
  for (const [call, code] of cases) {
    await assert.rejects(call(), (e) => e instanceof Error && e.code === code && e.message.length > 0, code);
  }
  await assert.rejects(svc.charge(1, 1.5), /safe integer/);
  assert.equal((await svc.point(1)).point, 100);
  assert.equal((await svc.histories(1)).length, 1);
  assert.equal((await svc.charge(1, 9900)).point, 10000, 'reaching max exactly is allowed');
});

test('a table that throws rejects with STORE_ERROR and keeps its message', async () => {
  const points = new UserPointTable(0);
  points.selectById = () => { throw new Error('disk on fire'); };
  const svc = new PointService({ userPointTable: points, pointHistoryTable: new PointHistoryTable(0) });
  await assert.rejects(svc.charge(1, 5), (e) => e.code === 'STORE_ERROR' && /disk on fire/.test(e.message));
  assert.equal(svc.lockedUsers, 0, 'the lock is released after a store error');
});

test('a failed history insert writes the balance back and rejects with STORE_ERROR', async () => {
  const points = new UserPointTable(0);
  const history = new PointHistoryTable(0);
  const svc = new PointService({ userPointTable: points, pointHistoryTable: history });
  await svc.charge(1, 30);
  history.insert = async () => { throw new Error('history table full'); };
  await assert.rejects(svc.charge(1, 5), (e) => e.code === 'STORE_ERROR' && /history table full/.test(e.message));
  assert.equal((await svc.point(1)).point, 30, 'the balance written before the failed insert is undone');
  assert.equal((await svc.histories(1)).length, 1);
  assert.equal(svc.lockedUsers, 0);
});

// Template tables with a writer that bypasses the lock, as another process on the
// same tables would: it adds 1 point straight on the tables (balance and history
// row) before the selectById calls `bypass.on(n)` picks (n counts from 1), and
// before every service write while `bypass.onWrite` is set.
function bypassedTables() {
  const points = new UserPointTable(0);
  const history = new PointHistoryTable(0);
  const read = points.selectById.bind(points);
  const write = points.insertOrUpdate.bind(points);
  const bypass = { on: () => false, onWrite: false, reads: 0, sneaked: 0, serviceWrites: [] };
  const sneak = async (id) => {
    bypass.sneaked += 1;
    await write(id, (await read(id)).point + 1);
    await history.insert(id, 1, TransactionType.CHARGE, Date.now());
  };
  points.selectById = async (id) => {
    bypass.reads += 1;
    if (bypass.on(bypass.reads)) await sneak(id);
    return read(id);
  };
  points.insertOrUpdate = async (id, point) => {
    bypass.serviceWrites.push(point);
    if (bypass.onWrite) await sneak(id);
    return write(id, point);
  };
  const svc = new PointService({ userPointTable: points, pointHistoryTable: history });
  return { svc, bypass };
}

const replay = (rows) => rows.reduce((sum, h) => sum + (h.type === 'CHARGE' ? h.amount : -h.amount), 0);

test('template tables: a balance changed behind the lock is re-read, not overwritten', async () => {
  const { svc, bypass } = bypassedTables();
  // The service's read sees 0; the commit's re-read (read 2) sees the sneaked 1.
  bypass.on = (n) => n === 2;
  assert.equal((await svc.charge(1, 100)).point, 101, 'retried on top of the sneaked point');
  assert.equal(bypass.reads, 4, 'two attempts: read and re-read each');
  assert.deepEqual(bypass.serviceWrites, [101], 'the stale 100 was never written');
  const rows = await svc.histories(1);
  assert.deepEqual(rows.map((h) => h.amount), [1, 100]);
  assert.equal((await svc.point(1)).point, 101);
  assert.equal(replay(rows), 101, 'the history replays to the balance');
  assert.equal(svc.lockedUsers, 0);
});

test('template tables: a balance that changes on every read ends in WRITE_CONFLICT, nothing written', async () => {
  const { svc, bypass } = bypassedTables();
  await svc.charge(1, 50);
  bypass.serviceWrites.length = 0;
  bypass.on = () => true;
  await assert.rejects(svc.charge(1, 100),
    (e) => e instanceof Error && e.code === 'WRITE_CONFLICT' && /nothing was changed/.test(e.message));
  bypass.on = () => false;
  assert.ok(bypass.sneaked > 2, `retried before giving up (${bypass.sneaked} sneaked writes)`);
  assert.deepEqual(bypass.serviceWrites, [], 'the call wrote no balance');
  const rows = await svc.histories(1);
  assert.deepEqual(rows.map((h) => h.amount), [50, ...Array(bypass.sneaked).fill(1)],
    'no history row of the call: only the sneaked ones');
  const balance = (await svc.point(1)).point;
  assert.equal(balance, 50 + bypass.sneaked);
  assert.equal(replay(rows), balance);
  assert.equal(svc.lockedUsers, 0);
  assert.equal((await svc.charge(1, 100)).point, balance + 100, 'a retry goes through');
});

test('template tables, the window the docs admit: a write between the re-read and the write is lost', async () => {
  // No compare-and-set on these tables: this is what only an atomic store closes.
  const { svc, bypass } = bypassedTables();
  bypass.onWrite = true;
  assert.equal((await svc.charge(1, 100)).point, 100);
  bypass.onWrite = false;
  assert.equal(bypass.sneaked, 1);
  assert.equal((await svc.point(1)).point, 100, 'the sneaked point was overwritten');
  assert.equal(replay(await svc.histories(1)), 101, 'so the history no longer replays');
});

test('PointService: lockTimeoutMs bounds the wait; a LOCK_TIMEOUT changes nothing', async () => {
  let open;
  const gate = new Promise((resolve) => { open = resolve; });
  const points = new UserPointTable(0);
  const write = points.insertOrUpdate.bind(points);
  let first = true;
  points.insertOrUpdate = async (id, point) => {
    if (first) { first = false; await gate; }
    return write(id, point);
  };
  const svc = new PointService({
    userPointTable: points, pointHistoryTable: new PointHistoryTable(0), lockTimeoutMs: 50,
  });
  const held = svc.charge(1, 10);
  await assert.rejects(svc.charge(1, 20), (e) => e.code === 'LOCK_TIMEOUT');
  open();
  assert.equal((await held).point, 10);
  assert.equal((await svc.point(1)).point, 10);
  assert.equal((await svc.histories(1)).length, 1);
});

test('KeyedLock: FIFO per key, release on throw, entries freed', async () => {
  const lock = new KeyedLock({ timeoutMs: 5000 });
  const order = [];
  await Promise.all([1, 2, 3, 4, 5].map((i) =>
    lock.withLock('k', async () => { await sleep(Math.random() * 10); order.push(i); })));
  assert.deepEqual(order, [1, 2, 3, 4, 5]);
  await assert.rejects(lock.withLock('k', () => { throw new Error('boom'); }), /boom/);
  assert.equal(await lock.withLock('k', () => 42), 42, 'released after the throw');
  assert.equal(lock.size, 0);
});

test('KeyedLock: a wait past timeoutMs rejects with LOCK_TIMEOUT', async () => {
  const lock = new KeyedLock({ timeoutMs: 50 });
  let open;
  const held = lock.withLock(1, () => new Promise((r) => { open = r; }));
  await assert.rejects(lock.withLock(1, () => 'never'), (e) => e.code === 'LOCK_TIMEOUT');
  open();
  await held;
  assert.equal(lock.size, 0);
});

// Idempotency keys: the optional third argument of charge and use.
for (const [name, make] of [['memory store', () => new PointService()], ['template tables', templateService]]) {
  test(`${name}: a keyed charge applies once; its retry resolves to the first answer`, async () => {
    const svc = make();
    const first = await svc.charge(1, 100, 'order-1');
    const again = await svc.charge(1, 100, 'order-1');
    assert.deepEqual(again, first);
    assert.equal(svc.idempotentReplays, 1);
    // Keys are per user; other keys apply.
    await svc.charge(2, 100, 'order-1');
    await svc.charge(1, 100, 'order-2');
    assert.equal((await svc.point(1)).point, 200);
    assert.equal((await svc.histories(1)).length, 2);
    assert.equal((await svc.point(2)).point, 100);
  });

  test(`${name}: concurrent duplicates apply once and all get the same answer`, async () => {
    const svc = make();
    const answers = await Promise.all(Array.from({ length: 20 }, () => svc.charge(1, 10, 'dup')));
    assert.equal(new Set(answers.map((a) => JSON.stringify(a))).size, 1);
    assert.equal((await svc.point(1)).point, 10);
    assert.equal((await svc.histories(1)).length, 1);
    assert.equal(svc.idempotentReplays, 19);
  });

  test(`${name}: a key reused for another request rejects and changes nothing`, async () => {
    const svc = make();
    await svc.charge(1, 100, 'k');
    await assert.rejects(svc.use(1, 100, 'k'), { code: 'IDEMPOTENCY_KEY_REUSED' });
    await assert.rejects(svc.charge(1, 99, 'k'), { code: 'IDEMPOTENCY_KEY_REUSED' });
    assert.equal((await svc.point(1)).point, 100);
    assert.equal((await svc.histories(1)).length, 1);
  });
}

test('an invalid idempotency key rejects before queueing and changes nothing', async () => {
  const svc = new PointService();
  for (const bad of ['', 'has space', 'x'.repeat(256), 'é', 42, {}]) {
    await assert.rejects(svc.charge(1, 10, bad), { code: 'INVALID_IDEMPOTENCY_KEY' }, String(bad));
  }
  assert.equal((await svc.histories(1)).length, 0);
  // undefined and null mean no key.
  await svc.charge(1, 10, undefined);
  await svc.charge(1, 10, null);
  assert.equal((await svc.point(1)).point, 20);
});

test('a policy refusal is not recorded: the retry is decided afresh', async () => {
  const svc = new PointService();
  await assert.rejects(svc.use(1, 50, 'u'), { code: 'INSUFFICIENT_BALANCE' });
  await svc.charge(1, 80);
  assert.equal((await svc.use(1, 50, 'u')).point, 30);
});

test('a key expires after idempotencyTtlMs and is swept', async () => {
  const svc = new PointService({ idempotencyTtlMs: 5 });
  await svc.charge(1, 10, 'k');
  const made = Date.now();
  while (Date.now() - made <= 10) await sleep(2); // let the TTL pass
  assert.equal((await svc.charge(1, 10, 'k')).point, 20, 'expired: applies again');
  while (Date.now() - made <= 30) await sleep(2);
  assert.equal(await svc.sweepIdempotencyKeys(), 1);
  assert.equal(await svc.sweepIdempotencyKeys(), 0);
  await assert.rejects(svc.sweepIdempotencyKeys(-1), { code: 'INVALID_ARGUMENT' });
});
