//! The `pointlock` binary. Logs go to stderr, as text or JSON lines
//! (`--log-format`); `RUST_LOG` filters them.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use pointlock_core::store::Sleeper;
use pointlock_core::{KeyedLock, MemoryStore, PointService, PointStore, Policy};
use pointlock_server::app::{build_stack, serve_with, shutdown_signal, spawn_idempotency_sweeper};
use pointlock_server::clock::SystemClock;
use pointlock_server::config::LogFormat;
use pointlock_server::metrics::StoreSource;
use pointlock_server::routes::StoreStats;
use pointlock_server::{Config, StoreSpec};
use pointlock_store::{PostgresStore, SqliteStore};
use tokio::net::TcpListener;

fn main() -> ExitCode {
    let config = Config::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match config.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
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

async fn run(config: Config) -> Result<(), String> {
    // The key first: a bad one stops the server before it opens a store.
    let auth = config.auth()?;
    // Kept to close it after the last request: the writer commits what is queued.
    let mut durable: Option<Arc<SqliteStore>> = None;
    // The store's own statistics, for GET /stats and GET /metrics alike.
    let mut source: Option<StoreSource> = None;
    if config.simulate_latency_ms > 0 && config.store != StoreSpec::Memory {
        tracing::warn!("--simulate-latency-ms applies to the memory store only; ignored");
    }
    let store: Arc<dyn PointStore> = match &config.store {
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
            source = Some(StoreSource::Postgres(opened.clone()));
            Arc::new(opened)
        }
        StoreSpec::Sqlite(path) => {
            let options = config.sqlite_options();
            #[cfg(feature = "test-util")]
            if let Some(control) = options.negative_control {
                tracing::warn!(?control, "NEGATIVE CONTROL: this store breaks its own guarantees on purpose (tests only)");
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
            durable = Some(Arc::clone(&opened));
            source = Some(StoreSource::Sqlite(Arc::clone(&opened)));
            opened
        }
        StoreSpec::Memory => {
            let sleep: Sleeper = Arc::new(|d| Box::pin(tokio::time::sleep(d)));
            Arc::new(MemoryStore::with_latency(
                config.simulate_latency_ms,
                sleep,
                std::process::id().into(),
            ))
        }
    };
    let clock = Arc::new(SystemClock::default());
    let lock = KeyedLock::with_clock(clock.clone());
    let service = Arc::new(
        PointService::with_lock(store, Policy::new(config.max_balance), clock, lock)
            .with_idempotency_ttl(config.idempotency_ttl()),
    );
    #[cfg(feature = "test-util")]
    let service = if config.test_unconditional_commits {
        tracing::warn!(
            "--test-unconditional-commits: the store's condition is OFF (negative controls only)"
        );
        negative_control(service)
    } else {
        service
    };
    let mut options = config.app_options();
    options.auth = auth;
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
    if let Some(source) = source {
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
    if let Some(store) = durable {
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

/// The same service with the store's condition switched off: the negative
/// control of the multi-instance tests (a `test-util` build only).
#[cfg(feature = "test-util")]
fn negative_control(
    service: pointlock_server::routes::SharedService,
) -> pointlock_server::routes::SharedService {
    match Arc::try_unwrap(service) {
        Ok(service) => Arc::new(service.without_commit_condition()),
        Err(shared) => shared,
    }
}

/// jemalloc, with its background purging thread (the `background_threads` feature):
/// a charge costs ~8% fewer instructions than with glibc's malloc (about twenty
/// small allocations per request), and memory freed after a burst of users goes
/// back to the OS within seconds instead of staying in glibc's free lists. See
/// docs/performance.md; the baseline server uses the same allocator.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
