// The signatures of a wasm module's exported functions, read from its binary
// (Node 20 has no type reflection). Used to keep the package clear of the shape
// V8 11.3 (Node 20) crashes on: an export returning exactly one reference
// (externref), called from optimized JavaScript that inlined the call, when a
// lazy deoptimization lands while the call runs (wasm/README.md, "The V8 crash").
//
//   node wasm/test/wasm-exports.js pkg/node/pointlock_bg.wasm [--list]
// exits 1, naming them, if any export returns a single reference.
'use strict';

const fs = require('node:fs');

const VALUE_TYPES = {
  0x7f: 'i32', 0x7e: 'i64', 0x7d: 'f32', 0x7c: 'f64', 0x7b: 'v128',
  0x70: 'funcref', 0x6f: 'externref',
};

/** `[{ name, params, results }]` of the module's exported functions. */
function exportedFunctions(bytes) {
  let at = 8; // magic and version
  if (bytes.readUInt32LE(0) !== 0x6d736100) throw new Error('not a wasm module');
  const u32 = () => {
    let result = 0;
    let shift = 0;
    for (;;) {
      const byte = bytes[at++];
      result += (byte & 0x7f) * 2 ** shift;
      shift += 7;
      if ((byte & 0x80) === 0) return result;
    }
  };
  const name = () => {
    const length = u32();
    const text = bytes.toString('utf8', at, at + length);
    at += length;
    return text;
  };
  const valueType = () => {
    const code = bytes[at++];
    if (code === 0x63 || code === 0x64) { // (ref null? heaptype), typed references
      const heap = bytes[at] >= 0x40 && bytes[at] < 0x80 ? VALUE_TYPES[bytes[at++]] ?? 'ref' : `type ${u32()}`;
      return `ref${code === 0x63 ? ' null' : ''} ${heap}`;
    }
    const type = VALUE_TYPES[code];
    if (!type) throw new Error(`unknown value type 0x${code.toString(16)} at ${at - 1}`);
    return type;
  };
  const limits = () => {
    const flags = bytes[at++];
    u32();
    if (flags & 1) u32();
  };
  const types = [];
  const functionTypes = []; // imported functions first, then the module's own
  const exports = [];
  while (at < bytes.length) {
    const id = bytes[at++];
    const size = u32();
    const end = at + size;
    if (id === 1) {
      for (let n = u32(); n > 0; n--) {
        if (bytes[at++] !== 0x60) throw new Error('only function types are supported');
        const params = Array.from({ length: u32() }, valueType);
        const results = Array.from({ length: u32() }, valueType);
        types.push({ params, results });
      }
    } else if (id === 2) {
      for (let n = u32(); n > 0; n--) {
        name();
        name();
        const kind = bytes[at++];
        if (kind === 0) functionTypes.push(u32());
        else if (kind === 1) { valueType(); limits(); }
        else if (kind === 2) limits();
        else if (kind === 3) { valueType(); at++; }
        else if (kind === 4) { at++; u32(); }
        else throw new Error(`unknown import kind ${kind}`);
      }
    } else if (id === 3) {
      for (let n = u32(); n > 0; n--) functionTypes.push(u32());
    } else if (id === 7) {
      for (let n = u32(); n > 0; n--) {
        const exported = name();
        const kind = bytes[at++];
        const index = u32();
        if (kind === 0) exports.push({ name: exported, ...types[functionTypes[index]] });
      }
    }
    at = end;
  }
  return exports;
}

/** The exports that return exactly one reference: the shape that crashes Node 20. */
function singleReferenceResults(bytes) {
  return exportedFunctions(bytes).filter((f) => f.results.length === 1 && /ref/.test(f.results[0]));
}

module.exports = { exportedFunctions, singleReferenceResults };

if (require.main === module) {
  const file = process.argv[2];
  const bytes = fs.readFileSync(file);
  if (process.argv.includes('--list')) {
    for (const f of exportedFunctions(bytes)) console.log(`${f.name}(${f.params.join(', ')}) -> (${f.results.join(', ')})`);
  }
  const bad = singleReferenceResults(bytes);
  if (bad.length > 0) {
    console.error(`${file}: ${bad.length} export(s) return a single reference, the shape Node 20 crashes on ` +
      `(wasm/README.md, "The V8 crash"):\n${bad.map((f) => `  ${f.name}(${f.params.join(', ')}) -> ${f.results[0]}`).join('\n')}`);
    process.exit(1);
  }
  console.log(`${file}: no export returns a single reference (${exportedFunctions(bytes).length} exports checked)`);
}
