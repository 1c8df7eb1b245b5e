//! The stack's own answers: the request deadline's 408 and the body limit's
//! 413 made JSON like every other error, and a handler's panic made a 500.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;

use crate::body::{AppBody, BoxError};
use crate::error::{ApiError, ServerErrorReport};
use crate::middleware::deadline;

/// What [`within_request_timeout`] answers when the deadline passes.
pub(super) type TimeoutAnswer<B> = fn() -> Result<Response<B>, Infallible>;

/// The whole request within `timeout` (counted from here), or a bare 408 answer,
/// which [`normalize_error`] turns into JSON like the body limit's 413. The timer
/// is only made if the request is not done in its first poll ([`deadline::within`]).
pub(super) fn within_request_timeout<F, B>(
    future: F,
    timeout: Duration,
) -> deadline::Within<F, TimeoutAnswer<B>>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: Default,
{
    deadline::within(tokio::time::Instant::now() + timeout, future, || {
        let mut res = Response::new(B::default());
        *res.status_mut() = StatusCode::REQUEST_TIMEOUT;
        Ok(res)
    })
}

pub(super) fn box_body<B>(res: Response<B>) -> Response<AppBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    res.map(|b| AppBody::new(b.map_err(Into::into)))
}

/// A panic in a handler: 500 JSON (the panic message goes to the log only).
pub(super) fn panic_response(
    panic: Box<dyn std::any::Any + Send + 'static>,
) -> Response<http_body_util::Full<Bytes>> {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    let mut response = ApiError::Internal("the request failed unexpectedly".into()).into_response();
    // The log line (written with the request's id by the front layer) names
    // the panic; the client's answer does not.
    if let Some(report) = response.extensions_mut().get_mut::<ServerErrorReport>() {
        report.detail = format!("handler panicked: {detail}");
    }
    response
}

/// Turn the bare answers of the middleware (408 from the request deadline, 413
/// from tower-http's body limit) into this API's JSON errors; pass every other
/// answer on.
pub(super) fn normalize_error(res: Response<AppBody>, limit_bytes: usize) -> Response<AppBody> {
    let error = match res.status() {
        StatusCode::REQUEST_TIMEOUT => ApiError::RequestTimeout,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge { limit_bytes },
        _ => return res,
    };
    let is_json = res
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return res;
    }
    let (parts, _) = res.into_parts();
    let mut fresh = error.into_response();
    for (name, value) in parts.headers.iter() {
        if name != CONTENT_TYPE && name != http::header::CONTENT_LENGTH {
            fresh.headers_mut().append(name, value.clone());
        }
    }
    fresh.map(|b| AppBody::new(b.map_err(|never| match never {})))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use http_body_util::Empty;

    use super::*;

    async fn json(res: Response<AppBody>) -> serde_json::Value {
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_panic_becomes_a_500_json_error() {
        let res = panic_response(Box::new("boom"));
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let res = box_body(res);
        let body = json(res).await;
        assert_eq!(body["code"], "INTERNAL");
        assert!(
            !body["message"].as_str().unwrap().contains("boom"),
            "no panic text to clients"
        );
    }

    #[tokio::test]
    async fn middleware_408_and_413_become_json_and_keep_headers() {
        for (status, code) in [
            (StatusCode::REQUEST_TIMEOUT, "REQUEST_TIMEOUT"),
            (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
        ] {
            let mut raw = Response::new(Empty::<Bytes>::new());
            *raw.status_mut() = status;
            raw.headers_mut()
                .insert("x-request-id", HeaderValue::from_static("7"));
            let res = normalize_error(box_body(raw), 4096);
            assert_eq!(res.status(), status);
            assert_eq!(res.headers()["x-request-id"], "7");
            assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
            assert_eq!(json(res).await["code"], code);
        }
    }

    #[tokio::test]
    async fn json_answers_pass_through_untouched() {
        let res = ApiError::Point(pointlock_core::PointError::InvalidAmount).into_response();
        let res = normalize_error(box_body(res), 4096);
        assert_eq!(json(res).await["code"], "INVALID_AMOUNT");
    }
}
