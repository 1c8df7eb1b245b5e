//! The middleware stack around the router, as [`build_stack`] assembles it.
//!
//! The order is [`build_stack`]'s: one `ServiceBuilder` chain, numbered, and
//! its documentation says why each layer sits where it does.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;
use tower_http::body::Limited;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;
use tower_service::Service;

use super::answers::{box_body, panic_response};
use super::front::FrontLayer;
use crate::auth::BearerAuth;
use crate::body::AppBody;
use crate::error::refusal_response;
use crate::metrics::Metrics;
use crate::middleware::in_flight::{InFlight, MAX_IN_FLIGHT_DEFAULT};
use crate::middleware::limits::HEADER_LIMIT_BYTES_DEFAULT;
use crate::routes::{
    route_index, user_key, Router, RouterOptions, SharedService, StoreStats, ROUTE_TEMPLATES,
};
use keylock::layer::{KeyDecision, KeyedLockLayer};
use pointlock_core::UserId;

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
    /// is refused at once with 503 `LOCK_QUEUE_FULL` (`Some(0)`: no waiting at
    /// all, a request that finds its user's lock held is refused; `None`: no
    /// bound but time). The lock layer's
    /// [`queue_max`](KeyedLockLayer::queue_max).
    pub lock_queue_max: Option<usize>,
    /// The most requests in the stack at once, all users and connections
    /// together; beyond it 503 `SERVER_OVERLOADED` at once
    /// ([`FrontLayer`]; at least 1).
    pub max_in_flight: usize,
    /// Whether to install the lock layer (negative controls turn it off; the
    /// router then takes each mutation's lock itself, reads take none).
    #[cfg(any(test, feature = "test-util"))]
    pub lock_layer: bool,
    /// The largest request line and headers, together, in bytes: beyond it
    /// 431 `HEADERS_TOO_LARGE` and the connection closes
    /// ([`FrontLayer`]).
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
            max_in_flight: MAX_IN_FLIGHT_DEFAULT,
            #[cfg(any(test, feature = "test-util"))]
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

/// Build the middleware stack around the router for `service`, boxed into one
/// nameable type (tests and embedders); [`serve`](super::serve) also takes
/// [`build_stack`]'s unboxed stack, which the binary uses.
pub fn build_app(service: SharedService, options: &AppOptions) -> App {
    BoxCloneSyncService::new(build_stack(service, options))
}

/// The stack of [`build_app`], unboxed: `hyper` clones the service for every
/// request, and a boxed service costs an allocation per clone and another per
/// response future (measured; see docs/performance.md).
///
/// Layers, outermost first (the numbers are those of the `ServiceBuilder`
/// chain below):
///
/// 0. [`FrontLayer`]: everything done to every request before the wallet sees
///    it, in one layer (one move of the request, one future): in `call`, the
///    request metrics start (only with [`AppOptions::metrics`]), the request's
///    id is chosen ([`request_id`](crate::middleware::request_id)), the
///    in-flight bound admits it or answers 503 `SERVER_OVERLOADED` at once
///    ([`AppOptions::max_in_flight`]; `GET /health` and `GET /metrics` are
///    exempt: they wait for nothing, and must answer an overloaded process's
///    probes), the head limits admit it or answer 431 `HEADERS_TOO_LARGE` /
///    411 `LENGTH_REQUIRED` (both close the connection), and the inner
///    service is called under the request deadline (a 408 for the whole
///    request, default 10 s, longer than the lock timeout; the timer is only
///    made if the request is not done in its first poll). When the answer is
///    ready: the in-flight slot is freed, the deadline's 408 and the body
///    limit's 413 become JSON errors, a server error is logged with the
///    request's id, `x-request-id` is set, and the request is counted by
///    method, route template ([`route_template`](crate::routes::route_template))
///    and status: what the client got, every layer below included. The same
///    [`Metrics`] serve `GET /metrics` through the router. Connection-level
///    limits (header timeout, connection cap, HTTP/2 streams) are
///    [`ServeOptions`](super::ServeOptions), applied by
///    [`serve_with`](super::serve_with).
/// 1. [`BearerAuth`], only with [`AppOptions::auth`] (bearer JWT: 401
///    `UNAUTHORIZED`, 403 `FORBIDDEN`). Far above the lock layer (5): a
///    refused request is answered here and never waits for, takes or holds a
///    user's lock, nor has its body read. Inside the front layer (its answers
///    carry an id, the head limit bounds the token's size, the in-flight bound
///    counts it); above everything that looks at the request's content, so an
///    anonymous client learns nothing but "authenticate". Off, there is no
///    layer: the stack costs what it did without authentication.
/// 2. `Trace` (a span and events per request, at DEBUG). Installed only when the
///    process's log filter lets DEBUG through: at the default INFO it would emit
///    nothing yet cost ~1,400 instructions per request (5% of a charge; measured
///    with `benches/instructions.sh`). Server errors are logged either way, with
///    the request's id, by the front layer (from the report
///    [`ApiError::into_response`](crate::error::ApiError::into_response)
///    attaches to every 5xx). Inside the request deadline: a request the
///    deadline ends has no `Trace` event for its answer.
/// 3. `CatchPanic` (a panic becomes a 500 JSON answer, `panic_response`). A
///    panic unwinds through the lock layer's future, whose `polling` flag marks
///    it as panicked: it is never resumed, and when `CatchPanic`'s future is
///    dropped (right after the 500 is ready) it drops the handler's future and
///    releases the user's lock. It boxes the response body into [`AppBody`],
///    the one box a response body gets.
/// 4. `RequestBodyLimit` (413, default 4 KiB)
/// 5. [`KeyedLockLayer`] with the wallet's [`user_key`] extractor (per-user FIFO
///    lock for the life of the request, a bounded queue per user).
/// 6. the [`Router`] (it reads a body within `body_timeout`, 408 `BODY_TIMEOUT`,
///    counted from when the user's lock is held: a slow uploader holds its user no
///    longer than this)
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
    let in_flight = InFlight::new(options.max_in_flight);
    if let Some(metrics) = &options.metrics {
        metrics.watch_service(Arc::clone(&service));
        metrics.watch_in_flight(in_flight.clone());
    }
    let front = FrontLayer::new(
        in_flight,
        options.header_limit_bytes,
        options.request_timeout,
        options.body_limit_bytes,
    )
    .metrics(
        options
            .metrics
            .as_ref()
            .map(|metrics| metrics.request_counter(&ROUTE_TEMPLATES, route_index)),
    )
    .exempt(&["/health", "/metrics"]);
    let trace = trace_enabled().then(|| {
        // The trace layer wraps the body: box it again so both branches agree.
        ServiceBuilder::new()
            .map_response(box_body)
            .layer(TraceLayer::new_for_http())
            .into_inner()
    });
    let extract: fn(&Request<Limited<Incoming>>) -> KeyDecision<UserId> = user_key;
    let lock = KeyedLockLayer::new(service.lock().clone(), extract)
        .timeout(options.lock_timeout)
        .queue_max(options.lock_queue_max)
        .on_refusal(refusal_response);
    #[cfg(any(test, feature = "test-util"))]
    let lock = negative_control::optional_lock(lock, options.lock_layer);
    let router = Router::new(
        service,
        RouterOptions {
            lock_timeout: options.lock_timeout,
            body_limit_bytes: options.body_limit_bytes,
            body_timeout: options.body_timeout,
            store_stats: options.store_stats.clone(),
            metrics: options.metrics.clone(),
        },
    );
    ServiceBuilder::new()
        .layer(front) // 0
        .option_layer(options.auth.clone()) // 1
        .option_layer(trace) // 2
        .layer(CatchPanicLayer::custom(panic_response)) // 3
        .layer(RequestBodyLimitLayer::new(options.body_limit_bytes)) // 4
        .layer(lock) // 5
        .service(router) // 6
}

/// Whether the trace layer's DEBUG spans and events could be recorded at all.
/// Decided once, when the stack is built (after the binary installs its log
/// filter): a filter reloaded later does not add the layer.
fn trace_enabled() -> bool {
    tracing::level_filters::LevelFilter::current() >= tracing::Level::DEBUG
}

/// The stack without its lock layer ([`AppOptions::lock_layer`]): test builds only.
#[cfg(any(test, feature = "test-util"))]
mod negative_control {
    use bytes::Bytes;
    use http::Response;
    use http_body_util::Full;
    use tower::util::{Either, MapResponseLayer};

    use keylock::layer::KeyedLockBody;

    /// The router's answer, as the lock layer's body type.
    type Unlocked = fn(Response<Full<Bytes>>) -> Response<KeyedLockBody<Full<Bytes>>>;

    /// The lock layer, or in its place only the lock layer's body type for the
    /// router's answers. `Either` joins the two without boxing the service and
    /// its future on every request.
    pub(super) fn optional_lock<L>(lock: L, on: bool) -> Either<L, MapResponseLayer<Unlocked>> {
        if on {
            Either::Left(lock)
        } else {
            let unlocked: Unlocked = |res| res.map(KeyedLockBody::inner);
            Either::Right(MapResponseLayer::new(unlocked))
        }
    }
}
