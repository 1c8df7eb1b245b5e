//! Middleware that serialises requests per key, in arrival order, for the life of
//! each request.
//!
//! [`KeyedLockLayer`] puts a [`KeyedLock`](crate::KeyedLock) in front of any tower
//! HTTP service whose requests for one key (a user, an account, a document, a
//! counter) must not interleave. A key extractor names each request's key
//! ([`KeyDecision`]); the middleware takes that key before calling the inner
//! service and releases it when the inner response future completes. Requests of
//! different keys never wait for each other.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use keylock::KeyedLock;
//! use keylock::layer::{KeyDecision, KeyedLockLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! /// `/counter/{name}/...` locks `name`; other paths pass; a bad name is a 400.
//! fn counter_name(req: &Request<Full<Bytes>>) -> KeyDecision<String> {
//!     let Some(rest) = req.uri().path().strip_prefix("/counter/") else {
//!         return KeyDecision::Pass;
//!     };
//!     let name = rest.split('/').next().unwrap_or_default();
//!     if name.is_empty() {
//!         let mut bad = Response::new(Full::from("bad name"));
//!         *bad.status_mut() = StatusCode::BAD_REQUEST;
//!         return KeyDecision::Reject(bad);
//!     }
//!     KeyDecision::Lock(name.to_owned())
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let service = ServiceBuilder::new()
//!     .layer(
//!         KeyedLockLayer::new(KeyedLock::new(), counter_name)
//!             .timeout(Duration::from_secs(3))
//!             .queue_max(1_000),
//!     )
//!     .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!         // Runs alone for its counter: read, wait, write without a race.
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::from("ok")))
//!     }));
//! let req = Request::builder().uri("/counter/a/incr").body(Full::default()).unwrap();
//! let res = service.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! # });
//! ```
//!
//! # When the key is taken and released
//!
//! - **Taken**: the request's place in its key's queue is taken in
//!   [`Service::call`](tower_service::Service::call); driving the service to
//!   ready takes no lock. The inner service is called once the key is held:
//!   within that `call` when the key is free, else from the response future
//!   when its turn comes.
//! - **Released**: when the inner response future resolves (the response head is
//!   ready; the inner service has finished its work). A clone of the guard taken
//!   through [`HeldLock::guard`] keeps the key held until it is dropped too: work
//!   that must finish under the lock (a write that must be durable before the
//!   next request for the key runs) can hold it past the response. An inner
//!   service may instead **take the guard over** ([`HeldLock::take`]): the layer
//!   then holds nothing, and the key is released when the taker drops the guard,
//!   possibly before the response is ready.
//! - **The extractor decides** per request ([`KeyDecision`]): lock a key, pass the
//!   request through unlocked, or reject it at once without taking any lock.
//!
//! The inner service finds a [`HeldLock`] in the request's extensions: the key and
//! a weak handle on the guard. Keeping the request or the extension does not keep
//! the key locked past the response.
//!
//! # Properties
//!
//! - **Fairness**: FIFO per key. Requests for one key are served in the order
//!   their `call` reached this layer; a released key is handed to the next request
//!   in line, so no late arrival barges in.
//! - **Timeout**: a wait longer than [`KeyedLockLayer::timeout`] (3 s by default)
//!   is answered by the layer ([`Refusal::TimedOut`]: 503 with `Retry-After`
//!   unless [`KeyedLockLayer::on_refusal`] says otherwise); the inner service is
//!   never called.
//! - **Queue bound**: with [`KeyedLockLayer::queue_max`], a request that finds
//!   that many already waiting for its key is refused at once the same way
//!   ([`Refusal::QueueFull`]), queueing nothing.
//! - **Cancel safety**: dropped while queued, the request leaves the queue and
//!   never strands the next one. Dropped while the inner future runs (a client
//!   disconnects, an outer timeout fires), the inner future and the guard move
//!   into a spawned tokio task and run to completion there: work that started
//!   under the lock finishes under it. A panic in the inner future is not resumed:
//!   the future is dropped and the key released.
//! - **Memory**: a key's entry exists only while it is held or awaited; an idle
//!   key costs nothing.
//! - **Metrics**: the lock's own ([`KeyedLock::metrics`](crate::KeyedLock::metrics)):
//!   keys held, waiters, acquisitions, contended acquisitions, timeouts,
//!   queue-full refusals, wait times.
//!
//! The pieces, one per file: [`KeyedLockLayer`] (the configuration, cheap to
//! clone), [`KeyedLockService`] (the middleware), [`ResponseFuture`] (waits for
//! the key, then runs the inner future under it), [`KeyedLockBody`] (the inner
//! body or the layer's own answer), [`KeyDecision`] and [`ExtractKey`] (what to
//! lock), [`Refusal`] (why the layer answered), [`HeldLock`] (the guard as the
//! inner service sees it).

mod body;
mod extract;
mod future;
mod held;
// The tower-http layout: the layer's configuration in `layer.rs` beside
// `service.rs`, `future.rs` and `body.rs`.
#[allow(clippy::module_inception)]
mod layer;
mod refusal;
mod service;

pub use body::KeyedLockBody;
pub use extract::{ExtractKey, KeyDecision};
pub use future::ResponseFuture;
pub use held::HeldLock;
pub use layer::KeyedLockLayer;
pub use refusal::{default_refusal, Refusal, RefusalResponse};
pub use service::KeyedLockService;

#[cfg(test)]
mod tests;
