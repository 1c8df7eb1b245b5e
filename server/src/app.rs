//! The full middleware stack and the hyper accept loop.
//!
//! Layers as [`build_app`] assembles them, outermost first:
//!
//! 0. [`HttpMetricsLayer`](crate::metrics::HttpMetricsLayer), only with
//!    [`AppOptions::metrics`]: counts every answer by method, route template
//!    ([`route_template`](crate::routes::route_template)) and status, and
//!    times it; outermost, so what it counts is what the client got, and its
//!    duration covers every layer below. The same [`Metrics`] serve
//!    `GET /metrics` through the router.
//! 1. [`RequestIdLayer`] (`x-request-id` on every response: the client's own, or a
//!    process-wide counter; outermost, so every answer below carries it; the id
//!    is also in the request's extensions, on the log line of a failed (5xx)
//!    request, and, at DEBUG, on every event of the request)
//! 2. [`HeaderLimitLayer`] (431 `HEADERS_TOO_LARGE` for a head over the limit,
//!    411 `LENGTH_REQUIRED` for a body framed by `Transfer-Encoding`; both close
//!    the connection; before any lock, inside the request id so the answer
//!    carries one). Connection-level limits (header timeout, connection cap,
//!    HTTP/2 streams) are [`ServeOptions`], applied by [`serve_with`].
//! 3. [`BearerAuth`], only with [`AppOptions::auth`] (bearer JWT: 401
//!    `UNAUTHORIZED`, 403 `FORBIDDEN`). Far above the lock layer (9): a
//!    refused request is answered here and never waits for, takes or holds a
//!    user's lock, nor has its body read. Inside the request id (its answers
//!    carry one) and the header limit (which bounds the token's size); above
//!    everything that looks at the request's content, so an anonymous client
//!    learns nothing but "authenticate". Off, there is no layer: the stack
//!    costs what it did without authentication.
//! 4. error normalisation (`map_response`): turns the non-JSON 408 and 413 of
//!    the request deadline and the body limit into JSON errors, copying the response's
//!    headers (not its content type or length). Outermost but one, so `Trace`,
//!    inside it, logs the raw 408/413 (the same status code).
//! 5. `Trace` (a span and events per request, at DEBUG). Installed only when the
//!    process's log filter lets DEBUG through: at the default INFO it would emit
//!    nothing yet cost ~1,400 instructions per request (5% of a charge; measured
//!    with `benches/instructions.sh`). Server errors are logged either way, with
//!    the request's id, by the request-id layer (from the report
//!    [`ApiError::into_response`] attaches to every 5xx).
//! 6. `CatchPanic` (a panic becomes a 500 JSON answer). A panic unwinds through the
//!    lock layer's future, whose `polling` flag marks it as panicked: it is never
//!    resumed, and when `CatchPanic`'s future is dropped (right after the 500 is
//!    ready) it drops the handler's future and releases the user's lock. It boxes
//!    the response body into [`AppBody`], the one box a response body gets.
//! 7. the request deadline (`map_future` with [`deadline::within`]: a bare 408
//!    for the whole request, default 10 s; longer than the lock timeout). Its
//!    timer is only made if the request is not done in its first poll.
//! 8. `RequestBodyLimit` (413, default 4 KiB)
//! 9. [`KeyedLockLayer`] with the wallet's [`user_key`] extractor (per-user FIFO
//!    lock for the life of the request, a bounded queue per user; left out only
//!    when [`AppOptions::lock_layer`] is false, for negative-control tests). Its
//!    body type has an empty `Default`, which the deadline needs for its 408.
//! 10. the [`Router`] (it reads a body within `body_timeout`, 408 `BODY_TIMEOUT`,
//!     counted from when the user's lock is held: a slow uploader holds its user no
//!     longer than this)

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use keylock::layer::{KeyDecision, KeyedLockBody, KeyedLockLayer};
use pointlock_core::{Clock, KeyedLock, PointService, PointStore, Policy, UserId};
use tokio::net::TcpListener;
use tower::util::{BoxCloneSyncService, Either};
use tower::ServiceBuilder;
use tower_http::body::Limited;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;
use tower_service::Service;

use crate::auth::BearerAuth;
use crate::deadline;
use crate::error::{refusal_response, ApiError, ServerErrorReport};
use crate::limits::{head_buffer_bytes, HeaderLimitLayer, HEADER_LIMIT_BYTES_DEFAULT};
use crate::metrics::Metrics;
use crate::request_id::RequestIdLayer;
use crate::routes::{
    route_index, user_key, Router, RouterOptions, SharedService, StoreStats, ROUTE_TEMPLATES,
};

pub use crate::body::{AppBody, BoxError};
/// The whole stack as one cloneable service.
pub type App = BoxCloneSyncService<Request<Incoming>, Response<AppBody>, Infallible>;

/// How to assemble the stack.
#[derive(Clone, Debug)]
pub struct AppOptions {
    /// The longest a request waits for its user's lock before a 503.
    pub lock_timeout: Duration,
    /// The longest a whole request may take before a 408.
    pub request_timeout: Duration,
    /// The largest accepted request body.
    pub body_limit_bytes: usize,
    /// The longest a handler may wait for the request body once it holds the
    /// user's lock: a slow uploader cannot hold a user's lock longer than this.
    pub body_timeout: Duration,
    /// The most requests that may wait for one user's lock; a request beyond it
    /// is refused at once with 503 `LOCK_QUEUE_FULL` (`None`: no bound but time).
    pub lock_queue_max: Option<usize>,
    /// Whether to install the lock layer. Only negative-control tests turn it off.
    pub lock_layer: bool,
    /// The largest request line and headers, together, in bytes: beyond it
    /// 431 `HEADERS_TOO_LARGE` and the connection closes
    /// ([`HeaderLimitLayer`]).
    pub header_limit_bytes: usize,
    /// The store's statistics for `GET /stats` (`null` without).
    pub store_stats: Option<StoreStats>,
    /// Request metrics and `GET /metrics` (`None`: neither, and no layer: the
    /// stack costs what it did without metrics).
    pub metrics: Option<Metrics>,
    /// Bearer JWT authentication (`None`, the default: the open API of the
    /// course's templates, and no layer).
    pub auth: Option<BearerAuth>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_millis(3_000),
            request_timeout: Duration::from_millis(10_000),
            body_limit_bytes: 4 * 1024,
            body_timeout: Duration::from_millis(2_000),
            lock_queue_max: Some(LOCK_QUEUE_MAX_DEFAULT),
            lock_layer: true,
            header_limit_bytes: HEADER_LIMIT_BYTES_DEFAULT,
            store_stats: None,
            // On, as in the binary (`--metrics on`).
            metrics: Some(Metrics::new()),
            auth: None,
        }
    }
}

/// The default bound on requests waiting for one user's lock: far above any
/// honest client's concurrency for one user, and a cap on the memory one hot
/// user can pin (a waiter costs a connection and a request).
pub const LOCK_QUEUE_MAX_DEFAULT: usize = 1_024;

/// A `PointService` over `store` sharing `lock` with the layer.
pub fn service(
    store: Arc<dyn PointStore>,
    policy: Policy,
    clock: Arc<dyn Clock>,
    lock: KeyedLock<UserId>,
) -> SharedService {
    Arc::new(PointService::with_lock(store, policy, clock, lock))
}

/// Records removed per step of the idempotency sweep (one statement, one
/// transaction), and the most steps per sweep: a sweep never holds the
/// store's writer long, and never runs unbounded.
pub const SWEEP_STEP: usize = 1_000;
/// See [`SWEEP_STEP`].
pub const SWEEP_STEPS_MAX: usize = 100;

/// Remove expired idempotency records every `every`, in bounded steps, until
/// the task is aborted (the server aborts it at shutdown). Failures are logged
/// and retried at the next tick.
pub fn spawn_idempotency_sweeper(
    service: SharedService,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let mut removed = 0;
            for _ in 0..SWEEP_STEPS_MAX {
                match service.sweep_idempotency(SWEEP_STEP).await {
                    Ok(step) => {
                        removed += step;
                        if step < SWEEP_STEP {
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "sweeping expired idempotency records failed; retrying at the next sweep");
                        break;
                    }
                }
            }
            if removed > 0 {
                tracing::debug!(removed, "expired idempotency records swept");
            }
        }
    })
}

/// Build the middleware stack around the router for `service`, boxed into one
/// nameable type (tests and embedders); [`serve`] also takes [`build_stack`]'s
/// unboxed stack, which the binary uses.
pub fn build_app(service: SharedService, options: &AppOptions) -> App {
    BoxCloneSyncService::new(build_stack(service, options))
}

/// The stack of [`build_app`], unboxed: `hyper` clones the service for every
/// request, and a boxed service costs an allocation per clone and another per
/// response future (measured; see docs/performance.md).
pub fn build_stack(
    service: SharedService,
    options: &AppOptions,
) -> impl Service<
    Request<Incoming>,
    Response = Response<AppBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<AppBody>, Infallible>> + Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static {
    let limit = options.body_limit_bytes;
    let request_timeout = options.request_timeout;
    if let Some(metrics) = &options.metrics {
        metrics.watch_service(Arc::clone(&service));
    }
    let router = Router::new(
        Arc::clone(&service),
        RouterOptions {
            lock_timeout: options.lock_timeout,
            body_limit_bytes: options.body_limit_bytes,
            body_timeout: options.body_timeout,
            store_stats: options.store_stats.clone(),
            metrics: options.metrics.clone(),
        },
    );
    // Both variants answer `Response<KeyedLockBody<_>>`; `Either` joins them without
    // boxing the service and its future on every request (measured: two
    // allocations and a dynamic call per request, see docs/performance.md).
    let inner = if options.lock_layer {
        let extract: fn(&Request<Limited<Incoming>>) -> KeyDecision<UserId> = user_key;
        let lock = KeyedLockLayer::new(service.lock().clone(), extract)
            .timeout(options.lock_timeout)
            .queue_max(options.lock_queue_max)
            .on_refusal(refusal_response);
        Either::Left(ServiceBuilder::new().layer(lock).service(router))
    } else {
        Either::Right(
            ServiceBuilder::new()
                .map_response(unlocked_body)
                .service(router),
        )
    };
    let metrics = options
        .metrics
        .as_ref()
        .map(|metrics| metrics.layer(&ROUTE_TEMPLATES, route_index));
    ServiceBuilder::new()
        .option_layer(metrics)
        .layer(RequestIdLayer::new())
        .layer(HeaderLimitLayer::new(options.header_limit_bytes))
        .option_layer(options.auth.clone())
        .map_response(move |res| normalize_error(res, limit))
        .option_layer(trace_enabled().then(|| {
            // The trace layer wraps the body: box it again so both branches agree.
            ServiceBuilder::new()
                .map_response(box_body)
                .layer(TraceLayer::new_for_http())
                .into_inner()
        }))
        // CatchPanic boxes the body into `AppBody`: the one box of a response.
        .layer(CatchPanicLayer::custom(panic_response))
        .map_future(move |future| within_request_timeout(future, request_timeout))
        .layer(RequestBodyLimitLayer::new(limit))
        .service(inner)
}

/// Whether the trace layer's DEBUG spans and events could be recorded at all.
/// Decided once, when the stack is built (after the binary installs its log
/// filter): a filter reloaded later does not add the layer.
fn trace_enabled() -> bool {
    tracing::level_filters::LevelFilter::current() >= tracing::Level::DEBUG
}

/// What [`within_request_timeout`] answers when the deadline passes.
type TimeoutAnswer<B> = fn() -> Result<Response<B>, Infallible>;

/// The whole request within `timeout` (counted from here), or a bare 408 answer,
/// which [`normalize_error`] turns into JSON like the body limit's 413. The timer
/// is only made if the request is not done in its first poll ([`deadline::within`]).
fn within_request_timeout<F, B>(
    future: F,
    timeout: Duration,
) -> deadline::Within<F, TimeoutAnswer<B>>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: Default,
{
    deadline::within(tokio::time::Instant::now() + timeout, future, || {
        let mut res = Response::new(B::default());
        *res.status_mut() = StatusCode::REQUEST_TIMEOUT;
        Ok(res)
    })
}

/// The body type of the lock layer's answers, for the stack without the layer.
fn unlocked_body<B>(res: Response<B>) -> Response<KeyedLockBody<B>> {
    res.map(KeyedLockBody::inner)
}

fn box_body<B>(res: Response<B>) -> Response<AppBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    res.map(|b| AppBody::new(b.map_err(Into::into)))
}

/// A panic in a handler: 500 JSON (the panic message goes to the log only).
fn panic_response(
    panic: Box<dyn std::any::Any + Send + 'static>,
) -> Response<http_body_util::Full<Bytes>> {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    let mut response = ApiError::Internal("the request failed unexpectedly".into()).into_response();
    // The log line (written with the request's id by the request-id layer) names
    // the panic; the client's answer does not.
    if let Some(report) = response.extensions_mut().get_mut::<ServerErrorReport>() {
        report.detail = format!("handler panicked: {detail}");
    }
    response
}

/// Turn the bare answers of the middleware (408 from the request deadline, 413
/// from tower-http's body limit) into this API's JSON errors; pass every other
/// answer on.
fn normalize_error(res: Response<AppBody>, limit_bytes: usize) -> Response<AppBody> {
    let error = match res.status() {
        StatusCode::REQUEST_TIMEOUT => ApiError::RequestTimeout,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge { limit_bytes },
        _ => return res,
    };
    let is_json = res
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return res;
    }
    let (parts, _) = res.into_parts();
    let mut fresh = error.into_response();
    for (name, value) in parts.headers.iter() {
        if name != CONTENT_TYPE && name != http::header::CONTENT_LENGTH {
            fresh.headers_mut().append(name, value.clone());
        }
    }
    fresh.map(|b| AppBody::new(b.map_err(|never| match never {})))
}

/// How connections are served: the limits a hostile client meets before its
/// requests reach the stack.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// At shutdown, how long in-flight requests may take to finish.
    pub drain: Duration,
    /// How long a client may take to send a request's headers, counted from
    /// when the connection is waiting for a request: on a new connection and
    /// between requests of a kept-alive one. A client that takes longer is
    /// disconnected: this also closes idle kept-alive HTTP/1 connections.
    pub header_timeout: Duration,
    /// The head limit of [`AppOptions::header_limit_bytes`]: sizes hyper's read
    /// buffer (a head too large for it gets hyper's bare 431) and HTTP/2's
    /// header list limit.
    pub header_limit_bytes: usize,
    /// The most connections served at once. Beyond it new connections are not
    /// accepted: they wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// The most concurrent HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
}

/// The default [`ServeOptions::max_connections`]: well under a default file
/// descriptor limit of 65,536 (and the process needs a few more for stores).
pub const MAX_CONNECTIONS_DEFAULT: usize = 10_000;

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            drain: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            header_limit_bytes: HEADER_LIMIT_BYTES_DEFAULT,
            max_connections: MAX_CONNECTIONS_DEFAULT,
            h2_max_concurrent_streams: 100,
        }
    }
}

/// Serve `app` on `listener` (HTTP/1.1 and h2c) until `shutdown` resolves, then
/// stop accepting and wait (up to `drain`) for in-flight requests to finish.
/// The other limits are [`ServeOptions`]'s defaults; see [`serve_with`].
///
/// Any tower service of `Request<Incoming>` with an infallible error serves:
/// the wallet's stack, or your own (`examples/keyed_counter.rs` uses it).
pub async fn serve<S, B>(
    listener: TcpListener,
    app: S,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let options = ServeOptions {
        drain,
        ..ServeOptions::default()
    };
    serve_with(listener, app, shutdown, &options).await
}

/// [`serve`] with every connection limit given.
///
/// - HTTP/1: headers within `header_timeout` (also the idle bound of a kept-alive
///   connection), a read buffer of [`head_buffer_bytes`].
/// - HTTP/2 (h2c): `h2_max_concurrent_streams` streams per connection, a header
///   list of at most `header_limit_bytes`, and h2's bounds on streams reset by
///   the client before the server saw them (rapid reset) and on streams the
///   server had to reset for errors. CONTINUATION frames count against the
///   header list limit, so a flood of them ends the connection.
/// - A connection that sends no byte within `header_timeout` is closed (hyper's
///   header timer only starts after protocol detection has read something).
/// - At most `max_connections` connections; beyond it, accepting pauses.
/// - An accept error (out of file descriptors) pauses accepting for 50 ms
///   instead of spinning.
pub async fn serve_with<S, B>(
    listener: TcpListener,
    app: S,
    shutdown: impl Future<Output = ()>,
    options: &ServeOptions,
) -> io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .max_buf_size(head_buffer_bytes(options.header_limit_bytes));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(options.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(options.header_limit_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(options.header_timeout))
        .keep_alive_timeout(options.header_timeout);
    let slots = Arc::new(tokio::sync::Semaphore::new(options.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let drain = options.drain;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A free slot first: at the cap, connections wait in the backlog.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let first_byte_timeout = options.header_timeout;
        tokio::spawn(async move {
            // hyper's header timer starts once it reads, after hyper-util has
            // seen enough bytes to tell HTTP/1 from HTTP/2: a client that sends
            // nothing at all would hold its slot forever. Wait for a first byte
            // within the header timeout.
            let mut first = [0u8; 1];
            match tokio::time::timeout(first_byte_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; finishing in-flight requests");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?drain, "in-flight requests did not finish in time");
    }
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod metrics_tests;

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use http_body_util::Empty;

    use super::*;

    async fn json(res: Response<AppBody>) -> serde_json::Value {
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_panic_becomes_a_500_json_error() {
        let res = panic_response(Box::new("boom"));
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let res = box_body(res);
        let body = json(res).await;
        assert_eq!(body["code"], "INTERNAL");
        assert!(
            !body["message"].as_str().unwrap().contains("boom"),
            "no panic text to clients"
        );
    }

    #[tokio::test]
    async fn middleware_408_and_413_become_json_and_keep_headers() {
        for (status, code) in [
            (StatusCode::REQUEST_TIMEOUT, "REQUEST_TIMEOUT"),
            (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
        ] {
            let mut raw = Response::new(Empty::<Bytes>::new());
            *raw.status_mut() = status;
            raw.headers_mut()
                .insert("x-request-id", HeaderValue::from_static("7"));
            let res = normalize_error(box_body(raw), 4096);
            assert_eq!(res.status(), status);
            assert_eq!(res.headers()["x-request-id"], "7");
            assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
            assert_eq!(json(res).await["code"], code);
        }
    }

    #[tokio::test]
    async fn json_answers_pass_through_untouched() {
        let res = ApiError::Point(pointlock_core::PointError::InvalidAmount).into_response();
        let res = normalize_error(box_body(res), 4096);
        assert_eq!(json(res).await["code"], "INVALID_AMOUNT");
    }
}
