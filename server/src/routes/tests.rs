use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use pointlock_core::{KeyedLock, MemoryStore, PointService, PointStore, Policy, UserId};
use tower_service::Service;

use super::*;
use crate::clock::SystemClock;
use keylock::layer::KeyDecision;
use pointlock_store::{SqliteOptions, SqliteStore};

/// `GET /stats` (and a charge of user 1 first, if `charge`) through the
/// router alone; the JSON of the stats.
async fn stats_after(
    store: Arc<dyn PointStore>,
    options: RouterOptions,
    charge: bool,
) -> serde_json::Value {
    let service = Arc::new(PointService::with_lock(
        store,
        Policy::default(),
        Arc::new(SystemClock::default()),
        KeyedLock::new(),
    ));
    let mut router = Router::new(service, options);
    let mut call = |method: Method, path: &str, body: &'static str| {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("a valid request");
        router.call(req)
    };
    if charge {
        let res = call(Method::PATCH, "/point/1/charge", "5").await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = call(Method::GET, "/stats", "").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn stats_store_is_null_on_the_memory_store_and_lock_is_unchanged() {
    let stats = stats_after(Arc::new(MemoryStore::new()), RouterOptions::default(), true).await;
    assert!(stats["store"].is_null(), "{stats}");
    assert_eq!(stats["service"]["commitConflicts"], 0, "{stats}");
    assert_eq!(stats["lock"]["keys"], 0, "{stats}");
    assert_eq!(stats["lock"]["acquisitions"], 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_store_counts_sqlite_batches_and_ops_in_camel_case() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = |name: &str| {
        let store =
            Arc::new(SqliteStore::open(dir.path().join(name), SqliteOptions::default()).unwrap());
        let read = Arc::clone(&store);
        let options = RouterOptions {
            store_stats: Some(StoreStats::new(move || {
                serde_json::to_value(read.stats()).unwrap_or_default()
            })),
            ..RouterOptions::default()
        };
        (store, options)
    };
    let (store, options) = sqlite("p.db");
    let before = stats_after(store, options, false).await;
    assert_eq!(before["store"]["batches"], 0, "{before}");
    let (store, options) = sqlite("q.db");
    let stats = stats_after(store, options, true).await;
    let store = &stats["store"];
    assert_eq!(
        (&store["batches"], &store["ops"]),
        (&1.into(), &1.into()),
        "{stats}"
    );
    assert_eq!(store["batchOpsMax"], 1, "{stats}");
    assert_eq!(
        (&store["batchesRetried"], &store["opsFailed"]),
        (&0.into(), &0.into())
    );
    assert_eq!(
        (&store["conflicts"], &store["stopped"]),
        (&0.into(), &false.into())
    );
    assert_eq!(store["batchOpsLog2"][0], 1, "{stats}");
    assert_eq!(stats["lock"]["keys"], 0, "{stats}");
}

/// `method path` through the router alone over `store`: status and JSON.
async fn call_router(
    store: Arc<dyn PointStore>,
    method: Method,
    path: &str,
) -> (StatusCode, serde_json::Value) {
    let service = Arc::new(PointService::with_lock(
        store,
        Policy::default(),
        Arc::new(SystemClock::default()),
        KeyedLock::new(),
    ));
    let mut router = Router::new(service, RouterOptions::default());
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = router.call(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_says_whether_the_store_takes_changes() {
    let memory: Arc<dyn PointStore> = Arc::new(MemoryStore::new());
    let (status, body) = call_router(Arc::clone(&memory), Method::GET, "/ready").await;
    assert_eq!((status, &body["status"]), (StatusCode::OK, &"ready".into()));
    let (status, _) = call_router(memory, Method::POST, "/ready").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // A SQLite store that failed stop after a failed COMMIT is not ready.
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let options = SqliteOptions {
        fail_commits: Some(Arc::clone(&fail)),
        ..SqliteOptions::default()
    };
    let sqlite: Arc<dyn PointStore> =
        Arc::new(SqliteStore::open(dir.path().join("p.db"), options).unwrap());
    let (status, _) = call_router(Arc::clone(&sqlite), Method::GET, "/ready").await;
    assert_eq!(status, StatusCode::OK, "ready before the failure");
    let req = Request::builder()
        .method(Method::PATCH)
        .uri("/point/1/charge")
        .body(Full::new(Bytes::from_static(b"5")))
        .unwrap();
    let service = Arc::new(PointService::with_lock(
        Arc::clone(&sqlite),
        Policy::default(),
        Arc::new(SystemClock::default()),
        KeyedLock::new(),
    ));
    let res = Router::new(service, RouterOptions::default())
        .call(req)
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::INTERNAL_SERVER_ERROR,
        "the failed COMMIT"
    );
    let (status, body) = call_router(sqlite, Method::GET, "/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "STORE_UNAVAILABLE", "{body}");
}

#[tokio::test]
async fn a_layer_on_another_lock_does_not_break_mutations() {
    // An embedder put the layer on a lock of its own: its guard is no proof
    // for this service, so the router takes the service's lock itself.
    let service = Arc::new(PointService::with_lock(
        Arc::new(MemoryStore::new()) as Arc<dyn PointStore>,
        Policy::default(),
        Arc::new(SystemClock::default()),
        KeyedLock::new(),
    ));
    let router = Router::new(Arc::clone(&service), RouterOptions::default());
    let mut svc = tower_layer::Layer::layer(
        &keylock::layer::KeyedLockLayer::new(KeyedLock::new(), user_key),
        router,
    );
    let req = Request::builder()
        .method(Method::PATCH)
        .uri("/point/1/charge")
        .body(Full::new(Bytes::from_static(b"7")))
        .unwrap();
    let res = svc.call(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        service.point(UserId::new(1).unwrap()).await.unwrap().point,
        7
    );
    assert!(service.lock().is_empty());
}

#[test]
fn user_key_locks_wallet_paths_rejects_bad_ids_and_passes_the_rest() {
    let req = |path: &str| Request::builder().uri(path).body(()).unwrap();
    let id = UserId::new(12).unwrap();
    assert!(matches!(user_key(&req("/point/12")), KeyDecision::Lock(k) if k == id));
    assert!(matches!(user_key(&req("/point/12/charge")), KeyDecision::Lock(k) if k == id));
    assert!(matches!(user_key(&req("/health")), KeyDecision::Pass));
    for bad in ["/point/abc", "/point/0/charge", "/point/-1", "/point/"] {
        let KeyDecision::Reject(res) = user_key(&req(bad)) else {
            panic!("{bad}: expected a rejection");
        };
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[test]
fn user_segment_finds_the_id() {
    assert_eq!(user_segment("/point/12"), Some("12"));
    assert_eq!(user_segment("/point/12/charge"), Some("12"));
    assert_eq!(user_segment("/point/abc/x/y"), Some("abc"));
    assert_eq!(user_segment("/point/"), Some(""));
    assert_eq!(user_segment("/points/1"), None);
    assert_eq!(user_segment("/health"), None);
}

/// How `path` matches the `ROUTES` template `template`: `Some(true)` when it
/// is that route, `Some(false)` when it has its shape but an invalid id.
fn instance_of(template: &str, path: &str) -> Option<bool> {
    let (template, path): (Vec<_>, Vec<_>) =
        (template.split('/').collect(), path.split('/').collect());
    if template.len() != path.len() {
        return None;
    }
    let mut valid = true;
    for (t, p) in template.iter().zip(&path) {
        if *t == "{id}" {
            valid &= p.parse::<UserId>().is_ok();
        } else if t != p {
            return None;
        }
    }
    Some(valid)
}

/// The code of every file of this module (tests left out).
const SOURCES: [&str; 9] = [
    include_str!("../routes.rs"),
    include_str!("table.rs"),
    include_str!("path.rs"),
    include_str!("router.rs"),
    include_str!("wallet.rs"),
    include_str!("ops.rs"),
    include_str!("stats.rs"),
    include_str!("amount.rs"),
    include_str!("idempotency_key.rs"),
];

/// Paths to probe the dispatch with: the routes of `ROUTES`, near misses, and
/// every string literal of this module's code (comments and tests left out)
/// used as a path and as a segment. A route the dispatch matches is named by
/// a literal here, so it is probed whether or not `ROUTES` lists it.
fn probe_paths() -> Vec<String> {
    let literals = SOURCES
        .iter()
        .map(|source| source.split("#[cfg(test)]").next().unwrap_or_default())
        .flat_map(str::lines)
        .filter(|line| !line.trim_start().starts_with("//"))
        .flat_map(|line| line.split('"').skip(1).step_by(2))
        .filter(|lit| {
            !lit.is_empty()
                && lit
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/._-{}".contains(&b))
        })
        .map(|lit| lit.replace("{id}", "1"));
    let mut paths: Vec<String> = ROUTES
        .iter()
        .map(|(_, template)| template.replace("{id}", "1"))
        .collect();
    for lit in literals {
        if lit.starts_with('/') {
            paths.extend([format!("{lit}/"), format!("{lit}/x"), lit]);
        } else {
            paths.extend([
                format!("/{lit}"),
                format!("/point/1/{lit}"),
                format!("/point/x/{lit}"),
            ]);
        }
    }
    paths.extend(
        [
            "/",
            "/point",
            "/point/",
            "/point/1/",
            "/point/0",
            "/POINT/1",
            "/points/1",
        ]
        .map(String::from),
    );
    paths.sort();
    paths.dedup();
    paths
}

/// A router over a memory store with metrics on: `/metrics` is one of the
/// routes (off, it is a 404 like any unknown path).
fn router_with_metrics() -> Router {
    let service = Arc::new(PointService::with_lock(
        Arc::new(MemoryStore::new()) as Arc<dyn PointStore>,
        Policy::default(),
        Arc::new(SystemClock::default()),
        KeyedLock::new(),
    ));
    let options = RouterOptions {
        metrics: Some(crate::metrics::Metrics::new()),
        ..RouterOptions::default()
    };
    Router::new(service, options)
}

#[tokio::test]
async fn routes_lists_exactly_what_the_router_dispatches() {
    let mut router = router_with_metrics();
    let mut listed = ROUTES.to_vec();
    listed.sort_unstable();
    listed.dedup();
    assert_eq!(listed.len(), ROUTES.len(), "ROUTES has a duplicate");
    let probes = probe_paths();
    for (_, template) in ROUTES {
        let path = template.replace("{id}", "1");
        assert!(probes.contains(&path), "{template} is probed");
    }
    assert!(probes.len() > 30, "the literals were found: {probes:?}");
    for path in &probes {
        let allowed: Vec<&str> = ROUTES
            .iter()
            .filter(|(_, template)| instance_of(template, path) == Some(true))
            .map(|(method, _)| *method)
            .collect();
        let bad_id = ROUTES
            .iter()
            .any(|(_, template)| instance_of(template, path) == Some(false));
        for method in [Method::GET, Method::PATCH, Method::POST, Method::DELETE] {
            let req = Request::builder()
                .method(method.clone())
                .uri(path.as_str())
                .body(Full::new(Bytes::from_static(b"1")))
                .unwrap();
            let res = router.call(req).await.unwrap();
            let status = res.status();
            let allow = res.headers().get(http::header::ALLOW).cloned();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            // JSON but for the metrics' text.
            let json = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
            let what = format!("{method} {path}: {status} {}", json["code"]);
            if allowed.contains(&method.as_str()) {
                assert!(
                    status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                    "a listed route answers: {what}"
                );
            } else if !allowed.is_empty() {
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{what}");
                let allow = allow.expect("405 names the method in Allow");
                assert!(
                    allowed.iter().any(|m| allow == *m),
                    "{what}: Allow {allow:?}"
                );
            } else if bad_id {
                assert_eq!(json["code"], "INVALID_USER_ID", "{what}");
            } else {
                assert_eq!(
                    (status, json["code"].as_str()),
                    (StatusCode::NOT_FOUND, Some("NOT_FOUND")),
                    "a path ROUTES does not list is not served: {what}"
                );
            }
        }
    }
}

#[test]
fn route_templates_name_routes_never_ids() {
    let cases = [
        ("/point/12", "/point/{id}"),
        ("/point/abc", "/point/{id}"),
        ("/point/", "/point/{id}"),
        ("/point/12/histories", "/point/{id}/histories"),
        ("/point/9223372036854775807/charge", "/point/{id}/charge"),
        ("/point/0/use", "/point/{id}/use"),
        ("/point/12/unknown", "other"),
        ("/point/12/charge/x", "other"),
        ("/health", "/health"),
        ("/ready", "/ready"),
        ("/stats", "/stats"),
        ("/metrics", "/metrics"),
        ("/openapi.json", "/openapi.json"),
        ("/health/", "other"),
        ("/", "other"),
        ("/points/1", "other"),
    ];
    for (path, template) in cases {
        assert_eq!(route_template(path), template, "{path}");
        assert_eq!(ROUTE_TEMPLATES[route_index(path)], template, "{path}");
    }
    let distinct: std::collections::BTreeSet<_> = ROUTE_TEMPLATES.iter().collect();
    assert_eq!(distinct.len(), ROUTE_TEMPLATES.len());
}

#[tokio::test]
async fn every_fixed_template_is_a_route_the_router_answers() {
    let router = router_with_metrics();
    for path in ROUTE_TEMPLATES.iter().filter(|t| !t.contains('{')) {
        let req = Request::get(*path).body(Full::new(Bytes::new())).unwrap();
        let status = router.clone().call(req).await.unwrap().status();
        let answered = status != StatusCode::NOT_FOUND;
        let expected = *path != "other";
        assert_eq!(answered, expected, "{path}: {status}");
    }
}

#[test]
fn wallet_routes_match_exactly() {
    assert_eq!(Route::of("/point/1"), Some((Route::Point, Some("1"))));
    assert_eq!(
        Route::of("/point/1/histories"),
        Some((Route::Histories, Some("1")))
    );
    assert_eq!(
        Route::of("/point/1/charge"),
        Some((Route::Charge, Some("1")))
    );
    assert_eq!(Route::of("/point/1/use"), Some((Route::Use, Some("1"))));
    assert_eq!(Route::of("/point/1/"), None);
    assert_eq!(Route::of("/point/1/charge/x"), None);
    assert_eq!(Route::of("/point/1/unknown"), None);
}

#[test]
fn the_table_is_the_one_source_of_routes_labels_and_dispatch() {
    for (i, spec) in TABLE.iter().enumerate() {
        assert_eq!(spec.route as usize, i, "{spec:?}");
        assert_eq!(spec.route.spec(), *spec);
        assert_eq!(ROUTES[i], (spec.method, spec.template));
        assert_eq!(ROUTE_TEMPLATES[i], spec.template);
        assert!(["GET", "PATCH"].contains(&spec.method), "{spec:?}");
        // A template names its own route, with `{id}` exactly on the wallet's.
        let (route, id) = Route::of(spec.template).expect("a template is a route");
        assert_eq!(route, spec.route, "{spec:?}");
        let wallet = spec.template.starts_with("/point/{id}");
        assert_eq!(id, wallet.then_some("{id}"), "{spec:?}");
        assert_eq!(spec.template.contains("{id}"), wallet, "{spec:?}");
        assert_eq!(route_index(spec.template), i);
    }
    assert_eq!(ROUTE_TEMPLATES.last(), Some(&OTHER));
    assert_eq!(route_index("/nowhere"), TABLE.len());
}

#[test]
fn template_tails_are_the_runtime_split_of_the_templates() {
    let mut cases: Vec<&'static str> = TABLE.iter().map(|spec| spec.template).collect();
    cases.extend([
        "/point/",
        "/point/x/",
        "/point/x/y/z",
        "/point",
        "/points/x",
        "/",
        "",
    ]);
    for case in cases {
        assert_eq!(
            path::template_tail(case),
            path::split_wallet_path(case).map(|(_, tail)| tail),
            "{case:?}"
        );
    }
}
