//! `GET /metrics` over real HTTP: exact counts after known traffic, bounded
//! labels whatever the number of users, lock contention, and text that a
//! scraper accepts (the strict reader `pointlock::server::metrics::text`).

mod common;

use std::sync::Arc;

use std::time::Duration;

use common::{pg_support, postgres_skipped, ProbeStore, TestServer};
use http::StatusCode;
use pointlock::core::{KeyedLock, PointService, PointStore, Policy};
use pointlock::server::app::{build_app, serve};
use pointlock::server::clock::SystemClock;
use pointlock::server::metrics::text::{parse, Exposition};
use pointlock::server::metrics::{Metrics, StoreSource, CONTENT_TYPE};
use pointlock::server::AppOptions;
use pointlock::store::{PostgresOptions, PostgresStore};
use tokio::sync::Semaphore;

fn with_metrics() -> AppOptions {
    AppOptions {
        metrics: Some(Metrics::new()),
        ..AppOptions::default()
    }
}

/// `GET /metrics`: checked for its type and read strictly; also the raw text.
async fn scrape(server: &TestServer) -> (Exposition, String) {
    let (status, headers, text) = server.get_text("/metrics").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(headers["content-type"], CONTENT_TYPE);
    let read = parse(&text).unwrap_or_else(|error| panic!("{error}\n{text}"));
    (read, text)
}

fn value(read: &Exposition, series: &str) -> f64 {
    read.value(series)
        .unwrap_or_else(|| panic!("no series {series}: {:#?}", read.samples))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_a_409_and_a_404_are_counted_with_their_route_template_and_status() {
    let server = TestServer::start(ProbeStore::new(0), with_metrics()).await;
    for _ in 0..3 {
        assert_eq!(server.charge(41, 100).await.status, StatusCode::OK);
    }
    assert_eq!(
        server.use_points(41, 1_000).await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        server.get("/point/41/nothing").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(server.get("/point/41").await.status, StatusCode::OK);

    let (read, text) = scrape(&server).await;
    assert!(
        text.contains(
            "pointlock_http_requests_total{method=\"PATCH\",route=\"/point/{id}/charge\",status=\"200\"} 3\n"
        ),
        "{text}"
    );
    assert_eq!(
        value(
            &read,
            r#"pointlock_http_requests_total{method="PATCH",route="/point/{id}/use",status="409"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &read,
            r#"pointlock_http_requests_total{method="GET",route="other",status="404"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &read,
            r#"pointlock_http_requests_total{method="GET",route="/point/{id}",status="200"}"#
        ),
        1.0
    );
    assert_eq!(read.named("pointlock_http_requests_total").count(), 4);
    assert_eq!(
        value(
            &read,
            r#"pointlock_http_request_duration_seconds_count{method="PATCH",route="/point/{id}/charge"}"#
        ),
        3.0
    );
    assert_eq!(value(&read, "pointlock_lock_acquisitions_total"), 6.0);
    for series in read.samples.keys() {
        assert!(!series.contains("41"), "a user id in {series}");
    }

    // The first scrape is counted once answered.
    let (read, _) = scrape(&server).await;
    assert_eq!(
        value(
            &read,
            r#"pointlock_http_requests_total{method="GET",route="/metrics",status="200"}"#
        ),
        1.0
    );
    let (status, _, _) = server.get_text("/metrics?x=1").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a query string is not part of the route"
    );
    let reply = server.send(http::Method::POST, "/metrics", None).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers["allow"], "GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_users_add_no_series() {
    let server = Arc::new(TestServer::start(ProbeStore::new(0), with_metrics()).await);
    for user in 1..=10 {
        assert_eq!(server.charge(user, 1).await.status, StatusCode::OK);
    }
    scrape(&server).await; // so that the scrape's own series exist from here on
    let (before, _) = scrape(&server).await;
    for chunk in (11..=1_000_u64).collect::<Vec<_>>().chunks(50) {
        let charges: Vec<_> = chunk
            .iter()
            .map(|&user| server.spawn_charge(user, 1))
            .collect();
        for charge in charges {
            assert_eq!(charge.await.unwrap().status, StatusCode::OK);
        }
    }
    let (after, text) = scrape(&server).await;
    assert_eq!(
        before.samples.keys().collect::<Vec<_>>(),
        after.samples.keys().collect::<Vec<_>>(),
        "the series after 10 users and after 1,000"
    );
    assert!(
        after.samples.len() < 200,
        "{} samples: {text}",
        after.samples.len()
    );
    assert_eq!(
        value(
            &after,
            r#"pointlock_http_requests_total{method="PATCH",route="/point/{id}/charge",status="200"}"#
        ),
        1_000.0
    );
    for series in after.samples.keys() {
        assert!(
            !series.contains("/point/") || series.contains("/point/{id}"),
            "a raw path in {series}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_queued_behind_another_shows_in_contended_and_the_wait_histogram() {
    let gate = Arc::new(Semaphore::new(0));
    let store = ProbeStore::new(0).with_gate(Arc::clone(&gate));
    let mut entered = store.entered();
    let lock = KeyedLock::with_clock(Arc::new(SystemClock::default()));
    let server = Arc::new(TestServer::start_with_lock(store, with_metrics(), lock).await);
    let first = server.spawn_charge(7, 10);
    // The first charge holds user 7's lock inside the store, at the gate.
    assert_eq!(entered.recv().await.map(|user| user.get()), Some(7));
    let second = server.spawn_charge(7, 10);
    server
        .wait_for_lock("the second charge queued", |lock| lock.waiters() == 1)
        .await;
    let (during, _) = scrape(&server).await;
    assert_eq!(value(&during, "pointlock_lock_waiters"), 1.0);
    assert_eq!(value(&during, "pointlock_lock_keys_held"), 1.0);
    gate.add_permits(2);
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    assert_eq!(second.await.unwrap().status, StatusCode::OK);

    let (after, _) = scrape(&server).await;
    assert_eq!(
        value(&after, "pointlock_lock_contended_acquisitions_total"),
        1.0
    );
    assert_eq!(value(&after, "pointlock_lock_acquisitions_total"), 2.0);
    assert_eq!(value(&after, "pointlock_lock_wait_seconds_count"), 1.0);
    assert!(value(&after, "pointlock_lock_wait_seconds_sum") > 0.0);
    assert_eq!(value(&after, "pointlock_lock_waiters"), 0.0);
    assert_eq!(value(&after, "pointlock_lock_keys_held"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_metrics_there_is_no_route() {
    let options = AppOptions {
        metrics: None,
        ..AppOptions::default()
    };
    let server = TestServer::start(ProbeStore::new(0), options).await;
    assert_eq!(server.get("/metrics").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_the_postgresql_store_s_commits_and_pool_are_read_from_its_stats() {
    if postgres_skipped() {
        return;
    }
    let db = pg_support::TestDatabase::create().await;
    let store = PostgresStore::connect(db.url(), PostgresOptions::default())
        .await
        .expect("connect");
    let clock = Arc::new(SystemClock::default());
    let service = Arc::new(PointService::with_lock(
        Arc::new(store.clone()) as Arc<dyn PointStore>,
        Policy::default(),
        clock.clone(),
        KeyedLock::with_clock(clock),
    ));
    let metrics = Metrics::new();
    metrics.watch_store(StoreSource::Postgres(store.clone()));
    let options = AppOptions {
        metrics: Some(metrics.clone()),
        ..AppOptions::default()
    };
    let app = build_app(service, &options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(serve(
        listener,
        app,
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));
    let client = plain_client();
    for _ in 0..2 {
        let (status, body) = client.send("PATCH", addr, "/point/5/charge", "3").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let text = metrics.render().unwrap();
    let read = parse(&text).unwrap_or_else(|error| panic!("{error}\n{text}"));
    assert_eq!(
        value(&read, "pointlock_store_commit_duration_seconds_count"),
        2.0
    );
    assert!(value(&read, "pointlock_store_commit_duration_seconds_sum") > 0.0);
    assert_eq!(value(&read, "pointlock_store_conflicts_total"), 0.0);
    assert_eq!(value(&read, "pointlock_store_pool_waiters"), 0.0);
    let idle = value(&read, r#"pointlock_store_pool_connections{state="idle"}"#);
    let busy = value(&read, r#"pointlock_store_pool_connections{state="busy"}"#);
    assert!(idle + busy >= 1.0, "a connection is open: {idle} + {busy}");
    assert_eq!(
        value(&read, r#"pointlock_store_errors_total{kind="unavailable"}"#),
        0.0
    );
    assert!(
        read.named("pointlock_store_commit_batch_changes_count")
            .next()
            .is_none(),
        "no batches on PostgreSQL"
    );
    let stats = StoreSource::Postgres(store).stats_json();
    assert_eq!(stats["commits"], 2, "{stats}");
    let _ = stop.send(());
    served.await.unwrap().unwrap();
}

/// A plain hyper client for the test above (the harness's server is not used).
fn plain_client() -> PlainClient {
    PlainClient(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http(),
    )
}

struct PlainClient(
    hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
);

impl PlainClient {
    async fn send(
        &self,
        method: &str,
        addr: std::net::SocketAddr,
        path: &str,
        body: &'static str,
    ) -> (StatusCode, String) {
        use http_body_util::BodyExt;
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                body.as_bytes(),
            )))
            .unwrap();
        let response = self.0.request(request).await.expect("answered");
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }
}
