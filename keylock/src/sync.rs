//! The primitives [`KeyedLock`](crate::KeyedLock) synchronizes with: `Arc`,
//! `Mutex`, `MutexGuard`, `AtomicU64`.
//!
//! They are `std`'s, re-exported as they are, except in the crate's own tests
//! built with `RUSTFLAGS="--cfg loom"`, where they are loom's models of them, so
//! the loom tests in `lock/loom_tests.rs` explore every interleaving of the lock's
//! critical sections (the scheme of tokio's `src/loom/`, without its wrappers:
//! loom's `Mutex::lock` returns the same `LockResult` as `std`'s). A plain
//! `pub(crate) use`: nothing changes in normal builds, neither the types nor
//! their cost.

#[cfg(not(all(test, loom)))]
pub(crate) use std::sync::{atomic::AtomicU64, Arc, Mutex, MutexGuard};

#[cfg(all(test, loom))]
pub(crate) use loom::sync::{atomic::AtomicU64, Arc, Mutex, MutexGuard};
