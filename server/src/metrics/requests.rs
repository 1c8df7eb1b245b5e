//! The request metrics: [`RequestCounter`] and the table it fills.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use pointlock_core::StoreError;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::{duration_buckets, STORE_ERROR_KINDS};
use crate::error::ServerErrorReport;
use pointlock_store::histogram::{DurationHistogram, HistogramSnapshot};

/// The standard methods, most frequent first; anything else is `OTHER`.
const METHODS: [Method; 9] = [
    Method::GET,
    Method::PATCH,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
    Method::CONNECT,
    Method::TRACE,
];

/// The `method` label of each row group: [`METHODS`], then `OTHER`.
const METHOD_LABELS: [&str; METHODS.len() + 1] = [
    "GET", "PATCH", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

/// The statuses the server answers, each with a slot of its own in every row.
/// Any other status is counted under a mutex (none is expected).
const STATUSES: [u16; 9] = [200, 400, 404, 405, 408, 409, 413, 500, 503];

/// The counts of one (method, route) pair in one shard; aligned so that no
/// two rows share a cache line.
#[derive(Default)]
#[repr(align(128))]
struct Row {
    statuses: [AtomicU64; STATUSES.len()],
    duration: DurationHistogram,
}

/// The most shards a table has (one per core, up to this).
const SHARDS_MAX: usize = 64;

/// The next thread's shard number (each thread takes one on its first request).
static SHARD_NEXT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard number (reduced modulo a table's shard count).
    static SHARD: usize = SHARD_NEXT.fetch_add(1, Relaxed);
}

/// Every (method, route) row, method-major, once per shard; and what does not
/// fit a row.
///
/// Each thread counts into its own shard, so the runtime's workers never write
/// one cache line (a shared counter would bounce between cores on every
/// request); a scrape sums the shards. One shard per core: the table is
/// `cores × methods × routes` rows of 256 bytes (50 KiB on 2 cores).
pub(super) struct HttpTable {
    /// The route templates, as the router names them; the last one also takes
    /// any name not in the list.
    routes: &'static [&'static str],
    /// Rows per shard: `METHOD_LABELS.len() * routes.len()`.
    rows_per_shard: usize,
    /// A power of two.
    shards: usize,
    /// Shard after shard, each `rows_per_shard` rows.
    rows: Box<[Row]>,
    /// Requests answered with a status outside [`STATUSES`], by (row, status).
    other_statuses: Mutex<BTreeMap<(usize, u16), u64>>,
    /// Answers carrying a store error, by [`STORE_ERROR_KINDS`].
    store_errors: [AtomicU64; STORE_ERROR_KINDS.len()],
}

impl HttpTable {
    pub(super) fn new(routes: &'static [&'static str]) -> Self {
        let routes = if routes.is_empty() {
            &["other"]
        } else {
            routes
        };
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let shards = cores.next_power_of_two().min(SHARDS_MAX);
        let rows_per_shard = METHOD_LABELS.len() * routes.len();
        Self {
            routes,
            rows_per_shard,
            shards,
            rows: (0..shards * rows_per_shard)
                .map(|_| Row::default())
                .collect(),
            other_statuses: Mutex::new(BTreeMap::new()),
            store_errors: Default::default(),
        }
    }

    /// The row of `method` on the route at `route` in the list.
    fn row(&self, method: &Method, route: usize) -> usize {
        let method = METHODS
            .iter()
            .position(|m| m == method)
            .unwrap_or(METHODS.len());
        method * self.routes.len() + route.min(self.routes.len() - 1)
    }

    /// Count one answered request of `row`, in this thread's shard.
    fn record<B>(&self, row: usize, response: &Response<B>, elapsed: Duration) {
        let shard = SHARD.with(|shard| *shard) & (self.shards - 1);
        let cells = &self.rows[shard * self.rows_per_shard + row];
        cells.duration.observe(elapsed);
        let status = response.status().as_u16();
        match STATUSES.iter().position(|&s| s == status) {
            Some(slot) => {
                cells.statuses[slot].fetch_add(1, Relaxed);
            }
            None => {
                *self
                    .other_statuses
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry((row, status))
                    .or_default() += 1;
            }
        }
        if response.status().is_server_error() {
            if let Some(report) = response.extensions().get::<ServerErrorReport>() {
                self.count_store_error(report.code);
            }
        }
    }

    fn count_store_error(&self, code: &str) {
        let kind = STORE_ERROR_KINDS
            .iter()
            .position(|&(kind, _)| StoreError::with_kind(kind, String::new()).code() == code);
        if let Some(kind) = kind {
            self.store_errors[kind].fetch_add(1, Relaxed);
        }
    }

    /// Row `index` of every shard.
    fn shards_of(&self, index: usize) -> impl Iterator<Item = &Row> {
        self.rows.iter().skip(index).step_by(self.rows_per_shard)
    }

    /// The labels of row `row` (of any shard): (method, route).
    fn labels(&self, row: usize) -> (&'static str, &'static str) {
        let routes = self.routes.len();
        (METHOD_LABELS[row / routes], self.routes[row % routes])
    }

    /// The request, duration and store-error families.
    pub(super) fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let other_statuses = self
            .other_statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut requests = encoder.encode_descriptor(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            None,
            MetricType::Counter,
        )?;
        let mut code = itoa::Buffer::new();
        for index in 0..self.rows_per_shard {
            let (method, route) = self.labels(index);
            for (slot, &status) in STATUSES.iter().enumerate() {
                let count: u64 = self
                    .shards_of(index)
                    .map(|row| row.statuses[slot].load(Relaxed))
                    .sum();
                if count > 0 {
                    let labels = [
                        ("method", method),
                        ("route", route),
                        ("status", code.format(status)),
                    ];
                    requests
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
                }
            }
        }
        for (&(index, status), &count) in &other_statuses {
            let (method, route) = self.labels(index);
            let labels = [
                ("method", method),
                ("route", route),
                ("status", code.format(status)),
            ];
            requests
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
        }

        let mut durations = encoder.encode_descriptor(
            "http_request_duration",
            "Time from a request entering the server's stack to its response head, by method and route template",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for index in 0..self.rows_per_shard {
            let mut snapshot = HistogramSnapshot::default();
            for row in self.shards_of(index) {
                snapshot.add(&row.duration.snapshot());
            }
            let count = snapshot.count();
            if count > 0 {
                let (method, route) = self.labels(index);
                durations
                    .encode_family(&[("method", method), ("route", route)])?
                    .encode_histogram::<NoLabelSet>(
                        snapshot.sum_nanos as f64 / 1e9,
                        count,
                        &duration_buckets(&snapshot),
                        None,
                    )?;
            }
        }

        let mut errors = encoder.encode_descriptor(
            "store_errors",
            "Requests answered with a store error, by kind (failed, conflict, unavailable, \
             outcome_unknown; GET /ready's 503 included); conflicts the service retried \
             successfully are not errors",
            None,
            MetricType::Counter,
        )?;
        for (count, &(_, kind)) in self.store_errors.iter().zip(&STORE_ERROR_KINDS) {
            errors
                .encode_family(&[("kind", kind)])?
                .encode_counter::<NoLabelSet, _, u64>(&count.load(Relaxed), None)?;
        }
        Ok(())
    }
}

/// Counts and times every request; made by
/// [`Metrics::request_counter`](super::Metrics::request_counter), used by the
/// stack's front layer (`app::FrontLayer`, outermost).
///
/// - **Starts** with [`start`](Self::start), before the inner service's
///   `call`: a request's wait in its user's lock queue is part of its duration.
/// - **Ends** with [`finish`](Self::finish) when the response head is ready:
///   the request is counted under its status and its duration observed. A
///   request whose future is dropped before that (the client left) is not
///   counted.
/// - **Bounded labels**: the route is the router's template of the path (a
///   function given here, `routes::route_index` in the server, names its
///   position in the router's list), never the raw path; methods outside the
///   nine standard ones count as `OTHER`.
/// - **Cost**: the row of a (method, route) pair is found in `start` without
///   allocating or hashing; at the end, one clock read, one relaxed atomic add
///   for the status (the common ones have a fixed slot; any other status takes
///   a mutex) and two for the duration histogram. Measured in
///   docs/performance.md.
///
/// Store errors by kind are counted here too: a 5xx answer carries its error
/// code ([`ServerErrorReport`]), and the codes of the four store error kinds are
/// known; nothing is looked at for other statuses.
#[derive(Clone)]
pub struct RequestCounter {
    table: Arc<HttpTable>,
    route_of: fn(&str) -> usize,
}

/// A request being counted: its row and when it started.
#[derive(Debug)]
pub struct Started {
    row: usize,
    at: Instant,
}

impl RequestCounter {
    pub(super) fn new(table: Arc<HttpTable>, route_of: fn(&str) -> usize) -> Self {
        Self { table, route_of }
    }

    /// A request enters the stack.
    pub fn start<B>(&self, req: &Request<B>) -> Started {
        Started {
            row: self
                .table
                .row(req.method(), (self.route_of)(req.uri().path())),
            at: Instant::now(),
        }
    }

    /// The request `started` is answered with `response`.
    pub fn finish<B>(&self, started: Started, response: &Response<B>) {
        self.table
            .record(started.row, response, started.at.elapsed());
    }
}

impl std::fmt::Debug for RequestCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestCounter").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up_over_the_shards() {
        let table = Arc::new(HttpTable::new(&["/a", "other"]));
        let row = table.row(&Method::PATCH, 0);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let table = Arc::clone(&table);
                std::thread::spawn(move || {
                    for _ in 0..1_000 {
                        table.record(row, &Response::new(()), Duration::from_micros(20));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let ok: u64 = table
            .shards_of(row)
            .map(|cells| cells.statuses[0].load(Relaxed))
            .sum();
        assert_eq!(ok, 4_000);
        assert_eq!(table.shards_of(row).count(), table.shards);
        let mut durations = HistogramSnapshot::default();
        for cells in table.shards_of(row) {
            durations.add(&cells.duration.snapshot());
        }
        assert_eq!((durations.count(), durations.counts[0]), (4_000, 4_000));
        assert_eq!(table.labels(row), ("PATCH", "/a"));
        // Unknown routes and methods land in the last row of their kind.
        let other = table.row(&Method::from_bytes(b"BREW").unwrap(), 7);
        assert_eq!(table.labels(other), ("OTHER", "other"));
    }
}
