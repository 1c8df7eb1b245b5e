//! keylock: an asynchronous mutex per key, FIFO per key and cancel safe, and a
//! tower layer that serialises HTTP requests per key.
//!
//! One [`KeyedLock<K>`] stands for a lazily created mutex per key. Locking key `a`
//! never waits for key `b`. Entries live in a sharded table and exist **only while a
//! key is held or awaited**: the last guard or waiter to leave removes its entry, so a
//! million distinct keys touched once leave nothing behind.
//!
//! # Fairness
//!
//! Strictly FIFO per key. The position in the queue is taken when [`KeyedLock::lock`]
//! is **called**, not when the returned future is first polled, so two calls made one
//! after the other are granted in that order whatever the scheduler does next. On
//! release the lock is *handed off* to the waiter at the head of the queue: it stays
//! held through the hand-off, so no late arrival can barge in between.
//!
//! # Cancel safety
//!
//! [`Acquire`] is cancel safe. Dropping it anywhere in the queue removes it from
//! the queue and never strands the next waiter; dropping it after the lock was
//! handed to it (but before it was polled to completion) passes the lock on to the
//! next waiter, or frees the key. Using it in a `select!` with a timer is how
//! timeouts work: see [`KeyedLock::lock_timeout`]. A queue can be bounded per
//! call: [`KeyedLock::lock_bounded`].
//!
//! # Guards
//!
//! [`KeyGuard`] is owned (`'static`, `Send` when `K` is): it can be moved into a
//! spawned task or kept in a response future. The key is released when it drops.
//!
//! # Runtime
//!
//! None. Wake-ups go through the standard [`Waker`](std::task::Waker); the caller
//! brings the timer, and the [`Clock`] if wait times are to be measured
//! ([`LockMetrics`]). The lock builds for `wasm32-unknown-unknown`.
//!
//! # Example
//!
//! ```
//! # fn block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     let mut f = std::pin::pin!(f);
//! #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
//! #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
//! # }
//! use keylock::KeyedLock;
//!
//! let lock = KeyedLock::new();
//! block_on(async {
//!     let guard = lock.lock(7_u64).await;
//!     assert!(lock.try_lock(7).is_none()); // held
//!     assert!(lock.try_lock(8).is_some()); // other keys are independent
//!     drop(guard);
//!     assert_eq!(lock.len(), 0); // nothing left behind
//! });
//! ```
//!
//! # Features
//!
//! - `tower`: the [`layer`] module, a tower middleware that holds a request's key
//!   for the life of the request (tokio, http, tower; not for wasm32).
//! - `serde`: `Serialize` for [`LockMetrics`] (camelCase field names).
//! - `test-util`: negative controls for tests and benchmarks only
//!   (`KeyedLock::unsynchronized`, a "lock" that excludes nothing). A build without
//!   it has neither the constructor nor the branches that serve it.

mod clock;
#[cfg(feature = "tower")]
pub mod layer;
mod lock;
mod sync;

pub use clock::Clock;
pub use lock::{
    Acquire, KeyGuard, KeyedLock, LockMetrics, LockTimedOut, QueueFull, WAIT_BUCKETS_MICROS,
};
