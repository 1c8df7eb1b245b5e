//! `pointlock`: a per-user point wallet whose concurrency is correct by construction.
//!
//! This root crate only re-exports the workspace crates and owns the cross-crate
//! integration tests (`tests/`) and benchmarks (`benches/`).
//!
//! - [`core`]: domain, policies, the FIFO [`core::KeyedLock`], the store trait, the
//!   in-memory store and the [`core::PointService`]. Runtime-agnostic; builds for wasm32.
//! - [`store`]: the durable stores, SQLite and PostgreSQL.
//! - [`server`]: the hyper + tower HTTP server and its [`server::layer::KeyedLockLayer`] (the generic per-key lock middleware).

pub use pointlock_core as core;
pub use pointlock_server as server;
pub use pointlock_store as store;
