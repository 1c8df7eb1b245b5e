//! Idempotency keys: a retried request applies once.
//!
//! A client that may send a change twice (a double click, a retry after a
//! timeout) names it with a key; the semantics are those of the IETF httpapi
//! `Idempotency-Key` draft and Stripe's API:
//!
//! - A key is 1 to [`IDEMPOTENCY_KEY_LEN_MAX`] visible ASCII characters
//!   ([`IdempotencyKey::new`]); keys are scoped per user.
//! - The first change made with a key applies, and its record (the operation,
//!   the amount, the balance it left and when) is written by the store **in the
//!   same commit as the change**: a crash keeps both or neither.
//! - A later request of that user with the same key and the same operation and
//!   amount applies nothing and gets the first answer again
//!   (`Applied::replayed`); with a different operation or amount it is
//!   refused with [`PointError::IdempotencyKeyReused`], changing nothing.
//! - Duplicates sent at once need nothing more: the user's lock runs them one
//!   at a time, so the first applies and the rest find its record.
//! - Only applied changes are recorded. A request refused by a policy
//!   (insufficient balance, maximum balance) changed nothing, so there is
//!   nothing to protect from repetition: a retry with the same key is decided
//!   afresh (and may apply if the balance has changed since). Requests refused
//!   before the service (an invalid amount, a lock timeout) and store failures
//!   record nothing either.
//! - A record is kept for the service's TTL (default
//!   [`IDEMPOTENCY_TTL_DEFAULT`]); after it the key is free again, and
//!   `PointService::sweep_idempotency`
//!   removes expired records in bounded steps.
//! - A record's age is its wall-clock stamp against "now", where "now" never
//!   runs ahead of the wall time at the service's start plus the monotonic
//!   time since: a wall clock stepped forward while the process runs cannot
//!   free a live key early (stepped back, records live longer). A step made
//!   while no process ran, or between two instances whose clocks disagree,
//!   counts as time passed: keep the clocks in sync (NTP slewing, not
//!   stepping) where that matters.
//!

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::domain::{Amount, TransactionType, UserId, UserPoint};
use crate::error::PointError;

/// The longest idempotency key, in characters (bytes: keys are ASCII).
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;

/// How long a key's record is kept unless the service is told otherwise.
pub const IDEMPOTENCY_TTL_DEFAULT: Duration = Duration::from_secs(24 * 60 * 60);

/// A client's name for one change: 1 to 255 visible ASCII characters
/// (`!` to `~`, no spaces or control characters). Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(Arc<str>);

impl IdempotencyKey {
    /// Validate a key; anything else is [`PointError::InvalidIdempotencyKey`].
    pub fn new(raw: &str) -> Result<Self, PointError> {
        Self::from_bytes(raw.as_bytes())
    }

    /// Validate a key given as bytes (an HTTP header value).
    pub fn from_bytes(raw: &[u8]) -> Result<Self, PointError> {
        let visible = raw.iter().all(|b| (b'!'..=b'~').contains(b));
        if raw.is_empty() || raw.len() > IDEMPOTENCY_KEY_LEN_MAX || !visible {
            return Err(PointError::InvalidIdempotencyKey);
        }
        // Visible ASCII is UTF-8.
        let text = std::str::from_utf8(raw).map_err(|_| PointError::InvalidIdempotencyKey)?;
        Ok(Self(Arc::from(text)))
    }

    /// The key as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys may be chosen by clients: show their length, not their content.
        write!(f, "IdempotencyKey(<{} chars>)", self.0.len())
    }
}

/// What a store keeps of a change made with a key: enough to tell a retry from
/// a reuse, and to answer the retry exactly as the first request was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The key.
    pub key: IdempotencyKey,
    /// The operation of the first request.
    pub kind: TransactionType,
    /// The amount of the first request.
    pub amount: Amount,
    /// The balance the change left: the first answer's `point`.
    pub point: u64,
    /// When the change was made: the first answer's `updateMillis`, and the
    /// record's age.
    pub time_millis: i64,
}

impl IdempotencyRecord {
    /// The first answer: the balance as the change left it.
    pub fn user_point(&self, id: UserId) -> UserPoint {
        UserPoint {
            id,
            point: self.point,
            update_millis: self.time_millis,
        }
    }

    /// Whether a request of `kind` and `amount` is the one this key was first used for.
    pub fn matches(&self, kind: TransactionType, amount: Amount) -> bool {
        self.kind == kind && self.amount == amount
    }

    /// Whether the record has expired: made at or before `expired_before`.
    pub fn is_expired(&self, expired_before: i64) -> bool {
        self.time_millis <= expired_before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_1_to_255_visible_ascii_characters() {
        for good in [
            "a",
            "!",
            "~",
            "0b6f1c1e-3c55-4b51-9d35-5a5a0c7c2c11",
            "a=b&c:d/e",
        ] {
            assert_eq!(IdempotencyKey::new(good).unwrap().as_str(), good);
        }
        assert!(IdempotencyKey::new(&"k".repeat(255)).is_ok());
        let long = "k".repeat(256);
        for bad in [
            "",
            " ",
            "a b",
            "a\tb",
            "tab\t",
            "é",
            "a\u{7f}",
            "new\nline",
            &long,
        ] {
            assert_eq!(
                IdempotencyKey::new(bad),
                Err(PointError::InvalidIdempotencyKey),
                "{bad:?}"
            );
        }
        assert_eq!(
            IdempotencyKey::from_bytes(&[0xff, b'a']),
            Err(PointError::InvalidIdempotencyKey)
        );
        assert_eq!(
            PointError::InvalidIdempotencyKey.code(),
            "INVALID_IDEMPOTENCY_KEY"
        );
    }

    #[test]
    fn debug_output_does_not_show_the_key() {
        let key = IdempotencyKey::new("secret-order-42").unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("15"), "{shown}");
    }

    #[test]
    fn a_record_matches_its_request_and_expires_at_the_boundary() {
        let record = IdempotencyRecord {
            key: IdempotencyKey::new("k").unwrap(),
            kind: TransactionType::Charge,
            amount: Amount::new(100).unwrap(),
            point: 150,
            time_millis: 1_000,
        };
        assert!(record.matches(TransactionType::Charge, Amount::new(100).unwrap()));
        assert!(!record.matches(TransactionType::Use, Amount::new(100).unwrap()));
        assert!(!record.matches(TransactionType::Charge, Amount::new(101).unwrap()));
        assert!(record.is_expired(1_000));
        assert!(!record.is_expired(999));
        let id = UserId::new(3).unwrap();
        assert_eq!(
            record.user_point(id),
            UserPoint {
                id,
                point: 150,
                update_millis: 1_000
            }
        );
    }
}
