// Starting and driving the example for the tests: a forked test/serve.js (or
// `npm start`), readiness by polling GET /health, requests with Node's fetch.
// Every wait is bounded.
'use strict';

const { fork, spawn } = require('node:child_process');
const path = require('node:path');

const EXAMPLE_DIR = path.join(__dirname, '..');
const READY_WITHIN_MS = 30000;
const WAIT_WITHIN_MS = 10000;

/** Answers of `base`'s routes: `{ status, headers, json }` (json: null if not JSON). */
async function send(base, method, route, body) {
  const init = { method, headers: {} };
  if (body !== undefined && method !== 'GET' && method !== 'HEAD') {
    init.body = body;
    init.headers['content-type'] = 'application/json';
  }
  const response = await fetch(base + route, init);
  const text = await response.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON: the assertions say so */ }
  return { status: response.status, headers: response.headers, json, text };
}

/** Poll GET /health until it answers 200 (bounded). */
async function waitForHealth(base, child) {
  const deadline = Date.now() + READY_WITHIN_MS;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`the example exited with ${child.exitCode} before it was ready`);
    try {
      const r = await fetch(`${base}/health`);
      if (r.status === 200) return;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) throw new Error(`${base}/health did not answer within ${READY_WITHIN_MS} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Stop a child: SIGTERM to it (or its process group), SIGKILL if it lingers. */
function stopChild(child, group) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const kill = (signal) => {
      try { process.kill(group ? -child.pid : child.pid, signal); } catch { /* already gone */ }
    };
    const timer = setTimeout(() => kill('SIGKILL'), 5000);
    child.once('exit', () => { clearTimeout(timer); resolve(); });
    kill('SIGTERM');
  });
}

/** Output of a child, kept for the failure message. */
function captureOutput(child) {
  const output = [];
  child.stdout.on('data', (chunk) => output.push(chunk.toString()));
  child.stderr.on('data', (chunk) => output.push(chunk.toString()));
  return output;
}

/**
 * The example in a forked test/serve.js with `options` (ExampleOptions; port 0
 * on 127.0.0.1), ready once it says it listens and /health answers.
 */
async function startExample(options) {
  const child = fork(path.join(__dirname, 'serve.js'), { cwd: EXAMPLE_DIR, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
  const output = captureOutput(child);
  const pending = new Map();
  let nextId = 1;
  const base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not ready within ${READY_WITHIN_MS} ms:\n${output.join('')}`)), READY_WITHIN_MS);
    child.on('exit', (code) => reject(new Error(`the example exited with ${code}:\n${output.join('')}`)));
    child.on('message', (message) => {
      if (message.ready) {
        clearTimeout(timer);
        resolve(message.ready);
        return;
      }
      const waiter = pending.get(message.id);
      pending.delete(message.id);
      if (message.error) waiter.reject(new Error(message.error));
      else waiter.resolve(message.result);
    });
    child.send({ host: '127.0.0.1', port: 0, bodyLimitBytes: 4096, maxBalance: 10000, lockTimeoutMs: 30000, ...options });
  });
  await waitForHealth(base, child);

  const probe = (op, args) => new Promise((resolve, reject) => {
    const id = nextId++;
    pending.set(id, { resolve, reject });
    child.send({ id, op, args });
  });
  return {
    base,
    probe,
    send: (method, route, body) => send(base, method, route, body),
    get: (route) => send(base, 'GET', route),
    charge: (user, amount) => send(base, 'PATCH', `/point/${user}/charge`, JSON.stringify({ amount })),
    use: (user, amount) => send(base, 'PATCH', `/point/${user}/use`, JSON.stringify({ amount })),
    balance: async (user) => (await send(base, 'GET', `/point/${user}`)).json.point,
    history: async (user) => (await send(base, 'GET', `/point/${user}/histories`)).json,
    state: () => probe('state'),
    /** Poll the probes until `predicate(state)` holds (a signal from the app, bounded). */
    async waitFor(label, predicate) {
      const deadline = Date.now() + WAIT_WITHIN_MS;
      for (;;) {
        const state = await probe('state');
        if (predicate(state)) return state;
        if (Date.now() > deadline) throw new Error(`${label}: not within ${WAIT_WITHIN_MS} ms (${JSON.stringify(state)})`);
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    },
    stop: () => stopChild(child, false),
  };
}

/** `npm start` with `env` (PORT 0), in its own process group; its URL from what it prints. */
async function npmStart(env) {
  const child = spawn('npm', ['start'], {
    cwd: EXAMPLE_DIR,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const output = captureOutput(child);
  const base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`npm start printed no URL within ${READY_WITHIN_MS} ms:\n${output.join('')}`)), READY_WITHIN_MS);
    child.on('exit', (code) => reject(new Error(`npm start exited with ${code}:\n${output.join('')}`)));
    child.stdout.on('data', () => {
      const found = /listening on (http:\/\/127\.0\.0\.1:[0-9]+)/.exec(output.join(''));
      if (found) {
        clearTimeout(timer);
        resolve(found[1]);
      }
    });
  });
  await waitForHealth(base, child);
  return { base, output, stop: () => stopChild(child, true) };
}

module.exports = { startExample, npmStart, send };
