//! Who may do what: what a request's path needs ([`access`]) and what a
//! verified token grants ([`Principal::may`]).

use pointlock_core::UserId;

use crate::error::Denial;
use crate::routes::{path_user, route_template};

/// The scope that acts on every user and on the operator routes.
pub const ADMIN_SCOPE: &str = "points:admin";

/// What a request's path needs (see the [module docs](super)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No token.
    Open,
    /// Any valid token (a wallet path with an invalid id: the router answers 400).
    Authenticated,
    /// A valid token for this user, or with the admin scope.
    User(UserId),
    /// A valid token with the admin scope.
    Admin,
}

/// What `path` needs. Wallet paths are read with the router's own grammar
/// ([`path_user`]), so every request the lock layer would lock for a user
/// needs that user's token; `operations_admin_only` protects `/metrics` and
/// `/stats` (`--metrics-require-admin`).
pub fn access(path: &str, operations_admin_only: bool) -> Access {
    match path_user(path) {
        Some(Ok(user)) => Access::User(user),
        Some(Err(_)) => Access::Authenticated,
        None if operations_admin_only && is_operations_route(path) => Access::Admin,
        None => Access::Open,
    }
}

/// `/metrics` and `/stats`: the same numbers, as text and as JSON.
fn is_operations_route(path: &str) -> bool {
    matches!(route_template(path), "/metrics" | "/stats")
}

/// Who a valid token speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The user its `sub` names, if it names one.
    pub user: Option<UserId>,
    /// Whether its `scope` holds [`ADMIN_SCOPE`].
    pub admin: bool,
}

impl Principal {
    /// Whether this principal may make a request that needs `access`.
    pub fn may(&self, access: Access) -> Result<(), Denial> {
        match access {
            Access::Open | Access::Authenticated => Ok(()),
            _ if self.admin => Ok(()),
            Access::User(user) if self.user == Some(user) => Ok(()),
            Access::User(_) => Err(Denial::AnotherUser),
            Access::Admin => Err(Denial::NotAdmin),
        }
    }
}
