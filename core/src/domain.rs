//! The wallet's nouns, with the JSON shapes of the course templates.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::PointError;

/// The largest id and amount accepted: `2^63 - 1`, so every value fits a signed
/// 64-bit column (SQLite, PostgreSQL `BIGINT`, Java `long`).
pub const VALUE_MAX: u64 = i64::MAX as u64;

/// A user's id: a positive integer up to `2^63 - 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct UserId(u64);

impl UserId {
    /// Validate a raw id.
    pub fn new(raw: u64) -> Result<Self, PointError> {
        if (1..=VALUE_MAX).contains(&raw) {
            Ok(Self(raw))
        } else {
            Err(PointError::InvalidUserId)
        }
    }

    /// Validate an id given as a signed or floating value from a dynamic language.
    pub fn from_f64(raw: f64) -> Result<Self, PointError> {
        positive_integer_from_f64(raw)
            .map(Self)
            .ok_or(PointError::InvalidUserId)
    }

    /// The raw value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl FromStr for UserId {
    type Err = PointError;

    /// Parse a path segment: ASCII digits only (no sign, no spaces, no exponent).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_digits(s.as_bytes())
            .ok_or(PointError::InvalidUserId)
            .and_then(Self::new)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An amount of points to charge or use: a positive integer up to `2^63 - 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Amount(u64);

impl Amount {
    /// Validate a raw amount. Zero is rejected: a charge of nothing is a client bug.
    pub fn new(raw: u64) -> Result<Self, PointError> {
        if (1..=VALUE_MAX).contains(&raw) {
            Ok(Self(raw))
        } else {
            Err(PointError::InvalidAmount)
        }
    }

    /// Validate a signed amount; zero and negatives are rejected.
    pub fn from_i64(raw: i64) -> Result<Self, PointError> {
        u64::try_from(raw)
            .map_err(|_| PointError::InvalidAmount)
            .and_then(Self::new)
    }

    /// Validate an amount given as a JavaScript number: it must be a safe integer.
    pub fn from_f64(raw: f64) -> Result<Self, PointError> {
        positive_integer_from_f64(raw)
            .map(Self)
            .ok_or(PointError::InvalidAmount)
    }

    /// The raw value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Whether a history row added or removed points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TransactionType {
    /// Points added.
    Charge,
    /// Points spent.
    Use,
}

impl TransactionType {
    /// The stable wire name: `CHARGE` or `USE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Charge => "CHARGE",
            Self::Use => "USE",
        }
    }
}

/// A user's balance: `{"id":1,"point":0,"updateMillis":…}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserPoint {
    /// The user.
    pub id: UserId,
    /// The balance, `0 <= point <= max_balance`.
    pub point: u64,
    /// When the balance last changed (or, for an unknown user, when it was read).
    pub update_millis: i64,
}

/// One committed change: `{"id":1,"userId":1,"type":"CHARGE","amount":100,"timeMillis":…}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PointHistory {
    /// Store-wide increasing id, from 1.
    pub id: u64,
    /// The user whose balance changed.
    pub user_id: UserId,
    /// Charge or use.
    #[serde(rename = "type")]
    pub kind: TransactionType,
    /// How many points.
    pub amount: Amount,
    /// When the change was made.
    pub time_millis: i64,
}

/// `digits` as a `u64` if they are 1 to 20 ASCII digits (and fit). One pass
/// over the bytes: every request's path, and the common charge body, are
/// read through it.
pub fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    digits.iter().try_fold(0u64, |value, &b| {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        value.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// `raw` as a `u64` if it is a positive integer no larger than JavaScript's safe range.
fn positive_integer_from_f64(raw: f64) -> Option<u64> {
    // 2^53 - 1: beyond it a double cannot tell neighbouring integers apart.
    const SAFE_INTEGER_MAX: f64 = 9_007_199_254_740_991.0;
    if raw.fract() == 0.0 && (1.0..=SAFE_INTEGER_MAX).contains(&raw) {
        // In range and integral: the conversion is exact.
        Some(raw as u64)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_accepts_1_to_i64_max() {
        assert_eq!(UserId::new(1).map(UserId::get), Ok(1));
        assert_eq!(UserId::new(VALUE_MAX).map(UserId::get), Ok(VALUE_MAX));
        assert_eq!(UserId::new(0), Err(PointError::InvalidUserId));
        assert_eq!(UserId::new(VALUE_MAX + 1), Err(PointError::InvalidUserId));
    }

    #[test]
    fn user_id_parses_digits_only() {
        assert_eq!("42".parse::<UserId>().map(UserId::get), Ok(42));
        assert_eq!(
            "9223372036854775807".parse::<UserId>().map(UserId::get),
            Ok(VALUE_MAX)
        );
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            " 1",
            "1 ",
            "1.0",
            "1e3",
            "abc",
            "0x10",
            "9223372036854775808",
            "99999999999999999999",
            "18446744073709551615",
            "18446744073709551616",
            "999999999999999999999999",
            "1/",
            "١",
            "1\u{0}",
        ] {
            assert_eq!(
                bad.parse::<UserId>(),
                Err(PointError::InvalidUserId),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn digits_are_parsed_as_the_standard_parser_does() {
        for ok in ["7", "007", "18446744073709551615", "00000000000000000001"] {
            assert_eq!(
                parse_digits(ok.as_bytes()),
                ok.parse::<u64>().ok(),
                "{ok:?}"
            );
        }
        for bad in [
            "",
            "18446744073709551616",
            "000000000000000000001",
            "+1",
            "1:",
            "/1",
        ] {
            assert_eq!(parse_digits(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn amount_rejects_zero_negative_and_too_large() {
        assert_eq!(Amount::new(1).map(Amount::get), Ok(1));
        assert_eq!(Amount::new(0), Err(PointError::InvalidAmount));
        assert_eq!(Amount::new(VALUE_MAX + 1), Err(PointError::InvalidAmount));
        assert_eq!(Amount::from_i64(-5), Err(PointError::InvalidAmount));
        assert_eq!(Amount::from_i64(i64::MAX).map(Amount::get), Ok(VALUE_MAX));
    }

    #[test]
    fn from_f64_accepts_only_safe_positive_integers() {
        assert_eq!(Amount::from_f64(100.0).map(Amount::get), Ok(100));
        for bad in [
            0.0,
            -1.0,
            1.5,
            f64::NAN,
            f64::INFINITY,
            9_007_199_254_740_992.0,
        ] {
            assert_eq!(
                Amount::from_f64(bad),
                Err(PointError::InvalidAmount),
                "{bad}"
            );
            assert_eq!(
                UserId::from_f64(bad),
                Err(PointError::InvalidUserId),
                "{bad}"
            );
        }
    }

    #[test]
    fn json_shapes_match_the_course_templates() {
        let id = UserId::new(1).unwrap();
        let point = UserPoint {
            id,
            point: 100,
            update_millis: 5,
        };
        assert_eq!(
            serde_json::to_string(&point).unwrap(),
            r#"{"id":1,"point":100,"updateMillis":5}"#
        );
        let row = PointHistory {
            id: 7,
            user_id: id,
            kind: TransactionType::Use,
            amount: Amount::new(40).unwrap(),
            time_millis: 9,
        };
        assert_eq!(
            serde_json::to_string(&row).unwrap(),
            r#"{"id":7,"userId":1,"type":"USE","amount":40,"timeMillis":9}"#
        );
    }
}
