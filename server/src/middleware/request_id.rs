//! `x-request-id` on every response: the client's own, or a process-wide counter.
//!
//! What tower-http's `SetRequestId` and `PropagateRequestId` do together, as two
//! functions the stack's front layer (`app::FrontLayer`) calls, without their
//! bookkeeping: those two store the id in the request's and the response's
//! extensions (an `AnyMap` each: six allocations per request, the largest
//! single cost of this server's stack over bare hyper; see
//! docs/performance.md). Here the id travels in the response future instead.
//!
//! - The work **starts** with [`assign`]: the id is the request's `x-request-id` header if
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
//! - It **ends** with [`finish`], when the inner response is ready: the id is
//!   set on the response unless the inner service already set one.

use std::sync::atomic::{AtomicU64, Ordering};

use http::header::HeaderName;
use http::{HeaderValue, Request, Response};
use tracing::Span;

use crate::error::ServerErrorReport;

/// The header read and set.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request's id, in its extensions (the `x-request-id` its response carries).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(Id);

/// A generated id stays a number until it is shown: the response's header
/// is then the only copy of its text (a shared copy would cost an allocation
/// per request).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Id {
    Generated(u64),
    Client(HeaderValue),
}

impl RequestId {
    /// The id as the header carries it.
    pub fn header_value(&self) -> HeaderValue {
        match &self.0 {
            Id::Generated(n) => generated_id(*n),
            Id::Client(theirs) => theirs.clone(),
        }
    }
}

/// Choose `req`'s id (its own `x-request-id` if [usable](CLIENT_ID_LEN_MAX),
/// else the next value of `next`, counting from 1), put it in its extensions
/// as [`RequestId`], and make the request's span (only when DEBUG is on: see
/// the [module docs](self)). The caller runs the request inside the span and
/// hands the id to [`finish`] with the response.
pub fn assign<B>(req: &mut Request<B>, next: &AtomicU64) -> (HeaderValue, Span) {
    let (id, value) = match req.headers().get(&X_REQUEST_ID) {
        // A clone of a received header shares its bytes.
        Some(theirs) if usable(theirs) => (Id::Client(theirs.clone()), theirs.clone()),
        _ => {
            let n = next.fetch_add(1, Ordering::Relaxed) + 1;
            (Id::Generated(n), generated_id(n))
        }
    };
    // A client's id is shown as text when it is (lossy otherwise).
    let span = tracing::debug_span!("request", id = %String::from_utf8_lossy(value.as_bytes()));
    req.extensions_mut().insert(RequestId(id));
    (value, span)
}

/// The end of request `id`: a server error is logged with the id, and the id
/// is set on the response unless the inner service already set one.
pub fn finish<B>(res: &mut Response<B>, id: HeaderValue) {
    if res.status().is_server_error() {
        log_server_error(&id, res);
    }
    // One lookup: an id the inner service set wins.
    res.headers_mut().entry(X_REQUEST_ID).or_insert(id);
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
    use super::*;

    fn request_with_id(id: &[u8]) -> Request<()> {
        Request::builder()
            .header(X_REQUEST_ID, HeaderValue::from_bytes(id).unwrap())
            .body(())
            .unwrap()
    }

    #[test]
    fn unusable_client_ids_are_replaced_by_generated_ones() {
        let next = AtomicU64::new(0);
        let long = "k".repeat(CLIENT_ID_LEN_MAX + 1);
        let kept = "k".repeat(CLIENT_ID_LEN_MAX);
        for (theirs, keep) in [
            ("", false),
            ("has space", false),
            (long.as_str(), false),
            (kept.as_str(), true),
            ("trace-1", true),
        ] {
            let (id, _) = assign(&mut request_with_id(theirs.as_bytes()), &next);
            assert!(!id.is_empty());
            assert_eq!(id == theirs, keep, "{theirs:?} -> {id:?}");
        }
        let (id, _) = assign(&mut request_with_id(b"caf\xc3\xa9"), &next);
        assert!(id.as_bytes().iter().all(u8::is_ascii_digit));
    }

    #[test]
    fn generated_ids_count_up_client_ids_are_kept_and_both_reach_the_request() {
        let next = AtomicU64::new(0);
        let mut first = Request::new(());
        let mut second = Request::new(());
        assert_eq!(assign(&mut first, &next).0, "1");
        assert_eq!(assign(&mut second, &next).0, "2");
        assert_eq!(
            second
                .extensions()
                .get::<RequestId>()
                .map(RequestId::header_value),
            Some(HeaderValue::from_static("2"))
        );
        let mut theirs = request_with_id(b"trace-me");
        assert_eq!(assign(&mut theirs, &next).0, "trace-me");
        assert_eq!(
            theirs
                .extensions()
                .get::<RequestId>()
                .map(RequestId::header_value),
            Some(HeaderValue::from_static("trace-me"))
        );
    }

    #[test]
    fn the_id_is_set_on_the_response_unless_the_inner_service_set_one() {
        let mut res = Response::new(());
        finish(&mut res, HeaderValue::from_static("7"));
        assert_eq!(res.headers()[X_REQUEST_ID], "7");
        let mut own = Response::new(());
        own.headers_mut()
            .insert(X_REQUEST_ID, HeaderValue::from_static("inner"));
        finish(&mut own, HeaderValue::from_static("7"));
        assert_eq!(own.headers()[X_REQUEST_ID], "inner");
    }

    // The log lines (a server error's, the request's span at DEBUG):
    // tests/request_logs.rs, a binary with one global subscriber.
}
