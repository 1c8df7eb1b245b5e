//! Serving connections: the hyper accept loop with its connection limits, and
//! the shutdown signal.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower_service::Service;

use super::head_timer::ConnectionTimer;
use super::linger::Lingering;
use crate::body::BoxError;
use crate::middleware::limits::{head_buffer_bytes, HEADER_LIMIT_BYTES_DEFAULT};

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
    /// The head limit of [`AppOptions::header_limit_bytes`](super::AppOptions::header_limit_bytes): sizes hyper's read
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
///   connection; timed by one [`ConnectionTimer`] per connection), a read
///   buffer of [`head_buffer_bytes`].
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
/// - A connection the server closes first lingers: up to
///   [`LINGER`](super::linger::LINGER) it reads and drops what the client
///   still sends, so a client still sending a body it was refused (413) reads
///   the answer instead of a reset ([`linger`](super::linger)).
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
    // HTTP/1's timer is set per connection (below).
    builder
        .http1()
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
        let mut builder = builder.clone();
        // One header timer per connection, re-armed lazily (`ConnectionTimer`).
        builder.http1().timer(ConnectionTimer::default());
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
            // Closed by the server, a connection lingers (see `Lingering`).
            let io = TokioIo::new(Lingering::new(stream));
            let conn = builder.serve_connection_with_upgrades(io, service);
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
