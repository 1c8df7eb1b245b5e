// The demo page in headless Chromium (Debian's /usr/bin/chromium via playwright-core):
// the locked run must be exact, the unlocked one must lose points. Saves a screenshot.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { chromium } = require('playwright-core');
const { createServer } = require('../www/serve.js');

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
// CI writes to target/; regenerate the README's image with SCREENSHOT=docs/wasm-demo.png.
const SCREENSHOT = path.resolve(__dirname, '../..', process.env.SCREENSHOT ?? 'target/wasm-demo.png');

test('demo page: locked run is exact, unlocked run loses updates', async (t) => {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => server.close());
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`http://127.0.0.1:${server.address().port}/www/index.html`);
  await page.waitForSelector('#status[data-ready="yes"]', { timeout: 30000 });

  const run = async (mode) => {
    await page.click(`#run-${mode}`);
    await page.waitForSelector(`#status[data-done="${mode}"]`, { timeout: 60000 });
    const expected = Number(await page.textContent(`#${mode} [data-expected]`));
    const actual = Number(await page.textContent(`#${mode} [data-actual]`));
    return { expected, actual };
  };
  const locked = await run('locked');
  assert.equal(locked.expected, 500);
  assert.equal(locked.actual, 500, 'with the lock every charge counts');
  const unlocked = await run('unlocked');
  assert.ok(unlocked.actual < unlocked.expected, `without the lock points must be lost: ${JSON.stringify(unlocked)}`);
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  assert.deepEqual(errors, []);
});
