//! The core's one error enum, with stable codes the faces map to HTTP or JavaScript.

use thiserror::Error;

/// Everything a wallet operation can fail with.
///
/// [`PointError::code`] is stable: clients may match on it.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PointError {
    /// The id is not an integer in `1..=2^63-1`.
    #[error("user id must be a positive integer no larger than 9223372036854775807")]
    InvalidUserId,

    /// The amount is not an integer in `1..=2^63-1`.
    #[error("amount must be a positive integer no larger than 9223372036854775807")]
    InvalidAmount,

    /// A use would take the balance below zero.
    #[error("insufficient balance: balance {balance}, requested {amount}")]
    InsufficientBalance {
        /// The balance before the use.
        balance: u64,
        /// The amount asked for.
        amount: u64,
    },

    /// A charge would take the balance above the maximum.
    #[error("max balance exceeded: balance {balance} + charge {amount} > max {max_balance}")]
    MaxBalanceExceeded {
        /// The balance before the charge.
        balance: u64,
        /// The amount asked for.
        amount: u64,
        /// The policy's maximum balance.
        max_balance: u64,
    },

    /// The user's lock was not acquired before the caller's timeout fired.
    #[error("timed out waiting for this user's other requests to finish; retry later")]
    LockTimeout,

    /// A mutation was attempted with a guard of a different lock than the service's.
    #[error("the guard passed to the service belongs to another lock (a programming error)")]
    ForeignGuard,

    /// The store failed; nothing was changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PointError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidUserId => "INVALID_USER_ID",
            Self::InvalidAmount => "INVALID_AMOUNT",
            Self::InsufficientBalance { .. } => "INSUFFICIENT_BALANCE",
            Self::MaxBalanceExceeded { .. } => "MAX_BALANCE_EXCEEDED",
            Self::LockTimeout => "LOCK_TIMEOUT",
            Self::ForeignGuard => "INTERNAL",
            Self::Store(_) => "STORE_ERROR",
        }
    }
}

/// A store failed to read or commit. A failed commit changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("store error: {message}")]
pub struct StoreError {
    message: String,
}

impl StoreError {
    /// A store error with a human-readable cause.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The cause, as given by the store.
    pub fn message(&self) -> &str {
        &self.message
    }
}
