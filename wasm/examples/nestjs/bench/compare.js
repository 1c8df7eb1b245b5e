#!/usr/bin/env node
// The example against the same app with the hand-written lock, same run
// (docs/perf-wasm.md, "The NestJS example over HTTP"): each contender is the
// built app (`node dist/main.js`, POINT_LOCK=...) with the tables' latency at
// 0, loaded by wrk with PATCH /point/{id}/charge over 10,000 users ("spread")
// and on one user ("hot"). Every contender runs in its own process for the
// whole run (idle while another is measured); in each round and cell the
// contenders are measured one after the other, in a rotating order, each
// after an untimed warm-up run, so the runs compared are minutes apart at
// most. Reported: the median req/s, p99 and the server's CPU time per request
// (user + system, from /proc: less sensitive than req/s to other work on the
// machine) over the rounds, the ratios of the medians against the baseline
// (async-mutex), and the per-round req/s ratios.
//
//   npm run build && node bench/compare.js
//   node bench/compare.js --rounds 9 --duration 5 --warmup 2 --connections 64
//   node bench/compare.js --locks keyed-lock,async-mutex,point-service
//
// Needs wrk. Servers listen on 127.0.0.1 only; every run is bounded by its
// duration (wrk) and every start by READY_WITHIN_MS.
'use strict';

const { spawn, execFileSync } = require('node:child_process');
const path = require('node:path');

const EXAMPLE_DIR = path.join(__dirname, '..');
const READY_WITHIN_MS = 30000;
const BASELINE = 'async-mutex';
const CELLS = [
  { name: 'spread', users: 10000 },
  { name: 'hot', users: 1 },
];

function parseArgs(argv) {
  const opts = { rounds: 5, duration: 5, warmup: 2, connections: 64, threads: 1, locks: ['keyed-lock', 'async-mutex'] };
  for (let i = 2; i < argv.length; i++) {
    const arg = argv[i];
    const value = argv[++i];
    if (value === undefined) throw new Error(`${arg} needs a value`);
    if (arg === '--locks') opts.locks = value.split(',');
    else if (['--rounds', '--duration', '--warmup', '--connections', '--threads'].includes(arg)) {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 1 || n > 3600) throw new Error(`${arg} takes an integer 1..3600`);
      opts[arg.slice(2)] = n;
    } else throw new Error(`unknown argument ${arg}`);
  }
  if (!opts.locks.includes(BASELINE)) opts.locks.push(BASELINE);
  return opts;
}

/** `node dist/main.js` with `lock`; resolves to { base, stop } once /health answers. */
async function startApp(lock) {
  const child = spawn(process.execPath, ['dist/main.js'], {
    cwd: EXAMPLE_DIR,
    env: { ...process.env, POINT_LOCK: lock, PORT: '0', HOST: '127.0.0.1', TABLE_LATENCY_MS: '0', MAX_BALANCE: '1000000000000000' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const stop = () => new Promise((resolve) => {
    if (child.exitCode !== null) return resolve();
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    child.once('exit', () => { clearTimeout(timer); resolve(); });
    child.kill('SIGTERM');
  });
  let out = '';
  const base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${lock}: no URL within ${READY_WITHIN_MS} ms: ${out}`)), READY_WITHIN_MS);
    child.once('exit', (code) => reject(new Error(`${lock}: exited with ${code}: ${out}`)));
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const found = /listening on (http:\/\/127\.0\.0\.1:[0-9]+)/.exec(out);
      if (found) { clearTimeout(timer); resolve(found[1]); }
    });
  });
  const deadline = Date.now() + READY_WITHIN_MS;
  while ((await fetch(`${base}/health`).then((r) => r.status, () => 0)) !== 200) {
    if (Date.now() > deadline) throw new Error(`${lock}: /health did not answer`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return { base, stop, pid: child.pid };
}

const CLOCK_TICKS_PER_S = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());

/** CPU seconds (user + system) process `pid` has used so far (Linux /proc). */
function cpuSeconds(pid) {
  const stat = require('node:fs').readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields from the 3rd on
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_S; // utime, stime
}

function wrk(base, users, seconds, opts) {
  const out = execFileSync('wrk', [
    `-t${opts.threads}`, `-c${opts.connections}`, `-d${seconds}s`, '--timeout', '5s',
    '-s', path.join(__dirname, 'charge.lua'), base, '--', String(users),
  ], { encoding: 'utf8', timeout: (seconds + 30) * 1000 });
  const line = out.split('\n').find((l) => l.startsWith('RESULT '));
  if (!line) throw new Error(`wrk printed no RESULT line:\n${out}`);
  const r = Object.fromEntries(line.slice(7).split(' ').map((kv) => kv.split('=')).map(([k, v]) => [k, Number(v)]));
  return { rps: r.requests / (r.duration_us / 1e6), p50Ms: r.p50_us / 1000, p99Ms: r.p99_us / 1000, errors: r.status_errors + r.socket_errors, requests: r.requests };
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

async function main() {
  const opts = parseArgs(process.argv);
  console.log(`node ${process.version}; ${opts.rounds} rounds; wrk -t${opts.threads} -c${opts.connections}, ${opts.warmup} s warm-up + ${opts.duration} s per cell; tables' latency 0`);
  const results = {}; // lock -> cell -> [{ rps, p99Ms, ... }]
  for (const lock of opts.locks) results[lock] = Object.fromEntries(CELLS.map((c) => [c.name, []]));
  const apps = {};
  try {
    for (const lock of opts.locks) apps[lock] = await startApp(lock);
    for (let round = 0; round < opts.rounds; round++) {
      for (const cell of CELLS) {
        for (let i = 0; i < opts.locks.length; i++) {
          const lock = opts.locks[(i + round) % opts.locks.length];
          wrk(apps[lock].base, cell.users, opts.warmup, opts);
          const cpuBefore = cpuSeconds(apps[lock].pid);
          const r = wrk(apps[lock].base, cell.users, opts.duration, opts);
          r.cpuUsPerRequest = ((cpuSeconds(apps[lock].pid) - cpuBefore) * 1e6) / r.requests;
          if (r.errors !== 0) throw new Error(`${lock} ${cell.name}: ${r.errors} errors (non-2xx or socket)`);
          results[lock][cell.name].push(r);
          console.log(`round ${round + 1} ${cell.name.padEnd(6)} ${lock.padEnd(13)} ${r.rps.toFixed(0).padStart(6)} req/s  p50 ${r.p50Ms.toFixed(2)} ms  p99 ${r.p99Ms.toFixed(2)} ms  server CPU ${r.cpuUsPerRequest.toFixed(0)} us/request`);
        }
      }
    }
  } finally {
    await Promise.all(Object.values(apps).map((app) => app.stop()));
  }
  console.log('\nmedians over the rounds (ratio: contender / async-mutex; per-round ratios in brackets)');
  console.log('| cell | POINT_LOCK | req/s | p99 ms | server CPU us/request | req/s ratio (rounds) | p99 ratio | CPU/request ratio |');
  console.log('|---|---|---:|---:|---:|---:|---:|---:|');
  for (const cell of CELLS) {
    const base = results[BASELINE][cell.name];
    const baseRps = median(base.map((r) => r.rps));
    const baseP99 = median(base.map((r) => r.p99Ms));
    const baseCpu = median(base.map((r) => r.cpuUsPerRequest));
    for (const lock of opts.locks) {
      const rs = results[lock][cell.name];
      const rps = median(rs.map((r) => r.rps));
      const p99 = median(rs.map((r) => r.p99Ms));
      const cpu = median(rs.map((r) => r.cpuUsPerRequest));
      const perRound = rs.map((r, i) => (r.rps / base[i].rps).toFixed(2)).join(', ');
      console.log(`| ${cell.name} | ${lock} | ${rps.toFixed(0)} | ${p99.toFixed(2)} | ${cpu.toFixed(0)} | ${(rps / baseRps).toFixed(2)}x (${perRound}) | ${(p99 / baseP99).toFixed(2)}x | ${(cpu / baseCpu).toFixed(2)}x |`);
    }
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
