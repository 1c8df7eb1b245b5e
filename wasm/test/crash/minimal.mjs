// The V8 bug alone, without the package: Node 20 (V8 11.3) crashes when a lazy
// deoptimization lands inside a call to a wasm export that returns an externref,
// once TurboFan has inlined that call into the optimized caller
// (wasm/README.md, "The V8 crash"). (.mjs: Node compiles CommonJS without
// --allow-natives-syntax's %-calls.)
//
//   node --allow-natives-syntax minimal.mjs externref   # Fatal error ... unreachable code, SIGTRAP
//   node --allow-natives-syntax minimal.mjs f64         # the same, returning a number: survives
//   node --allow-natives-syntax minimal.mjs i32         # survives too
//   node --allow-natives-syntax --no-turbo-inline-js-wasm-calls minimal.mjs externref  # survives
//
// The module (module-bytes.js), hand-assembled: an import `touch` and exports
// that call it and return their argument: (externref) -> externref, (f64) -> f64,
// (i32) -> i32.
// `touch` deoptimizes the caller while the export is running: a lazy deopt,
// carried out when the export returns into the caller's optimized frame.
import { createRequire } from 'node:module';

const { bytes } = createRequire(import.meta.url)('./module-bytes.js');

const shape = process.argv[2] ?? 'externref';
let armed = false;
function touch() {
  if (armed) {
    armed = false;
    %DeoptimizeFunction(caller);
  }
}
const { exports } = new WebAssembly.Instance(new WebAssembly.Module(bytes), { m: { touch } });
const exported = exports[shape];
if (!exported) throw new Error(`no export ${shape}: externref, f64 or i32`);
const argument = { externref: { a: 1 }, f64: 1.5, i32: 7 }[shape];

function caller(x) {
  return exported(x);
}

%PrepareFunctionForOptimization(caller);
caller(argument);
caller(argument);
%OptimizeFunctionOnNextCall(caller);
caller(argument);
const optimized = (%GetOptimizationStatus(caller) & 16) !== 0;
armed = true;
const result = caller(argument);
const deoptimized = (%GetOptimizationStatus(caller) & 16) === 0;
console.log(JSON.stringify({ shape, optimized, deoptimized, returned: result === argument }));
