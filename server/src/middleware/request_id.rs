//! `x-request-id` on every response: the client's own, or a process-wide counter.
//!
//! What tower-http's `SetRequestId` and `PropagateRequestId` do together, in one
//! layer and without their bookkeeping: those two store the id in the request's and
//! the response's extensions (an `AnyMap` each: six allocations per request, the
//! largest single cost of this server's stack over bare hyper; see
//! docs/performance.md). Here the id travels in the response future instead.
//!
//! - The work **starts** in `call`: the id is the request's `x-request-id` header if
//!   present (kept as is), otherwise the next value of the counter. It goes into
//!   the request's extensions as [`RequestId`].
//! - Every log line of the request carries the id, in two ways. A server error (a
//!   5xx answer made from an [`ApiError`](crate::error::ApiError): a store
//!   failure, a panic, a lock timeout, a full queue, a write conflict) is logged
//!   **here**, when its response passes, with `request_id` and the error's code
//!   and detail (`ERROR` for 500, `WARN` for 503). And when the log filter lets
//!   `DEBUG` through, the inner future runs in a `request{id=…}` span, so every
//!   event under it (the trace layer's, the lock layer's, work finished after a
//!   disconnect) names the request too. The span is not made at `INFO`: a span
//!   per request costs ~3,000 instructions, 14 % of a charge (measured with
//!   `benches/instructions.sh`), to decorate lines that are not written.
//! - It **ends** when the inner response is ready: the id is set on the response
//!   unless the inner service already set one.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderName;
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;

use crate::error::ServerErrorReport;

/// The header this layer reads and sets.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request's id, in its extensions (the `x-request-id` its response carries).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The id as the header carries it.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

/// Puts `x-request-id` on every response (see the [module docs](self)).
#[derive(Clone, Debug, Default)]
pub struct RequestIdLayer {
    next: Arc<AtomicU64>,
}

impl RequestIdLayer {
    /// A layer whose generated ids count from 1.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> RequestIdService<S> {
        RequestIdService {
            inner,
            next: Arc::clone(&self.next),
        }
    }
}

/// The service of [`RequestIdLayer`].
#[derive(Clone, Debug)]
pub struct RequestIdService<S> {
    inner: S,
    next: Arc<AtomicU64>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestIdService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let id = match req.headers().get(&X_REQUEST_ID) {
            Some(theirs) if usable(theirs) => theirs.clone(),
            _ => generated_id(self.next.fetch_add(1, Ordering::Relaxed) + 1),
        };
        // Made only when DEBUG is enabled (see the module docs); a client's id is
        // shown as text when it is (lossy otherwise).
        let span = tracing::debug_span!("request", id = %String::from_utf8_lossy(id.as_bytes()));
        req.extensions_mut().insert(RequestId(id.clone()));
        let inner = span.in_scope(|| self.inner.call(req));
        ResponseFuture {
            inner,
            id: Some(id),
            span,
        }
    }
}

/// The longest client id kept.
pub const CLIENT_ID_LEN_MAX: usize = 200;

/// Whether a client's id is kept: 1 to [`CLIENT_ID_LEN_MAX`] visible ASCII
/// characters. Anything else (empty, longer, spaces, other bytes) is replaced
/// by a generated id, so every answer carries a usable one and log lines never
/// carry a client's control characters.
fn usable(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    (1..=CLIENT_ID_LEN_MAX).contains(&bytes.len())
        && bytes.iter().all(|b| (b'!'..=b'~').contains(b))
}

/// The header value of a generated id: one exact-size allocation
/// (`HeaderValue::from(u64)` makes two).
fn generated_id(n: u64) -> HeaderValue {
    let mut digits = itoa::Buffer::new();
    // Digits are always a valid header value; the fallback is never taken.
    HeaderValue::from_str(digits.format(n)).unwrap_or_else(|_| HeaderValue::from(n))
}

pin_project! {
    /// The response future of [`RequestId`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
        span: Span,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _in_request = this.span.enter();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        if res.status().is_server_error() {
            if let Some(id) = this.id.as_ref() {
                log_server_error(id, &res);
            }
        }
        if let Some(id) = this.id.take() {
            // One lookup: an id the inner service set wins.
            res.headers_mut().entry(X_REQUEST_ID).or_insert(id);
        }
        Poll::Ready(Ok(res))
    }
}

/// The log line of a request answered with a server error.
fn log_server_error<B>(id: &HeaderValue, res: &Response<B>) {
    let request_id = String::from_utf8_lossy(id.as_bytes());
    let status = res.status().as_u16();
    match res.extensions().get::<ServerErrorReport>() {
        Some(report) if status == 503 => tracing::warn!(
            %request_id, status, code = report.code, detail = %report.detail, "request refused"
        ),
        Some(report) => tracing::error!(
            %request_id, status, code = report.code, detail = %report.detail, "request failed"
        ),
        None => tracing::error!(%request_id, status, "request failed"),
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use pointlock_core::{PointError, StoreError};
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    use super::*;
    use crate::error::ApiError;

    async fn echo(req: Request<()>) -> Result<Response<()>, Infallible> {
        let mut res = Response::new(());
        if req.uri().path() == "/own" {
            res.headers_mut()
                .insert(X_REQUEST_ID, HeaderValue::from_static("inner"));
        }
        Ok(res)
    }

    fn id_of(res: &Response<()>) -> &str {
        res.headers()[X_REQUEST_ID].to_str().unwrap()
    }

    #[tokio::test]
    async fn unusable_client_ids_are_replaced_by_generated_ones() {
        let mut svc = RequestIdLayer::new().layer(tower::service_fn(echo));
        let long = "k".repeat(CLIENT_ID_LEN_MAX + 1);
        let kept = "k".repeat(CLIENT_ID_LEN_MAX);
        for (theirs, keep) in [
            ("", false),
            ("has space", false),
            (long.as_str(), false),
            (kept.as_str(), true),
            ("trace-1", true),
        ] {
            let req = Request::builder()
                .header(X_REQUEST_ID, theirs)
                .body(())
                .unwrap();
            let res = svc.ready().await.unwrap().call(req).await.unwrap();
            let answered = id_of(&res);
            assert!(!answered.is_empty());
            assert_eq!(answered == theirs, keep, "{theirs:?} -> {answered:?}");
        }
        let req = Request::builder()
            .header(
                X_REQUEST_ID,
                HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
            )
            .body(())
            .unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        assert!(id_of(&res).bytes().all(|b| b.is_ascii_digit()));
    }

    #[tokio::test]
    async fn generated_ids_count_up_and_client_ids_are_kept() {
        let svc = ServiceBuilder::new()
            .layer(RequestIdLayer::new())
            .service(service_fn(echo));
        let first = svc.clone().oneshot(Request::new(())).await.unwrap();
        let second = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!((id_of(&first), id_of(&second)), ("1", "2"));

        let theirs = Request::builder()
            .header(X_REQUEST_ID, "trace-me")
            .body(())
            .unwrap();
        let res = svc.clone().oneshot(theirs).await.unwrap();
        assert_eq!(id_of(&res), "trace-me");
    }

    /// A service that logs at INFO and answers with `error`'s response, after
    /// recording the `RequestId` it was given in `x-seen`.
    fn failing(
        error: fn() -> ApiError,
    ) -> impl Service<
        Request<()>,
        Response = Response<http_body_util::Full<bytes::Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        service_fn(move |req: Request<()>| async move {
            let seen = req.extensions().get::<RequestId>().cloned();
            tracing::info!("inside the handler");
            let mut res = error().into_response();
            if let Some(seen) = seen {
                res.headers_mut()
                    .insert("x-seen", seen.header_value().clone());
            }
            Ok::<_, Infallible>(res)
        })
    }

    fn request_with_id(id: &'static str) -> Request<()> {
        Request::builder()
            .header(X_REQUEST_ID, id)
            .body(())
            .unwrap()
    }

    #[tokio::test]
    async fn server_errors_are_logged_with_the_request_id_and_the_id_reaches_the_request() {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let store_failed = || ApiError::Point(PointError::Store(StoreError::new("disk on fire")));
        let res = RequestIdLayer::new()
            .layer(failing(store_failed))
            .oneshot(request_with_id("client-7"))
            .await
            .unwrap();
        assert_eq!(res.headers()["x-seen"], "client-7");
        let timed_out = || ApiError::Point(PointError::LockTimeout);
        let generated = RequestIdLayer::new()
            .layer(failing(timed_out))
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_eq!(generated.headers()["x-seen"], "1");
        let text = logs.text();
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no line with {needle}:\n{text}"))
                .to_owned()
        };
        let failed = line("request_id=client-7");
        assert!(
            failed.contains("ERROR") && failed.contains("code=\"STORE_ERROR\""),
            "{failed}"
        );
        assert!(failed.contains("disk on fire"), "{failed}");
        let refused = line("request_id=1");
        assert!(
            refused.contains("WARN") && refused.contains("LOCK_TIMEOUT"),
            "{refused}"
        );
        // At INFO no span is made (it would cost every request).
        assert!(!text.contains("request{"), "{text}");
    }

    #[tokio::test]
    async fn at_debug_every_line_of_the_request_names_it() {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let svc = RequestIdLayer::new().layer(failing(|| ApiError::RequestTimeout));
        svc.clone()
            .oneshot(request_with_id("client-7"))
            .await
            .unwrap();
        svc.oneshot(Request::new(())).await.unwrap();
        let text = logs.text();
        let handler_lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("inside the handler"))
            .collect();
        assert_eq!(handler_lines.len(), 2, "{text}");
        assert!(handler_lines[0].contains("request{id=client-7}"), "{text}");
        assert!(handler_lines[1].contains("request{id=1}"), "{text}");
    }

    /// A log sink the test reads back.
    #[derive(Clone, Default)]
    struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Logs {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
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
    async fn an_id_set_by_the_inner_service_wins() {
        let svc = RequestIdLayer::new().layer(service_fn(echo));
        let req = Request::builder().uri("/own").body(()).unwrap();
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(id_of(&res), "inner");
    }
}
