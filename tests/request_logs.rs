//! The request's id on its log lines: a server error's line names it, and at
//! DEBUG every event of the request runs in its `request{id=…}` span.
//!
//! A binary of its own, with one global subscriber: tracing caches whether a
//! callsite is enabled, and a callsite first hit by a test thread without a
//! subscriber while another test installs a thread-local one can stay
//! disabled for that one too. With one global subscriber there is no such
//! race.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use pointlock::core::{PointError, StoreError};
use pointlock::server::app::{AppBody, FrontLayer};
use pointlock::server::error::ApiError;
use pointlock::server::middleware::in_flight::InFlight;
use pointlock::server::middleware::request_id::{finish, RequestId, X_REQUEST_ID};
use tower::{service_fn, Layer, ServiceExt};

/// Everything logged by this binary, at DEBUG.
fn logs() -> &'static Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        logs
    })
}

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("logs")).into_owned()
    }

    /// The first line containing `needle`.
    fn line(&self, needle: &str) -> String {
        let text = self.text();
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle}:\n{text}"))
            .to_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

#[tokio::test]
async fn server_errors_are_logged_with_the_request_id() {
    let logs = logs();
    let failed = ApiError::Point(PointError::Store(StoreError::new("disk on fire")));
    finish(
        &mut failed.into_response(),
        HeaderValue::from_static("client-7"),
    );
    let timed_out = ApiError::Point(PointError::LockTimeout);
    finish(
        &mut timed_out.into_response(),
        HeaderValue::from_static("gen-1"),
    );
    let failed = logs.line("request_id=client-7");
    assert!(
        failed.contains("ERROR") && failed.contains("code=\"STORE_ERROR\""),
        "{failed}"
    );
    assert!(failed.contains("disk on fire"), "{failed}");
    let refused = logs.line("request_id=gen-1");
    assert!(
        refused.contains("WARN") && refused.contains("LOCK_TIMEOUT"),
        "{refused}"
    );
}

#[tokio::test]
async fn at_debug_every_line_of_the_request_names_it() {
    let logs = logs();
    let inner = service_fn(|req: Request<()>| async move {
        let id = req
            .extensions()
            .get::<RequestId>()
            .map(RequestId::header_value);
        tracing::info!(seen = ?id, "inside the handler");
        let body = Full::new(Bytes::from_static(b"ok")).map_err(|never| match never {});
        Ok::<_, Infallible>(Response::new(AppBody::new(body)))
    });
    let front =
        FrontLayer::new(InFlight::new(4), 16 * 1024, Duration::from_secs(10), 4096).layer(inner);
    let theirs = Request::get("/point/1")
        .header(X_REQUEST_ID, "client-8")
        .body(())
        .expect("request");
    let res = front.clone().oneshot(theirs).await.expect("infallible");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[X_REQUEST_ID], "client-8");
    let res = front.oneshot(Request::new(())).await.expect("infallible");
    assert_eq!(res.headers()[X_REQUEST_ID], "1");
    let theirs = logs.line("inside the handler seen=Some(\"client-8\")");
    assert!(theirs.contains("request{id=client-8}"), "{theirs}");
    let ours = logs.line("inside the handler seen=Some(\"1\")");
    assert!(ours.contains("request{id=1}"), "{ours}");
}
