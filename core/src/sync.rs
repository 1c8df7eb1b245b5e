//! The crate's synchronization vocabulary.
//!
//! - `Send`/`Sync` bounds that hold on native targets and vanish on wasm32
//!   ([`MaybeSend`], [`MaybeSync`]). On native targets every store future must be
//!   `Send` so a multi-threaded runtime can move it between workers. On `wasm32` the
//!   futures wrap JavaScript promises, which are not `Send`, and there is only one
//!   thread, so the bound is dropped.
//! - The primitives [`KeyedLock`](crate::KeyedLock) synchronizes with: `Arc`,
//!   `Mutex`, `MutexGuard`, `AtomicU64`. They are `std`'s, re-exported as they are,
//!   except in the crate's own tests built with `RUSTFLAGS="--cfg loom"`, where they
//!   are loom's models of them, so the loom tests in `lock/loom_tests.rs` explore
//!   every interleaving of the lock's critical sections (the scheme of tokio's
//!   `src/loom/`, without its wrappers: loom's `Mutex::lock` returns the same
//!   `LockResult` as `std`'s). A plain `pub(crate) use`: nothing changes in normal
//!   builds, neither the types nor their cost.

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    /// `Send` on native targets; no bound on wasm32.
    pub trait MaybeSend: Send {}
    impl<T: Send + ?Sized> MaybeSend for T {}
    /// `Sync` on native targets; no bound on wasm32.
    pub trait MaybeSync: Sync {}
    impl<T: Sync + ?Sized> MaybeSync for T {}
}

#[cfg(target_arch = "wasm32")]
mod imp {
    /// `Send` on native targets; no bound on wasm32.
    pub trait MaybeSend {}
    impl<T: ?Sized> MaybeSend for T {}
    /// `Sync` on native targets; no bound on wasm32.
    pub trait MaybeSync {}
    impl<T: ?Sized> MaybeSync for T {}
}

pub use imp::{MaybeSend, MaybeSync};

#[cfg(not(all(test, loom)))]
pub(crate) use std::sync::{atomic::AtomicU64, Arc, Mutex, MutexGuard};

#[cfg(all(test, loom))]
pub(crate) use loom::sync::{atomic::AtomicU64, Arc, Mutex, MutexGuard};
