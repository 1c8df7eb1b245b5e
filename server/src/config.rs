//! Command line and environment (`POINTLOCK_*`): [`Config`], every flag of the
//! `pointlock` binary.
//!
//! | file | holds |
//! |---|---|
//! | `config.rs` | [`Config`]: the flags, under their help headings |
//! | `store_spec.rs` | [`StoreSpec`]: `--store` |
//! | `values.rs` | the flags' value types: [`LogFormat`], [`Switch`], [`LockQueueMax`] |
//! | `validate.rs` | [`Config::validate`]: settings that cannot work together, refused at start |
//! | `options.rs` | what the flags describe: the stack's, the connections', the stores' and the authentication's options |
//!
//! `--help` shows the flags an operator sets, grouped by heading; the tuning
//! and benchmark knobs (`hide_short_help`) are in `--help-all` only, and in
//! docs/configuration.md. Flags for negative controls exist only in a
//! build with the `test-util` feature, and no help shows them.

mod options;
mod store_spec;
mod validate;
mod values;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgAction, Parser};

pub use store_spec::{redact_password, StoreSpec};
pub use validate::PG_STATEMENT_TIMEOUT_MS_MAX;
#[cfg(feature = "test-util")]
pub use values::TestNegativeControl;
pub use values::{LockQueueMax, LogFormat, Switch};

const SERVER: &str = "Server";
const SQLITE: &str = "SQLite store";
const POSTGRES: &str = "PostgreSQL store";
const LIMITS: &str = "Lock and limits";
const AUTH: &str = "Authentication (bearer JWT)";
const OBSERVABILITY: &str = "Observability";
const HELP: &str = "Help";

/// Below `--help`: where the hidden flags are.
const AFTER_HELP: &str = "Tuning and benchmark flags (SQLite group commit and pipelining, \
PostgreSQL pipelining, the JWT cache, the idempotency sweep, HTTP/2 streams, simulated \
latency) are not shown here: --help-all lists every flag. docs/configuration.md \
documents them all.";

/// Below `--help-all`.
const AFTER_LONG_HELP: &str = "Every flag can also be set by the POINTLOCK_* environment \
variable named beside it. docs/configuration.md documents them all.";

/// pointlock: a per-user point wallet over HTTP whose requests for one user run one
/// at a time, in arrival order, while different users never wait for each other.
#[derive(Debug, Parser)]
#[command(
    name = "pointlock",
    version,
    about,
    long_about = None,
    disable_help_flag = true,
    disable_version_flag = true,
    after_help = AFTER_HELP,
    after_long_help = AFTER_LONG_HELP
)]
pub struct Config {
    /// Address to listen on (use a loopback address unless you mean to expose it).
    #[arg(long, env = "POINTLOCK_ADDR", default_value = "127.0.0.1:8080", help_heading = SERVER)]
    pub addr: SocketAddr,

    /// Store: "sqlite:PATH" (durable: a 2xx answer means the change is on disk;
    /// the file is created if missing; one process per file),
    /// "postgres://USER:PASSWORD@HOST:PORT/DB" (also postgresql://; password
    /// and port optional; shared by any number of pointlock processes) or "memory" (lost on exit; tests and demos).
    #[arg(long, env = "POINTLOCK_STORE", default_value = StoreSpec::DEFAULT, help_heading = SERVER)]
    pub store: StoreSpec,

    /// Largest balance a user may hold (inclusive).
    #[arg(long, env = "POINTLOCK_MAX_BALANCE", default_value_t = 10_000, help_heading = SERVER)]
    pub max_balance: u64,

    /// How long an Idempotency-Key's record is kept, in hours (fractions
    /// allowed); after it the key may be used again.
    #[arg(long, env = "POINTLOCK_IDEMPOTENCY_TTL_HOURS", default_value = "24", value_parser = values::parse_ttl_hours, help_heading = SERVER)]
    pub idempotency_ttl_hours: f64,

    /// How often expired idempotency records are removed, in milliseconds (each
    /// sweep removes at most 100,000, in steps of 1,000).
    #[arg(long, env = "POINTLOCK_IDEMPOTENCY_SWEEP_INTERVAL_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..), help_heading = SERVER, hide_short_help = true)]
    pub idempotency_sweep_interval_ms: u64,

    /// Memory store only: make every store call wait a random 0..=N ms, like the
    /// course template's tables, to expose races. 0 disables it.
    #[arg(long, env = "POINTLOCK_SIMULATE_LATENCY_MS", default_value_t = 0, help_heading = SERVER, hide_short_help = true)]
    pub simulate_latency_ms: u64,

    /// SQLite store: the most changes committed in one transaction (group commit).
    /// 1 turns group commit off (one fsync per change).
    #[arg(long, env = "POINTLOCK_SQLITE_BATCH_OPS_MAX", default_value_t = 256, help_heading = SQLITE, hide_short_help = true)]
    pub sqlite_batch_ops_max: usize,

    /// SQLite store: how long, in microseconds, the writer waits for more changes
    /// after the first of a batch when none is queued (at most 1000).
    #[arg(long, env = "POINTLOCK_SQLITE_BATCH_WAIT_US", default_value_t = 250, help_heading = SQLITE, hide_short_help = true)]
    pub sqlite_batch_wait_us: u64,

    /// SQLite store: pipelined group commit. on: a user's next request runs
    /// once the change before it is sequenced, so one user's burst shares an
    /// fsync (every answer still waits for its change to be durable); off: a
    /// user stays locked until its change is durable.
    #[arg(long, env = "POINTLOCK_SQLITE_PIPELINE", value_enum, default_value_t = Switch::On, help_heading = SQLITE, hide_short_help = true)]
    pub sqlite_pipeline: Switch,

    /// PostgreSQL store: the most connections this process opens.
    #[arg(long, env = "POINTLOCK_PG_POOL_SIZE", default_value_t = 16, help_heading = POSTGRES)]
    pub pg_pool_size: usize,

    /// PostgreSQL store: the database cancels a statement running longer than
    /// this (nothing is changed; the request gets a 503).
    #[arg(long, env = "POINTLOCK_PG_STATEMENT_TIMEOUT_MS", default_value_t = 5_000, help_heading = POSTGRES)]
    pub pg_statement_timeout_ms: u64,

    /// PostgreSQL store: the longest a request waits for a database connection
    /// (new or pooled) before a 503 STORE_UNAVAILABLE; also bounds the first
    /// connection at start.
    #[arg(long, env = "POINTLOCK_PG_CONNECT_TIMEOUT_MS", default_value_t = 2_000, help_heading = POSTGRES)]
    pub pg_connect_timeout_ms: u64,

    /// PostgreSQL store: pipelined requests. on: a user's next request runs
    /// once the request before it has its place in the store's queue, and one
    /// user's consecutive requests share a batch transaction (each is still
    /// decided in the database at its place, and answered once committed).
    /// off: a user stays locked in this process until its answer.
    #[arg(long, env = "POINTLOCK_PG_PIPELINE", value_enum, default_value_t = Switch::On, help_heading = POSTGRES, hide_short_help = true)]
    pub pg_pipeline: Switch,

    /// PostgreSQL store: the most requests queued for the database and not yet
    /// answered, all users together; past it a request is refused with 503
    /// STORE_OVERLOADED (nothing changed).
    #[arg(long, env = "POINTLOCK_PG_QUEUE_MAX", default_value_t = 16_384, help_heading = POSTGRES, hide_short_help = true)]
    pub pg_queue_max: usize,

    /// PostgreSQL store: the most requests of one user queued for the database
    /// and not yet answered; past it the same refusal.
    #[arg(long, env = "POINTLOCK_PG_USER_QUEUE_MAX", default_value_t = 1_024, help_heading = POSTGRES, hide_short_help = true)]
    pub pg_user_queue_max: usize,

    /// PostgreSQL store: batch transactions in flight at once (each holds one
    /// of the pool's connections while it runs; at most --pg-pool-size). One
    /// makes the largest batches; more let one batch that waits for a row
    /// held elsewhere not hold up the other users.
    #[arg(long, env = "POINTLOCK_PG_WRITERS", default_value_t = 1, help_heading = POSTGRES, hide_short_help = true)]
    pub pg_writers: usize,

    /// How long a request may wait for its user's lock before a 503 LOCK_TIMEOUT.
    #[arg(long, env = "POINTLOCK_LOCK_TIMEOUT_MS", default_value_t = 3_000, help_heading = LIMITS)]
    pub lock_timeout_ms: u64,

    /// The most requests that may wait for one user's lock; beyond it a request is
    /// refused at once with 503 LOCK_QUEUE_FULL, changing nothing. 0: none may
    /// wait (a request that finds its user's lock held is refused at once);
    /// "unbounded": no bound (waits are still bounded by --lock-timeout-ms).
    #[arg(long, env = "POINTLOCK_LOCK_QUEUE_MAX", value_name = "N|unbounded", default_value_t = LockQueueMax(Some(crate::app::LOCK_QUEUE_MAX_DEFAULT)), help_heading = LIMITS)]
    pub lock_queue_max: LockQueueMax,

    /// The most requests the process works on at once, all connections and
    /// users together; beyond it a request is refused at once with 503
    /// SERVER_OVERLOADED, before authentication, its body or any lock.
    #[arg(long, env = "POINTLOCK_MAX_IN_FLIGHT", default_value_t = crate::middleware::in_flight::MAX_IN_FLIGHT_DEFAULT, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000_000), help_heading = LIMITS)]
    pub max_in_flight: usize,

    /// How long a whole request may take before a 408 (must exceed the lock timeout).
    #[arg(long, env = "POINTLOCK_REQUEST_TIMEOUT_MS", default_value_t = 10_000, help_heading = LIMITS)]
    pub request_timeout_ms: u64,

    /// How long a request holding its user's lock may take to deliver its body
    /// before a 408 BODY_TIMEOUT (bounds how long a slow client holds a user).
    #[arg(long, env = "POINTLOCK_BODY_TIMEOUT_MS", default_value_t = 2_000, help_heading = LIMITS)]
    pub body_timeout_ms: u64,

    /// Largest accepted request body, in bytes; larger bodies get a 413.
    #[arg(long, env = "POINTLOCK_BODY_LIMIT_BYTES", default_value_t = 4_096, help_heading = LIMITS)]
    pub body_limit_bytes: usize,

    /// How long a client may take to send a request's headers (on a new
    /// connection, and between requests of a kept-alive one); slower clients
    /// are disconnected. Also closes idle kept-alive connections.
    #[arg(long, env = "POINTLOCK_HEADER_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..), help_heading = LIMITS)]
    pub header_timeout_ms: u64,

    /// Largest request line and headers together, in bytes; larger heads get a
    /// 431 and the connection is closed.
    #[arg(long, env = "POINTLOCK_HEADER_LIMIT_BYTES", default_value_t = crate::middleware::limits::HEADER_LIMIT_BYTES_DEFAULT, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..=1_048_576), help_heading = LIMITS)]
    pub header_limit_bytes: usize,

    /// The most connections served at once; beyond it new connections wait in
    /// the listen backlog until one closes.
    #[arg(long, env = "POINTLOCK_MAX_CONNECTIONS", default_value_t = crate::app::MAX_CONNECTIONS_DEFAULT, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..), help_heading = LIMITS)]
    pub max_connections: usize,

    /// The most concurrent HTTP/2 streams per connection.
    #[arg(long, env = "POINTLOCK_H2_MAX_STREAMS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..), help_heading = LIMITS, hide_short_help = true)]
    pub h2_max_streams: u32,

    /// Bearer JWT with a shared secret: verify HS256 tokens with the bytes of
    /// this file (trailing whitespace dropped; at least 32 bytes, such as
    /// `openssl rand -base64 48`). A user's routes then need a token whose sub
    /// is that user, or whose scope holds points:admin. Off unless this or
    /// --jwt-public-key-file is given.
    #[arg(
        long,
        env = "POINTLOCK_JWT_HS256_SECRET_FILE",
        value_name = "PATH",
        conflicts_with = "jwt_public_key_file",
        help_heading = AUTH
    )]
    pub jwt_hs256_secret_file: Option<PathBuf>,

    /// Bearer JWT from an identity provider: verify tokens with this public
    /// key in PEM (RSA: RS256; EC P-256: ES256). See --jwt-hs256-secret-file.
    #[arg(long, env = "POINTLOCK_JWT_PUBLIC_KEY_FILE", value_name = "PATH", help_heading = AUTH)]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Bearer JWT: require this aud claim (tokens that carry an aud are refused
    /// unless it is set and matches).
    #[arg(long, env = "POINTLOCK_JWT_AUDIENCE", help_heading = AUTH)]
    pub jwt_audience: Option<String>,

    /// Bearer JWT: require this iss claim.
    #[arg(long, env = "POINTLOCK_JWT_ISSUER", help_heading = AUTH)]
    pub jwt_issuer: Option<String>,

    /// Bearer JWT: GET /metrics and GET /stats need a token with the
    /// points:admin scope (open by default, like /health and /ready).
    #[arg(long, env = "POINTLOCK_METRICS_REQUIRE_ADMIN", help_heading = AUTH)]
    pub metrics_require_admin: bool,

    /// Bearer JWT: the most verified tokens remembered, so that a client's next
    /// request with the same token costs a lookup instead of a signature check
    /// (each use still checks exp and nbf). 0: none.
    #[arg(long, env = "POINTLOCK_JWT_CACHE_MAX", default_value_t = crate::auth::CACHE_MAX_DEFAULT, help_heading = AUTH, hide_short_help = true)]
    pub jwt_cache_max: usize,

    /// Log format on stderr: text, or json (one object per line, for log
    /// collectors). RUST_LOG filters either.
    #[arg(long, env = "POINTLOCK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, help_heading = OBSERVABILITY)]
    pub log_format: LogFormat,

    /// GET /metrics (Prometheus/OpenMetrics text: requests, lock, store): on or
    /// off. Off also removes the per-request counting.
    #[arg(long, env = "POINTLOCK_METRICS", value_enum, default_value_t = Switch::On, help_heading = OBSERVABILITY)]
    pub metrics: Switch,

    /// Print help (--help-all adds the tuning and benchmark flags).
    #[arg(short = 'h', long = "help", action = ArgAction::HelpShort, help_heading = HELP)]
    help: Option<bool>,

    /// Print help with every flag, the tuning and benchmark ones included.
    #[arg(long = "help-all", action = ArgAction::HelpLong, help_heading = HELP)]
    help_all: Option<bool>,

    /// Print version.
    #[arg(short = 'V', long = "version", action = ArgAction::Version, help_heading = HELP)]
    version: Option<bool>,

    /// Negative controls only (a `test-util` build): commit unconditionally
    /// (on PostgreSQL: decide each request on a balance read before its turn),
    /// so that several instances lose updates, as the tests must show they
    /// would.
    #[cfg(feature = "test-util")]
    #[arg(long, hide = true)]
    pub test_unconditional_commits: bool,

    /// Negative controls only (a `test-util` build): the pipelined SQLite
    /// store breaks its own promise (`answer-at-sequencing`: answers before
    /// durable; `dirty-reads`: reads the sequenced state), so that the crash
    /// tests can show they catch it.
    #[cfg(feature = "test-util")]
    #[arg(long, hide = true, value_enum)]
    pub test_negative_control: Option<TestNegativeControl>,
}

#[cfg(test)]
mod tests;
