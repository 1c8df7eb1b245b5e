//! `keyed_counter`: the [`KeyedLockLayer`] in a service of its own.
//!
//! A tiny HTTP counter service whose increment is a deliberate read-wait-write:
//! it reads the counter, waits `--latency-ms` (a stand-in for a slow store or a
//! remote call), then writes the value it read plus one. Two increments of one
//! counter that overlap both read the same value and one update is lost. The lock
//! layer closes that race without touching the handler: its key extractor names
//! the counter of every `POST /counter/{name}/incr`, and increments of one counter
//! then run one at a time, in arrival order, while different counters still run in
//! parallel. `--no-lock` serves the very same handler without the layer: the
//! negative control, which loses updates.
//!
//! - `POST /counter/{name}/incr`: increment; answers `{"name":"a","value":n}`.
//! - `GET /counter/{name}`: read; answers the same shape (0 for an unknown name).
//! - A name is 1 to 64 characters of `A-Z a-z 0-9 _ -`; any other name is answered
//!   400 `INVALID_NAME` at once, without taking any lock (the extractor rejects it).
//!   Unknown routes are 404 `NOT_FOUND`, wrong methods 405 `METHOD_NOT_ALLOWED`.
//! - An increment waits at most `--lock-timeout-ms` (3 s) for its counter and
//!   finds at most `--queue-max` (1024) others waiting, or the layer answers 503
//!   `LOCK_TIMEOUT` / `LOCK_QUEUE_FULL` with `Retry-After: 1`.
//!
//! Logs go to stderr, including the line `keyed_counter listening on http://ADDR`
//! with the address actually bound (`--addr 127.0.0.1:0` picks a free port).
//! Loopback addresses only unless `--allow-remote` (there is no authentication).
//! Ctrl-C or SIGTERM stops accepting and lets in-flight requests finish.
//!
//! # Run it
//!
//! ```sh
//! cargo run -p keylock --features tower --release --example keyed_counter -- --addr 127.0.0.1:8081 --latency-ms 20
//! ```
//!
//! ```sh
//! $ curl -s -X POST http://127.0.0.1:8081/counter/visits/incr
//! {"name":"visits","value":1}
//! $ curl -s http://127.0.0.1:8081/counter/visits
//! {"name":"visits","value":1}
//! $ curl -s http://127.0.0.1:8081/counter/nobody
//! {"name":"nobody","value":0}
//! $ curl -s -X POST 'http://127.0.0.1:8081/counter/no%20spaces/incr'
//! {"code":"INVALID_NAME","message":"a counter name is 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'"}
//!
//! # 50 concurrent increments of one counter: exactly 50 with the lock...
//! $ seq 50 | xargs -P 50 -I{} curl -s -o /dev/null -X POST http://127.0.0.1:8081/counter/burst/incr
//! $ curl -s http://127.0.0.1:8081/counter/burst
//! {"name":"burst","value":50}
//! # ...and far fewer when the server was started with --no-lock (lost updates).
//! ```
//!
//! `tests/keyed_counter.rs` runs this binary and checks all of the above.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use keylock::layer::{default_refusal, KeyDecision, KeyedLockBody, KeyedLockLayer, Refusal};
use keylock::KeyedLock;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::util::Either;
use tower::{service_fn, Service, ServiceBuilder};

/// A per-key FIFO lock layer around a deliberately racy counter service.
#[derive(Debug, Parser)]
#[command(name = "keyed_counter")]
struct Args {
    /// Address to listen on (port 0 picks a free port; the bound address is logged).
    #[arg(long, default_value = "127.0.0.1:8081")]
    addr: SocketAddr,
    /// Milliseconds an increment waits between reading its counter and writing it.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// Serve without the lock layer (negative control: concurrent increments lose updates).
    #[arg(long)]
    no_lock: bool,
    /// The longest an increment waits for its counter's lock before a 503 LOCK_TIMEOUT.
    #[arg(long, default_value_t = 3_000)]
    lock_timeout_ms: u64,
    /// The most increments that may wait for one counter; one more is refused at
    /// once with 503 LOCK_QUEUE_FULL.
    #[arg(long, default_value_t = 1_024)]
    queue_max: usize,
    /// Allow a non-loopback --addr (the service has no authentication).
    #[arg(long)]
    allow_remote: bool,
    /// Test hook: increments, after reading their counter, wait until this many
    /// of them wait there at once; from then on nobody waits. One that waits 2 s
    /// in vain answers 500 RENDEZVOUS_TIMEOUT, writes nothing and stops counting.
    /// It turns "these increments overlap" into a fact a test can rely on. 0: off.
    #[arg(long, default_value_t = 0, hide = true)]
    rendezvous: usize,
}

/// The counters. The std mutex is only ever held for one read or one write, never
/// across the wait in between: the read-wait-write is the race the layer prevents.
struct Counters {
    values: Mutex<HashMap<String, u64>>,
    latency: Duration,
    rendezvous: Option<Rendezvous>,
}

impl Counters {
    fn get(&self, name: &str) -> u64 {
        let values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        values.get(name).copied().unwrap_or(0)
    }

    fn set(&self, name: &str, value: u64) {
        let mut values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        values.insert(name.to_owned(), value);
    }
}

/// See [`Args::rendezvous`]: closed until `wanted` increments wait at it at
/// once, then open for good.
struct Rendezvous {
    wanted: usize,
    state: watch::Sender<RendezvousState>,
}

#[derive(Clone, Copy, Default)]
struct RendezvousState {
    waiting: usize,
    open: bool,
}

impl Rendezvous {
    const PATIENCE: Duration = Duration::from_secs(2);

    fn new(wanted: usize) -> Self {
        Self {
            wanted,
            state: watch::Sender::new(RendezvousState::default()),
        }
    }

    /// Wait (at most [`Self::PATIENCE`]) until the rendezvous opens; false if it
    /// did not (this increment then no longer counts as waiting).
    async fn arrive(&self) -> bool {
        let mut state = self.state.subscribe();
        self.state.send_if_modified(|s| {
            if s.open {
                return false;
            }
            s.waiting += 1;
            s.open = s.waiting >= self.wanted;
            true
        });
        // (`is_ok_and` drops the watch's read guard before the write below.)
        let opened = tokio::time::timeout(Self::PATIENCE, state.wait_for(|s| s.open))
            .await
            .is_ok_and(|waited| waited.is_ok());
        if opened {
            return true;
        }
        let mut open = false;
        self.state.send_if_modified(|s| {
            open = s.open;
            if !s.open {
                s.waiting -= 1;
            }
            false
        });
        open
    }
}

/// What a request asks for, decided from its method and path alone (shared by the
/// lock's key extractor and the handler, so both agree on every request).
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Get(&'a str),
    Incr(&'a str),
    InvalidName,
    NotFound,
    /// The route exists with this other method.
    MethodNotAllowed(&'static str),
}

fn route<'a>(method: &Method, path: &'a str) -> Route<'a> {
    let Some(rest) = path.strip_prefix("/counter/") else {
        return Route::NotFound;
    };
    let (name, action) = match rest.split_once('/') {
        Some((name, action)) => (name, Some(action)),
        None => (rest, None),
    };
    let (allowed, allowed_name) = match action {
        None => (Method::GET, "GET"),
        Some("incr") => (Method::POST, "POST"),
        Some(_) => return Route::NotFound,
    };
    if !valid_name(name) {
        return Route::InvalidName;
    }
    match (*method == allowed, action) {
        (true, None) => Route::Get(name),
        (true, Some(_)) => Route::Incr(name),
        (false, _) => Route::MethodNotAllowed(allowed_name),
    }
}

/// 1 to 64 characters of `A-Z a-z 0-9 _ -` (so `%20`, `.` and `/` are all out).
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The layer's key extractor: an increment locks its counter; a bad name is
/// answered here, before any lock is taken; everything else passes unlocked
/// (reads need no lock: each one sees a value some increment wrote).
fn counter_key(req: &Request<Incoming>) -> KeyDecision<String> {
    match route(req.method(), req.uri().path()) {
        Route::Incr(name) => KeyDecision::Lock(name.to_owned()),
        Route::InvalidName => KeyDecision::Reject(invalid_name()),
        _ => KeyDecision::Pass,
    }
}

/// The service itself, unaware of any lock. Without the layer it still validates
/// names, so both variants answer the same bodies.
async fn handle(
    counters: Arc<Counters>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match route(req.method(), req.uri().path()) {
        Route::Get(name) => counter(name, counters.get(name)),
        Route::Incr(name) => increment(&counters, name).await,
        Route::InvalidName => invalid_name(),
        Route::NotFound => error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no such route: try GET /counter/{name} or POST /counter/{name}/incr",
        ),
        Route::MethodNotAllowed(allowed) => {
            let mut res = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                &format!("this route takes {allowed} only"),
            );
            res.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allowed));
            res
        }
    };
    Ok(response)
}

/// Read, wait, write: correct only if nothing else increments `name` meanwhile.
async fn increment(counters: &Counters, name: &str) -> Response<Full<Bytes>> {
    let read = counters.get(name);
    if let Some(rendezvous) = &counters.rendezvous {
        if !rendezvous.arrive().await {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "RENDEZVOUS_TIMEOUT",
                "too few increments ran at once (--rendezvous); nothing was written",
            );
        }
    }
    tokio::time::sleep(counters.latency).await;
    let value = read.saturating_add(1);
    counters.set(name, value);
    eprintln!("keyed_counter: {name}: {read} -> {value}");
    counter(name, value)
}

fn counter(name: &str, value: u64) -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, &json!({ "name": name, "value": value }))
}

fn invalid_name() -> Response<Full<Bytes>> {
    error(
        StatusCode::BAD_REQUEST,
        "INVALID_NAME",
        "a counter name is 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'",
    )
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "code": code, "message": message }))
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// The layer's answer to a timeout or a full queue: its default 503, logged.
fn refuse(refusal: Refusal) -> Response<Full<Bytes>> {
    eprintln!("keyed_counter: refused an increment: {refusal:?}");
    default_refusal(refusal)
}

/// Without the layer: the layer's body type, so both variants are one service type.
fn unlocked(res: Response<Full<Bytes>>) -> Response<KeyedLockBody<Full<Bytes>>> {
    res.map(KeyedLockBody::inner)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // The layer's log lines (timeouts, full queues, at DEBUG) go to stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if !args.addr.ip().is_loopback() && !args.allow_remote {
        eprintln!(
            "error: {} is not a loopback address; pass --allow-remote to listen there",
            args.addr
        );
        return ExitCode::from(2);
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let counters = Arc::new(Counters {
        values: Mutex::new(HashMap::new()),
        latency: Duration::from_millis(args.latency_ms),
        rendezvous: (args.rendezvous > 0).then(|| Rendezvous::new(args.rendezvous)),
    });
    let handler = service_fn(move |req| handle(Arc::clone(&counters), req));
    // One service type either way: `Either` of the locked and the unlocked stack.
    let app = if args.no_lock {
        Either::Right(
            ServiceBuilder::new()
                .map_response(unlocked)
                .service(handler),
        )
    } else {
        let layer = KeyedLockLayer::new(KeyedLock::new(), counter_key)
            .timeout(Duration::from_millis(args.lock_timeout_ms))
            .queue_max(args.queue_max)
            .on_refusal(refuse);
        Either::Left(ServiceBuilder::new().layer(layer).service(handler))
    };

    let listener = TcpListener::bind(args.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!(
        "keyed_counter: lock {}, latency {} ms, lock timeout {} ms, queue max {}{}",
        if args.no_lock {
            "OFF (--no-lock)"
        } else {
            "on"
        },
        args.latency_ms,
        args.lock_timeout_ms,
        args.queue_max,
        match args.rendezvous {
            0 => String::new(),
            n => format!(", rendezvous {n}"),
        },
    );
    eprintln!("keyed_counter listening on http://{addr}");

    serve(listener, app, shutdown_signal(), Duration::from_secs(10)).await;
    Ok(())
}

/// Accept connections until `shutdown` resolves, each served as HTTP/1.1 or h2c;
/// then stop accepting and give in-flight requests up to `drain` to finish.
async fn serve<S>(
    listener: TcpListener,
    app: S,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) where
    S: Service<
            Request<Incoming>,
            Response = Response<KeyedLockBody<Full<Bytes>>>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    eprintln!("keyed_counter: accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let builder = builder.clone();
        tokio::spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    eprintln!("keyed_counter: shutting down; finishing in-flight requests");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("keyed_counter: in-flight requests did not finish within {drain:?}");
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
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
        () = ctrl_c => eprintln!("keyed_counter: SIGINT received"),
        () = term => eprintln!("keyed_counter: SIGTERM received"),
    }
}
