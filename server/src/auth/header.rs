//! The `Authorization: Bearer <token>` request header (RFC 6750).

use http::header::AUTHORIZATION;
use http::HeaderMap;

use crate::error::TokenRejection;

/// The token of the request's one `Authorization: Bearer <token>` header.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, TokenRejection> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(TokenRejection::Missing)?;
    if values.next().is_some() {
        return Err(TokenRejection::NotBearer);
    }
    let value = value.to_str().map_err(|_| TokenRejection::NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(TokenRejection::NotBearer)?;
    let token = token.trim_matches(' ');
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(TokenRejection::NotBearer);
    }
    Ok(token)
}
