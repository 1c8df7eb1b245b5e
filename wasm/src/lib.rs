//! pointlock for JavaScript: the same `pointlock-core` through wasm-bindgen.
//!
//! - `PointService`: `point`, `histories`, `charge`, `use` returning Promises, with the
//!   core's policies and its per-user FIFO lock. Backed by an in-memory store, or by
//!   the course NestJS template's own `UserPointTable` / `PointHistoryTable` objects.
//! - `KeyedLock`: `withLock(key, fn)`, a FIFO per-key async mutex for JavaScript.
//!
//! The crate is empty on native targets: build it for `wasm32-unknown-unknown`
//! (see `wasm/build.sh`).
#![cfg(target_arch = "wasm32")]

mod js;
mod lock;
mod service;
mod store;

pub use lock::KeyedLock;
pub use service::PointService;
