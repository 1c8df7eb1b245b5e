//! Why the layer answered a request itself, and the answer it gives by default.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// Why the layer answered a request itself after its key was named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The key was not acquired within the timeout. Nothing ran.
    TimedOut {
        /// The configured timeout.
        timeout: Duration,
    },
    /// The key already had `waiters_max` waiters. Nothing was queued.
    QueueFull {
        /// The configured bound.
        waiters_max: usize,
    },
}

/// Makes the response of a [`Refusal`].
pub type RefusalResponse = fn(Refusal) -> Response<Full<Bytes>>;

/// The default refusal: `503` with `Retry-After: 1` and a JSON body
/// `{"code":"LOCK_TIMEOUT"|"LOCK_QUEUE_FULL","message":…}`.
pub fn default_refusal(refusal: Refusal) -> Response<Full<Bytes>> {
    let body: &'static str = match refusal {
        Refusal::TimedOut { .. } => {
            r#"{"code":"LOCK_TIMEOUT","message":"timed out waiting for earlier requests for the same key; retry later"}"#
        }
        Refusal::QueueFull { .. } => {
            r#"{"code":"LOCK_QUEUE_FULL","message":"too many requests are already waiting for the same key; retry later"}"#
        }
    };
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    res
}
