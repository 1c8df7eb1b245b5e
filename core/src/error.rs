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

    /// The user's balance kept changing under the service between its read and
    /// its commit (the store refused every attempt's condition, a bounded number
    /// of times). Nothing was changed; the request may be retried. With the
    /// service's lock in front (one process) this never happens: it takes
    /// writers that skip the lock, or several processes on one database.
    #[error(
        "the balance changed concurrently {attempts} times in a row; nothing was changed; retry"
    )]
    WriteConflict {
        /// Commits attempted, each refused by the store's condition.
        attempts: u32,
    },

    /// An idempotency key that is not 1 to 255 visible ASCII characters.
    #[error("an idempotency key must be 1 to 255 visible ASCII characters (no spaces)")]
    InvalidIdempotencyKey,

    /// The idempotency key was first used by this user for a different request
    /// (another operation or amount). Nothing was changed.
    #[error(
        "this idempotency key was already used for another request of this user ({kind} {amount}); use a new key for a new request"
    )]
    IdempotencyKeyReused {
        /// The operation the key was first used for.
        kind: &'static str,
        /// The amount the key was first used for.
        amount: u64,
    },

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
            Self::WriteConflict { .. } => "WRITE_CONFLICT",
            Self::InvalidIdempotencyKey => "INVALID_IDEMPOTENCY_KEY",
            Self::IdempotencyKeyReused { .. } => "IDEMPOTENCY_KEY_REUSED",
            Self::ForeignGuard => "INTERNAL",
            Self::Store(e) => e.code(),
        }
    }
}

/// How a store failed; the faces map each kind to its own status and code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// A read or a commit failed; a failed commit changed nothing.
    Failed,
    /// The change's condition did not hold: the stored balance is no longer the
    /// one the change was computed from. Nothing was changed; the service re-reads
    /// and tries again (see [`PointService`](crate::PointService)).
    Conflict,
    /// The store has stopped taking changes (it failed and stopped rather than
    /// risk an unknown state) until it is restarted. Nothing was changed.
    Unavailable,
    /// The store's queue is full (more changes are waiting for it than it
    /// holds): the change was refused before it was placed, nothing was
    /// changed; retry later.
    Overloaded,
    /// The commit failed at a point where the store cannot tell whether the
    /// change is durable (a failed COMMIT or fsync). The store stops taking
    /// changes; read the history after a restart to learn the outcome.
    OutcomeUnknown,
}

/// A store failed to read or commit. Unless its kind is
/// [`OutcomeUnknown`](StoreErrorKind::OutcomeUnknown), a failed commit changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("store error: {message}")]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
}

impl StoreError {
    /// A failure ([`StoreErrorKind::Failed`]) with a human-readable cause.
    pub fn new(message: impl Into<String>) -> Self {
        Self::with_kind(StoreErrorKind::Failed, message)
    }

    /// The change's condition did not hold ([`StoreErrorKind::Conflict`]).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::with_kind(StoreErrorKind::Conflict, message)
    }

    /// An error of `kind` with a human-readable cause.
    pub fn with_kind(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// Whether the change's condition did not hold (nothing was changed).
    pub fn is_conflict(&self) -> bool {
        self.kind == StoreErrorKind::Conflict
    }

    /// The cause, as given by the store.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The stable machine-readable code of this kind.
    pub fn code(&self) -> &'static str {
        match self.kind {
            StoreErrorKind::Failed => "STORE_ERROR",
            StoreErrorKind::Conflict => "WRITE_CONFLICT",
            StoreErrorKind::Unavailable => "STORE_UNAVAILABLE",
            StoreErrorKind::OutcomeUnknown => "STORE_OUTCOME_UNKNOWN",
            StoreErrorKind::Overloaded => "STORE_OVERLOADED",
        }
    }
}
