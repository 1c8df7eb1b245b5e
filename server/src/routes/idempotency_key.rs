//! The `Idempotency-Key` request header and the `Idempotent-Replayed`
//! response header of `PATCH …/charge` and `…/use`.
//!
//! The key is optional: 1 to 255 visible ASCII characters, per user (see
//! [`pointlock_core::idempotency`]). A retry with the same key and request
//! gets the first answer again, byte for byte, with `Idempotent-Replayed:
//! true`, and applies nothing; the same key with another operation or amount
//! is a 422 `IDEMPOTENCY_KEY_REUSED`; a malformed key a 400
//! `INVALID_IDEMPOTENCY_KEY`.

use pointlock_core::{IdempotencyKey, PointError};

use crate::error::ApiError;

/// The request header naming a change for idempotency.
pub const IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");
/// The response header of an answer replayed from an idempotency record.
pub const IDEMPOTENT_REPLAYED: http::HeaderName =
    http::HeaderName::from_static("idempotent-replayed");

/// The request's `Idempotency-Key`, if it has one; more than one, or a value
/// that is not 1 to 255 visible ASCII characters, is a 400.
///
/// The headers are scanned rather than looked up: a few name comparisons cost
/// less than hashing the name (a lookup was ~200 instructions of a ~22,000
/// instruction charge; `benches/instructions.sh`), and hyper bounds the count.
pub(super) fn idempotency_key(
    headers: &http::HeaderMap,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = headers
        .iter()
        .filter(|(name, _)| *name == IDEMPOTENCY_KEY)
        .map(|(_, value)| value);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(PointError::InvalidIdempotencyKey.into());
    }
    Ok(Some(IdempotencyKey::from_bytes(value.as_bytes())?))
}
