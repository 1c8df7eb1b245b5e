//! Command line and environment (`POINTLOCK_*`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;

use crate::app::AppOptions;
use crate::auth::{BearerAuth, JwtVerifier};
use crate::metrics::Metrics;
use pointlock_store::{PostgresOptions, SqliteOptions};

/// Where balances and histories are kept.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// In memory: lost on exit. For tests and demos.
    Memory,
    /// A SQLite file (created if missing): durable, the default.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://` or `postgresql://` URL), shared by
    /// any number of instances.
    Postgres(String),
}

impl std::fmt::Debug for StoreSpec {
    /// Never shows a password: `postgres://user:***@host/db`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            Self::Postgres(url) => f.write_str(&redact_password(url)),
        }
    }
}

/// `url` with the password of its user info, if any, replaced by `***`.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl StoreSpec {
    /// The default: `pointlock.db` in the working directory.
    pub const DEFAULT: &'static str = "sqlite:pointlock.db";
}

impl FromStr for StoreSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "memory" => Ok(Self::Memory),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Self::Postgres(url.to_owned()))
            }
            other => match other.strip_prefix("sqlite:") {
                Some("") => Err("sqlite: needs a file path, like sqlite:pointlock.db".into()),
                Some(path) => Ok(Self::Sqlite(PathBuf::from(path))),
                None => Err(format!(
                    "unknown store {:?}; expected \"sqlite:PATH\", \"postgres://USER@HOST:PORT/DB\" or \"memory\"",
                    redact_password(other)
                )),
            },
        }
    }
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line (fields, span fields, level, target, timestamp).
    Json,
}

/// A feature switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// Turned on.
    On,
    /// Turned off.
    Off,
}

/// pointlock: a per-user point wallet over HTTP whose requests for one user run one
/// at a time, in arrival order, while different users never wait for each other.
#[derive(Debug, Parser)]
#[command(name = "pointlock", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on (use a loopback address unless you mean to expose it).
    #[arg(long, env = "POINTLOCK_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// Store: "sqlite:PATH" (durable: a 2xx answer means the change is on disk;
    /// the file is created if missing; one process per file),
    /// "postgres://USER:PASSWORD@HOST:PORT/DB" (also postgresql://; password
    /// and port optional; shared by any number of pointlock processes) or "memory" (lost on exit; tests and demos).
    #[arg(long, env = "POINTLOCK_STORE", default_value = StoreSpec::DEFAULT)]
    pub store: StoreSpec,

    /// SQLite store: the most changes committed in one transaction (group commit).
    /// 1 turns group commit off (one fsync per change).
    #[arg(long, env = "POINTLOCK_SQLITE_BATCH_OPS_MAX", default_value_t = 256)]
    pub sqlite_batch_ops_max: usize,

    /// SQLite store: how long, in microseconds, the writer waits for more changes
    /// after the first of a batch when none is queued (at most 1000).
    #[arg(long, env = "POINTLOCK_SQLITE_BATCH_WAIT_US", default_value_t = 250)]
    pub sqlite_batch_wait_us: u64,

    /// SQLite store: pipelined group commit. on: a user's next request runs
    /// once the change before it is sequenced, so one user's burst shares an
    /// fsync (every answer still waits for its change to be durable); off: a
    /// user stays locked until its change is durable.
    #[arg(long, env = "POINTLOCK_SQLITE_PIPELINE", value_enum, default_value_t = Switch::On)]
    pub sqlite_pipeline: Switch,

    /// PostgreSQL store: pipelined commits. on: a user's next request runs once
    /// the change before it is sequenced in this instance, and one user's
    /// consecutive changes commit in one transaction; another instance writing
    /// the same user then makes them fail (503 WRITE_CONFLICT) instead of being
    /// retried. off: a user stays locked until its change is committed.
    #[arg(long, env = "POINTLOCK_PG_PIPELINE", value_enum, default_value_t = Switch::Off)]
    pub pg_pipeline: Switch,

    /// PostgreSQL store: the most connections this process opens.
    #[arg(long, env = "POINTLOCK_PG_POOL_SIZE", default_value_t = 16)]
    pub pg_pool_size: usize,

    /// PostgreSQL store: the database cancels a statement running longer than
    /// this (nothing is changed; the request gets a 503).
    #[arg(
        long,
        env = "POINTLOCK_PG_STATEMENT_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub pg_statement_timeout_ms: u64,

    /// PostgreSQL store: the longest a request waits for a database connection
    /// (new or pooled) before a 503 STORE_UNAVAILABLE; also bounds the first
    /// connection at start.
    #[arg(long, env = "POINTLOCK_PG_CONNECT_TIMEOUT_MS", default_value_t = 2_000)]
    pub pg_connect_timeout_ms: u64,

    /// Largest balance a user may hold (inclusive).
    #[arg(long, env = "POINTLOCK_MAX_BALANCE", default_value_t = 10_000)]
    pub max_balance: u64,

    /// How long a request may wait for its user's lock before a 503 LOCK_TIMEOUT.
    #[arg(long, env = "POINTLOCK_LOCK_TIMEOUT_MS", default_value_t = 3_000)]
    pub lock_timeout_ms: u64,

    /// The most requests that may wait for one user's lock; beyond it a request is
    /// refused at once with 503 LOCK_QUEUE_FULL, changing nothing. 0: no bound
    /// (waits are still bounded by --lock-timeout-ms).
    #[arg(long, env = "POINTLOCK_LOCK_QUEUE_MAX", default_value_t = crate::app::LOCK_QUEUE_MAX_DEFAULT)]
    pub lock_queue_max: usize,

    /// How long an Idempotency-Key's record is kept, in hours (fractions
    /// allowed); after it the key may be used again.
    #[arg(long, env = "POINTLOCK_IDEMPOTENCY_TTL_HOURS", default_value = "24", value_parser = parse_ttl_hours)]
    pub idempotency_ttl_hours: f64,

    /// How often expired idempotency records are removed, in milliseconds (each
    /// sweep removes at most 100,000, in steps of 1,000).
    #[arg(long, env = "POINTLOCK_IDEMPOTENCY_SWEEP_INTERVAL_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub idempotency_sweep_interval_ms: u64,

    /// Memory store only: make every store call wait a random 0..=N ms, like the
    /// course template's tables, to expose races. 0 disables it.
    #[arg(long, env = "POINTLOCK_SIMULATE_LATENCY_MS", default_value_t = 0)]
    pub simulate_latency_ms: u64,

    /// How long a whole request may take before a 408 (must exceed the lock timeout).
    #[arg(long, env = "POINTLOCK_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// How long a request holding its user's lock may take to deliver its body
    /// before a 408 BODY_TIMEOUT (bounds how long a slow client holds a user).
    #[arg(long, env = "POINTLOCK_BODY_TIMEOUT_MS", default_value_t = 2_000)]
    pub body_timeout_ms: u64,

    /// Log format on stderr: text, or json (one object per line, for log
    /// collectors). RUST_LOG filters either.
    #[arg(long, env = "POINTLOCK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// How long a client may take to send a request's headers (on a new
    /// connection, and between requests of a kept-alive one); slower clients
    /// are disconnected. Also closes idle kept-alive connections.
    #[arg(long, env = "POINTLOCK_HEADER_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_ms: u64,

    /// Largest request line and headers together, in bytes; larger heads get a
    /// 431 and the connection is closed.
    #[arg(long, env = "POINTLOCK_HEADER_LIMIT_BYTES", default_value_t = crate::limits::HEADER_LIMIT_BYTES_DEFAULT, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..=1_048_576))]
    pub header_limit_bytes: usize,

    /// The most connections served at once; beyond it new connections wait in
    /// the listen backlog until one closes.
    #[arg(long, env = "POINTLOCK_MAX_CONNECTIONS", default_value_t = crate::app::MAX_CONNECTIONS_DEFAULT, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,

    /// The most concurrent HTTP/2 streams per connection.
    #[arg(long, env = "POINTLOCK_H2_MAX_STREAMS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub h2_max_streams: u32,

    /// GET /metrics (Prometheus/OpenMetrics text: requests, lock, store): on or
    /// off. Off also removes the per-request counting.
    #[arg(long, env = "POINTLOCK_METRICS", value_enum, default_value_t = Switch::On)]
    pub metrics: Switch,

    /// Bearer JWT with a shared secret: verify HS256 tokens with the bytes of
    /// this file (trailing whitespace dropped; at least 32 bytes, such as
    /// `openssl rand -base64 48`). A user's routes then need a token whose sub
    /// is that user, or whose scope holds points:admin. Off unless this or
    /// --jwt-public-key-file is given.
    #[arg(
        long,
        env = "POINTLOCK_JWT_HS256_SECRET_FILE",
        value_name = "PATH",
        conflicts_with = "jwt_public_key_file"
    )]
    pub jwt_hs256_secret_file: Option<PathBuf>,

    /// Bearer JWT from an identity provider: verify tokens with this public
    /// key in PEM (RSA: RS256; EC P-256: ES256). See --jwt-hs256-secret-file.
    #[arg(long, env = "POINTLOCK_JWT_PUBLIC_KEY_FILE", value_name = "PATH")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Bearer JWT: require this aud claim (tokens that carry an aud are refused
    /// unless it is set and matches).
    #[arg(long, env = "POINTLOCK_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Bearer JWT: require this iss claim.
    #[arg(long, env = "POINTLOCK_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Bearer JWT: the most verified tokens remembered, so that a client's next
    /// request with the same token costs a lookup instead of a signature check
    /// (each use still checks exp and nbf). 0: none.
    #[arg(long, env = "POINTLOCK_JWT_CACHE_MAX", default_value_t = crate::auth::CACHE_MAX_DEFAULT)]
    pub jwt_cache_max: usize,

    /// Bearer JWT: GET /metrics and GET /stats need a token with the
    /// points:admin scope (open by default, like /health and /ready).
    #[arg(long, env = "POINTLOCK_METRICS_REQUIRE_ADMIN")]
    pub metrics_require_admin: bool,

    /// Largest accepted request body, in bytes; larger bodies get a 413.
    #[arg(long, env = "POINTLOCK_BODY_LIMIT_BYTES", default_value_t = 4_096)]
    pub body_limit_bytes: usize,

    /// Negative controls only (a `test-util` build): commit unconditionally, so
    /// that several instances lose updates, as the tests must show they would.
    #[cfg(feature = "test-util")]
    #[arg(long, hide = true)]
    pub test_unconditional_commits: bool,
}

/// `--idempotency-ttl-hours`: a positive number of hours, at most ten years.
fn parse_ttl_hours(raw: &str) -> Result<f64, String> {
    let hours: f64 = raw
        .trim()
        .parse()
        .map_err(|_| format!("{raw:?} is not a number of hours"))?;
    if hours.is_finite() && hours > 0.0 && hours <= 87_600.0 {
        Ok(hours)
    } else {
        Err(format!(
            "{raw:?}: the TTL must be more than 0 and at most 87600 hours"
        ))
    }
}

impl Config {
    /// How long idempotency records are kept (at least a millisecond).
    pub fn idempotency_ttl(&self) -> Duration {
        Duration::from_secs_f64(self.idempotency_ttl_hours * 3_600.0).max(Duration::from_millis(1))
    }

    /// The middleware options these flags describe.
    pub fn app_options(&self) -> AppOptions {
        AppOptions {
            lock_timeout: Duration::from_millis(self.lock_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            body_limit_bytes: self.body_limit_bytes,
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            lock_queue_max: (self.lock_queue_max > 0).then_some(self.lock_queue_max),
            lock_layer: true,
            header_limit_bytes: self.header_limit_bytes,
            store_stats: None,
            metrics: (self.metrics == Switch::On).then(Metrics::new),
            // Read from files: see `auth`.
            auth: None,
        }
    }

    /// Whether bearer JWT authentication is on.
    pub fn jwt_enabled(&self) -> bool {
        self.jwt_hs256_secret_file.is_some() || self.jwt_public_key_file.is_some()
    }

    /// The bearer authentication these flags describe, its key read from its
    /// file (`None`: off). The error names the file, never its content.
    pub fn auth(&self) -> Result<Option<BearerAuth>, String> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let verifier = if let Some(path) = &self.jwt_hs256_secret_file {
            let secret = read(path)?;
            let end = secret
                .iter()
                .rposition(|b| !b.is_ascii_whitespace())
                .map_or(0, |last| last + 1);
            JwtVerifier::hs256(&secret[..end])
                .map_err(|e| format!("--jwt-hs256-secret-file {}: {e}", path.display()))?
        } else if let Some(path) = &self.jwt_public_key_file {
            JwtVerifier::from_public_key_pem(&read(path)?)
                .map_err(|e| format!("--jwt-public-key-file {}: {e}", path.display()))?
        } else {
            return Ok(None);
        };
        let mut verifier = verifier.cache_max(self.jwt_cache_max);
        if let Some(audience) = &self.jwt_audience {
            verifier = verifier.audience(audience);
        }
        if let Some(issuer) = &self.jwt_issuer {
            verifier = verifier.issuer(issuer);
        }
        Ok(Some(
            BearerAuth::new(verifier).operations_admin_only(self.metrics_require_admin),
        ))
    }

    /// The connection limits these flags describe.
    pub fn serve_options(&self) -> crate::app::ServeOptions {
        crate::app::ServeOptions {
            drain: Duration::from_secs(30),
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            header_limit_bytes: self.header_limit_bytes,
            max_connections: self.max_connections,
            h2_max_concurrent_streams: self.h2_max_streams,
        }
    }

    /// The SQLite store's tuning these flags describe.
    pub fn sqlite_options(&self) -> SqliteOptions {
        SqliteOptions {
            batch_ops_max: self.sqlite_batch_ops_max,
            batch_wait: Duration::from_micros(self.sqlite_batch_wait_us),
            pipeline: self.sqlite_pipeline == Switch::On,
            #[cfg(feature = "test-util")]
            negative_control: negative_control(),
            ..SqliteOptions::default()
        }
    }

    /// The PostgreSQL store's tuning these flags describe.
    pub fn postgres_options(&self) -> PostgresOptions {
        PostgresOptions {
            pool_size: self.pg_pool_size,
            statement_timeout: Duration::from_millis(self.pg_statement_timeout_ms),
            connect_timeout: Duration::from_millis(self.pg_connect_timeout_ms),
            pipeline: self.pg_pipeline == Switch::On,
        }
    }

    /// Reject settings that cannot work together.
    pub fn validate(&self) -> Result<(), String> {
        if self.lock_timeout_ms == 0 {
            return Err("--lock-timeout-ms must be at least 1".into());
        }
        if self.request_timeout_ms <= self.lock_timeout_ms {
            return Err(format!(
                "--request-timeout-ms ({}) must be longer than --lock-timeout-ms ({})",
                self.request_timeout_ms, self.lock_timeout_ms
            ));
        }
        if self.body_timeout_ms == 0 || self.body_timeout_ms >= self.request_timeout_ms {
            return Err(format!(
                "--body-timeout-ms ({}) must be at least 1 and shorter than --request-timeout-ms ({})",
                self.body_timeout_ms, self.request_timeout_ms
            ));
        }
        if let StoreSpec::Sqlite(_) = self.store {
            if self.max_balance > pointlock_core::domain::VALUE_MAX {
                return Err(format!(
                    "--max-balance ({}) must be at most {} with the SQLite store",
                    self.max_balance,
                    pointlock_core::domain::VALUE_MAX
                ));
            }
            if self.sqlite_batch_ops_max == 0 || self.sqlite_batch_ops_max > 4_096 {
                return Err("--sqlite-batch-ops-max must be between 1 and 4096".into());
            }
            if self.sqlite_batch_wait_us > 1_000 {
                return Err("--sqlite-batch-wait-us must be at most 1000".into());
            }
        }
        if let StoreSpec::Postgres(_) = self.store {
            if self.max_balance > pointlock_core::domain::VALUE_MAX {
                return Err(format!(
                    "--max-balance ({}) must be at most {} with the PostgreSQL store",
                    self.max_balance,
                    pointlock_core::domain::VALUE_MAX
                ));
            }
            if self.pg_pool_size == 0 || self.pg_pool_size > 1_000 {
                return Err("--pg-pool-size must be between 1 and 1000".into());
            }
            if self.pg_statement_timeout_ms == 0 || self.pg_connect_timeout_ms == 0 {
                return Err(
                    "--pg-statement-timeout-ms and --pg-connect-timeout-ms must be at least 1"
                        .into(),
                );
            }
            let worst = self.pg_connect_timeout_ms + self.pg_statement_timeout_ms;
            if worst >= self.request_timeout_ms {
                return Err(format!(
                    "--pg-connect-timeout-ms + --pg-statement-timeout-ms ({worst}) must be shorter \
                     than --request-timeout-ms ({}) so a stuck database gets a 503, not a 408",
                    self.request_timeout_ms
                ));
            }
        }
        if !self.jwt_enabled() {
            for (set, flag) in [
                (self.jwt_audience.is_some(), "--jwt-audience"),
                (self.jwt_issuer.is_some(), "--jwt-issuer"),
                (self.metrics_require_admin, "--metrics-require-admin"),
            ] {
                if set {
                    return Err(format!(
                        "{flag} needs bearer JWT: --jwt-hs256-secret-file or --jwt-public-key-file"
                    ));
                }
            }
        }
        if self.body_limit_bytes < 64 {
            return Err("--body-limit-bytes must be at least 64".into());
        }
        Ok(())
    }
}

/// A negative control of the pipelined SQLite store, for the crash tests only:
/// `POINTLOCK_NEGATIVE_CONTROL=answer-at-sequencing|dirty-reads`, read by
/// debug builds alone (a release binary ignores it).
#[cfg(feature = "test-util")]
fn negative_control() -> Option<pointlock_store::NegativeControl> {
    if !cfg!(debug_assertions) {
        return None;
    }
    match std::env::var("POINTLOCK_NEGATIVE_CONTROL").ok()?.as_str() {
        "answer-at-sequencing" => Some(pointlock_store::NegativeControl::AnswerAtSequencing),
        "dirty-reads" => Some(pointlock_store::NegativeControl::DirtyReads),
        other => {
            tracing::warn!(
                control = other,
                "unknown POINTLOCK_NEGATIVE_CONTROL ignored"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_specs_parse_and_never_show_a_password() {
        let spec: StoreSpec = "postgres://app:s3cret@db.internal:5433/wallet?sslmode=disable"
            .parse()
            .unwrap();
        assert_eq!(
            format!("{spec:?}"),
            "postgres://app:***@db.internal:5433/wallet?sslmode=disable"
        );
        let spec: StoreSpec = "postgresql://app@db/wallet".parse().unwrap();
        assert_eq!(format!("{spec:?}"), "postgresql://app@db/wallet");
        assert_eq!("memory".parse::<StoreSpec>(), Ok(StoreSpec::Memory));
        let unknown = "mysql://root:hunter2@db/x"
            .parse::<StoreSpec>()
            .unwrap_err();
        assert!(unknown.contains("root:***@db"), "{unknown}");
        assert!(!unknown.contains("hunter2"), "{unknown}");
    }

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("pointlock").chain(args.iter().copied()))
    }

    #[test]
    fn bearer_jwt_is_off_by_default_and_its_flags_need_it() {
        let config = parse(&[]).unwrap();
        assert!(!config.jwt_enabled());
        assert!(config.auth().unwrap().is_none());
        assert!(config.validate().is_ok());
        for flags in [
            &["--jwt-audience", "a"][..],
            &["--jwt-issuer", "i"],
            &["--metrics-require-admin"],
        ] {
            let error = parse(flags).unwrap().validate().unwrap_err();
            assert!(error.contains("needs bearer JWT"), "{flags:?}: {error}");
        }
        let both = parse(&["--jwt-hs256-secret-file", "s", "--jwt-public-key-file", "k"]);
        assert!(both.is_err(), "one key, one algorithm");
    }

    #[test]
    fn the_key_files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, content: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            path.to_str().unwrap().to_owned()
        };
        // `echo` adds a newline: dropped, so the secret is the text.
        let secret = file("secret", b"0123456789abcdef0123456789abcdef\n");
        let config = parse(&[
            "--jwt-hs256-secret-file",
            &secret,
            "--metrics-require-admin",
        ])
        .unwrap();
        assert!(config.validate().is_ok());
        let auth = config.auth().unwrap().expect("on");
        assert_eq!(auth.verifier().algorithm(), jsonwebtoken::Algorithm::HS256);
        assert!(auth.protects_operations());
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({ "sub": "1", "exp": jsonwebtoken::get_current_timestamp() + 60 }),
            &jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        assert!(auth.verifier().verify(&token).is_ok(), "the trimmed secret");
        let short = file("short", b"0123456789abcdef0123456789abcde\n");
        let error = parse(&["--jwt-hs256-secret-file", &short])
            .unwrap()
            .auth()
            .unwrap_err();
        assert!(error.contains("at least 32"), "{error}");
        assert!(!error.contains("0123"), "never the secret: {error}");
        let key = file("key.pem", include_bytes!("../../tests/auth/ec-public.pem"));
        let config = parse(&["--jwt-public-key-file", &key, "--jwt-audience", "wallet"]).unwrap();
        let auth = config.auth().unwrap().expect("on");
        assert_eq!(auth.verifier().algorithm(), jsonwebtoken::Algorithm::ES256);
        let missing = parse(&["--jwt-public-key-file", "/nonexistent/key.pem"])
            .unwrap()
            .auth()
            .unwrap_err();
        assert!(
            missing.contains("cannot read /nonexistent/key.pem"),
            "{missing}"
        );
    }
}
