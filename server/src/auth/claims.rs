//! The claims a verified token carries for this server: `sub` (the user),
//! `scope` (the admin scope), and `exp` and `nbf` for the cache's time checks.

use pointlock_core::UserId;
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::policy::{Principal, ADMIN_SCOPE};
use crate::error::TokenRejection;

/// The claims this server reads; the registered ones it checks (`exp`, `nbf`,
/// `aud`, `iss`) are read by `jsonwebtoken`'s validation.
#[derive(Deserialize)]
pub(super) struct Claims {
    #[serde(default)]
    sub: Option<Subject>,
    #[serde(default)]
    scope: Option<Scope>,
    #[serde(default)]
    exp: Option<NumericDate>,
    #[serde(default)]
    nbf: Option<NumericDate>,
}

/// `exp`, `nbf`: seconds since the epoch, read as `jsonwebtoken` reads them
/// (an integer, or a number rounded), for the cache's time checks.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumericDate {
    Integer(u64),
    Number(f64),
    Other(IgnoredAny),
}

impl NumericDate {
    fn seconds(&self) -> Option<u64> {
        match *self {
            Self::Integer(seconds) => Some(seconds),
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Self::Number(seconds)
                if seconds.is_finite() && seconds >= 0.0 && seconds < u64::MAX as f64 =>
            {
                Some(seconds.round() as u64)
            }
            _ => None,
        }
    }
}

/// `sub`: a string (RFC 7519) or, for convenience, a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Subject {
    Text(String),
    Number(u64),
    Other(IgnoredAny),
}

/// `scope`: a space-separated string (RFC 8693, section 4.2).
#[derive(Deserialize)]
#[serde(untagged)]
enum Scope {
    Text(String),
    Other(IgnoredAny),
}

/// A verified token's `exp` and `nbf`, when the cache can check them.
pub(super) type Times = Option<(u64, Option<u64>)>;

impl Claims {
    /// The principal, and the times the cache checks (`None`: not cached).
    pub(super) fn read(self) -> Result<(Principal, Times), TokenRejection> {
        let times = match (&self.exp, &self.nbf) {
            (Some(exp), None) => exp.seconds().map(|exp| (exp, None)),
            (Some(exp), Some(nbf)) => exp.seconds().zip(nbf.seconds().map(Some)),
            (None, _) => None,
        };
        Ok((self.principal()?, times))
    }

    fn principal(self) -> Result<Principal, TokenRejection> {
        let user = match self.sub {
            None => None,
            Some(Subject::Text(sub)) => sub.parse::<UserId>().ok(),
            Some(Subject::Number(sub)) => UserId::new(sub).ok(),
            Some(Subject::Other(_)) => return Err(TokenRejection::Claims),
        };
        let admin = match self.scope {
            None => false,
            Some(Scope::Text(scope)) => scope.split(' ').any(|s| s == ADMIN_SCOPE),
            Some(Scope::Other(_)) => return Err(TokenRejection::Claims),
        };
        Ok(Principal { user, admin })
    }
}
