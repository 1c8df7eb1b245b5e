//! HTTP errors: the one place where failures become status codes and JSON bodies.
//!
//! Every error answers `{"code":"…","message":"…"}` with `content-type:
//! application/json`. Codes are stable; messages are for people.

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use keylock::layer::Refusal;
use pointlock_core::{PointError, StoreErrorKind};
use serde::Serialize;
use thiserror::Error;

/// Everything an HTTP request can fail with.
#[derive(Debug, Error)]
pub enum ApiError {
    /// A wallet error: invalid id or amount, a policy conflict, a lock timeout, a
    /// write conflict, a store failure.
    #[error(transparent)]
    Point(#[from] PointError),

    /// The body is not JSON.
    #[error("request body must be JSON like {{\"amount\": 100}} or a bare number: {0}")]
    InvalidJson(String),

    /// The body could not be read (the client broke off).
    #[error("could not read the request body: {0}")]
    BadBody(String),

    /// No such route.
    #[error("no route for {method} {path}")]
    NotFound {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
    },

    /// The route exists with other methods.
    #[error("method {method} is not allowed here; allowed: {allow}")]
    MethodNotAllowed {
        /// The request method.
        method: String,
        /// The methods the route takes.
        allow: &'static str,
    },

    /// The body is larger than the limit.
    #[error("request body is larger than the limit of {limit_bytes} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit_bytes: usize,
    },

    /// The request line and headers together are larger than the limit. The
    /// connection is closed after the answer. Nothing was changed.
    #[error("request headers are larger than the limit of {limit_bytes} bytes")]
    HeadersTooLarge {
        /// The configured limit.
        limit_bytes: usize,
    },

    /// The request's body is framed by `Transfer-Encoding` (HTTP/1.1 chunked),
    /// not by `Content-Length`. Refused, and the connection closed: with a
    /// `Content-Length` as well it is the request-smuggling pattern (RFC 9112
    /// section 6.3), and an amount of a few bytes needs no streaming. Nothing
    /// was changed.
    #[error("send the request body with Content-Length; Transfer-Encoding is not accepted")]
    LengthRequired,

    /// The whole request took longer than the request timeout. A change may or may
    /// not have been applied: read the history to find out.
    #[error("the request did not finish within the request timeout")]
    RequestTimeout,

    /// The body did not arrive within the body deadline (counted from when the
    /// request got its user's lock). Nothing was changed.
    #[error("the request body did not arrive within {timeout_ms} ms")]
    BodyTimeout {
        /// The configured deadline.
        timeout_ms: u64,
    },

    /// Too many requests already wait for this user's lock (`--lock-queue-max`).
    /// Nothing was queued or changed.
    #[error("{waiters_max} requests for this user are already waiting; retry later")]
    LockQueueFull {
        /// The configured bound.
        waiters_max: usize,
    },

    /// The process already works on its most requests at once
    /// (`--max-in-flight`, checked by the stack's front layer, `middleware/in_flight.rs`).
    /// Refused before anything else: nothing was queued or changed.
    #[error("the server already has {in_flight_max} requests in progress; retry later")]
    Overloaded {
        /// The configured bound.
        in_flight_max: usize,
    },

    /// The query of `GET /point/{id}/histories` is malformed (`routes::page`
    /// says what it takes). Answered before any lock: nothing was read or
    /// changed.
    #[error("{0}")]
    InvalidQuery(&'static str),

    /// Bearer authentication is on (`auth.rs`) and the request carries no
    /// token this server accepts (the wrapped rejection says why). Answered
    /// with `WWW-Authenticate: Bearer` (RFC 6750) before the user's lock:
    /// nothing was queued or changed.
    #[error("{0}")]
    Unauthorized(TokenRejection),

    /// Bearer authentication is on and the token is valid but does not grant
    /// this request (the wrapped denial says what it lacks). Answered before
    /// the user's lock: nothing was queued or changed.
    #[error("{0}")]
    Forbidden(Denial),

    /// `GET /ready`: the store cannot take changes now (the wrapped error says why).
    #[error("not ready: {0}")]
    NotReady(PointError),

    /// A bug or a panic; details are in the server log.
    #[error("internal server error: {0}")]
    Internal(String),
}

/// Why a request got 401 `UNAUTHORIZED` (bearer authentication on). The
/// message says which check failed, never anything about the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum TokenRejection {
    /// No `Authorization` header.
    #[error("this route needs a bearer token: Authorization: Bearer <JWT>")]
    Missing,
    /// An `Authorization` header that is not one `Bearer <token>` (another
    /// scheme, no token, several headers).
    #[error("the Authorization header must be Bearer <JWT>")]
    NotBearer,
    /// Not a JWT: not three base64url parts, a header or claims that are not
    /// JSON, or an algorithm no JWT library knows (`none`).
    #[error("the bearer token is not a well-formed JWT")]
    Malformed,
    /// Signed with another algorithm than the one this server is configured
    /// with (the token's `alg` never chooses it).
    #[error("the bearer token is signed with an algorithm this server does not accept")]
    Algorithm,
    /// The signature does not verify with this server's key.
    #[error("the bearer token's signature does not verify")]
    Signature,
    /// `exp` has passed (beyond the clock leeway).
    #[error("the bearer token has expired")]
    Expired,
    /// `nbf` is still ahead (beyond the clock leeway).
    #[error("the bearer token is not valid yet (nbf)")]
    NotYetValid,
    /// A claim is missing or of the wrong type: `exp` (required), `nbf`, `sub`
    /// (a string or a non-negative integer), `scope` (a string).
    #[error("the bearer token's claims are missing or malformed (exp is required)")]
    Claims,
    /// `aud` or `iss` is not the one this server is configured with.
    #[error("the bearer token is meant for another audience or issuer")]
    Audience,
}

impl TokenRejection {
    /// The `WWW-Authenticate` challenge of this rejection (RFC 6750, section
    /// 3): no error code when no token was sent, `invalid_request` for a
    /// malformed header, `invalid_token` otherwise.
    pub fn challenge(self) -> &'static str {
        match self {
            Self::Missing => r#"Bearer realm="pointlock""#,
            Self::NotBearer => r#"Bearer realm="pointlock", error="invalid_request""#,
            _ => r#"Bearer realm="pointlock", error="invalid_token""#,
        }
    }
}

/// Why a request got 403 `FORBIDDEN`: what the valid token lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum Denial {
    /// A wallet route of another user than the token's `sub`, without the
    /// admin scope.
    #[error("this token acts only on its own user (its sub); another user's points need the points:admin scope")]
    AnotherUser,
    /// An operator route protected by `--metrics-require-admin`, without the
    /// admin scope.
    #[error("this route needs a token with the points:admin scope")]
    NotAdmin,
}

/// The `WWW-Authenticate` challenge of a 403 (RFC 6750, section 3.1): the
/// scope that would grant it.
pub const INSUFFICIENT_SCOPE_CHALLENGE: &str =
    r#"Bearer realm="pointlock", error="insufficient_scope", scope="points:admin""#;

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::TimedOut { .. } => Self::Point(PointError::LockTimeout),
            Refusal::QueueFull { waiters_max } => Self::LockQueueFull { waiters_max },
        }
    }
}

/// The wallet's answer to a request the lock layer refused: this API's JSON
/// errors (`LOCK_TIMEOUT`, `LOCK_QUEUE_FULL`; 503 with `Retry-After`).
pub fn refusal_response(refusal: Refusal) -> Response<Full<Bytes>> {
    ApiError::from(refusal).into_response()
}

/// What the log line of a failed request (a 5xx answer) says, attached to the
/// response by [`ApiError::into_response`] and written with the request's id
/// by the stack's front layer (`middleware::request_id::finish`).
#[derive(Clone, Debug)]
pub struct ServerErrorReport {
    /// The error code the client got.
    pub code: &'static str,
    /// What went wrong, for the operator (may say more than the client saw).
    pub detail: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
}

impl ApiError {
    /// The response status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Point(e) => match e {
                PointError::InvalidUserId
                | PointError::InvalidAmount
                | PointError::InvalidIdempotencyKey => StatusCode::BAD_REQUEST,
                PointError::IdempotencyKeyReused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                PointError::InsufficientBalance { .. } | PointError::MaxBalanceExceeded { .. } => {
                    StatusCode::CONFLICT
                }
                PointError::LockTimeout | PointError::WriteConflict { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                PointError::Store(e) => match e.kind() {
                    StoreErrorKind::Conflict
                    | StoreErrorKind::Unavailable
                    | StoreErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                },
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::InvalidJson(_) | Self::BadBody(_) | Self::InvalidQuery(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::LengthRequired => StatusCode::LENGTH_REQUIRED,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::RequestTimeout | Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::LockQueueFull { .. } | Self::Overloaded { .. } | Self::NotReady(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Point(e) => e.code(),
            Self::InvalidJson(_) => "INVALID_JSON",
            Self::BadBody(_) => "BAD_BODY",
            Self::InvalidQuery(_) => "INVALID_QUERY",
            Self::NotFound { .. } => "NOT_FOUND",
            Self::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            Self::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            Self::HeadersTooLarge { .. } => "HEADERS_TOO_LARGE",
            Self::LengthRequired => "LENGTH_REQUIRED",
            Self::Unauthorized(_) => "UNAUTHORIZED",
            Self::Forbidden(_) => "FORBIDDEN",
            Self::RequestTimeout => "REQUEST_TIMEOUT",
            Self::BodyTimeout { .. } => "BODY_TIMEOUT",
            Self::LockQueueFull { .. } => "LOCK_QUEUE_FULL",
            Self::Overloaded { .. } => "SERVER_OVERLOADED",
            // The reason's own code: STORE_UNAVAILABLE, STORE_ERROR, …
            Self::NotReady(reason) => reason.code(),
            Self::Internal(_) => "INTERNAL",
        }
    }

    /// The JSON error response, with `Allow`, `Retry-After` or
    /// `WWW-Authenticate` where they apply.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let status = self.status();
        let body = ErrorBody {
            code: self.code(),
            message: self.to_string(),
        };
        let mut response = json_response(status, &body);
        if status.is_server_error() {
            // Logged, with the request's id, by the stack's front layer
            // (`request_id::finish`), the one place that knows which request this is.
            response.extensions_mut().insert(ServerErrorReport {
                code: body.code,
                detail: body.message,
            });
        }
        let headers = response.headers_mut();
        match self {
            Self::MethodNotAllowed { allow, .. } => {
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
            Self::Unauthorized(rejection) => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(rejection.challenge()),
                );
            }
            Self::Forbidden(_) => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(INSUFFICIENT_SCOPE_CHALLENGE),
                );
            }
            // Whatever else the client sent on this connection is not read.
            Self::HeadersTooLarge { .. } | Self::LengthRequired => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            // Retryable at once: the next attempt normally succeeds.
            Self::Point(PointError::LockTimeout | PointError::WriteConflict { .. })
            | Self::LockQueueFull { .. }
            | Self::Overloaded { .. } => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // The database is unreachable, the store's queue is full, or a
            // failed-stop SQLite store awaits its restart: either way
            // "later", and nothing changed.
            Self::Point(PointError::Store(e))
                if matches!(
                    e.kind(),
                    StoreErrorKind::Conflict
                        | StoreErrorKind::Unavailable
                        | StoreErrorKind::Overloaded
                ) =>
            {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// `value` as a JSON response with `status`.
pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(bytes) => json_bytes_response(status, Bytes::from(bytes)),
        // Our response types serialize infallibly; keep a JSON answer regardless.
        Err(_) => json_bytes_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from_static(br#"{"code":"INTERNAL","message":"response encoding failed"}"#),
        ),
    }
}

/// A response with `status` whose body is `json`, already JSON.
pub fn json_bytes_response(status: StatusCode, json: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(json));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
