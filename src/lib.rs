//! `pointlock`: a per-user point wallet whose concurrency is correct by construction.
//!
//! This root crate only re-exports the workspace crates and owns the cross-crate
//! integration tests (`tests/`) and benchmarks (`benches/`).
//!
//! - [`keylock`]: the FIFO [`keylock::KeyedLock`] and its tower layer
//!   [`keylock::layer::KeyedLockLayer`] (the generic per-key lock middleware); no
//!   wallet, no store.
//! - [`core`]: domain, policies, the store trait, the in-memory store and the
//!   [`core::PointService`] (the lock re-exported as [`core::KeyedLock`]).
//!   Runtime-agnostic; builds for wasm32.
//! - [`server`]: the hyper + tower HTTP server.

pub use keylock;
pub use pointlock_core as core;
pub use pointlock_server as server;
