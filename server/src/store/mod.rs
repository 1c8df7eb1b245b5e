//! The server's stores beyond the core's in-memory one.
//!
//! - [`sqlite::SqliteStore`]: the durable default. One SQLite file in WAL mode,
//!   `synchronous=FULL`, a single writer thread that group-commits changes of
//!   different users in one transaction, and read-only connections for reads.

pub mod sqlite;

pub use sqlite::{OpenError, SqliteOptions, SqliteStore};
