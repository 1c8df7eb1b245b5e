//! The wallet's path grammar: `/point/{id}` and `/point/{id}/{tail}`.
//!
//! It lives here, and only here: [`user_key`] is the key extractor the server
//! gives the generic [`KeyedLockLayer`], so that layer locks `/point/{id}` and
//! `/point/{id}/...` by user without knowing any path; [`path_user`] names the
//! same user for the bearer authentication's owner check; and the route table
//! matches paths with the same split ([`Route::of`](super::Route::of)).
//!
//! [`KeyedLockLayer`]: crate::layer::KeyedLockLayer

use http::Request;
use pointlock_core::{PointError, UserId};

use crate::error::ApiError;
use crate::layer::KeyDecision;

/// Split `/point/{id}` into `("{id}", None)` and `/point/{id}/{tail}` into
/// `("{id}", Some("{tail}"))`; `None` for any other path. The layer, the
/// authentication and the router all read wallet paths through this one
/// function.
pub(super) fn split_wallet_path(path: &str) -> Option<(&str, Option<&str>)> {
    let rest = path.strip_prefix("/point/")?;
    Some(match rest.split_once('/') {
        Some((id, tail)) => (id, Some(tail)),
        None => (rest, None),
    })
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

/// The wallet's key extractor for [`KeyedLockLayer`](crate::layer::KeyedLockLayer):
/// a wallet path locks its user (reads included: a user's requests are
/// admitted one at a time, in arrival order); an invalid id is rejected at
/// once with 400 `INVALID_USER_ID`, taking no lock; every other path passes
/// unlocked.
pub fn user_key<B>(req: &Request<B>) -> KeyDecision<UserId> {
    match path_user(req.uri().path()) {
        None => KeyDecision::Pass,
        Some(Ok(id)) => KeyDecision::Lock(id),
        Some(Err(error)) => KeyDecision::Reject(ApiError::from(error).into_response()),
    }
}
