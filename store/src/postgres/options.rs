//! [`PostgresOptions`]: the tuning of a [`PostgresStore`](super::PostgresStore).

use std::time::Duration;

/// Tuning of a [`PostgresStore`](super::PostgresStore). The defaults suit the server.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// The most connections this instance opens. A request waits for a free one
    /// up to [`connect_timeout`](Self::connect_timeout).
    pub pool_size: usize,
    /// The database cancels a statement running longer than this (nothing is
    /// changed): a stuck lock or an overloaded server cannot hold a request past
    /// its deadline.
    pub statement_timeout: Duration,
    /// The longest to wait for a connection, new or from the pool.
    pub connect_timeout: Duration,
    /// Pipelined commits (see the [store's docs](super)): a user is released
    /// once its change is sequenced in this instance, and one user's
    /// consecutive changes commit in one transaction. Off by default: another
    /// instance writing the same user makes this instance's pipelined changes
    /// of that user fail (503 `WRITE_CONFLICT`) instead of being retried.
    pub pipeline: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            statement_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            pipeline: false,
        }
    }
}
