//! The server's stores beyond the core's in-memory one.
//!
//! - [`sqlite::SqliteStore`]: the durable default. One SQLite file in WAL mode,
//!   `synchronous=FULL`, a single writer thread that group-commits changes in one
//!   transaction (each applied only if its condition holds), fail-stop after a
//!   failed COMMIT, and read-only connections for reads.
//! - [`postgres::PostgresStore`]: the shared store for several instances on one
//!   database: one conditional statement per change, a connection pool,
//!   migrations under an advisory lock.

pub mod postgres;
pub mod sqlite;

pub use postgres::{PgOpenError, PgStats, PostgresOptions, PostgresStore};
pub use sqlite::{CommitStats, OpenError, SqliteOptions, SqliteStore};
