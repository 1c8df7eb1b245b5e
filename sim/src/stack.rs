//! The HTTP stack the simulated clients call: the server's own router,
//! keylock's [`KeyedLockLayer`] with the wallet's key extractor and refusal
//! answers, and the server's request deadline, in the server's order
//! (deadline outside the lock, router inside), called as a tower service with
//! in-memory request bodies. The server's [`build_stack`] is typed for
//! hyper's `Incoming` body, which cannot be made without a connection, so the
//! layers around the deadline (metrics, request id, header limit, JSON error
//! normalisation, catch-panic, body limit) are not in the simulated path.
//!
//! [`build_stack`]: pointlock_server::app::build_stack

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use keylock::layer::{KeyDecision, KeyedLockBody, KeyedLockLayer};
use pointlock_core::UserId;
use pointlock_server::error::refusal_response;
use pointlock_server::middleware::deadline;
use pointlock_server::routes::{user_key, Router, RouterOptions, SharedService};
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

use crate::plant::{Leak, Plant, Reorder};

/// A simulated request.
pub type SimRequest = Request<Full<Bytes>>;
/// The stack's answer.
pub type SimResponse = Response<KeyedLockBody<Full<Bytes>>>;
/// The stack, boxed.
pub type Stack = BoxCloneSyncService<SimRequest, SimResponse, Infallible>;

/// The stack's limits (shorter than the server's defaults, so that timeouts
/// and full queues happen within a seed's few hundred simulated milliseconds).
#[derive(Clone, Copy, Debug)]
pub struct StackOptions {
    /// The longest a request waits for its user's lock (503 `LOCK_TIMEOUT`).
    pub lock_timeout: Duration,
    /// The whole request's deadline (408); longer than the lock timeout, as
    /// the server requires.
    pub request_timeout: Duration,
    /// The most waiters per user (503 `LOCK_QUEUE_FULL`).
    pub lock_queue_max: usize,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_millis(150),
            request_timeout: Duration::from_millis(220),
            lock_queue_max: 4,
        }
    }
}

/// Build the stack over `service`, with `plant`'s layer if it has one
/// (`seed` draws the plant's choices).
pub fn build(
    service: SharedService,
    options: StackOptions,
    plant: Option<Plant>,
    seed: u64,
) -> Stack {
    let router = Router::new(
        Arc::clone(&service),
        RouterOptions {
            lock_timeout: options.lock_timeout,
            body_limit_bytes: 4 * 1024,
            body_timeout: Duration::from_millis(2_000),
            store_stats: None,
            metrics: None,
        },
    );
    let inner: BoxCloneSyncService<SimRequest, Response<Full<Bytes>>, Infallible> =
        if plant == Some(Plant::LeakedGuard) {
            BoxCloneSyncService::new(Leak::new(router, seed, Arc::new(Mutex::new(Vec::new()))))
        } else {
            BoxCloneSyncService::new(router)
        };
    let extract: fn(&SimRequest) -> KeyDecision<UserId> = user_key;
    let locked = KeyedLockLayer::new(service.lock().clone(), extract)
        .timeout(options.lock_timeout)
        .queue_max(options.lock_queue_max)
        .on_refusal(refusal_response)
        .layer(inner);
    let request_timeout = options.request_timeout;
    let with_deadline = locked.map_future(move |future| {
        deadline::within(
            tokio::time::Instant::now() + request_timeout,
            future,
            || {
                let mut res = Response::new(KeyedLockBody::default());
                *res.status_mut() = StatusCode::REQUEST_TIMEOUT;
                Ok(res)
            },
        )
    });
    if plant == Some(Plant::FifoInversion) {
        BoxCloneSyncService::new(Reorder::new(with_deadline, seed))
    } else {
        BoxCloneSyncService::new(with_deadline)
    }
}
