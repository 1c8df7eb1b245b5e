//! pointlock-core: the runtime-agnostic heart of pointlock.
//!
//! A per-user point wallet (balance + history) whose concurrency is correct by
//! construction:
//!
//! - [`domain`]: [`UserId`], [`Amount`], [`UserPoint`], [`PointHistory`].
//! - [`policy`]: the wallet rules (positive amounts, maximum balance, no overdraft),
//!   with checked arithmetic.
//! - [`lock`]: [`KeyedLock`], an async mutex per key: FIFO per key, cancel safe,
//!   owned `Send + 'static` guards, an entry only while a key is held or awaited.
//! - [`store`]: the store contract, [`PointStore`] (atomic, conditional commit
//!   of balance + history row) and [`PipelinedStore`] (a change ordered before
//!   it is durable), and the in-memory [`MemoryStore`] modelled on the course
//!   template's tables.
//! - [`idempotency`]: [`IdempotencyKey`]: a change sent twice applies once; its
//!   record commits with the change.
//! - [`service`]: [`PointService`]; its mutations demand a guard of that user's
//!   lock, and retry a bounded number of times when the store's condition refuses
//!   a change computed from a stale balance.
//!
//! # Features
//!
//! `test-util`: negative controls for tests and benchmarks only
//! (`KeyedLock::unsynchronized`, `PointService::without_commit_condition`,
//! `Change::for_tests`, `Unsequenced::for_tests`). Only dev-dependencies enable it, and no serving code
//! calls those functions: they exist to show what goes wrong without the lock or
//! the condition.
//!
//! The crate has no async runtime and does no I/O: time comes from an injected
//! [`Clock`], sleeping from an injected [`store::Sleeper`], and lock timeouts from a
//! future the caller supplies. It builds for `wasm32-unknown-unknown`.

pub mod clock;
pub mod domain;
pub mod error;
pub mod idempotency;
pub mod lock;
pub mod policy;
pub mod service;
pub mod store;
mod sync;

pub use clock::{Clock, ManualClock};
pub use domain::{parse_digits, Amount, PointHistory, TransactionType, UserId, UserPoint};
pub use error::{PointError, StoreError, StoreErrorKind};
pub use idempotency::{
    IdempotencyKey, IdempotencyRecord, IDEMPOTENCY_KEY_LEN_MAX, IDEMPOTENCY_TTL_DEFAULT,
};
pub use lock::{Acquire, KeyGuard, KeyedLock, LockMetrics, LockTimedOut, QueueFull};
pub use policy::Policy;
pub use service::{Applied, HistoriesPage, HistoryPage, PointService};
pub use store::{
    memory::MemoryStore, BoxFuture, Change, Committed, Decided, DecidingStore, Decision, Pending,
    PipelinedStore, PointStore, ReadMark, Request, SequencedRead, Unsequenced,
};
pub use sync::{MaybeSend, MaybeSync};
