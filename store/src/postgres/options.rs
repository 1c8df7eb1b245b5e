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
    /// Release a request's user once the request is placed in the store's
    /// queue (see the [store's docs](super), "The guard, and pipelining"), so
    /// one user's consecutive requests share a transaction. On by default;
    /// off, the user stays locked in this instance until the answer.
    pub pipeline: bool,
    /// The most requests placed and not yet answered, all users together;
    /// past it a request is refused (503 `STORE_OVERLOADED`, nothing changed).
    pub queue_max: usize,
    /// The most requests of one user placed and not yet answered; past it the
    /// same refusal.
    pub user_queue_max: usize,
    /// Writer tasks: batches in flight at once (each holds one connection of
    /// the pool while it runs). One by default: every ready user joins the
    /// next batch, so batches are as large as the load makes them and the
    /// database sees one transaction per instance at a time (measured the
    /// fastest, with one instance and with four: docs/perf-postgres.md). More
    /// writers let the users of one batch that waits (a row held elsewhere,
    /// up to the statement timeout) not hold up the others.
    pub writers: usize,
    /// The most users one batch transaction takes.
    pub batch_users: usize,
    /// The most requests of one user one batch transaction takes.
    pub batch_per_user: usize,
    /// Fault injection: a batch holding a request or change of this amount
    /// panics before it is written (a bug in the writer). Only with the
    /// `test-util` feature.
    #[cfg(any(test, feature = "test-util"))]
    pub panic_amount: Option<u64>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            statement_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            pipeline: true,
            queue_max: 16_384,
            user_queue_max: 1_024,
            writers: 1,
            batch_users: 256,
            batch_per_user: 128,
            #[cfg(any(test, feature = "test-util"))]
            panic_amount: None,
        }
    }
}
