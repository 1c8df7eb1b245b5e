//! pointlock-store: the durable stores of pointlock, behind pointlock-core's
//! [`PointStore`](pointlock_core::PointStore).
//!
//! - [`sqlite`]: [`SqliteStore`], the durable default. One SQLite file in WAL
//!   mode, `synchronous=FULL`, a single writer thread that group-commits changes
//!   in one transaction (each applied only if its condition holds), fail-stop
//!   after a failed COMMIT, and read-only connections for reads.
//! - [`postgres`]: [`PostgresStore`], the shared store for several instances on
//!   one database: one conditional statement per change, a connection pool,
//!   migrations under an advisory lock.
//! - `batch`: batch, then each alone after a failed statement (both stores).
//! - `sequenced`: the sequenced state of a pipelined store (both stores).
//! - `reply`: a writer's answer to its caller, and the one answer when the
//!   writer stopped before answering (both stores).
//! - `rows`: rows read back and checked (both stores).
//! - `sharded`: per-user state over mutex-guarded shards (the sequenced state,
//!   the PostgreSQL chains, the SQLite balance cache).
//! - [`histogram`]: lock-free duration histograms (the stores' commit
//!   durations; the server's request metrics use them too).

mod batch;
pub mod histogram;
pub mod postgres;
mod reply;
mod rows;
mod sequenced;
mod sharded;
pub mod sqlite;

pub use postgres::{PgOpenError, PgStats, PostgresOptions, PostgresStore};
pub use sqlite::{CommitStats, NegativeControl, OpenError, SqliteOptions, SqliteStore};
