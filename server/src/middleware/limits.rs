//! Limits on what a client may send before its request reaches the wallet.
//!
//! [`head_refusal`] (called by the stack's front layer, `app::FrontLayer`)
//! answers a request whose request line and headers together exceed a limit
//! with 431 `HEADERS_TOO_LARGE` (JSON, `Connection: close`), and one whose
//! body is framed by `Transfer-Encoding` with 411 `LENGTH_REQUIRED`
//! (`Connection: close`: nothing after it on the connection is read), before
//! any lock is taken. hyper, following RFC 9112, lets
//! `Transfer-Encoding` override a `Content-Length` sent with it and drops the
//! latter, so the smuggling pattern (both) cannot be told from a plain chunked
//! upload here: both are refused. Bodies are a few bytes; every client the
//! course's templates use sends them with `Content-Length`, and HTTP/2 has no
//! `Transfer-Encoding` at all. hyper's own read buffer is the backstop
//! for heads too large to be parsed at all ([`head_buffer_bytes`]): those get
//! hyper's bare 431 and the connection is closed. The other connection limits
//! (header read timeout, connection cap, HTTP/2 streams) are set where
//! connections are served (`app::ServeOptions`).

use http::Request;

use crate::error::ApiError;

/// The default limit on a request's line and headers: far above any honest
/// client (a browser's cookies included), far below what pins memory.
pub const HEADER_LIMIT_BYTES_DEFAULT: usize = 16 * 1024;

/// hyper's read buffer for a head limit of `limit` bytes: four times the limit
/// (at least hyper's minimum of 8 KiB), so a head between the limit and this
/// gets this layer's JSON 431 and only a larger one hyper's bare 431.
pub fn head_buffer_bytes(limit: usize) -> usize {
    limit.saturating_mul(4).max(8 * 1024)
}

/// The size of a request's head as sent on the wire (HTTP/1.1): the request
/// line and every header line.
pub fn head_bytes<B>(req: &Request<B>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    // "METHOD TARGET HTTP/1.1\r\n"
    let line = req.method().as_str().len() + 1 + target + 11;
    req.headers().iter().fold(line, |sum, (name, value)| {
        // "name: value\r\n"
        sum + name.as_str().len() + 2 + value.len() + 2
    })
}

/// The refusal of a request whose head exceeds `limit_bytes` (431
/// `HEADERS_TOO_LARGE`) or whose body is framed by `Transfer-Encoding` (411
/// `LENGTH_REQUIRED`); `None` for every other request. See the
/// [module docs](self).
pub fn head_refusal<B>(req: &Request<B>, limit_bytes: usize) -> Option<ApiError> {
    if head_bytes(req) > limit_bytes {
        Some(ApiError::HeadersTooLarge { limit_bytes })
    } else if req.headers().contains_key(http::header::TRANSFER_ENCODING) {
        Some(ApiError::LengthRequired)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_is_counted_as_sent() {
        let req = Request::builder()
            .method("PATCH")
            .uri("/point/1/charge?x=1")
            .header("host", "x")
            .header("content-length", "3")
            .body(())
            .unwrap();
        // "PATCH /point/1/charge?x=1 HTTP/1.1\r\n" + "host: x\r\n" + "content-length: 3\r\n"
        assert_eq!(head_bytes(&req), 36 + 9 + 19);
    }

    #[test]
    fn the_buffer_backstop_is_four_limits_and_at_least_8_kib() {
        assert_eq!(head_buffer_bytes(16 * 1024), 64 * 1024);
        assert_eq!(head_buffer_bytes(100), 8 * 1024);
    }
}
