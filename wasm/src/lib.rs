//! pointlock for JavaScript: the same `pointlock-core` through wasm-bindgen.
//!
//! - `PointService`: `point`, `histories`, `charge`, `use` returning Promises, with the
//!   core's policies and its per-user FIFO lock. Backed by an in-memory store, or by
//!   the course NestJS template's own `UserPointTable` / `PointHistoryTable` objects.
//! - `KeyedLock`: `withLock(key, fn)`, a FIFO per-key async mutex for JavaScript.
//!
//! The public methods that return Promises are JavaScript (`wasm/js/methods.js`,
//! installed on these classes by the package's entry module); the exports they
//! call take and return numbers and strings only. No export returns a single
//! object or Promise: on Node 20 (V8 11.3) that shape crashes the process when a
//! lazy deoptimization lands inside an inlined call to it (README, "The V8 crash").
//!
//! The crate is empty on native targets: build it for `wasm32-unknown-unknown`
//! (see `wasm/build.sh`).
#![cfg(target_arch = "wasm32")]

mod js;
mod lock;
mod outcome;
mod service;
mod store;

pub use lock::{abandon, granted, release, KeyedLock};
pub use outcome::{last_error, last_millis, last_rows, park, FAILED, PENDING};
pub use service::PointService;
