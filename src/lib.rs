//! `pointlock`: a per-user point wallet whose concurrency is correct by construction.
//!
//! This root crate re-exports the workspace crates and owns the `pointlock`
//! binary (`src/main.rs`), the integration tests (`tests/`, with their one
//! harness in `tests/support/`) and the benchmarks (`benches/`).
//!
//! - [`keylock`]: the FIFO [`keylock::KeyedLock`] and its tower layer
//!   [`keylock::layer::KeyedLockLayer`] (the generic per-key lock middleware); no
//!   wallet, no store.
//! - [`core`]: domain, policies, the store trait, the in-memory store and the
//!   [`core::PointService`] (the lock re-exported as [`core::KeyedLock`]).
//!   Runtime-agnostic; builds for wasm32.
//! - [`store`]: the durable stores, SQLite and PostgreSQL.
//! - [`server`]: the hyper + tower HTTP server.

pub use keylock;
pub use pointlock_core as core;
pub use pointlock_server as server;
pub use pointlock_store as store;
