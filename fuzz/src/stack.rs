//! The server's request path in process: `KeyedLockLayer` with the wallet's
//! key extractor `routes::user_key`, in front of the `Router`, over a memory
//! store, composed as `app::build_stack` composes them (the outer layers of
//! that stack, request ids, the body limit, the deadline and the panic
//! catcher, need a real connection: `tests/full_stack.rs` replays the corpus
//! through them on a loopback socket).
//!
//! Without `CatchPanic`, a panic in a handler is a panic of the fuzz target,
//! which is what a fuzzer should see.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use keylock::layer::{KeyDecision, KeyedLockBody, KeyedLockLayer};
use pointlock_core::{KeyedLock, MemoryStore, PointStore, Policy, UserId};
use pointlock_server::clock::SystemClock;
use pointlock_server::error::refusal_response;
use pointlock_server::routes::{user_key, Router, RouterOptions};
use serde_json::Value;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};

type Svc =
    BoxCloneService<Request<Full<Bytes>>, http::Response<KeyedLockBody<Full<Bytes>>>, Infallible>;

/// Requests a stack serves before it is built anew: the memory store's
/// histories of the few users the corpus names would otherwise grow without
/// bound (and `GET …/histories` with them).
const REQUESTS_PER_STACK: usize = 2_000;

/// An answer, read whole.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: StatusCode,
    /// The `Allow` header, if any.
    pub allow: Option<String>,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The `Idempotent-Replayed` header, if any.
    pub replayed: Option<String>,
    /// The body as JSON (`None` if it is not JSON).
    pub json: Option<Value>,
    /// The raw body.
    pub body: Bytes,
}

/// The in-process stack and the runtime it runs on.
pub struct Stack {
    runtime: tokio::runtime::Runtime,
    service: Svc,
    served: usize,
    generation: u64,
}

impl Default for Stack {
    fn default() -> Self {
        Self::new()
    }
}

impl Stack {
    /// A fresh stack over an empty memory store (default policy: max balance
    /// 10 000) on a current-thread runtime.
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime");
        Self {
            runtime,
            service: build(),
            served: 0,
            generation: 0,
        }
    }

    /// How many times the stack was built (state is per build: a caller that
    /// models balances starts again from zero when this changes).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Serve one request and read its answer whole.
    pub fn call(
        &mut self,
        method: Method,
        uri: http::Uri,
        headers: &[(HeaderName, HeaderValue)],
        body: &[u8],
    ) -> Reply {
        if self.served == REQUESTS_PER_STACK {
            self.service = build();
            self.served = 0;
            self.generation += 1;
        }
        self.served += 1;
        let mut req = Request::new(Full::new(Bytes::copy_from_slice(body)));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        for (name, value) in headers {
            req.headers_mut().append(name, value.clone());
        }
        let service = self.service.clone();
        self.runtime.block_on(async move {
            let res = match service.oneshot(req).await {
                Ok(res) => res,
                Err(never) => match never {},
            };
            let header = |name: http::header::HeaderName| {
                res.headers()
                    .get(name)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            };
            let allow = header(http::header::ALLOW);
            let content_type = header(http::header::CONTENT_TYPE);
            let replayed = header(pointlock_server::routes::IDEMPOTENT_REPLAYED);
            let status = res.status();
            let body = match res.into_body().collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            let json = serde_json::from_slice(&body).ok();
            Reply {
                status,
                allow,
                content_type,
                replayed,
                json,
                body,
            }
        })
    }
}

fn build() -> Svc {
    let lock = KeyedLock::new();
    let service = Arc::new(pointlock_core::PointService::with_lock(
        Arc::new(MemoryStore::new()) as Arc<dyn PointStore>,
        Policy::default(),
        Arc::new(SystemClock::default()),
        lock.clone(),
    ));
    let router = Router::new(service, RouterOptions::default());
    let extract: fn(&Request<Full<Bytes>>) -> KeyDecision<UserId> = user_key;
    let layer = KeyedLockLayer::new(lock, extract)
        .timeout(Duration::from_secs(3))
        .queue_max(Some(1_024))
        .on_refusal(refusal_response);
    BoxCloneService::new(layer.layer(router))
}
