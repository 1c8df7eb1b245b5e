//! The `pointlock` binary's life: flags, logs, the store, the stack, serving
//! until SIGINT or SIGTERM, and closing the store. `main.rs` only calls
//! [`main`].
//!
//! Logs go to stderr, as text or JSON lines (`--log-format`); `RUST_LOG`
//! filters them. Exit codes: 0 after a clean shutdown, 2 for settings that
//! cannot work together, 1 when the server cannot start or serve.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use pointlock_core::store::Sleeper;
use pointlock_core::{KeyedLock, MemoryStore, PointService, PointStore, Policy};
use tokio::net::TcpListener;

use crate::app::{build_stack, serve_with, shutdown_signal, spawn_idempotency_sweeper, AppOptions};
use crate::clock::SystemClock;
use crate::config::{Config, LogFormat, StoreSpec};
use crate::metrics::StoreSource;
use crate::routes::StoreStats;
use pointlock_store::{PostgresStore, SqliteStore};

/// The binary: parse the flags and the environment, install the logger,
/// check the settings, then [`run`] on a multi-threaded runtime.
pub fn main() -> ExitCode {
    let config = Config::parse();
    init_logs(config.log_format);
    if let Err(message) = config.validate() {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` (default `info`).
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
}

/// Serve what `config` describes until SIGINT or SIGTERM, then drain the
/// requests in flight and close the store.
pub async fn run(config: Config) -> Result<(), String> {
    // The key first: a bad one stops the server before it opens a store.
    let auth = config.auth()?;
    let opened = open_store(&config).await?;
    let clock = Arc::new(SystemClock::default());
    let lock = KeyedLock::with_clock(clock.clone());
    let service = Arc::new(
        PointService::with_lock(opened.store, Policy::new(config.max_balance), clock, lock)
            .with_idempotency_ttl(config.idempotency_ttl()),
    );
    #[cfg(feature = "test-util")]
    let service = negative_control::unconditional_commits(service, &config);
    let mut options = config.app_options();
    options.auth = auth;
    log_auth(&config, &options);
    if let Some(source) = opened.source {
        let read = source.clone();
        options.store_stats = Some(StoreStats::new(move || read.stats_json()));
        if let Some(metrics) = &options.metrics {
            metrics.watch_store(source);
        }
    }
    let sweeper = spawn_idempotency_sweeper(
        Arc::clone(&service),
        Duration::from_millis(config.idempotency_sweep_interval_ms),
    );
    let app = build_stack(service, &options);
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        %addr,
        store = ?config.store,
        max_balance = config.max_balance,
        lock_timeout_ms = config.lock_timeout_ms,
        simulate_latency_ms = config.simulate_latency_ms,
        metrics = ?config.metrics,
        "pointlock listening on http://{addr}"
    );
    let served = serve_with(listener, app, shutdown_signal(), &config.serve_options())
        .await
        .map_err(|e| e.to_string());
    sweeper.abort();
    if let Some(store) = opened.durable {
        // Changes already handed to the writer (including those of requests whose
        // clients left) are committed before the process exits.
        let closed = tokio::task::spawn_blocking(move || store.close()).await;
        if closed.is_err() {
            tracing::error!("closing the SQLite store failed");
        } else {
            tracing::info!("SQLite store closed");
        }
    }
    served
}

/// The store `--store` names, opened.
struct Opened {
    store: Arc<dyn PointStore>,
    /// The store's own statistics, for `GET /stats` and `GET /metrics` alike.
    source: Option<StoreSource>,
    /// Kept to close it after the last request: the writer commits what is queued.
    durable: Option<Arc<SqliteStore>>,
}

async fn open_store(config: &Config) -> Result<Opened, String> {
    if config.simulate_latency_ms > 0 && config.store != StoreSpec::Memory {
        tracing::warn!("--simulate-latency-ms applies to the memory store only; ignored");
    }
    Ok(match &config.store {
        StoreSpec::Postgres(url) => {
            let opened = PostgresStore::connect(url, config.postgres_options())
                .await
                .map_err(|e| format!("cannot open the store: {e}"))?;
            tracing::info!(
                target = opened.target(),
                pool_size = config.pg_pool_size,
                statement_timeout_ms = config.pg_statement_timeout_ms,
                "PostgreSQL store ready at {} (schema migrated; shared with any other instance)",
                opened.target()
            );
            Opened {
                source: Some(StoreSource::Postgres(opened.clone())),
                store: Arc::new(opened),
                durable: None,
            }
        }
        StoreSpec::Sqlite(path) => {
            let options = config.sqlite_options();
            #[cfg(feature = "test-util")]
            if let Some(control) = options.negative_control {
                tracing::warn!(
                    ?control,
                    "NEGATIVE CONTROL: this store breaks its own guarantees on purpose (tests only)"
                );
            }
            let opened = SqliteStore::open(path, options)
                .map_err(|e| format!("cannot open the store: {e}"))?;
            let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            tracing::info!(
                path = %shown.display(),
                batch_ops_max = config.sqlite_batch_ops_max,
                batch_wait_us = config.sqlite_batch_wait_us,
                pipelined = opened.is_pipelined(),
                "SQLite store open at {} (durable: WAL, synchronous=FULL)",
                shown.display()
            );
            let opened = Arc::new(opened);
            Opened {
                store: Arc::clone(&opened) as Arc<dyn PointStore>,
                source: Some(StoreSource::Sqlite(Arc::clone(&opened))),
                durable: Some(opened),
            }
        }
        StoreSpec::Memory => {
            let sleep: Sleeper = Arc::new(|d| Box::pin(tokio::time::sleep(d)));
            Opened {
                store: Arc::new(MemoryStore::with_latency(
                    config.simulate_latency_ms,
                    sleep,
                    std::process::id().into(),
                )),
                source: None,
                durable: None,
            }
        }
    })
}

/// Say whether bearer authentication is on, and warn when an open API
/// listens beyond loopback.
fn log_auth(config: &Config, options: &AppOptions) {
    match &options.auth {
        Some(auth) => tracing::info!(
            algorithm = ?auth.verifier().algorithm(),
            metrics_require_admin = auth.protects_operations(),
            "bearer JWT on: a user's routes need a token for that user or the points:admin scope"
        ),
        None if !config.addr.ip().is_loopback() => tracing::warn!(
            addr = %config.addr,
            "bearer JWT off on a non-loopback address: anyone who reaches the server can read \
             and move any user's points (see --jwt-hs256-secret-file, --jwt-public-key-file)"
        ),
        None => {}
    }
}

/// The binary's negative controls (a `test-util` build only).
#[cfg(feature = "test-util")]
mod negative_control {
    use std::sync::Arc;

    use super::Config;
    use crate::routes::SharedService;

    /// With `--test-unconditional-commits`, the same service with the store's
    /// condition switched off: the negative control of the multi-instance tests.
    pub(super) fn unconditional_commits(service: SharedService, config: &Config) -> SharedService {
        if !config.test_unconditional_commits {
            return service;
        }
        tracing::warn!(
            "--test-unconditional-commits: the store's condition is OFF (negative controls only)"
        );
        match Arc::try_unwrap(service) {
            Ok(service) => Arc::new(service.without_commit_condition()),
            Err(shared) => shared,
        }
    }
}
