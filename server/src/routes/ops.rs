//! The operator's routes but `/stats`: `GET /health` (liveness), `GET /ready`
//! (can the store take changes?) and `GET /metrics` (OpenMetrics text).

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use super::router::SharedService;
use crate::error::{json_response, ApiError};
use crate::metrics::Metrics;

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

/// `GET /health`: `{"status":"ok"}` while the process serves.
pub(super) fn health() -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, &Health { status: "ok" })
}

/// `GET /ready`: `{"status":"ready"}`, or a 503 with the store's error code.
pub(super) async fn ready(service: &SharedService) -> Result<Response<Full<Bytes>>, ApiError> {
    service.ready().await.map_err(ApiError::NotReady)?;
    Ok(json_response(StatusCode::OK, &Health { status: "ready" }))
}

/// `GET /metrics`: the metrics in the OpenMetrics text format.
pub(super) fn scrape(metrics: Option<&Metrics>) -> Result<Response<Full<Bytes>>, ApiError> {
    let Some(metrics) = metrics else {
        return Err(ApiError::Internal("metrics are off".into()));
    };
    let text = metrics
        .render()
        .map_err(|_| ApiError::Internal("the metrics could not be encoded".into()))?;
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    Ok(response)
}
