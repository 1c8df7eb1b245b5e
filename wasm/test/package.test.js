// The installable package: the tarball wasm/build.sh packs into wasm/dist
// (`npm pack` of wasm/pkg) holds the package and nothing else, within a size
// bound, with the fields a registry and a TypeScript user need; and the NestJS
// example installs exactly that tarball (wasm/README.md, "NestJS").
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');

const wasmDir = path.join(__dirname, '..');
const pkgDir = path.join(wasmDir, 'pkg');
const exampleDir = path.join(wasmDir, 'examples', 'nestjs');

// Bounds with room for growth, small enough to catch a stray directory (the
// tarball is about 153 KiB: two copies of the ~150 KiB module, gzipped).
const TARBALL_BYTES_MAX = 200 * 1024;
const UNPACKED_BYTES_MAX = 512 * 1024;

const EXPECTED_FILES = [
  'LICENSE-APACHE',
  'LICENSE-MIT',
  'README.md',
  'package.json',
  ...['node', 'web'].flatMap((target) =>
    [
      'methods.js',
      'pointlock.d.ts',
      'pointlock.js',
      'pointlock_bg.wasm',
      'pointlock_bg.wasm.d.ts',
      'pointlock_bindings.d.ts',
      'pointlock_bindings.js',
    ].map((file) => `${target}/${file}`)),
].sort();

const manifest = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8'));
const tarballName = `pointlock-${manifest.version}.tgz`;
const tarball = path.join(wasmDir, 'dist', tarballName);

test('the tarball exists where the example expects it', () => {
  assert.ok(fs.existsSync(tarball), `${tarball} is missing: run ./wasm/build.sh (it packs the package)`);
});

test('the tarball holds exactly the package files, within the size bounds', () => {
  const listing = execFileSync('tar', ['-tzvf', tarball], { encoding: 'utf8' }).trim().split('\n');
  const entries = listing.map((line) => {
    const fields = line.trim().split(/\s+/);
    return { size: Number(fields[2]), path: fields[fields.length - 1] };
  });
  const files = entries.map((e) => e.path.replace(/^package\//, '')).sort();
  assert.deepEqual(files, EXPECTED_FILES, 'no tests, sources, maps or build leftovers');
  const tarballBytes = fs.statSync(tarball).size;
  const unpackedBytes = entries.reduce((sum, e) => sum + e.size, 0);
  assert.ok(tarballBytes <= TARBALL_BYTES_MAX, `tarball ${tarballBytes} bytes > ${TARBALL_BYTES_MAX}`);
  assert.ok(unpackedBytes <= UNPACKED_BYTES_MAX, `unpacked ${unpackedBytes} bytes > ${UNPACKED_BYTES_MAX}`);
});

test('npm pack --dry-run of wasm/pkg agrees with the tarball', () => {
  const [report] = JSON.parse(execFileSync('npm', ['pack', '--dry-run', '--json', '--silent'], {
    cwd: pkgDir,
    encoding: 'utf8',
  }));
  assert.equal(report.filename, tarballName);
  assert.deepEqual(report.files.map((f) => f.path).sort(), EXPECTED_FILES);
});

test('the manifest carries types, license, repository and entry points that exist', () => {
  const read = (file) => execFileSync('tar', ['-xzOf', tarball, `package/${file}`]);
  const packed = JSON.parse(read('package.json').toString('utf8'));
  assert.equal(packed.name, 'pointlock');
  assert.equal(packed.license, 'MIT OR Apache-2.0');
  assert.equal(packed.repository.type, 'git');
  assert.match(packed.repository.url, /^https:\/\//);
  assert.equal(packed.types, './node/pointlock.d.ts');
  assert.equal(packed.exports['.'].types, './node/pointlock.d.ts');
  for (const entry of [packed.main, packed.types, packed.exports['.'].node, packed.exports['.'].browser]) {
    assert.ok(EXPECTED_FILES.includes(entry.replace(/^\.\//, '')), `${entry} is in the tarball`);
  }
  assert.match(read('README.md').toString('utf8'), /^# pointlock \(npm\)/);
  assert.match(read('LICENSE-MIT').toString('utf8'), /Permission is hereby granted/);
  assert.match(read('LICENSE-APACHE').toString('utf8'), /Apache License\s+Version 2\.0/);
  assert.match(read('node/pointlock_bindings.d.ts').toString('utf8'), /export class KeyedLock/);
});
test('the NestJS example depends on this tarball, with no pinned checksum', () => {
  const spec = `file:../../dist/${tarballName}`;
  const example = JSON.parse(fs.readFileSync(path.join(exampleDir, 'package.json'), 'utf8'));
  assert.equal(example.dependencies.pointlock, spec, 'the example installs the packed tarball of this version');
  const lock = JSON.parse(fs.readFileSync(path.join(exampleDir, 'package-lock.json'), 'utf8'));
  assert.equal(lock.packages[''].dependencies.pointlock, spec);
  const entry = lock.packages['node_modules/pointlock'];
  assert.equal(entry.resolved, spec);
  assert.equal(entry.version, manifest.version);
  // The tarball changes with every build: a checksum in the lock would make
  // `npm ci` fail (EINTEGRITY) or, from npm's cache, install an older build.
  assert.equal(entry.integrity, undefined, 'package-lock.json must not pin the local tarball\'s integrity');
});
