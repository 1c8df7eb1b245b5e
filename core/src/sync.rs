//! `Send`/`Sync` bounds that hold on native targets and vanish on wasm32
//! ([`MaybeSend`], [`MaybeSync`]).
//!
//! On native targets every store future must be `Send` so a multi-threaded runtime
//! can move it between workers. On `wasm32` the futures wrap JavaScript promises,
//! which are not `Send`, and there is only one thread, so the bound is dropped.

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
