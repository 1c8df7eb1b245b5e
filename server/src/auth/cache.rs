//! Tokens already verified: a client's next request with the same token costs
//! a lookup instead of a signature check (measured per request: RS256 ~2.5
//! million instructions, ES256 ~3.3 million, HS256 ~36,000, against ~25,000
//! for a whole charge; see docs/performance.md).
//!
//! - Only a token that passed every check is kept, with the principal it
//!   speaks for and its `exp` and `nbf`. A refused token is never kept: each
//!   attempt pays for its own check.
//! - A hit answers only while the token is still within its `exp` and `nbf`
//!   ([`Entry::is_current`]: the comparisons and leeway of `jsonwebtoken`'s
//!   validation); otherwise the full verification runs again, and refuses it
//!   with the right reason.
//! - The key is the whole token, compared byte for byte (hashed with the
//!   standard library's randomly keyed SipHash): two requests share an entry
//!   only with the same bytes, so the same signature and claims. The key and
//!   the checks are fixed for the life of the process, so a verdict can go
//!   stale only with time, which every hit checks.
//! - Bounded: a cache of `capacity` entries is emptied before its next
//!   insertion (a flood of distinct valid tokens costs what no cache costs).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::policy::Principal;

/// A verified token's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    /// Who it speaks for.
    pub principal: Principal,
    /// Its `exp`, in seconds since the epoch.
    pub exp: u64,
    /// Its `nbf`, if it has one.
    pub nbf: Option<u64>,
}

impl Entry {
    /// Whether the token's time checks pass at `now` (seconds since the
    /// epoch) with `leeway`: `jsonwebtoken`'s own comparisons, expired when
    /// `exp < now - leeway`, not yet valid when `nbf > now + leeway`.
    pub fn is_current(&self, now: u64, leeway: u64) -> bool {
        let expired = self.exp < now.saturating_sub(leeway);
        let early = self.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway));
        !expired && !early
    }
}

/// At most `capacity` verified tokens (see the [module docs](self)).
#[derive(Debug)]
pub(super) struct TokenCache {
    capacity: usize,
    entries: Mutex<HashMap<Box<str>, Entry>>,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The principal of `token` if it was verified and is still current at
    /// `now`.
    pub fn get(&self, token: &str, now: u64, leeway: u64) -> Option<Principal> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(token)
            .filter(|entry| entry.is_current(now, leeway))
            .map(|entry| entry.principal)
    }

    /// Remember that `token` passed every check.
    pub fn insert(&self, token: &str, entry: Entry) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity && !entries.contains_key(token) {
            entries.clear();
        }
        entries.insert(token.into(), entry);
    }

    /// Tokens remembered now.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
