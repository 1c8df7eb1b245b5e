//! In-process servers: any app on a loopback port ([`Served`]), and the
//! wallet over a [`ProbeStore`] with the requests the tests send
//! ([`TestServer`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use pointlock::core::{KeyedLock, PointService, PointStore, Policy, UserId};
use pointlock::server::app::{build_app, serve_with, App, ServeOptions};
use pointlock::server::clock::SystemClock;
use pointlock::server::AppOptions;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::http::{client, Client};
use super::probe::ProbeStore;

/// An app served on a loopback port by a task of the current runtime, until
/// [`stop`](Self::stop) or drop.
pub struct Served {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Served {
    /// Serve `app` with `options` on a free loopback port.
    pub async fn start(app: App, options: ServeOptions) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            serve_with(listener, app, shutdown, &options).await
        });
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// Begin the graceful shutdown: stop accepting, drain what is in flight.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Whether the serving task has returned.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// [`stop`](Self::stop), then what the serving task returned once it has.
    pub async fn finished(mut self) -> std::io::Result<()> {
        self.stop();
        (&mut self.task).await.expect("the serving task panicked")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The default connection limits with `drain` as the shutdown's bound.
pub fn drain(drain: Duration) -> ServeOptions {
    ServeOptions {
        drain,
        ..ServeOptions::default()
    }
}

/// The wallet's whole stack over a [`ProbeStore`] on a loopback port, with a
/// client and the wallet's requests; dropped: shut down.
pub struct TestServer {
    pub addr: SocketAddr,
    pub lock: KeyedLock<UserId>,
    pub store: Arc<ProbeStore>,
    client: Client,
    _served: Served,
}

/// An answer with a JSON body.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
}

impl TestServer {
    /// A server with the lock layer and a real lock.
    pub async fn start(store: ProbeStore, options: AppOptions) -> Self {
        Self::start_with_lock(store, options, KeyedLock::new()).await
    }

    pub async fn start_with_lock(
        store: ProbeStore,
        options: AppOptions,
        lock: KeyedLock<UserId>,
    ) -> Self {
        Self::start_with_policy(store, options, lock, Policy::default()).await
    }

    pub async fn start_with_policy(
        store: ProbeStore,
        options: AppOptions,
        lock: KeyedLock<UserId>,
        policy: Policy,
    ) -> Self {
        Self::start_inner(store, options, lock, policy, true).await
    }

    /// A server whose service makes unconditional changes (the store's condition
    /// switched off: test-util negative controls only).
    pub async fn start_unconditional(
        store: ProbeStore,
        options: AppOptions,
        lock: KeyedLock<UserId>,
    ) -> Self {
        Self::start_inner(store, options, lock, Policy::default(), false).await
    }

    async fn start_inner(
        store: ProbeStore,
        options: AppOptions,
        lock: KeyedLock<UserId>,
        policy: Policy,
        conditional: bool,
    ) -> Self {
        Self::start_shared(Arc::new(store), options, lock, policy, conditional).await
    }

    /// A server over a store that outlives it (several servers in turn over
    /// one store: the model-based tests start one per case); `conditional:
    /// false` as in [`start_unconditional`](Self::start_unconditional).
    pub async fn start_shared(
        store: Arc<ProbeStore>,
        options: AppOptions,
        lock: KeyedLock<UserId>,
        policy: Policy,
        conditional: bool,
    ) -> Self {
        let clock = Arc::new(SystemClock::default());
        let core = PointService::with_lock(
            store.clone() as Arc<dyn PointStore>,
            policy,
            clock,
            lock.clone(),
        );
        let svc = Arc::new(if conditional {
            core
        } else {
            core.without_commit_condition()
        });
        let app = build_app(svc, &options);
        let served = Served::start(app, drain(Duration::from_secs(5))).await;
        Self {
            addr: served.addr,
            lock,
            store,
            client: client(),
            _served: served,
        }
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<&str>) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
            .unwrap();
        let res = self.client.request(req).await.expect("request failed");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("non-JSON body {bytes:?}: {e}"));
        Reply {
            status,
            headers,
            json,
        }
    }

    /// A request with extra headers; the raw answer (status, headers, body bytes).
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &str,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path))
            .header("content-type", "application/json");
        for (name, value) in headers {
            req = req.header(*name, http::HeaderValue::from_bytes(value).unwrap());
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let res = self.client.request(req).await.expect("request failed");
        let status = res.status();
        let headers = res.headers().clone();
        (
            status,
            headers,
            res.into_body().collect().await.unwrap().to_bytes(),
        )
    }

    /// `GET path`: status, headers and the body as text (for non-JSON answers).
    pub async fn get_text(&self, path: &str) -> (StatusCode, HeaderMap, String) {
        let req = Request::get(format!("http://{}{}", self.addr, path))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = self.client.request(req).await.expect("request failed");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).expect("a UTF-8 body");
        (status, headers, text)
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }

    pub async fn charge(&self, user: u64, amount: u64) -> Reply {
        let body = format!("{{\"amount\":{amount}}}");
        self.send(Method::PATCH, &format!("/point/{user}/charge"), Some(&body))
            .await
    }

    /// `charge` in a task of its own (to queue it behind a holder).
    pub fn spawn_charge(self: &Arc<Self>, user: u64, amount: u64) -> JoinHandle<Reply> {
        let server = Arc::clone(self);
        tokio::spawn(async move { server.charge(user, amount).await })
    }

    /// `use_points` in a task of its own.
    pub fn spawn_use(self: &Arc<Self>, user: u64, amount: u64) -> JoinHandle<Reply> {
        let server = Arc::clone(self);
        tokio::spawn(async move { server.use_points(user, amount).await })
    }

    pub async fn use_points(&self, user: u64, amount: u64) -> Reply {
        let body = format!("{{\"amount\":{amount}}}");
        self.send(Method::PATCH, &format!("/point/{user}/use"), Some(&body))
            .await
    }

    pub async fn balance(&self, user: u64) -> u64 {
        let reply = self.get(&format!("/point/{user}")).await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.json["point"].as_u64().unwrap()
    }

    pub async fn history(&self, user: u64) -> Vec<Value> {
        let reply = self.get(&format!("/point/{user}/histories")).await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.json.as_array().unwrap().clone()
    }

    /// Invariant 1: the balance equals the replayed history, and never dipped below 0.
    pub async fn assert_history_replays(&self, user: u64) -> u64 {
        let mut running: i128 = 0;
        for row in self.history(user).await {
            let amount = i128::from(row["amount"].as_u64().unwrap());
            match row["type"].as_str().unwrap() {
                "CHARGE" => running += amount,
                "USE" => running -= amount,
                other => panic!("unknown type {other}"),
            }
            assert!(running >= 0, "history goes negative");
        }
        let balance = self.balance(user).await;
        assert_eq!(i128::from(balance), running, "balance != replayed history");
        balance
    }

    /// Wait (bounded) until `condition` holds on the lock: a deterministic signal.
    pub async fn wait_for_lock(&self, what: &str, condition: impl Fn(&KeyedLock<UserId>) -> bool) {
        for _ in 0..10_000 {
            if condition(&self.lock) {
                return;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("timed out waiting for: {what}");
    }

    /// Wait (bounded) until no user is locked and every change the store
    /// sequenced has been answered for: on a pipelined store a user is
    /// released before its change is durable, so an empty lock table alone
    /// does not mean the data is settled.
    pub async fn wait_until_settled(&self, what: &str) {
        for _ in 0..10_000 {
            if self.lock.is_empty() && self.store.unsettled() == 0 {
                return;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("timed out waiting for: {what}");
    }
}

/// Options for concurrency tests: a generous lock timeout so 100 queued requests
/// over a slow store never time out.
pub fn patient() -> AppOptions {
    AppOptions {
        lock_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(60),
        ..AppOptions::default()
    }
}
