//! The wallet rules, exactly as the course's analysis states them.
//!
//! - An unknown user has balance 0 (a store with no row for the user answers 0).
//! - Amounts are positive integers ([`crate::Amount`] enforces it at parse time).
//! - A charge fails when the new balance would exceed `max_balance`; reaching it
//!   exactly is allowed.
//! - A use fails when the amount is greater than the balance; using all of it is allowed.
//!
//! All arithmetic is checked: no input can overflow.

use crate::domain::Amount;
use crate::error::PointError;

/// The default maximum balance.
pub const MAX_BALANCE_DEFAULT: u64 = 10_000;

/// The wallet's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Inclusive upper bound on any balance.
    pub max_balance: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_balance: MAX_BALANCE_DEFAULT,
        }
    }
}

impl Policy {
    /// A policy with the given inclusive maximum balance.
    pub fn new(max_balance: u64) -> Self {
        Self { max_balance }
    }

    /// The balance after charging `amount` onto `balance`.
    pub fn charge(&self, balance: u64, amount: Amount) -> Result<u64, PointError> {
        let exceeded = PointError::MaxBalanceExceeded {
            balance,
            amount: amount.get(),
            max_balance: self.max_balance,
        };
        match balance.checked_add(amount.get()) {
            Some(next) if next <= self.max_balance => Ok(next),
            _ => Err(exceeded),
        }
    }

    /// The balance after using `amount` from `balance`.
    pub fn use_points(&self, balance: u64, amount: Amount) -> Result<u64, PointError> {
        balance
            .checked_sub(amount.get())
            .ok_or(PointError::InsufficientBalance {
                balance,
                amount: amount.get(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::VALUE_MAX;

    fn amount(raw: u64) -> Amount {
        Amount::new(raw).unwrap()
    }

    #[test]
    fn charge_adds() {
        assert_eq!(Policy::default().charge(0, amount(100)), Ok(100));
        assert_eq!(Policy::default().charge(100, amount(900)), Ok(1_000));
    }

    #[test]
    fn charge_may_reach_max_balance_exactly() {
        assert_eq!(Policy::default().charge(9_999, amount(1)), Ok(10_000));
        assert_eq!(Policy::default().charge(0, amount(10_000)), Ok(10_000));
    }

    #[test]
    fn charge_past_max_balance_fails() {
        assert_eq!(
            Policy::default().charge(10_000, amount(1)),
            Err(PointError::MaxBalanceExceeded {
                balance: 10_000,
                amount: 1,
                max_balance: 10_000
            })
        );
        assert!(Policy::default().charge(0, amount(10_001)).is_err());
    }

    #[test]
    fn charge_cannot_overflow() {
        let unbounded = Policy::new(u64::MAX);
        assert_eq!(unbounded.charge(0, amount(VALUE_MAX)), Ok(VALUE_MAX));
        assert!(unbounded.charge(VALUE_MAX, amount(VALUE_MAX)).is_ok());
        assert!(matches!(
            unbounded.charge(u64::MAX, amount(1)),
            Err(PointError::MaxBalanceExceeded { .. })
        ));
        assert!(matches!(
            Policy::default().charge(10_000, amount(VALUE_MAX)),
            Err(PointError::MaxBalanceExceeded { .. })
        ));
    }

    #[test]
    fn use_subtracts_and_may_empty_the_wallet() {
        assert_eq!(Policy::default().use_points(100, amount(40)), Ok(60));
        assert_eq!(Policy::default().use_points(100, amount(100)), Ok(0));
    }

    #[test]
    fn use_more_than_balance_fails() {
        assert_eq!(
            Policy::default().use_points(100, amount(101)),
            Err(PointError::InsufficientBalance {
                balance: 100,
                amount: 101
            })
        );
        assert!(Policy::default().use_points(0, amount(1)).is_err());
        assert!(Policy::default().use_points(0, amount(VALUE_MAX)).is_err());
    }

    #[test]
    fn error_codes_are_stable() {
        assert_eq!(PointError::InvalidUserId.code(), "INVALID_USER_ID");
        assert_eq!(PointError::InvalidAmount.code(), "INVALID_AMOUNT");
        assert_eq!(
            Policy::default()
                .use_points(0, amount(1))
                .unwrap_err()
                .code(),
            "INSUFFICIENT_BALANCE"
        );
        assert_eq!(
            Policy::default()
                .charge(10_000, amount(1))
                .unwrap_err()
                .code(),
            "MAX_BALANCE_EXCEEDED"
        );
        assert_eq!(PointError::LockTimeout.code(), "LOCK_TIMEOUT");
    }
}
