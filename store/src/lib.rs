//! pointlock-store: the durable stores of pointlock, behind pointlock-core's
//! [`PointStore`](pointlock_core::PointStore) and, for SQLite,
//! [`PipelinedStore`](pointlock_core::PipelinedStore); for PostgreSQL,
//! [`DecidingStore`](pointlock_core::DecidingStore).
//!
//! - [`sqlite`]: [`SqliteStore`], the durable default. One SQLite file in WAL
//!   mode, `synchronous=FULL`, a single writer thread that group-commits changes
//!   in one transaction (each applied only if its condition holds), fail-stop
//!   after a failed COMMIT, and read-only connections for reads.
//! - [`postgres`]: [`PostgresStore`], the shared store for several instances on
//!   one database: a bounded queue of requests, batch transactions that lock
//!   the users' rows in id order and decide each request there, a connection
//!   pool, migrations under an advisory lock.
//! - `batch`: batch, then each alone after a failed statement (the SQLite writer).
//! - `sequenced`: the sequenced state of a pipelined store (SQLite).
//! - `reply`: a writer's answer to its caller, and the one answer when the
//!   writer stopped before answering (both stores).
//! - `rows`: rows read back and checked (both stores).
//! - `sharded`: per-user state over mutex-guarded shards (the sequenced state,
//!   the SQLite balance cache).
//! - [`histogram`]: lock-free duration histograms (the stores' commit
//!   durations; the server's request metrics use them too).
//!
//! Each store's module docs state its guarantees: durability, the condition
//! on each change (PostgreSQL: the decision on each request), cancel safety,
//! what happens on each failure.
//!
//! The `test-util` feature adds what tests plant: the SQLite store's negative
//! controls and injected faults ([`SqliteOptions`]' test fields), and SQL that
//! lets a negative control's unconditional change through. Only
//! dev-dependencies enable it.

/// SQL that lets the parameter `$param`, the expected balance of a write, be
/// NULL and then write whatever is stored: the unconditional changes of
/// negative controls. Present with the `test-util` feature only; without it a
/// write's condition is always `point = $param`.
#[cfg(any(test, feature = "test-util"))]
macro_rules! null_expected_is_unconditional {
    ($param:literal) => {
        concat!($param, " IS NULL OR ")
    };
}
#[cfg(not(any(test, feature = "test-util")))]
macro_rules! null_expected_is_unconditional {
    ($param:literal) => {
        ""
    };
}

mod batch;
pub mod histogram;
pub mod postgres;
mod reply;
mod rows;
mod sequenced;
mod sharded;
pub mod sqlite;

pub use postgres::{PgOpenError, PgStats, PostgresOptions, PostgresStore};
#[cfg(any(test, feature = "test-util"))]
pub use sqlite::NegativeControl;
pub use sqlite::{CommitStats, OpenError, SqliteOptions, SqliteStore};
