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
//!   the request's extensions as [`RequestId`], and the inner future runs inside a
//!   `request` tracing span carrying it (`request{id=…}`), so every log line of
//!   the request (a 5xx, a lock timeout, work finished after a disconnect) can be
//!   matched to the `x-request-id` its client saw.
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
            Some(theirs) => theirs.clone(),
            None => generated_id(self.next.fetch_add(1, Ordering::Relaxed) + 1),
        };
        // A client's id is shown as text when it is (lossy otherwise).
        let span = tracing::info_span!("request", id = %String::from_utf8_lossy(id.as_bytes()));
        req.extensions_mut().insert(RequestId(id.clone()));
        let inner = span.in_scope(|| self.inner.call(req));
        ResponseFuture {
            inner,
            id: Some(id),
            span,
        }
    }
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
        if let Some(id) = this.id.take() {
            // One lookup: an id the inner service set wins.
            res.headers_mut().entry(X_REQUEST_ID).or_insert(id);
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{service_fn, ServiceBuilder, ServiceExt};

    use super::*;

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

    #[tokio::test]
    async fn the_id_reaches_the_request_and_every_log_line_of_it() {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let svc = RequestIdLayer::new().layer(service_fn(|req: Request<()>| async move {
            let seen = req.extensions().get::<RequestId>().cloned();
            tracing::warn!("inside the handler");
            let mut res = Response::new(());
            if let Some(seen) = seen {
                res.headers_mut()
                    .insert("x-seen", seen.header_value().clone());
            }
            Ok::<_, Infallible>(res)
        }));
        let req = Request::builder()
            .header(X_REQUEST_ID, "client-7")
            .body(())
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.headers()["x-seen"], "client-7");
        let generated = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(generated.headers()["x-seen"], "1");
        let text = logs.text();
        assert!(
            text.contains("request{id=client-7}") && text.contains("request{id=1}"),
            "{text}"
        );
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
