//! The routes and their JSON, compatible with the course's NestJS and Spring templates.
//!
//! | route                      | body                                  |
//! |----------------------------|---------------------------------------|
//! | `GET /point/{id}`          | –                                     |
//! | `GET /point/{id}/histories`| –                                     |
//! | `PATCH /point/{id}/charge` | `{"amount": 100}` or a bare `100`     |
//! | `PATCH /point/{id}/use`    | same                                  |
//! | `GET /health`, `GET /stats`| – (liveness; lock and store metrics)  |
//!
//! Mutating handlers take the user's guard from the request's [`HeldLock`]
//! extension, put there by [`UserLockLayer`](crate::layer::UserLockLayer). Mounted
//! without the layer, they acquire the lock themselves (with the same timeout), so
//! the router alone is never unsafe.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError};
use pointlock_core::{Amount, BoxFuture, KeyGuard, PointError, PointService, PointStore, UserId};
use serde::Serialize;
use tokio::time::Instant;
use tower_service::Service;

use crate::app::AppOptions;
use crate::deadline;
use crate::error::{json_response, ApiError};
use crate::layer::HeldLock;

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

impl Route {
    fn method(self) -> (Method, &'static str) {
        match self {
            Self::Point | Self::Histories => (Method::GET, "GET"),
            Self::Charge | Self::Use => (Method::PATCH, "PATCH"),
        }
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

/// The router: a tower [`Service`] answering every request with JSON.
#[derive(Clone)]
pub struct Router {
    service: SharedService,
    lock_timeout: Duration,
    body_limit_bytes: usize,
    body_timeout: Duration,
}

impl Router {
    /// A router over `service`. From `options`: the lock timeout (when it must lock
    /// by itself), and the body limit and deadline (named in 413 and 408 messages).
    pub fn new(service: SharedService, options: &AppOptions) -> Self {
        Self {
            service,
            lock_timeout: options.lock_timeout,
            body_limit_bytes: options.body_limit_bytes,
            body_timeout: options.body_timeout,
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

/// `GET /stats`: the lock's metrics, and the store's group-commit statistics
/// (`null` for a store that does not batch commits, such as the memory store).
#[derive(Serialize)]
struct Stats {
    lock: pointlock_core::LockMetrics,
    store: Option<pointlock_core::CommitStats>,
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
                "/stats" => get_only(&parts.method, || {
                    let lock = self.service.lock().metrics();
                    let store = self.service.store().commit_stats();
                    json_response(StatusCode::OK, &Stats { lock, store })
                }),
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
                let from_layer = parts.extensions.get::<HeldLock>().cloned();
                let held = self.held(from_layer, id).await?;
                let amount = read_amount(body, self.body_limit_bytes, self.body_timeout).await?;
                let updated = if route == Route::Charge {
                    svc.charge(&held, amount).await?
                } else {
                    svc.use_points(&held, amount).await?
                };
                json_response(StatusCode::OK, &updated)
            }
        };
        Ok(response)
    }

    /// The user's guard: from the lock layer, or acquired here when mounted without it.
    async fn held(
        &self,
        from_layer: Option<HeldLock>,
        id: UserId,
    ) -> Result<Arc<KeyGuard<UserId>>, ApiError> {
        if let Some(HeldLock(guard)) = from_layer {
            if *guard.key() == id {
                return Ok(guard);
            }
        }
        let acquire = self
            .service
            .lock()
            .lock_timeout(id, tokio::time::sleep(self.lock_timeout));
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
    if method == Method::GET {
        Ok(respond())
    } else {
        Err(ApiError::MethodNotAllowed {
            method: method.to_string(),
            allow: "GET",
        })
    }
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

/// `{"amount": n}` (NestJS template) or a bare `n` (Spring template), where `n` is a
/// JSON integer in `1..=2^63-1`. Fractions, exponents, strings, null, booleans,
/// arrays, a missing field and numbers out of range are all `INVALID_AMOUNT`;
/// anything that is not JSON is `INVALID_JSON`. With a repeated `amount` field the
/// last one counts.
///
/// The whole document is read by one streaming visitor, which allocates nothing
/// for a well-formed body (a `serde_json::Value` cost three allocations per
/// request; see docs/performance.md), and is always read to its end, so a syntax
/// error anywhere is `INVALID_JSON` even after a wrong amount.
pub fn parse_amount(bytes: &[u8]) -> Result<Amount, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidJson("the body is empty".into()));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let found = serde::Deserializer::deserialize_any(&mut de, AmountVisitor { top: true })
        .and_then(|found| de.end().map(|()| found))
        .map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    // Only non-negative integers arrive as u64; fractions, exponents, negatives,
    // numbers too large for u64 and every non-number arrive as `None`.
    let raw = found.ok_or(PointError::InvalidAmount)?;
    Ok(Amount::new(raw)?)
}

/// Reads one JSON value: `Some(n)` for a non-negative integer; for the top-level
/// object, the last `amount` field's value; `None` for anything else (read to its
/// end, so syntax errors still surface).
struct AmountVisitor {
    /// Whether this is the body itself (only there does an object mean `{"amount"}`).
    top: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for AmountVisitor {
    type Value = Option<u64>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for AmountVisitor {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_u64<E>(self, n: u64) -> Result<Option<u64>, E> {
        Ok(Some(n))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }

    // Skipped values go through this visitor too, not `IgnoredAny`: serde_json
    // skips those without checking UTF-8, escapes or nesting depth, which the old
    // `Value` parse (and this one) rejects as INVALID_JSON.
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Option<u64>, A::Error> {
        while seq
            .next_element_seed(AmountVisitor { top: false })?
            .is_some()
        {}
        Ok(None)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Option<u64>, A::Error> {
        let mut amount = None;
        while let Some(is_amount) = map.next_key_seed(IsAmountKey)? {
            let value = map.next_value_seed(AmountVisitor { top: false })?;
            if self.top && is_amount {
                amount = value;
            }
        }
        Ok(amount)
    }
}

/// Reads an object key: whether it is `"amount"` (escapes decoded), without
/// allocating.
struct IsAmountKey;

impl<'de> serde::de::DeserializeSeed<'de> for IsAmountKey {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for IsAmountKey {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(key == "amount")
    }
}

#[cfg(test)]
mod tests {
    use pointlock_core::{KeyedLock, MemoryStore, Policy};

    use super::*;
    use crate::clock::SystemClock;
    use crate::store::{SqliteOptions, SqliteStore};

    /// `GET /stats` (and a charge of user 1 first, if `charge`) through the
    /// router alone; the JSON of the stats.
    async fn stats_after(store: Arc<dyn PointStore>, charge: bool) -> serde_json::Value {
        let service = crate::app::service(
            store,
            Policy::default(),
            Arc::new(SystemClock::default()),
            KeyedLock::new(),
        );
        let mut router = Router::new(service, &AppOptions::default());
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
        let stats = stats_after(Arc::new(MemoryStore::new()), true).await;
        assert!(stats["store"].is_null(), "{stats}");
        assert_eq!(stats["lock"]["keys"], 0, "{stats}");
        assert_eq!(stats["lock"]["acquisitions"], 1, "{stats}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stats_store_counts_sqlite_batches_and_ops_in_camel_case() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("p.db"), SqliteOptions::default()).unwrap();
        let before = stats_after(Arc::new(store), false).await;
        assert_eq!(before["store"]["batches"], 0, "{before}");
        let store = SqliteStore::open(dir.path().join("q.db"), SqliteOptions::default()).unwrap();
        let stats = stats_after(Arc::new(store), true).await;
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
        assert_eq!(store["batchOpsLog2"][0], 1, "{stats}");
        assert_eq!(stats["lock"]["keys"], 0, "{stats}");
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

    fn amount(body: &str) -> Result<u64, &'static str> {
        parse_amount(body.as_bytes())
            .map(Amount::get)
            .map_err(|e| e.code())
    }

    #[test]
    fn amount_bodies_of_both_templates_parse() {
        assert_eq!(amount(r#"{"amount":100}"#), Ok(100));
        assert_eq!(amount(r#" { "amount" : 7 , "note": "x" } "#), Ok(7));
        assert_eq!(amount("100"), Ok(100));
        assert_eq!(amount("9223372036854775807"), Ok(9_223_372_036_854_775_807));
    }

    #[test]
    fn amount_parsing_keeps_the_full_json_rules() {
        // Escaped keys count; the last of repeated fields wins.
        assert_eq!(amount(r#"{"am\u006funt":3}"#), Ok(3));
        assert_eq!(amount(r#"{"amount":1,"amount":2}"#), Ok(2));
        assert_eq!(amount(r#"{"amount":"x","amount":2}"#), Ok(2));
        assert_eq!(
            amount(r#"{"amount":2,"amount":"x"}"#),
            Err("INVALID_AMOUNT")
        );
        // `amount` only counts at the top level.
        assert_eq!(amount(r#"{"x":{"amount":5}}"#), Err("INVALID_AMOUNT"));
        // Values that are skipped are still checked: bad UTF-8, lone surrogates,
        // nesting past serde_json's limit and trailing data are not JSON.
        let deep = format!(
            r#"{{"amount":5,"x":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        for body in [
            &b"{\"amount\":5,\"note\":\"\xff\"}"[..],
            &b"[\"\xff\"]"[..],
            br#"{"amount":5,"x":"\ud800"}"#,
            br#"{"amount":"x", oops"#,
            br#"{"amount":5} 6"#,
            deep.as_bytes(),
        ] {
            let code = parse_amount(body).map_err(|e| e.code());
            assert_eq!(
                code,
                Err("INVALID_JSON"),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn bad_amount_bodies_are_rejected_with_codes() {
        for (body, code) in [
            ("", "INVALID_JSON"),
            ("  ", "INVALID_JSON"),
            ("{", "INVALID_JSON"),
            ("amount=1", "INVALID_JSON"),
            (r#"{"amount":0}"#, "INVALID_AMOUNT"),
            (r#"{"amount":-1}"#, "INVALID_AMOUNT"),
            (r#"{"amount":1.5}"#, "INVALID_AMOUNT"),
            (r#"{"amount":1.0}"#, "INVALID_AMOUNT"),
            (r#"{"amount":1e2}"#, "INVALID_AMOUNT"),
            (r#"{"amount":"100"}"#, "INVALID_AMOUNT"),
            (r#"{"amount":null}"#, "INVALID_AMOUNT"),
            (r#"{"amount":true}"#, "INVALID_AMOUNT"),
            (r#"{"amount":[1]}"#, "INVALID_AMOUNT"),
            (r#"{}"#, "INVALID_AMOUNT"),
            (r#"{"amt":1}"#, "INVALID_AMOUNT"),
            (r#"{"amount":9223372036854775808}"#, "INVALID_AMOUNT"),
            (r#"{"amount":99999999999999999999999}"#, "INVALID_AMOUNT"),
            ("null", "INVALID_AMOUNT"),
            (r#""100""#, "INVALID_AMOUNT"),
            ("[100]", "INVALID_AMOUNT"),
            ("-5", "INVALID_AMOUNT"),
        ] {
            assert_eq!(amount(body), Err(code), "{body:?}");
        }
    }
}
