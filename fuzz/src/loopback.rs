//! The whole server as the binary serves it: `app::build_app` (request ids,
//! error normalisation, the panic catcher, the request deadline, the body
//! limit, the lock layer, the router) behind `app::serve` on a loopback
//! socket, and a hyper client, so requests go through hyper's own parsing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pointlock_core::{KeyedLock, MemoryStore, PointStore, Policy};
use pointlock_server::app::{build_app, serve, service, AppOptions};
use pointlock_server::clock::SystemClock;

use crate::stack::Reply;

/// A server on a loopback port, its client, and the runtime both run on.
pub struct Loopback {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Loopback {
    fn default() -> Self {
        Self::new()
    }
}

impl Loopback {
    /// Start the server (default options, memory store, default policy).
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        let addr = runtime.block_on(async {
            let svc = service(
                Arc::new(MemoryStore::new()) as Arc<dyn PointStore>,
                Policy::default(),
                Arc::new(SystemClock::default()),
                KeyedLock::new(),
            );
            let app = build_app(svc, &AppOptions::default());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a loopback port");
            let addr = listener.local_addr().expect("the bound address");
            tokio::spawn(serve(
                listener,
                app,
                std::future::pending(),
                Duration::from_secs(1),
            ));
            addr
        });
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self {
            runtime,
            addr,
            client,
        }
    }

    /// Send `method target` (`target`: an origin-form request target, such as
    /// `/point/1?x`) with `headers` and `body`; the answer read whole. `None`
    /// when the target is not one `http` accepts, so no client can send it.
    pub fn call(
        &self,
        method: Method,
        target: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: &[u8],
    ) -> Option<Reply> {
        let uri: http::Uri = format!("http://{}{target}", self.addr).parse().ok()?;
        let mut req = Request::new(Full::new(Bytes::copy_from_slice(body)));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        for (name, value) in headers {
            req.headers_mut().append(name, value.clone());
        }
        Some(self.runtime.block_on(async {
            let res = self
                .client
                .request(req)
                .await
                .expect("the loopback server answers");
            let header = |name: HeaderName| {
                res.headers()
                    .get(name)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            };
            let allow = header(http::header::ALLOW);
            let content_type = header(http::header::CONTENT_TYPE);
            let replayed = header(pointlock_server::routes::IDEMPOTENT_REPLAYED);
            let status = res.status();
            let body = res
                .into_body()
                .collect()
                .await
                .expect("the whole answer")
                .to_bytes();
            let json = serde_json::from_slice(&body).ok();
            Reply {
                status,
                allow,
                content_type,
                replayed,
                json,
                body,
            }
        }))
    }
}
