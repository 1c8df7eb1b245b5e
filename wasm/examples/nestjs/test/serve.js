// The example as the tests run it, in a child process the test forks: the
// parent sends the options (including the one `npm start` cannot set, the lock
// switched off) and then drives probes over IPC, each a wrapper around one of
// the app's own providers:
//   queued     requests that took their place in a user's queue (calls of the
//              lock's withLock, or of PointService's methods, which take it in
//              the call);
//   gate       holds a user's balance writes (insertOrUpdate) until opened, so a
//              request holds its user's lock for as long as a test needs;
//   failWrite  the next balance write of a user to arrive throws;
//   barrier    balance writes of the listed users wait until all of them are
//              writing at once (or throw after `patienceMs`);
//   oneKey     every user locks the same key: global serialisation, the
//              barrier's negative control.
'use strict';

const { bootstrap } = require('../dist/main');
const { USER_LOCK } = require('../dist/point/user-lock.interceptor');
const { WALLET } = require('../dist/point/point.model');
const { UserPointTable } = require('../dist/database/userpoint.table');

async function start(options) {
  const app = await bootstrap(options);
  const lock = app.get(USER_LOCK);
  const wallet = app.get(WALLET);
  const points = app.get(UserPointTable);
  const probe = { queued: 0, atGate: {}, gates: new Map(), failWrite: new Set(), barrier: null, oneKey: false };

  if (options.lock === 'point-service') {
    for (const method of ['point', 'histories', 'charge', 'use']) {
      const call = wallet[method].bind(wallet);
      wallet[method] = (...args) => {
        probe.queued += 1;
        return call(...args);
      };
    }
  } else {
    const withLock = lock.withLock.bind(lock);
    lock.withLock = (key, fn) => {
      probe.queued += 1;
      return withLock(probe.oneKey ? 0 : key, fn);
    };
  }

  const write = points.insertOrUpdate.bind(points);
  points.insertOrUpdate = async (id, point) => {
    const fail = probe.failWrite.delete(id); // a write that arrives after failWrite, not one at the gate
    const gate = probe.gates.get(id);
    if (gate) {
      probe.atGate[id] = (probe.atGate[id] ?? 0) + 1;
      await gate.opened;
    }
    if (fail) throw new Error(`planted failure of user ${id}'s balance write`);
    const barrier = probe.barrier;
    if (barrier && barrier.users.includes(id)) {
      barrier.arrived += 1;
      if (barrier.arrived === barrier.users.length) barrier.fill();
      let timer;
      const patience = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error('the barrier did not fill: users were serialised')), barrier.patienceMs);
      });
      try {
        await Promise.race([barrier.filled, patience]);
      } finally {
        clearTimeout(timer);
      }
    }
    return write(id, point);
  };

  const lockSize = () => {
    if (options.lock === 'point-service') return wallet.lockedUsers;
    return typeof lock.size === 'number' ? lock.size : 0;
  };

  const ops = {
    state: () => ({ queued: probe.queued, atGate: probe.atGate, lockSize: lockSize() }),
    gate: ({ user }) => {
      let open;
      const opened = new Promise((resolve) => { open = resolve; });
      probe.gates.set(user, { opened, open });
    },
    open: ({ user }) => {
      probe.gates.get(user).open();
      probe.gates.delete(user);
    },
    failWrite: ({ user }) => { probe.failWrite.add(user); },
    barrier: ({ users, patienceMs }) => {
      let fill;
      const filled = new Promise((resolve) => { fill = resolve; });
      probe.barrier = { users, patienceMs, arrived: 0, filled, fill };
    },
    oneKey: ({ on }) => { probe.oneKey = on; },
  };
  process.on('message', ({ id, op, args }) => {
    try {
      process.send({ id, result: ops[op](args ?? {}) });
    } catch (error) {
      process.send({ id, error: String(error && error.stack) });
    }
  });
  process.send({ ready: await app.getUrl() });
}

process.once('message', (options) => {
  start(options).catch((error) => {
    console.error(error);
    process.exit(1);
  });
});
