//! The metrics over the wallet's own router and lock layer, without HTTP:
//! exact counts after known traffic, bounded labels, the lock and store
//! families, `GET /metrics`. Every scrape is read with the strict OpenMetrics
//! reader (`tests/support/openmetrics.rs`); a failed SQLite COMMIT is the
//! store's test-util fault (`SqliteOptions::fail_commits`).

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use pointlock::core::{
    BoxFuture, Change, Committed, KeyedLock, MemoryStore, PointHistory, PointService, PointStore,
    Policy, StoreError, StoreErrorKind, UserId, UserPoint,
};
use pointlock::keylock::layer::{KeyDecision, KeyedLockBody, KeyedLockLayer};
use pointlock::server::app::{AppBody, FrontLayer};
use pointlock::server::clock::SystemClock;
use pointlock::server::error::refusal_response;
use pointlock::server::metrics::{Metrics, StoreSource, CONTENT_TYPE};
use pointlock::server::middleware::in_flight::InFlight;
use pointlock::server::routes::SharedService as Service;
use pointlock::server::routes::{route_index, user_key, Router, RouterOptions, ROUTE_TEMPLATES};
use pointlock::store::{SqliteOptions, SqliteStore};
use support::openmetrics::{parse, Exposition};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

type Stack = BoxCloneService<Request<Full<Bytes>>, Response<AppBody>, Infallible>;

/// The wallet's router behind its lock layer and the front layer that counts
/// requests, as the server stacks them (without the middleware that needs
/// hyper's body type).
struct Fixture {
    metrics: Metrics,
    service: Service,
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
        let front = FrontLayer::new(
            InFlight::new(1_024),
            16 * 1024,
            std::time::Duration::from_secs(10),
            4 * 1024,
        )
        .metrics(Some(metrics.request_counter(&ROUTE_TEMPLATES, route_index)));
        let boxed = |res: Response<KeyedLockBody<Full<Bytes>>>| {
            res.map(|body| AppBody::new(body.map_err(|never| match never {})))
        };
        let stack = ServiceBuilder::new()
            .layer(front)
            .map_response(boxed)
            .layer(lock_layer)
            .service(router);
        Self {
            metrics,
            service,
            stack: BoxCloneService::new(stack),
        }
    }

    fn memory() -> Self {
        Self::new(Arc::new(MemoryStore::new()))
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

    /// The metrics as a scraper reads them (not counting a scrape request).
    fn scrape(&self) -> Exposition {
        let text = self.metrics.render().expect("the metrics encode");
        parse(&text).unwrap_or_else(|error| panic!("{error}\n{text}"))
    }
}

fn value(scrape: &Exposition, series: &str) -> f64 {
    scrape
        .value(series)
        .unwrap_or_else(|| panic!("no series {series}: {:#?}", scrape.samples))
}

#[tokio::test]
async fn known_traffic_is_counted_exactly_by_method_route_template_and_status() {
    let fixture = Fixture::memory();
    for _ in 0..3 {
        assert_eq!(
            fixture.status("PATCH", "/point/7/charge", "5").await,
            StatusCode::OK
        );
    }
    assert_eq!(
        fixture.status("PATCH", "/point/7/use", "100").await,
        StatusCode::CONFLICT
    );
    assert_eq!(fixture.status("GET", "/point/7", "").await, StatusCode::OK);
    assert_eq!(
        fixture.status("GET", "/point/abc", "").await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        fixture.status("GET", "/nowhere/7", "").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        fixture.status("DELETE", "/point/7", "").await,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        fixture.status("BREW", "/health", "").await,
        StatusCode::METHOD_NOT_ALLOWED
    );

    let scrape = fixture.scrape();
    let requests = |labels: &str| {
        value(
            &scrape,
            &format!("pointlock_http_requests_total{{{labels}}}"),
        )
    };
    assert_eq!(
        requests(r#"method="PATCH",route="/point/{id}/charge",status="200""#),
        3.0
    );
    assert_eq!(
        requests(r#"method="PATCH",route="/point/{id}/use",status="409""#),
        1.0
    );
    assert_eq!(
        requests(r#"method="GET",route="/point/{id}",status="200""#),
        1.0
    );
    assert_eq!(
        requests(r#"method="GET",route="/point/{id}",status="400""#),
        1.0
    );
    assert_eq!(requests(r#"method="GET",route="other",status="404""#), 1.0);
    assert_eq!(
        requests(r#"method="DELETE",route="/point/{id}",status="405""#),
        1.0
    );
    assert_eq!(
        requests(r#"method="OTHER",route="/health",status="405""#),
        1.0
    );
    assert_eq!(
        scrape.named("pointlock_http_requests_total").count(),
        7,
        "nothing else"
    );

    let durations = r#"pointlock_http_request_duration_seconds_count{method="PATCH",route="/point/{id}/charge"}"#;
    assert_eq!(value(&scrape, durations), 3.0);
    let sum =
        r#"pointlock_http_request_duration_seconds_sum{method="PATCH",route="/point/{id}/charge"}"#;
    assert!(value(&scrape, sum) > 0.0);
    assert_eq!(
        scrape.units["pointlock_http_request_duration_seconds"],
        "seconds"
    );

    // The lock and the service, read at scrape time: six requests locked a user
    // (the 400 was refused before any lock), none waited.
    assert_eq!(value(&scrape, "pointlock_lock_acquisitions_total"), 6.0);
    assert_eq!(
        value(&scrape, "pointlock_lock_contended_acquisitions_total"),
        0.0
    );
    assert_eq!(value(&scrape, "pointlock_lock_keys_held"), 0.0);
    assert_eq!(
        value(&scrape, "pointlock_service_commit_conflicts_total"),
        0.0
    );
    for kind in ["failed", "conflict", "unavailable", "outcome_unknown"] {
        let series = format!("pointlock_store_errors_total{{kind=\"{kind}\"}}");
        assert_eq!(value(&scrape, &series), 0.0, "{series}");
    }
}

#[tokio::test]
async fn user_ids_never_become_labels() {
    let fixture = Fixture::memory();
    assert_eq!(
        fixture.status("PATCH", "/point/1/charge", "1").await,
        StatusCode::OK
    );
    let after_one = fixture.scrape();
    for user in 2..=1_000 {
        let path = format!("/point/{user}/charge");
        assert_eq!(fixture.status("PATCH", &path, "1").await, StatusCode::OK);
    }
    let after_thousand = fixture.scrape();
    // The same series as after one user: only the counts moved.
    assert_eq!(
        after_one.samples.keys().collect::<Vec<_>>(),
        after_thousand.samples.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        value(
            &after_thousand,
            r#"pointlock_http_requests_total{method="PATCH",route="/point/{id}/charge",status="200"}"#
        ),
        1_000.0
    );
    for series in after_thousand.samples.keys() {
        assert!(
            !series.contains("/point/") || series.contains("/point/{id}"),
            "a raw path in {series}"
        );
    }
    assert_eq!(
        value(&after_thousand, "pointlock_lock_acquisitions_total"),
        1_000.0
    );
}

#[tokio::test]
async fn a_request_that_waited_for_its_user_shows_in_contended_and_the_wait_histogram() {
    let fixture = Fixture::memory();
    let user = UserId::new(5).unwrap();
    let held = fixture.service.lock().lock(user).await;
    let queued = tokio::spawn(fixture.send("PATCH", "/point/5/charge", "5"));
    // The deterministic signal: the request is queued behind the holder.
    for _ in 0..10_000 {
        if fixture.service.lock().waiters() == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let during = fixture.scrape();
    assert_eq!(value(&during, "pointlock_lock_waiters"), 1.0);
    assert_eq!(value(&during, "pointlock_lock_keys_held"), 1.0);
    drop(held);
    assert_eq!(queued.await.unwrap().0, StatusCode::OK);

    let after = fixture.scrape();
    assert_eq!(
        value(&after, "pointlock_lock_contended_acquisitions_total"),
        1.0
    );
    assert_eq!(value(&after, "pointlock_lock_acquisitions_total"), 2.0);
    assert_eq!(value(&after, "pointlock_lock_wait_seconds_count"), 1.0);
    assert!(value(&after, "pointlock_lock_wait_seconds_sum") > 0.0);
    assert_eq!(
        value(&after, r#"pointlock_lock_wait_seconds_bucket{le="+Inf"}"#),
        1.0
    );
    assert_eq!(value(&after, "pointlock_lock_waiters"), 0.0);
    assert_eq!(value(&after, "pointlock_lock_keys_held"), 0.0);
}

/// A memory store whose commits fail with a chosen kind.
struct FailingStore {
    inner: MemoryStore,
    fail: Mutex<Option<StoreErrorKind>>,
}

impl PointStore for FailingStore {
    fn idempotency_record(
        &self,
        id: UserId,
        key: &pointlock::core::IdempotencyKey,
    ) -> BoxFuture<'_, Result<Option<pointlock::core::IdempotencyRecord>, StoreError>> {
        self.inner.idempotency_record(id, key)
    }

    fn sweep_idempotency(
        &self,
        expired_before: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.inner.sweep_idempotency(expired_before, limit)
    }

    fn user_point(&self, id: UserId) -> BoxFuture<'_, Result<Option<UserPoint>, StoreError>> {
        self.inner.user_point(id)
    }

    fn histories(&self, id: UserId) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
        self.inner.histories(id)
    }

    fn commit(&self, change: Change) -> BoxFuture<'_, Result<Committed, StoreError>> {
        match *self.fail.lock().unwrap() {
            Some(kind) => Box::pin(std::future::ready(Err(StoreError::with_kind(
                kind, "injected",
            )))),
            None => self.inner.commit(change),
        }
    }
}

#[tokio::test]
async fn store_errors_are_counted_by_kind_and_retried_conflicts_by_the_service() {
    let store = Arc::new(FailingStore {
        inner: MemoryStore::new(),
        fail: Mutex::new(None),
    });
    let fixture = Fixture::new(store.clone());
    let cases = [
        (StoreErrorKind::Failed, StatusCode::INTERNAL_SERVER_ERROR),
        (StoreErrorKind::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
        (
            StoreErrorKind::OutcomeUnknown,
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
        // Refused 8 times, then answered WRITE_CONFLICT.
        (StoreErrorKind::Conflict, StatusCode::SERVICE_UNAVAILABLE),
    ];
    for (kind, status) in cases {
        *store.fail.lock().unwrap() = Some(kind);
        assert_eq!(
            fixture.status("PATCH", "/point/3/charge", "1").await,
            status,
            "{kind:?}"
        );
    }
    *store.fail.lock().unwrap() = None;
    assert_eq!(
        fixture.status("PATCH", "/point/3/charge", "1").await,
        StatusCode::OK
    );

    let scrape = fixture.scrape();
    for kind in ["failed", "unavailable", "outcome_unknown", "conflict"] {
        let series = format!("pointlock_store_errors_total{{kind=\"{kind}\"}}");
        assert_eq!(value(&scrape, &series), 1.0, "{series}");
    }
    assert_eq!(
        value(&scrape, "pointlock_service_commit_conflicts_total"),
        f64::from(pointlock::core::service::COMMIT_ATTEMPTS_MAX)
    );
    let requests = |status: &str| {
        value(
            &scrape,
            &format!(
                r#"pointlock_http_requests_total{{method="PATCH",route="/point/{{id}}/charge",status="{status}"}}"#
            ),
        )
    };
    assert_eq!(
        (requests("500"), requests("503"), requests("200")),
        (2.0, 2.0, 1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_store_s_batches_commits_and_failed_stop_are_read_from_its_stats() {
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
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
    for kind in ["failed", "conflict", "unavailable", "outcome_unknown"] {
        let series = format!("pointlock_store_errors_total{{kind=\"{kind}\"}}");
        assert_eq!(value(&scrape, &series), 0.0, "{series}");
    }

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

#[tokio::test]
async fn get_metrics_serves_openmetrics_text_and_nothing_else() {
    let fixture = Fixture::memory();
    assert_eq!(
        fixture.status("PATCH", "/point/1/charge", "1").await,
        StatusCode::OK
    );
    let response = fixture
        .stack
        .clone()
        .oneshot(Request::get("/metrics").body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[http::header::CONTENT_TYPE], CONTENT_TYPE);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = std::str::from_utf8(&body).unwrap();
    let scrape = parse(text).unwrap_or_else(|error| panic!("{error}\n{text}"));
    assert!(scrape.samples.contains_key(
        r#"pointlock_http_requests_total{method="PATCH",route="/point/{id}/charge",status="200"}"#
    ));
    // That scrape is counted once it is answered.
    let series = r#"pointlock_http_requests_total{method="GET",route="/metrics",status="200"}"#;
    assert_eq!(scrape.value(series), None);
    assert_eq!(value(&fixture.scrape(), series), 1.0);

    let (status, body) = fixture.send("POST", "/metrics", "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body:?}");

    // A router without metrics has no such route.
    let plain = Router::new(Arc::clone(&fixture.service), RouterOptions::default());
    let response = plain
        .oneshot(
            Request::get("/metrics")
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn replays_and_swept_keys_are_the_service_s_counters() {
    let fixture = Fixture::new(Arc::new(MemoryStore::new()));
    let held = Arc::new(fixture.service.lock().lock(UserId::new(1).unwrap()).await);
    let key = pointlock::core::IdempotencyKey::new("k").unwrap();
    let one = pointlock::core::Amount::new(1).unwrap();
    for _ in 0..3 {
        fixture
            .service
            .apply(
                Arc::clone(&held),
                pointlock::core::TransactionType::Charge,
                one,
                Some(&key),
            )
            .await
            .unwrap();
    }
    drop(held);
    let text = fixture.metrics.render().unwrap();
    let scrape = parse(&text).unwrap_or_else(|error| panic!("{error}\n{text}"));
    assert_eq!(value(&scrape, "pointlock_idempotent_replays_total"), 2.0);
    assert_eq!(
        value(&scrape, "pointlock_idempotency_keys_swept_total"),
        0.0
    );
    assert_eq!(scrape.types["pointlock_idempotent_replays"], "counter");
}

#[tokio::test]
async fn metrics_are_independent_registries() {
    let one = Fixture::new(Arc::new(MemoryStore::new()));
    let two = Metrics::new();
    let held = Arc::new(one.service.lock().lock(UserId::new(1).unwrap()).await);
    let five = pointlock::core::Amount::new(5).unwrap();
    one.service.charge(Arc::clone(&held), five).await.unwrap();
    drop(held);
    assert!(one
        .metrics
        .render()
        .unwrap()
        .contains("pointlock_lock_acquisitions_total 1\n"));
    assert_eq!(two.render().unwrap(), "# EOF\n");
}
