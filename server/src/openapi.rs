//! `GET /openapi.json`: the OpenAPI 3.1 description of the whole HTTP API.
//!
//! The document is `server/openapi.json`, kept by hand beside the code and
//! compiled into the binary. `tests/openapi.rs` holds it to the code: it must be
//! valid against the official OpenAPI 3.1 schema, list exactly the routes of
//! `routes::ROUTES`, and every answer of a running server must
//! validate against the schema the document declares for its operation and
//! status.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response};
use http_body_util::Full;

/// The OpenAPI document, as served.
pub const DOCUMENT: &str = include_str!("../openapi.json");

/// The answer to `GET /openapi.json`: the document (no copy: a static body).
pub fn response() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(DOCUMENT.as_bytes())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
