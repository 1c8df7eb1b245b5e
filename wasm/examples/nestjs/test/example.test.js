// The NestJS example over real HTTP: the course contract (routes, JSON, error
// codes, bad input changing nothing) and the concurrency guarantees, in both
// ways the example uses pointlock (`keyed-lock`: the interceptor with
// KeyedLock; `point-service`: pointlock's PointService), each with its
// negative control; the async-mutex baseline of the benchmark is checked to be
// correct too. Requires `npm run build` (dist/) and the package installed from
// its tarball (README.md).
'use strict';

const test = require('node:test');
const { describe, before, after } = test;
const assert = require('node:assert/strict');
const { startExample, npmStart } = require('./harness');

const LATENCY_MS = 2; // the tables' longest delay: enough to interleave, quick

/** 100 concurrent charges of 10 to `user`: the final balance and the running balances seen. */
async function hundredConcurrentCharges(app, user) {
  const answers = await Promise.all(Array.from({ length: 100 }, () => app.charge(user, 10)));
  assert.deepEqual([...new Set(answers.map((a) => a.status))], [200]);
  return { balance: await app.balance(user), seen: new Set(answers.map((a) => a.json.point)) };
}

/**
 * 20 requests of `user` (charges of i + 1, every fifth a use of 1), each sent
 * once the one before has taken its place in the user's queue, the first held
 * inside its balance write at the gate until all are queued.
 */
async function requestsInArrivalOrder(app, user) {
  await app.probe('gate', { user });
  const first = (await app.state()).queued;
  const sent = [];
  const expected = [];
  for (let i = 0; i < 20; i++) {
    const use = i % 5 === 4;
    sent.push(use ? app.use(user, 1) : app.charge(user, i + 1));
    expected.push(use ? ['USE', 1] : ['CHARGE', i + 1]);
    if (i === 0) await app.waitFor('first at the gate', (s) => s.atGate[user] === 1);
    else await app.waitFor(`request ${i} queued`, (s) => s.queued === first + i + 1);
  }
  await app.probe('open', { user });
  const statuses = (await Promise.all(sent)).map((a) => a.status);
  const order = (await app.history(user)).map((row) => [row.type, row.amount]);
  return { statuses, order, expected };
}

/**
 * Behind a charge of 5 held at the gate, `user` queues: a use it cannot afford
 * (409), a malformed body (400), a charge whose balance write fails (500), then
 * nine charges of 10.
 */
async function failuresInTheQueue(app, user, lock) {
  await app.probe('gate', { user });
  const first = (await app.state()).queued;
  const sent = [app.charge(user, 5)];
  await app.waitFor('first at the gate', (s) => s.atGate[user] === 1);
  await app.probe('failWrite', { user }); // the next write to arrive: the fourth request's
  sent.push(app.use(user, 1000));
  sent.push(app.send('PATCH', `/point/${user}/charge`, '{not json'));
  for (let i = 0; i < 10; i++) sent.push(app.charge(user, 10));
  // The malformed body takes a place under the interceptor, which runs before
  // Nest's pipes; PointService is only called once the body parsed.
  const places = sent.length - (lock === 'point-service' ? 1 : 0);
  await app.waitFor('all queued', (s) => s.queued === first + places);
  await app.probe('open', { user });
  const answers = await Promise.all(sent);
  return { answers, balance: await app.balance(user), rows: (await app.history(user)).length };
}

const sortedKeys = (object) => Object.keys(object).sort();

for (const lock of ['keyed-lock', 'point-service']) {
  describe(`POINT_LOCK=${lock}`, () => {
    let app;
    before(async () => { app = await startExample({ lock, tableLatencyMs: LATENCY_MS }); });
    after(() => app.stop());

    test('an unknown user has 0 points and no history', async () => {
      const r = await app.get('/point/42');
      assert.equal(r.status, 200);
      assert.deepEqual([r.json.id, r.json.point], [42, 0]);
      assert.ok(r.json.updateMillis > 1_600_000_000_000);
      assert.match(r.headers.get('content-type'), /^application\/json/);
      assert.deepEqual(await app.history(42), []);
    });

    test('charge, use and histories have the template shapes; a bare number body works', async () => {
      const r = await app.charge(1, 100);
      assert.equal(r.status, 200);
      assert.deepEqual(sortedKeys(r.json), ['id', 'point', 'updateMillis']);
      assert.deepEqual([r.json.id, r.json.point], [1, 100]);
      const bare = await app.send('PATCH', '/point/1/use', '40');
      assert.deepEqual([bare.status, bare.json.point], [200, 60]);
      const h = await app.history(1);
      assert.equal(h.length, 2);
      assert.deepEqual(sortedKeys(h[0]), ['amount', 'id', 'timeMillis', 'type', 'userId']);
      assert.deepEqual(h.map((row) => [row.type, row.amount, row.userId]), [['CHARGE', 100, 1], ['USE', 40, 1]]);
      assert.ok(h[0].id < h[1].id, 'oldest first');
    });

    test('the maximum balance is inclusive; overdraft and overflow are 409 and change nothing', async () => {
      assert.equal((await app.charge(2, 10_000)).status, 200);
      for (const amount of [1, Number.MAX_SAFE_INTEGER]) {
        const r = await app.charge(2, amount);
        assert.deepEqual([r.status, r.json.code], [409, 'MAX_BALANCE_EXCEEDED']);
      }
      assert.equal((await app.use(2, 10_000)).json.point, 0);
      const r = await app.use(2, 1);
      assert.deepEqual([r.status, r.json.code], [409, 'INSUFFICIENT_BALANCE']);
      assert.match(r.json.message, /insufficient/);
      assert.equal(await app.balance(2), 0);
      assert.equal((await app.history(2)).length, 2);
    });

    test('invalid ids are 400 INVALID_USER_ID, take no lock and change nothing', async () => {
      const before = await app.state();
      for (const path of ['/point/0', '/point/-1', '/point/abc', '/point/1.5', '/point/1e3', '/point/9007199254740992',
        '/point/99999999999999999999999', '/point/0/histories']) {
        const r = await app.get(path);
        assert.deepEqual([r.status, r.json.code], [400, 'INVALID_USER_ID'], path);
      }
      for (const path of ['/point/0/charge', '/point/abc/use', '/point/-5/charge']) {
        const r = await app.send('PATCH', path, '{"amount":10}');
        assert.deepEqual([r.status, r.json.code], [400, 'INVALID_USER_ID'], path);
      }
      assert.equal((await app.state()).queued, before.queued, 'no request took a place in a queue');
    });

    test('invalid amounts and bodies are 400 and change nothing', async () => {
      assert.equal((await app.charge(3, 500)).status, 200);
      const cases = [
        ['', 'INVALID_JSON'], ['{', 'INVALID_JSON'], ['amount=5', 'INVALID_JSON'],
        ['{"amount":0}', 'INVALID_AMOUNT'], ['{"amount":-10}', 'INVALID_AMOUNT'], ['{"amount":10.5}', 'INVALID_AMOUNT'],
        ['{"amount":1e3}', 'INVALID_AMOUNT'], ['{"amount":10.0}', 'INVALID_AMOUNT'], ['{"amount":"10"}', 'INVALID_AMOUNT'],
        ['{"amount":null}', 'INVALID_AMOUNT'], ['{}', 'INVALID_AMOUNT'], ['{"x":{"amount":5}}', 'INVALID_AMOUNT'],
        ['{"amount":9223372036854775808}', 'INVALID_AMOUNT'], ['{"amount":9007199254740992}', 'INVALID_AMOUNT'],
        ['{"amount":1000000000000000000000000000}', 'INVALID_AMOUNT'], ['"\\u00005"', 'INVALID_AMOUNT'],
        ['0', 'INVALID_AMOUNT'], ['-1', 'INVALID_AMOUNT'], ['null', 'INVALID_AMOUNT'], ['[5]', 'INVALID_AMOUNT'],
      ];
      for (const [body, code] of cases) {
        for (const route of ['charge', 'use']) {
          const r = await app.send('PATCH', `/point/3/${route}`, body);
          assert.deepEqual([r.status, r.json && r.json.code], [400, code], `${route} ${JSON.stringify(body)}`);
          assert.ok(r.json.message.length > 0);
        }
      }
      assert.equal(await app.balance(3), 500);
      assert.equal((await app.history(3)).length, 1);
    });

    test('unknown routes are 404 NOT_FOUND, other methods 405 with Allow, big bodies 413', async () => {
      for (const path of ['/', '/points/1', '/point/1/unknown', '/point/1/charge/x']) {
        const r = await app.get(path);
        assert.deepEqual([r.status, r.json.code], [404, 'NOT_FOUND'], path);
      }
      for (const [method, path, allow] of [['POST', '/point/4/charge', 'PATCH'], ['GET', '/point/4/charge', 'PATCH'],
        ['PUT', '/point/4/use', 'PATCH'], ['PATCH', '/point/4', 'GET'], ['DELETE', '/point/4/histories', 'GET']]) {
        const r = await app.send(method, path, '10');
        assert.deepEqual([r.status, r.json.code, r.headers.get('allow')], [405, 'METHOD_NOT_ALLOWED', allow], `${method} ${path}`);
      }
      const big = await app.send('PATCH', '/point/4/charge', JSON.stringify({ amount: 1, pad: 'x'.repeat(8 * 1024) }));
      assert.deepEqual([big.status, big.json.code], [413, 'PAYLOAD_TOO_LARGE']);
      assert.deepEqual(await app.history(4), []);
    });

    test('100 concurrent charges of one user sum exactly; the lock table is empty afterwards', async () => {
      const { balance, seen } = await hundredConcurrentCharges(app, 10);
      assert.equal(balance, 1000);
      assert.equal(seen.size, 100, 'each charge saw a distinct running balance');
      assert.equal((await app.history(10)).length, 100);
      assert.equal((await app.state()).lockSize, 0);
    });

    test('one user\'s requests apply in the order they reached the app (history order)', async () => {
      const { statuses, order, expected } = await requestsInArrivalOrder(app, 11);
      assert.deepEqual(statuses, Array(expected.length).fill(200));
      assert.deepEqual(order, expected);
      assert.equal((await app.state()).lockSize, 0);
    });

    test('failed requests do not fail those queued behind them', async () => {
      const { answers, balance, rows } = await failuresInTheQueue(app, 12, lock);
      assert.equal(answers[0].status, 200);
      assert.deepEqual([answers[1].status, answers[1].json.code], [409, 'INSUFFICIENT_BALANCE']);
      assert.deepEqual([answers[2].status, answers[2].json.code], [400, 'INVALID_JSON']);
      assert.equal(answers[3].status, 500, 'the planted write failure');
      assert.deepEqual(answers.slice(4).map((a) => a.status), Array(9).fill(200));
      assert.deepEqual([balance, rows], [95, 10]);
      assert.equal((await app.state()).lockSize, 0);
    });

    test('different users run at the same time (their writes meet at a barrier)', async () => {
      const users = [21, 22, 23, 24, 25, 26, 27, 28];
      await app.probe('barrier', { users, patienceMs: 10000 });
      const answers = await Promise.all(users.map((user) => app.charge(user, 100)));
      assert.deepEqual(answers.map((a) => a.status), Array(users.length).fill(200));
      assert.equal((await app.state()).lockSize, 0);
    });
  });
}

describe('negative controls: the same scenarios fail without the lock', () => {
  let app;
  before(async () => { app = await startExample({ lock: 'off', tableLatencyMs: 5 }); });
  after(() => app.stop());

  test('with the lock switched off, concurrent charges lose updates', async () => {
    const { balance } = await hundredConcurrentCharges(app, 1);
    assert.ok(balance < 1000, `without the lock updates must be lost, got ${balance}`);
  });

  test('with the lock switched off, the arrival-order scenario fails', async () => {
    const { statuses, order, expected } = await requestsInArrivalOrder(app, 2);
    // The uses read the balance while the first charge is held: refused.
    assert.ok(statuses.includes(409), `statuses ${statuses}`);
    assert.notDeepEqual(order, expected);
  });

  test('with the lock switched off, the failures-in-the-queue scenario ends with a wrong balance', async () => {
    const { balance } = await failuresInTheQueue(app, 3, 'off');
    assert.notEqual(balance, 95);
  });
});

test('negative control: with every user on one key (serialised), the barrier of the different-users test does not fill', async () => {
  const app = await startExample({ lock: 'keyed-lock', tableLatencyMs: 0 });
  try {
    await app.probe('oneKey', { on: true });
    const users = [31, 32, 33, 34];
    await app.probe('barrier', { users, patienceMs: 300 });
    const answers = await Promise.all(users.map((user) => app.charge(user, 100)));
    assert.ok(answers.some((a) => a.status === 500), `serialised users must fail the barrier: ${answers.map((a) => a.status)}`);
  } finally {
    await app.stop();
  }
});

for (const lock of ['keyed-lock', 'point-service']) {
  test(`POINT_LOCK=${lock}: a request waiting past the lock timeout is 503 LOCK_TIMEOUT and changes nothing`, async () => {
    const app = await startExample({ lock, tableLatencyMs: 0, lockTimeoutMs: 200 });
    try {
      await app.probe('gate', { user: 1 });
      const first = app.charge(1, 5);
      await app.waitFor('first at the gate', (s) => s.atGate[1] === 1);
      const late = await app.charge(1, 7);
      assert.deepEqual([late.status, late.json.code, late.headers.get('retry-after')], [503, 'LOCK_TIMEOUT', '1']);
      await app.probe('open', { user: 1 });
      assert.equal((await first).status, 200);
      assert.equal(await app.balance(1), 5);
      assert.equal((await app.history(1)).length, 1);
      assert.equal((await app.state()).lockSize, 0);
    } finally {
      await app.stop();
    }
  });
}

test('the benchmark\'s baseline (POINT_LOCK=async-mutex) is correct too', async () => {
  const app = await startExample({ lock: 'async-mutex', tableLatencyMs: LATENCY_MS });
  try {
    const { balance, seen } = await hundredConcurrentCharges(app, 1);
    assert.deepEqual([balance, seen.size], [1000, 100]);
  } finally {
    await app.stop();
  }
});

test('npm start builds and serves on PORT, on 127.0.0.1', async () => {
  const app = await npmStart({ PORT: '0', TABLE_LATENCY_MS: '0' });
  try {
    assert.match(app.base, /^http:\/\/127\.0\.0\.1:[0-9]+$/);
    const r = await fetch(`${app.base}/point/1/charge`, { method: 'PATCH', body: '{"amount":7}' });
    assert.deepEqual(await r.json(), { id: 1, point: 7, updateMillis: (await fetch(`${app.base}/point/1`).then((x) => x.json())).updateMillis });
  } finally {
    await app.stop();
  }
});

test('the README shows the interceptor exactly as src/point/user-lock.interceptor.ts has it', () => {
  const fs = require('node:fs');
  const path = require('node:path');
  const readme = fs.readFileSync(path.join(__dirname, '..', 'README.md'), 'utf8');
  const source = fs.readFileSync(path.join(__dirname, '..', 'src', 'point', 'user-lock.interceptor.ts'), 'utf8');
  const shown = /`src\/point\/user-lock\.interceptor\.ts`, whole:\n\n```ts\n([\s\S]*?)```/.exec(readme);
  assert.ok(shown, 'README.md has the interceptor\'s code block');
  assert.equal(shown[1], source);
});

test('the environment cannot switch the lock off (only bootstrap options can)', () => {
  const { optionsFromEnv } = require('../dist/options');
  assert.throws(() => optionsFromEnv({ POINT_LOCK: 'off' }), /POINT_LOCK must be one of keyed-lock, point-service, async-mutex/);
  assert.throws(() => optionsFromEnv({ PORT: '80x' }), /PORT must be an integer/);
  assert.equal(optionsFromEnv({}).lock, 'keyed-lock');
  assert.equal(optionsFromEnv({}).host, '127.0.0.1');
});
