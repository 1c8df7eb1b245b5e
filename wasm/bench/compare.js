#!/usr/bin/env node
// The package against what a Node user would write without it, side by side in
// one process (docs/perf-wasm.md):
//
//   lock   KeyedLock.withLock          vs a Map of async-mutex Mutexes
//   charge PointService.charge (memory) vs the same policy in JavaScript over a Map
//                                          behind that async-mutex map
//
// each over 10,000 keys/users ("spread") and over one ("hot"): N calls (200,000)
// issued in batches of B (1,000) awaited with Promise.all, the issue's shape.
// Every contender runs once per round, in a rotating order, after an untimed
// warm-up round; the table gives medians over ROUNDS (3) and the ratio of the
// medians (>= 1.0: the package is at least as fast).
//
//   node wasm/bench/compare.js                       # ../pkg, 3 rounds
//   node wasm/bench/compare.js --also before=/tmp/pkg-before --rounds 5
//   node wasm/bench/compare.js --cells lock-hot --n 50000 --json out.json
//   node --cpu-prof wasm/bench/compare.js --cells lock-spread --only pointlock
//     (one contender alone, for a profile: no ratio then)
'use strict';

const path = require('node:path');
const fs = require('node:fs');
const { JsKeyedLock, JsPointService } = require('./baselines');

function parseArgs(argv) {
  const opts = {
    pkg: path.join(__dirname, '..', 'pkg'),
    also: [],
    rounds: 3,
    n: 200000,
    batch: 1000,
    cells: ['lock-spread', 'lock-hot', 'charge-spread', 'charge-hot'],
    json: null,
    only: null,
  };
  for (let i = 2; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg === '--pkg') opts.pkg = path.resolve(value());
    else if (arg === '--also') {
      const [name, dir] = value().split('=');
      if (!dir) throw new Error('--also takes NAME=DIR');
      opts.also.push({ name, dir: path.resolve(dir) });
    } else if (arg === '--rounds') opts.rounds = Number(value());
    else if (arg === '--n') opts.n = Number(value());
    else if (arg === '--batch') opts.batch = Number(value());
    else if (arg === '--cells') opts.cells = value().split(',');
    else if (arg === '--json') opts.json = value();
    else if (arg === '--only') opts.only = value().split(',');
    else throw new Error(`unknown argument ${arg}`);
  }
  return opts;
}

const USERS = { spread: 10000, hot: 1 };
const MAX_BALANCE = 1e12; // every charge of the hot user must succeed

/** The issue's loop: N calls in batches of B, each batch awaited at once. */
async function lockRun(lock, users, n, b) {
  let c = 0;
  const started = process.hrtime.bigint();
  for (let d = 0; d < n; d += b) {
    const ps = [];
    for (let i = 0; i < b; i++) ps.push(lock.withLock(1 + ((d + i) % users), async () => { c++; }));
    await Promise.all(ps);
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  if (c !== n) throw new Error(`ran ${c} functions, expected ${n}`);
  if (typeof lock.size === 'number' && lock.size !== 0) throw new Error(`lock.size ${lock.size} after the run`);
  return seconds;
}

async function chargeRun(svc, users, n, b) {
  let ok = 0;
  const started = process.hrtime.bigint();
  for (let d = 0; d < n; d += b) {
    const ps = [];
    for (let i = 0; i < b; i++) ps.push(svc.charge(1 + ((d + i) % users), 1));
    const results = await Promise.all(ps);
    ok += results.length;
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const expected = Math.floor(n / users) + (users > 1 && n % users ? 1 : 0);
  const balance = (await svc.point(1)).point;
  if (ok !== n || balance !== expected) throw new Error(`charges ${ok}/${n}, user 1 at ${balance} (expected ${expected})`);
  return seconds;
}

function contenders(opts) {
  const packages = [{ name: 'pointlock', dir: opts.pkg }, ...opts.also].map((p) => ({ ...p, api: require(p.dir) }));
  return {
    lock: [
      ...packages.map((p) => ({ name: p.name, ours: true, make: () => new p.api.KeyedLock({}) })),
      { name: 'async-mutex map', make: () => new JsKeyedLock() },
    ],
    charge: [
      ...packages.map((p) => ({ name: p.name, ours: true, make: () => new p.api.PointService({ maxBalance: MAX_BALANCE }) })),
      { name: 'JS Map + async-mutex map', make: () => new JsPointService({ maxBalance: MAX_BALANCE }) },
    ],
  };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fmt = (opsPerSecond) => `${Math.round(opsPerSecond / 1000).toLocaleString('en-US')} k/s`;

async function main() {
  const opts = parseArgs(process.argv);
  const all = contenders(opts);
  const results = [];
  for (const cell of opts.cells) {
    const [kind, spread] = cell.split('-');
    const users = USERS[spread];
    if (!all[kind] || !users) throw new Error(`unknown cell ${cell}`);
    const list = all[kind].filter((c) => !opts.only || opts.only.includes(c.name));
    if (list.length === 0) throw new Error(`no contender of ${cell} is in --only`);
    const run = kind === 'lock' ? lockRun : chargeRun;
    const rates = list.map(() => []);
    for (let round = -1; round < opts.rounds; round++) {
      // Rotate the order each round, so no contender always runs first.
      for (let k = 0; k < list.length; k++) {
        const at = (k + Math.max(round, 0)) % list.length;
        const seconds = await run(list[at].make(), users, opts.n, opts.batch);
        if (round >= 0) rates[at].push(opts.n / seconds);
      }
    }
    const baseline = list.length - 1;
    const row = { cell, users, n: opts.n, batch: opts.batch, contenders: {} };
    list.forEach((c, i) => {
      row.contenders[c.name] = {
        opsPerSecond: rates[i],
        median: median(rates[i]),
        ratio: median(rates[i]) / median(rates[baseline]),
        roundRatios: rates[i].map((r, j) => r / rates[baseline][j]),
      };
    });
    results.push(row);
    const parts = list.map((c) => {
      const r = row.contenders[c.name];
      const ratio = c.ours ? ` = ${r.ratio.toFixed(2)}x (rounds ${r.roundRatios.map((x) => x.toFixed(2)).join(' ')})` : '';
      return `${c.name} ${fmt(r.median)}${ratio}`;
    });
    console.error(`${cell}: ${parts.join(' | ')}`);
  }

  // A markdown table: medians over the rounds, ratios of the medians.
  const names = Object.keys(results[0].contenders);
  const ours = names.slice(0, -1);
  console.log(`\nNode ${process.version} (V8 ${process.versions.v8}), ${opts.n.toLocaleString('en-US')} calls in batches of ${opts.batch}, medians of ${opts.rounds}\n`);
  console.log(`| cell | ${ours.map((n) => `${n} (calls/s)`).join(' | ')} | baseline (calls/s) | ${ours.map((n) => `${n} / baseline`).join(' | ')} |`);
  console.log(`|---|${ours.map(() => '---:').join('|')}|---:|${ours.map(() => '---:').join('|')}|`);
  for (const row of results) {
    const entries = Object.entries(row.contenders);
    const base = entries[entries.length - 1];
    const cells = entries.slice(0, -1);
    console.log(`| ${row.cell} (${row.users} ${row.users === 1 ? 'key' : 'keys'}) | ${cells.map(([, r]) => fmt(r.median)).join(' | ')} | ${fmt(base[1].median)} (${base[0]}) | ${cells.map(([, r]) => `${r.ratio.toFixed(2)}x`).join(' | ')} |`);
  }
  if (opts.json) fs.writeFileSync(opts.json, `${JSON.stringify({ node: process.version, v8: process.versions.v8, results }, null, 2)}\n`);
}

main().catch((e) => { console.error(e); process.exit(1); });
