//! The HTTP ceiling: a bare hyper 1 server on the same runtime settings as the
//! `pointlock` binary (multi-thread tokio with default workers, hyper-util's auto
//! HTTP/1.1 + h2c builder, TCP_NODELAY) that reads each request's body and answers
//! every request with the same small JSON body. No routing, no middleware, no lock,
//! no store: whatever `pointlock` reaches as a fraction of this is the cost of
//! everything it does on top of hyper.
//!
//! `cargo run --release --example baseline_server -- 127.0.0.1:18081`
//! (used by `benches/load.sh`). Loopback only; stops on SIGINT (Ctrl-C).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The shape of a `UserPoint` answer, so both servers send bodies of similar size.
const BODY: &[u8] = br#"{"id":1,"point":0,"updateMillis":1795332719837}"#;

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body like a handler would (charge/use send one); ignore read errors.
    let _ = req.into_body().collect().await;
    let mut res = Response::new(Full::new(Bytes::from_static(BODY)));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(res)
}

fn main() -> std::io::Result<()> {
    let addr: SocketAddr = match std::env::args().nth(1) {
        Some(raw) => raw.parse().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{raw}: {e}"))
        })?,
        None => SocketAddr::from(([127, 0, 0, 1], 18081)),
    };
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the baseline server listens on loopback addresses only",
        ));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(addr))
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    eprintln!("baseline listening on http://{}", listener.local_addr()?);
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let conn =
                builder.serve_connection_with_upgrades(TokioIo::new(stream), service_fn(answer));
            let _ = conn.await;
        });
    }
}

/// The same allocator as the `pointlock` binary (a runtime setting both share).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
