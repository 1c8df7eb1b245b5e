//! `GET /metrics`: the server's metrics in the OpenMetrics text format
//! (`application/openmetrics-text; version=1.0.0`), which Prometheus scrapes.
//!
//! # What is counted where
//!
//! Most families are **read at scrape time** from counters the server keeps
//! anyway: the lock's [`LockMetrics`], the
//! service's refused commits, the SQLite store's
//! [`CommitStats`], the PostgreSQL store's
//! [`PgStats`]. A custom [`Collector`] turns them into
//! families on each scrape, so they add nothing to a request. `GET /stats`
//! serves the same sources as JSON.
//!
//! What had no counter before is counted in place, cheaply:
//!
//! - **requests** by method, route template and status, and their duration, by
//!   [`RequestCounter`] (first and last in the stack's front layer): a fixed table of atomics,
//!   one row per (method, route), resolved from the request line without
//!   allocating or hashing; per request that is two clock reads and three
//!   relaxed atomic adds (see docs/performance.md for what it costs);
//! - **store errors by kind**, by the same counter, from the error code of a
//!   wallet route's 5xx answer (nothing on a 2xx);
//! - **commit durations**, by the stores (one observation per batch
//!   transaction: off the request path);
//! - **idempotency**: the service's own counters of replayed answers and swept
//!   records, read at scrape time like the lock's.
//!
//! # Families
//!
//! Names carry their unit last, counters end in `_total` (OpenMetrics adds it to
//! the family name), histograms have `_bucket`/`_sum`/`_count` samples.
//!
//! | family | type | labels | meaning |
//! |---|---|---|---|
//! | `pointlock_http_requests_total` | counter | `method`, `route`, `status` | answered requests |
//! | `pointlock_http_request_duration_seconds` | histogram | `method`, `route` | from the request entering the stack to its response head |
//! | `pointlock_http_in_flight` | gauge | | requests in the stack now (at most `--max-in-flight`) |
//! | `pointlock_http_in_flight_refused_total` | counter | | requests refused at once, the stack full (503 `SERVER_OVERLOADED`) |
//! | `pointlock_lock_keys_held` | gauge | | users whose lock is held now |
//! | `pointlock_lock_waiters` | gauge | | requests queued behind a holder now |
//! | `pointlock_lock_acquisitions_total` | counter | | locks granted |
//! | `pointlock_lock_contended_acquisitions_total` | counter | | locks granted after waiting |
//! | `pointlock_lock_timeouts_total` | counter | | waits that timed out (503 `LOCK_TIMEOUT`) |
//! | `pointlock_lock_cancelled_total` | counter | | waits abandoned (timeouts and dropped requests) |
//! | `pointlock_lock_queue_full_total` | counter | | requests refused at once, queue full (503 `LOCK_QUEUE_FULL`) |
//! | `pointlock_lock_wait_seconds` | histogram | | how long contended acquisitions waited |
//! | `pointlock_service_commit_conflicts_total` | counter | | commits the store refused (balance changed), each then retried up to 8 attempts |
//! | `pointlock_store_errors_total` | counter | `kind` | wallet requests answered with a store error, by kind |
//! | `pointlock_store_commit_duration_seconds` | histogram | | SQLite, PostgreSQL: one batch's transaction |
//! | `pointlock_store_commit_batch_changes` | histogram | | SQLite: changes per group-commit batch |
//! | `pointlock_store_conflicts_total` | counter | | SQLite, PostgreSQL: changes refused by their condition |
//! | `pointlock_store_batches_retried_total` | counter | | SQLite: batches retried one change at a time |
//! | `pointlock_store_failed_stop` | gauge | | SQLite: 1 once a failed COMMIT stopped the store |
//! | `pointlock_store_barriers_total` | counter | | SQLite, pipelined: answers held behind a barrier until the state they were computed on was durable |
//! | `pointlock_store_pool_connections` | gauge | `state` | PostgreSQL: open connections, `idle` or `busy` |
//! | `pointlock_store_pool_waiters` | gauge | | PostgreSQL: requests waiting for a connection |
//! | `pointlock_store_batches_total` | counter | | PostgreSQL: batch transactions committed |
//! | `pointlock_store_batch_retries_total` | counter | | PostgreSQL: batches run again after a deadlock, a serialization failure or a first row made meanwhile |
//! | `pointlock_store_conflict_fallbacks_total` | counter | | PostgreSQL: batches answered 503 `WRITE_CONFLICT` after the most attempts |
//! | `pointlock_store_overloaded_total` | counter | | PostgreSQL: requests refused, the store's queue full (503 `STORE_OVERLOADED`) |
//! | `pointlock_store_queued` | gauge | | PostgreSQL: requests queued and not yet answered |
//! | `pointlock_idempotent_replays_total` | counter | | answers replayed for a repeated Idempotency-Key |
//! | `pointlock_idempotency_keys_swept_total` | counter | | expired Idempotency-Key records removed |
//!
//! Labels are bounded by construction: `route` is one of
//! `routes::ROUTE_TEMPLATES` (`/point/{id}/charge`,
//! never the id; `other` for unknown paths), `method` one of the nine standard
//! methods or `OTHER`, `kind` one of five. Only `status` is open, and only
//! to the codes the server answers.
//!
//! # Why prometheus-client
//!
//! The Prometheus project's own Rust client (`prometheus-client`, maintained by
//! the Prometheus organisation): typed metrics, an encoder that follows the
//! OpenMetrics specification (escaping, `# EOF`, `_total`, units), no global
//! registry (each [`Metrics`] has its own, so tests run side by side), counters
//! that are one atomic each, and a [`Collector`] interface for families read at
//! scrape time. Its own `Histogram` takes a mutex per observation, so the
//! duration histograms here are [`DurationHistogram`](pointlock_store::histogram::DurationHistogram)s (atomics) encoded through
//! the same encoder.
//!
//! # Example
//!
//! ```
//! use pointlock_server::metrics::Metrics;
//!
//! let metrics = Metrics::new();
//! let text = metrics.render().unwrap();
//! // Nothing watched yet (the stack adds its requests and service).
//! assert_eq!(text, "# EOF\n");
//! ```

mod requests;

use std::fmt;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use pointlock_core::lock::WAIT_BUCKETS_MICROS;
use pointlock_core::{LockMetrics, PointService, PointStore, StoreErrorKind};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use self::requests::HttpTable;
pub use self::requests::{RequestCounter, Started};
use crate::middleware::in_flight::InFlight;
use pointlock_store::histogram::{HistogramSnapshot, DURATION_BOUNDS_NANOS};
use pointlock_store::{CommitStats, PgStats, PostgresStore, SqliteStore};

/// The `Content-Type` of `GET /metrics`: OpenMetrics 1.0.0 text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The service whose lock and commit conflicts are read (the server's).
type Service = Arc<PointService<Arc<dyn PointStore>>>;

/// A store whose own statistics are read at each scrape (and by `GET /stats`).
#[derive(Clone, Debug)]
pub enum StoreSource {
    /// The SQLite store's [`CommitStats`].
    Sqlite(Arc<SqliteStore>),
    /// The PostgreSQL store's [`PgStats`].
    Postgres(PostgresStore),
}

impl StoreSource {
    /// The store's statistics as JSON, as `GET /stats` shows them.
    pub fn stats_json(&self) -> serde_json::Value {
        let stats = match self {
            Self::Sqlite(store) => serde_json::to_value(store.stats()),
            Self::Postgres(store) => serde_json::to_value(store.stats()),
        };
        stats.unwrap_or_default()
    }
}

/// The server's metrics: a registry of its own, the request table the
/// [`RequestCounter`] fills, and the sources read at scrape time. Cheap to
/// clone; clones share everything.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    sources: Arc<Sources>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Metrics with nothing to read yet: the stack adds the requests and the
    /// service it is built over (`app::build_stack`), the binary its
    /// store ([`Metrics::watch_store`]).
    pub fn new() -> Self {
        let sources = Arc::new(Sources::default());
        let mut registry = Registry::with_prefix("pointlock");
        registry.register_collector(Box::new(Arc::clone(&sources)));
        Self {
            registry: Arc::new(registry),
            sources,
        }
    }

    /// Read `store`'s own statistics at each scrape (replacing any store before).
    pub fn watch_store(&self, store: StoreSource) {
        *self
            .sources
            .store
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(store);
    }

    /// Read `service`'s lock and commit conflicts at each scrape (replacing any
    /// service before). `app::build_stack` calls it with its service.
    pub fn watch_service(&self, service: Service) {
        *self
            .sources
            .service
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(service);
    }

    /// Read the stack's in-flight count and refusals at each scrape (replacing
    /// any before). `app::build_stack` calls it with its bound.
    pub fn watch_in_flight(&self, in_flight: InFlight) {
        *self
            .sources
            .in_flight
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(in_flight);
    }

    /// The request counter. `routes` are the route templates (the
    /// `route` labels) and `route_of` gives a path's position among them (the
    /// router's: `routes::ROUTE_TEMPLATES` and
    /// `routes::route_index`); a position out of range counts as the
    /// last route. The table is made by the first call; later calls share it.
    pub fn request_counter(
        &self,
        routes: &'static [&'static str],
        route_of: fn(&str) -> usize,
    ) -> RequestCounter {
        let table = self
            .sources
            .http
            .get_or_init(|| Arc::new(HttpTable::new(routes)));
        RequestCounter::new(Arc::clone(table), route_of)
    }

    /// Every family, in the OpenMetrics text format, ending with `# EOF`.
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// What a scrape reads: the collector of every family but the registered counters.
#[derive(Default)]
struct Sources {
    http: OnceLock<Arc<HttpTable>>,
    service: RwLock<Option<Service>>,
    store: RwLock<Option<StoreSource>>,
    in_flight: RwLock<Option<InFlight>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        if let Some(http) = self.http.get() {
            http.encode(&mut encoder)?;
        }
        let in_flight = self
            .in_flight
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(in_flight) = in_flight {
            gauge(
                &mut encoder,
                "http_in_flight",
                "Requests in the stack now (at most --max-in-flight)",
                in_flight.current() as u64,
            )?;
            counter(
                &mut encoder,
                "http_in_flight_refused",
                "Requests refused at once because --max-in-flight were already in the stack \
                 (503 SERVER_OVERLOADED)",
                in_flight.refused(),
            )?;
        }
        let service = self
            .service
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(service) = service {
            encode_lock(&mut encoder, &service.lock().metrics())?;
            counter(
                &mut encoder,
                "service_commit_conflicts",
                "Commits the store refused because the balance had changed since it was read; \
                 each is retried (read again, policy again) up to 8 attempts in all",
                service.commit_conflicts(),
            )?;
            counter(
                &mut encoder,
                "idempotent_replays",
                "Answers replayed for a repeated Idempotency-Key (the change was not applied again)",
                service.idempotent_replays(),
            )?;
            counter(
                &mut encoder,
                "idempotency_keys_swept",
                "Expired Idempotency-Key records removed",
                service.idempotency_keys_swept(),
            )?;
        }
        let store = self
            .store
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match store {
            Some(StoreSource::Sqlite(store)) => encode_sqlite(&mut encoder, &store.stats()),
            Some(StoreSource::Postgres(store)) => encode_postgres(&mut encoder, &store.stats()),
            None => Ok(()),
        }
    }
}

/// The store error kinds, as `kind` labels, in the order they are counted.
const STORE_ERROR_KINDS: [(StoreErrorKind, &str); 5] = [
    (StoreErrorKind::Failed, "failed"),
    (StoreErrorKind::Conflict, "conflict"),
    (StoreErrorKind::Unavailable, "unavailable"),
    (StoreErrorKind::Overloaded, "overloaded"),
    (StoreErrorKind::OutcomeUnknown, "outcome_unknown"),
];

fn encode_lock(encoder: &mut DescriptorEncoder<'_>, lock: &LockMetrics) -> fmt::Result {
    gauge(
        encoder,
        "lock_keys_held",
        "Users whose lock is held now (by a request, or handed to the next in its queue)",
        lock.keys as u64,
    )?;
    gauge(
        encoder,
        "lock_waiters",
        "Requests queued behind a holder now",
        lock.waiters as u64,
    )?;
    counter(
        encoder,
        "lock_acquisitions",
        "User locks granted",
        lock.acquisitions,
    )?;
    counter(
        encoder,
        "lock_contended_acquisitions",
        "User locks granted after waiting in the user's queue",
        lock.contended,
    )?;
    counter(
        encoder,
        "lock_timeouts",
        "Lock waits that timed out (answered 503 LOCK_TIMEOUT)",
        lock.timeouts,
    )?;
    counter(
        encoder,
        "lock_cancelled",
        "Lock waits abandoned: timed out or dropped (the client left)",
        lock.cancelled,
    )?;
    counter(
        encoder,
        "lock_queue_full",
        "Requests refused at once because their user's queue was full (503 LOCK_QUEUE_FULL)",
        lock.queue_full,
    )?;
    // The lock counts waits by whole microseconds: a bucket `le` holds waits
    // shorter than `le` + 1 µs.
    let buckets: Vec<(f64, u64)> = WAIT_BUCKETS_MICROS
        .iter()
        .map(|&micros| micros as f64 / 1e6)
        .chain(std::iter::once(f64::INFINITY))
        .zip(lock.wait_histogram.iter().copied())
        .collect();
    histogram(
        encoder,
        "lock_wait",
        "How long contended lock acquisitions waited in their user's queue",
        Some(&Unit::Seconds),
        lock.wait_nanos_total as f64 / 1e9,
        &buckets,
    )
}

fn encode_sqlite(encoder: &mut DescriptorEncoder<'_>, stats: &CommitStats) -> fmt::Result {
    commit_duration(
        encoder,
        "How long each SQLite group-commit batch took, BEGIN IMMEDIATE to the end of its COMMIT (fsync included)",
        &stats.commit_duration,
    )?;
    // batch_ops_log2[i] counts batches of 2^i..2^(i+1)-1 changes; the last, 256 and more.
    let last = stats.batch_ops_log2.len() - 1;
    let buckets: Vec<(f64, u64)> = stats
        .batch_ops_log2
        .iter()
        .enumerate()
        .map(|(i, &count)| {
            let le = if i == last {
                f64::INFINITY
            } else {
                ((2_u64 << i) - 1) as f64
            };
            (le, count)
        })
        .collect();
    histogram(
        encoder,
        "store_commit_batch_changes",
        "Changes per SQLite group-commit batch (one transaction, one fsync)",
        None,
        stats.ops as f64,
        &buckets,
    )?;
    counter(
        encoder,
        "store_conflicts",
        "Changes the store refused by their condition (the balance had changed since it was read)",
        stats.conflicts,
    )?;
    counter(
        encoder,
        "store_batches_retried",
        "SQLite batches that failed in a statement and were retried one change at a time",
        stats.batches_retried,
    )?;
    counter(
        encoder,
        "store_barriers",
        "SQLite, pipelined: answers computed from sequenced state (refusals, replays) held behind a barrier until that state was durable",
        stats.barriers,
    )?;
    gauge(
        encoder,
        "store_failed_stop",
        "1 once a failed COMMIT stopped the SQLite store (changes refused until restart)",
        u64::from(stats.stopped),
    )
}

fn encode_postgres(encoder: &mut DescriptorEncoder<'_>, stats: &PgStats) -> fmt::Result {
    commit_duration(
        encoder,
        "How long each PostgreSQL batch transaction took, BEGIN to COMMIT (not the wait for a connection)",
        &stats.commit_duration,
    )?;
    counter(
        encoder,
        "store_conflicts",
        "Changes the store refused by their condition (the balance had changed since it was read)",
        stats.conflicts,
    )?;
    counter(
        encoder,
        "store_batches",
        "PostgreSQL batch transactions committed",
        stats.batches,
    )?;
    counter(
        encoder,
        "store_batch_retries",
        "PostgreSQL batches rolled back and run again (a deadlock, a serialization failure, a first row made meanwhile)",
        stats.retries,
    )?;
    counter(
        encoder,
        "store_conflict_fallbacks",
        "PostgreSQL batches answered 503 WRITE_CONFLICT after the most attempts",
        stats.fallbacks,
    )?;
    counter(
        encoder,
        "store_overloaded",
        "Requests refused because the store's queue was full (503 STORE_OVERLOADED)",
        stats.overloaded,
    )?;
    gauge(
        encoder,
        "store_queued",
        "Requests queued for PostgreSQL and not yet answered, now",
        stats.queued as u64,
    )?;
    let busy = stats.pool_size.saturating_sub(stats.pool_idle);
    let mut pool = encoder.encode_descriptor(
        "store_pool_connections",
        "PostgreSQL connections open now, idle or busy",
        None,
        MetricType::Gauge,
    )?;
    for (state, count) in [("idle", stats.pool_idle), ("busy", busy)] {
        pool.encode_family(&[("state", state)])?
            .encode_gauge(&(count as u64))?;
    }
    gauge(
        encoder,
        "store_pool_waiters",
        "Requests waiting for a PostgreSQL connection now",
        stats.pool_waiting as u64,
    )
}

fn commit_duration(
    encoder: &mut DescriptorEncoder<'_>,
    help: &str,
    snapshot: &HistogramSnapshot,
) -> fmt::Result {
    histogram(
        encoder,
        "store_commit_duration",
        help,
        Some(&Unit::Seconds),
        snapshot.sum_nanos as f64 / 1e9,
        &duration_buckets(snapshot),
    )
}

/// A duration histogram's buckets as `(le in seconds, count)`, `+Inf` last.
fn duration_buckets(snapshot: &HistogramSnapshot) -> Vec<(f64, u64)> {
    DURATION_BOUNDS_NANOS
        .iter()
        .map(|&nanos| nanos as f64 / 1e9)
        .chain(std::iter::once(f64::INFINITY))
        .zip(snapshot.counts.iter().copied())
        .collect()
}

fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

/// A histogram without labels; `buckets` are `(le, count)`, not cumulative,
/// `+Inf` last. The count is their sum.
fn histogram(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    sum: f64,
    buckets: &[(f64, u64)],
) -> fmt::Result {
    let count = buckets.iter().map(|&(_, count)| count).sum();
    encoder
        .encode_descriptor(name, help, unit, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(sum, count, buckets, None)
}
