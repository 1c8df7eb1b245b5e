//! The wallet's path grammar: `/point/{id}` and `/point/{id}/{tail}`.
//!
//! It lives here, and only here: [`user_key`] is the key extractor the server
//! gives the generic [`KeyedLockLayer`], so that layer locks `/point/{id}` and
//! `/point/{id}/...` by user without knowing any path; [`path_user`] names the
//! same user for the bearer authentication's owner check; and the route table
//! matches paths with the same split ([`Route::of`](super::Route::of)).
//!
//! [`KeyedLockLayer`]: keylock::layer::KeyedLockLayer

use http::Request;
use pointlock_core::{PointError, UserId};

use super::page::page_query;
use crate::error::ApiError;
use keylock::layer::KeyDecision;

/// What every wallet path starts with; the `{id}` segment follows it.
const WALLET_PREFIX: &str = "/point/";

/// Split `/point/{id}` into `("{id}", None)` and `/point/{id}/{tail}` into
/// `("{id}", Some("{tail}"))`; `None` for any other path. The layer, the
/// authentication and the router all read wallet paths through this one
/// function.
pub(super) fn split_wallet_path(path: &str) -> Option<(&str, Option<&str>)> {
    let rest = path.strip_prefix(WALLET_PREFIX)?;
    // A byte scan: ids are a few bytes, shorter than a string searcher's set-up,
    // and every request's path comes through here.
    Some(match rest.bytes().position(|b| b == b'/') {
        Some(slash) => (&rest[..slash], Some(&rest[slash + 1..])),
        None => (rest, None),
    })
}

/// The tail [`split_wallet_path`] gives a route template, computed at compile
/// time (the same grammar, written for a `const fn`): `Some(None)` for
/// `/point/{id}`, `Some(Some("charge"))` for `/point/{id}/charge`, `None` for
/// a path outside the wallet. The route table matches a path's tail with
/// these instead of splitting every template at every request.
pub(super) const fn template_tail(template: &'static str) -> Option<Option<&'static str>> {
    let (bytes, prefix) = (template.as_bytes(), WALLET_PREFIX.as_bytes());
    if bytes.len() < prefix.len() {
        return None;
    }
    let mut end = 0;
    while end < prefix.len() {
        if bytes[end] != prefix[end] {
            return None;
        }
        end += 1;
    }
    // The id segment: up to the next '/'.
    while end < bytes.len() && bytes[end] != b'/' {
        end += 1;
    }
    if end == bytes.len() {
        return Some(None);
    }
    let (_, tail) = bytes.split_at(end + 1);
    match std::str::from_utf8(tail) {
        Ok(tail) => Some(Some(tail)),
        Err(_) => None,
    }
}

/// The raw `{id}` segment of `/point/{id}` or `/point/{id}/...`, if `path` is one.
pub fn user_segment(path: &str) -> Option<&str> {
    split_wallet_path(path).map(|(id, _)| id)
}

/// The user a wallet path names: `None` for a path that is not
/// `/point/{id}` or `/point/{id}/...`, the id or why it is invalid otherwise.
/// The lock layer's key ([`user_key`]) and the bearer authentication's
/// owner check both read the user through this function.
pub fn path_user(path: &str) -> Option<Result<UserId, PointError>> {
    user_segment(path).map(str::parse::<UserId>)
}

/// The wallet's key extractor for [`KeyedLockLayer`](keylock::layer::KeyedLockLayer):
/// a wallet path locks its user (reads included: a user's requests are
/// admitted one at a time, in arrival order); an invalid id is rejected at
/// once with 400 `INVALID_USER_ID`, and a malformed history query
/// ([`page`](super::page)) with 400 `INVALID_QUERY`, taking no lock; every
/// other path passes unlocked.
pub fn user_key<B>(req: &Request<B>) -> KeyDecision<UserId> {
    let path = req.uri().path();
    let Some((raw_id, tail)) = split_wallet_path(path) else {
        return KeyDecision::Pass;
    };
    match raw_id.parse::<UserId>() {
        Err(error) => KeyDecision::Reject(ApiError::from(error).into_response()),
        Ok(id) => {
            if tail == Some(HISTORIES_TAIL) {
                if let Err(error) = page_query(req.uri().query()) {
                    return KeyDecision::Reject(error.into_response());
                }
            }
            KeyDecision::Lock(id)
        }
    }
}

/// The tail of `/point/{id}/histories`, whose query is checked before its lock.
const HISTORIES_TAIL: &str = "histories";
