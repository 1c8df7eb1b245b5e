//! The SQLite store's families over the wallet's own router and lock layer,
//! through a failed COMMIT: the store's fault injection is private to this
//! crate, so this test is here rather than with the other metrics tests of the
//! whole stack (`tests/metrics_stack.rs`, which read every scrape with the
//! strict OpenMetrics reader; the same families are read strictly there).
//! Here, under `app`, because it builds the whole stack: the router and the
//! metrics layer both (a test module under `metrics` would make the metrics
//! module reach up to the routes).

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use pointlock_core::{KeyedLock, PointService, PointStore, Policy, UserId};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

use crate::clock::SystemClock;
use crate::error::refusal_response;
use crate::metrics::*;
use crate::routes::SharedService as Service;
use crate::routes::{route_index, user_key, Router, RouterOptions, ROUTE_TEMPLATES};
use keylock::layer::{KeyDecision, KeyedLockBody, KeyedLockLayer};
use pointlock_store::{SqliteOptions, SqliteStore};

type Stack =
    BoxCloneService<Request<Full<Bytes>>, Response<KeyedLockBody<Full<Bytes>>>, Infallible>;

/// The wallet's router behind its lock layer and the metrics layer, as the
/// server stacks them (without the middleware that needs hyper's body type).
struct Fixture {
    metrics: Metrics,
    stack: Stack,
}

impl Fixture {
    fn new(store: Arc<dyn PointStore>) -> Self {
        let clock = Arc::new(SystemClock::default());
        let lock = KeyedLock::with_clock(clock.clone());
        let service: Service = Arc::new(PointService::with_lock(
            store,
            Policy::default(),
            clock,
            lock,
        ));
        let metrics = Metrics::new();
        metrics.watch_service(Arc::clone(&service));
        let router = Router::new(
            Arc::clone(&service),
            RouterOptions {
                metrics: Some(metrics.clone()),
                ..RouterOptions::default()
            },
        );
        let extract: fn(&Request<Full<Bytes>>) -> KeyDecision<UserId> = user_key;
        let lock_layer =
            KeyedLockLayer::new(service.lock().clone(), extract).on_refusal(refusal_response);
        let stack = ServiceBuilder::new()
            .layer(metrics.layer(&ROUTE_TEMPLATES, route_index))
            .layer(lock_layer)
            .service(router);
        Self {
            metrics,
            stack: BoxCloneService::new(stack),
        }
    }

    /// `method path` with `body`; the answer's status and body.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: &'static str,
    ) -> impl Future<Output = (StatusCode, Bytes)> + 'static {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("a valid request");
        let stack = self.stack.clone();
        async move {
            let response = stack.oneshot(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }
    }

    async fn status(&self, method: &str, path: &str, body: &'static str) -> StatusCode {
        self.send(method, path, body).await.0
    }

    /// The metrics' text (not counting a scrape request).
    fn scrape(&self) -> String {
        self.metrics.render().expect("the metrics encode")
    }
}

/// The value of the sample written exactly as `series` in `text`.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_store_s_batches_commits_and_failed_stop_are_read_from_its_stats() {
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let options = SqliteOptions {
        fail_commits: Some(Arc::clone(&fail)),
        ..SqliteOptions::default()
    };
    let sqlite = Arc::new(SqliteStore::open(dir.path().join("p.db"), options).unwrap());
    let fixture = Fixture::new(sqlite.clone());
    let source = StoreSource::Sqlite(Arc::clone(&sqlite));
    fixture.metrics.watch_store(source.clone());
    for _ in 0..3 {
        assert_eq!(
            fixture.status("PATCH", "/point/9/charge", "2").await,
            StatusCode::OK
        );
    }
    let scrape = fixture.scrape();
    // One user, one request at a time: three batches of one change.
    assert_eq!(
        value(&scrape, "pointlock_store_commit_batch_changes_count"),
        3.0
    );
    assert_eq!(
        value(&scrape, "pointlock_store_commit_batch_changes_sum"),
        3.0
    );
    assert_eq!(
        value(
            &scrape,
            r#"pointlock_store_commit_batch_changes_bucket{le="1.0"}"#
        ),
        3.0
    );
    assert_eq!(
        value(&scrape, "pointlock_store_commit_duration_seconds_count"),
        3.0
    );
    assert!(value(&scrape, "pointlock_store_commit_duration_seconds_sum") > 0.0);
    assert_eq!(value(&scrape, "pointlock_store_failed_stop"), 0.0);
    assert_eq!(value(&scrape, "pointlock_store_conflicts_total"), 0.0);

    // A failed COMMIT: outcome unknown, then the store refuses changes.
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        fixture.status("PATCH", "/point/9/charge", "2").await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        fixture.status("PATCH", "/point/9/charge", "2").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let scrape = fixture.scrape();
    assert_eq!(value(&scrape, "pointlock_store_failed_stop"), 1.0);
    assert_eq!(
        value(
            &scrape,
            r#"pointlock_store_errors_total{kind="outcome_unknown"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            r#"pointlock_store_errors_total{kind="unavailable"}"#
        ),
        1.0
    );

    // GET /stats reads the same statistics: the same batch count.
    let stats = source.stats_json();
    assert_eq!(stats["batches"], 4, "{stats}");
    assert_eq!(
        value(&scrape, "pointlock_store_commit_batch_changes_count"),
        4.0
    );
    assert_eq!(
        value(&scrape, "pointlock_store_commit_duration_seconds_count"),
        4.0
    );
    assert_eq!(
        stats["commitDuration"]["counts"].as_array().unwrap().len(),
        18,
        "{stats}"
    );
}
