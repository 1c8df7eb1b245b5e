//! The routes and their JSON, compatible with the course's NestJS and Spring templates.
//!
//! | route                      | body                                  |
//! |----------------------------|---------------------------------------|
//! | `GET /point/{id}`          | –                                     |
//! | `GET /point/{id}/histories`| –                                     |
//! | `PATCH /point/{id}/charge` | `{"amount": 100}` or a bare `100`     |
//! | `PATCH /point/{id}/use`    | same                                  |
//! | `GET /health`, `GET /stats`| – (liveness; lock and store metrics)  |
//! | `GET /ready`               | – (readiness: can the store take changes?) |
//! | `GET /metrics`             | – (Prometheus/OpenMetrics text; when metrics are on) |
//! | `GET /openapi.json`        | – (the OpenAPI 3.1 document of this API) |
//!
//! [`ROUTES`] lists them all; the tests hold the dispatch and the OpenAPI
//! document (`server/openapi.json`) to that list.
//!
//! `PATCH …/charge` and `…/use` take an optional `Idempotency-Key` header (1 to
//! 255 visible ASCII characters, per user; see [`pointlock_core::idempotency`]):
//! a retry with the same key and request gets the first answer again, byte for
//! byte, with `Idempotent-Replayed: true`, and applies nothing; the same key
//! with another operation or amount is a 422 `IDEMPOTENCY_KEY_REUSED`; a
//! malformed key a 400 `INVALID_IDEMPOTENCY_KEY`.
//!
//! The wallet's path grammar lives here, and only here: [`user_key`] is the key
//! extractor the server gives the generic [`KeyedLockLayer`], so that layer locks
//! `/point/{id}` and `/point/{id}/...` by user without knowing any path;
//! [`path_user`] names the same user for the bearer authentication's owner
//! check (`auth.rs`); and [`route_template`] names a path's route for
//! the request metrics (and for the authentication's operator routes).
//!
//! Mutating handlers take the user's guard over from the request's [`HeldLock`]
//! extension, put there by the layer, and hand it to the service (which hands a
//! clone on to the store): the user stays locked until the change is settled,
//! or, on a pipelined store, sequenced (the answer still waits for the fsync).
//! Mounted without the layer, they acquire the lock themselves (with the same
//! timeout), so the router alone is never unsafe.
//!
//! [`KeyedLockLayer`]: keylock::layer::KeyedLockLayer

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError};
use keylock::layer::{HeldLock, KeyDecision};
use pointlock_core::{
    Amount, BoxFuture, IdempotencyKey, KeyGuard, PointError, PointService, PointStore,
    TransactionType, UserId,
};
use serde::Serialize;
use tokio::time::Instant;
use tower_service::Service;

use crate::amount::parse_amount;
use crate::deadline;
use crate::error::{json_response, ApiError};
use crate::metrics::Metrics;

/// The request header naming a change for idempotency.
pub const IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");
/// The response header of an answer replayed from an idempotency record.
pub const IDEMPOTENT_REPLAYED: http::HeaderName =
    http::HeaderName::from_static("idempotent-replayed");

/// The service type the server runs: any store behind an `Arc`.
pub type SharedService = Arc<PointService<Arc<dyn PointStore>>>;

/// A parsed wallet route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /point/{id}`
    Point,
    /// `GET /point/{id}/histories`
    Histories,
    /// `PATCH /point/{id}/charge`
    Charge,
    /// `PATCH /point/{id}/use`
    Use,
}

/// Every route the router answers, as (method, path template): the one list the
/// router's tests check the dispatch against (each answers, no other path does)
/// and `tests/openapi.rs` checks the OpenAPI document's operations against.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/point/{id}"),
    ("GET", "/point/{id}/histories"),
    ("PATCH", "/point/{id}/charge"),
    ("PATCH", "/point/{id}/use"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/stats"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
];

impl Route {
    fn method(self) -> (Method, &'static str) {
        match self {
            Self::Point | Self::Histories => (Method::GET, "GET"),
            Self::Charge | Self::Use => (Method::PATCH, "PATCH"),
        }
    }

    /// The route's path with `{id}` for the user's id.
    pub fn template(self) -> &'static str {
        match self {
            Self::Point => "/point/{id}",
            Self::Histories => "/point/{id}/histories",
            Self::Charge => "/point/{id}/charge",
            Self::Use => "/point/{id}/use",
        }
    }
}

/// Every value [`route_template`] returns: a bounded set, whatever the paths.
pub const ROUTE_TEMPLATES: [&str; 10] = [
    "/point/{id}",
    "/point/{id}/histories",
    "/point/{id}/charge",
    "/point/{id}/use",
    "/health",
    "/ready",
    "/stats",
    "/metrics",
    "/openapi.json",
    "other",
];

/// The route `path` belongs to, as a template for metrics labels: the wallet's
/// routes with `{id}` in place of the id (valid or not: `/point/abc` is
/// `/point/{id}`, answered 400), the fixed paths as they are, and `other` for
/// any path no route takes. Never the raw id: one of [`ROUTE_TEMPLATES`]
/// (the templates of [`ROUTES`], and `other`).
pub fn route_template(path: &str) -> &'static str {
    ROUTE_TEMPLATES[route_index(path)]
}

/// The position of [`route_template`]`(path)` in [`ROUTE_TEMPLATES`]: the
/// request metrics' row, found without comparing template strings.
pub fn route_index(path: &str) -> usize {
    match wallet_route(path) {
        Some((_, Route::Point)) => 0,
        Some((_, Route::Histories)) => 1,
        Some((_, Route::Charge)) => 2,
        Some((_, Route::Use)) => 3,
        None => match path {
            "/health" => 4,
            "/ready" => 5,
            "/stats" => 6,
            "/metrics" => 7,
            "/openapi.json" => 8,
            _ => 9,
        },
    }
}

/// Split `/point/{id}` into `("{id}", None)` and `/point/{id}/{tail}` into
/// `("{id}", Some("{tail}"))`; `None` for any other path. The layer and the router
/// both read wallet paths through this one function.
fn split_wallet_path(path: &str) -> Option<(&str, Option<&str>)> {
    let rest = path.strip_prefix("/point/")?;
    Some(match rest.split_once('/') {
        Some((id, tail)) => (id, Some(tail)),
        None => (rest, None),
    })
}

/// The raw `{id}` segment of `/point/{id}` or `/point/{id}/...`, if `path` is one.
pub fn user_segment(path: &str) -> Option<&str> {
    split_wallet_path(path).map(|(id, _)| id)
}

/// The user a wallet path names: `None` for a path that is not
/// `/point/{id}` or `/point/{id}/...`, the id or why it is invalid otherwise.
/// The lock layer's key ([`user_key`]) and the bearer authentication's
/// owner check (`auth.rs`) both read the user through this function.
pub fn path_user(path: &str) -> Option<Result<UserId, PointError>> {
    user_segment(path).map(str::parse::<UserId>)
}

/// The wallet's key extractor for [`KeyedLockLayer`](keylock::layer::KeyedLockLayer):
/// a wallet path locks its user (reads included, so a read queued behind a
/// charge sees it); an invalid id is rejected at once with 400
/// `INVALID_USER_ID`, taking no lock; every other path passes unlocked.
pub fn user_key<B>(req: &Request<B>) -> KeyDecision<UserId> {
    match path_user(req.uri().path()) {
        None => KeyDecision::Pass,
        Some(Ok(id)) => KeyDecision::Lock(id),
        Some(Err(error)) => KeyDecision::Reject(ApiError::from(error).into_response()),
    }
}

/// Split a wallet path into its id segment and route; `None` when no route matches.
fn wallet_route(path: &str) -> Option<(&str, Route)> {
    let (id, tail) = split_wallet_path(path)?;
    let route = match tail {
        None => Route::Point,
        Some("histories") => Route::Histories,
        Some("charge") => Route::Charge,
        Some("use") => Route::Use,
        Some(_) => return None,
    };
    Some((id, route))
}

/// A store's own statistics for `GET /stats` (`store`), as JSON.
#[derive(Clone)]
pub struct StoreStats(Arc<dyn Fn() -> serde_json::Value + Send + Sync>);

impl StoreStats {
    /// Statistics read by calling `read` on every `GET /stats`.
    pub fn new(read: impl Fn() -> serde_json::Value + Send + Sync + 'static) -> Self {
        Self(Arc::new(read))
    }
}

impl std::fmt::Debug for StoreStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreStats(..)")
    }
}

/// What the router needs to know beyond the service.
#[derive(Clone, Debug)]
pub struct RouterOptions {
    /// The longest a mutation waits for its user's lock when the router must take
    /// it itself (mounted without the lock layer).
    pub lock_timeout: Duration,
    /// The largest accepted request body (named in 413 messages).
    pub body_limit_bytes: usize,
    /// The longest a handler waits for the body once it holds the user's lock.
    pub body_timeout: Duration,
    /// The store's statistics for `GET /stats` (`null` without).
    pub store_stats: Option<StoreStats>,
    /// What `GET /metrics` serves (a 404 without).
    pub metrics: Option<Metrics>,
}

impl Default for RouterOptions {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_millis(3_000),
            body_limit_bytes: 4 * 1024,
            body_timeout: Duration::from_millis(2_000),
            store_stats: None,
            metrics: None,
        }
    }
}

/// The router: a tower [`Service`] answering every request with JSON.
#[derive(Clone)]
pub struct Router {
    service: SharedService,
    options: Arc<RouterOptions>,
}

impl Router {
    /// A router over `service`.
    pub fn new(service: SharedService, options: RouterOptions) -> Self {
        Self {
            service,
            options: Arc::new(options),
        }
    }
}

impl<B> Service<Request<B>> for Router
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let router = self.clone();
        Box::pin(async move {
            Ok(match router.handle(req).await {
                Ok(response) => response,
                Err(error) => error.into_response(),
            })
        })
    }
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

/// `GET /stats`: the lock's metrics, the service's commit conflicts, and the
/// store's own statistics (`null` for a store that has none, such as the
/// memory store). The same sources `GET /metrics` reads at each scrape
/// ([`crate::metrics`]), as JSON: the two never disagree but for what changed
/// between two reads.
#[derive(Serialize)]
struct Stats {
    lock: pointlock_core::LockMetrics,
    service: ServiceStats,
    store: Option<serde_json::Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceStats {
    /// Commits refused by the store's condition (then retried).
    commit_conflicts: u64,
}

impl Router {
    async fn handle<B>(&self, req: Request<B>) -> Result<Response<Full<Bytes>>, ApiError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path();
        let Some((raw_id, route)) = wallet_route(path) else {
            return match path {
                "/health" => get_only(&parts.method, || {
                    json_response(StatusCode::OK, &Health { status: "ok" })
                }),
                "/ready" => {
                    require_get(&parts.method)?;
                    self.service.ready().await.map_err(ApiError::NotReady)?;
                    Ok(json_response(StatusCode::OK, &Health { status: "ready" }))
                }
                "/stats" => get_only(&parts.method, || {
                    let stats = Stats {
                        lock: self.service.lock().metrics(),
                        service: ServiceStats {
                            commit_conflicts: self.service.commit_conflicts(),
                        },
                        store: self.options.store_stats.as_ref().map(|read| (read.0)()),
                    };
                    json_response(StatusCode::OK, &stats)
                }),
                "/metrics" if self.options.metrics.is_some() => {
                    require_get(&parts.method)?;
                    self.scrape()
                }
                "/openapi.json" => get_only(&parts.method, crate::openapi::response),
                _ => Err(ApiError::NotFound {
                    method: parts.method.to_string(),
                    path: path.to_owned(),
                }),
            };
        };
        let id: UserId = raw_id.parse()?;
        let (method, allow) = route.method();
        if parts.method != method {
            return Err(ApiError::MethodNotAllowed {
                method: parts.method.to_string(),
                allow,
            });
        }
        let svc = &self.service;
        let response = match route {
            Route::Point => json_response(StatusCode::OK, &svc.point(id).await?),
            Route::Histories => json_response(StatusCode::OK, &svc.histories(id).await?),
            Route::Charge | Route::Use => {
                let key = idempotency_key(&parts.headers)?;
                let from_layer = parts.extensions.get::<HeldLock<UserId>>();
                let held = self.held(from_layer, id).await?;
                let options = &self.options;
                let amount =
                    read_amount(body, options.body_limit_bytes, options.body_timeout).await?;
                let kind = if route == Route::Charge {
                    TransactionType::Charge
                } else {
                    TransactionType::Use
                };
                // The guard goes to the service, which releases the user as
                // soon as the store allows (a pipelined store: once the change
                // is sequenced) and answers once the change is durable.
                let applied = svc.apply_owned(held, kind, amount, key.as_ref()).await?;
                let mut response = json_response(StatusCode::OK, &applied.point);
                if applied.replayed {
                    response
                        .headers_mut()
                        .insert(IDEMPOTENT_REPLAYED, http::HeaderValue::from_static("true"));
                }
                response
            }
        };
        Ok(response)
    }

    /// `GET /metrics`: the metrics in the OpenMetrics text format.
    fn scrape(&self) -> Result<Response<Full<Bytes>>, ApiError> {
        let Some(metrics) = &self.options.metrics else {
            return Err(ApiError::Internal("metrics are off".into()));
        };
        let text = metrics
            .render()
            .map_err(|_| ApiError::Internal("the metrics could not be encoded".into()))?;
        let mut response = Response::new(Full::new(Bytes::from(text)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        );
        Ok(response)
    }

    /// The user's guard: from the lock layer, or acquired here when mounted without it.
    async fn held(
        &self,
        from_layer: Option<&HeldLock<UserId>>,
        id: UserId,
    ) -> Result<Arc<KeyGuard<UserId>>, ApiError> {
        // The layer's guard, if it is a guard of this service's lock for this user
        // (a layer given another lock would only earn a ForeignGuard error):
        // taken over, so that the service decides when the user is released.
        let lent = from_layer
            .filter(|held| *held.key() == id)
            .filter(|held| {
                held.guard()
                    .is_some_and(|guard| guard.is_from(self.service.lock()))
            })
            .and_then(HeldLock::take);
        if let Some(guard) = lent {
            return Ok(guard);
        }
        let acquire = self
            .service
            .lock()
            .lock_timeout(id, tokio::time::sleep(self.options.lock_timeout));
        match acquire.await {
            Ok(guard) => Ok(Arc::new(guard)),
            Err(_) => Err(PointError::LockTimeout.into()),
        }
    }
}

fn get_only(
    method: &Method,
    respond: impl FnOnce() -> Response<Full<Bytes>>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    require_get(method).map(|()| respond())
}

/// 405 for anything but GET.
fn require_get(method: &Method) -> Result<(), ApiError> {
    if method == Method::GET {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed {
            method: method.to_string(),
            allow: "GET",
        })
    }
}

/// The request's `Idempotency-Key`, if it has one; more than one, or a value
/// that is not 1 to 255 visible ASCII characters, is a 400.
///
/// The headers are scanned rather than looked up: a few name comparisons cost
/// less than hashing the name (a lookup was ~200 instructions of a ~22,000
/// instruction charge; `benches/instructions.sh`), and hyper bounds the count.
fn idempotency_key(headers: &http::HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = headers
        .iter()
        .filter(|(name, _)| *name == IDEMPOTENCY_KEY)
        .map(|(_, value)| value);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(PointError::InvalidIdempotencyKey.into());
    }
    Ok(Some(IdempotencyKey::from_bytes(value.as_bytes())?))
}

/// Read the body (within the size limit and `timeout`, counted from this call,
/// which runs under the user's lock) and parse the amount.
///
/// A slow uploader holds its user's lock no longer than `timeout`. The timer is
/// only made if the body is not already here ([`deadline::within`]): almost every
/// body arrives with its headers, so the common case makes no timer at all
/// (tower-http's `RequestBodyDeadline` registered one per request: ~1,200
/// instructions per charge, measured with `benches/instructions.sh`).
async fn read_amount<B>(body: B, limit_bytes: usize, timeout: Duration) -> Result<Amount, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let collected = deadline::within(
        Instant::now() + timeout,
        async { Some(body.collect().await) },
        || None,
    )
    .await
    .ok_or_else(|| ApiError::BodyTimeout {
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    })?;
    let bytes = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let error = error.into();
            return Err(if error.downcast_ref::<LengthLimitError>().is_some() {
                ApiError::PayloadTooLarge { limit_bytes }
            } else {
                ApiError::BadBody(error.to_string())
            });
        }
    };
    parse_amount(&bytes)
}

#[cfg(test)]
mod tests {
    use pointlock_core::{KeyedLock, MemoryStore, Policy};

    use super::*;
    use crate::clock::SystemClock;
    use crate::store::{SqliteOptions, SqliteStore};

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
            let store = Arc::new(
                SqliteStore::open(dir.path().join(name), SqliteOptions::default()).unwrap(),
            );
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

    /// Paths to probe the dispatch with: the routes of `ROUTES`, near misses, and
    /// every string literal of this file's code (comments and tests left out)
    /// used as a path and as a segment. A route the dispatch matches is named by
    /// a literal here, so it is probed whether or not `ROUTES` lists it.
    fn probe_paths() -> Vec<String> {
        let source = include_str!("routes.rs");
        let code = source.split("#[cfg(test)]").next().unwrap_or_default();
        let literals = code
            .lines()
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
        assert_eq!(wallet_route("/point/1"), Some(("1", Route::Point)));
        assert_eq!(
            wallet_route("/point/1/histories"),
            Some(("1", Route::Histories))
        );
        assert_eq!(wallet_route("/point/1/charge"), Some(("1", Route::Charge)));
        assert_eq!(wallet_route("/point/1/use"), Some(("1", Route::Use)));
        assert_eq!(wallet_route("/point/1/"), None);
        assert_eq!(wallet_route("/point/1/charge/x"), None);
        assert_eq!(wallet_route("/point/1/unknown"), None);
    }
}
