//! The value types of the flags that are not plain numbers, paths or strings.

use std::fmt;
use std::str::FromStr;

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line (fields, span fields, level, target, timestamp).
    Json,
}

/// A feature switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// Turned on.
    On,
    /// Turned off.
    Off,
}

/// `--lock-queue-max`: how many requests may wait for one user's lock, as the
/// lock layer's `queue_max` and [`AppOptions::lock_queue_max`](crate::app::AppOptions::lock_queue_max)
/// take it. A number (`0`: none may wait, so a request that finds its user's lock
/// held is refused at once), or [`LockQueueMax::UNBOUNDED_NAME`] (`None`: no
/// bound, waits are bounded by the lock timeout only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockQueueMax(pub Option<usize>);

impl LockQueueMax {
    /// How the flag spells "no bound".
    pub const UNBOUNDED_NAME: &'static str = "unbounded";
}

impl FromStr for LockQueueMax {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if raw == Self::UNBOUNDED_NAME {
            return Ok(Self(None));
        }
        raw.parse().map(|n| Self(Some(n))).map_err(|_| {
            format!(
                "{raw:?}: expected a number of waiters (0: none) or {:?}",
                Self::UNBOUNDED_NAME
            )
        })
    }
}

impl fmt::Display for LockQueueMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(waiters) => write!(f, "{waiters}"),
            None => f.write_str(Self::UNBOUNDED_NAME),
        }
    }
}

/// `--idempotency-ttl-hours`: a positive number of hours, at most ten years.
pub(super) fn parse_ttl_hours(raw: &str) -> Result<f64, String> {
    let hours: f64 = raw
        .trim()
        .parse()
        .map_err(|_| format!("{raw:?} is not a number of hours"))?;
    if hours.is_finite() && hours > 0.0 && hours <= 87_600.0 {
        Ok(hours)
    } else {
        Err(format!(
            "{raw:?}: the TTL must be more than 0 and at most 87600 hours"
        ))
    }
}

/// `--test-negative-control`: a negative control of the pipelined SQLite
/// store, for the crash tests (a `test-util` build only).
#[cfg(feature = "test-util")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TestNegativeControl {
    /// Answer a change once it is sequenced, before it is durable.
    AnswerAtSequencing,
    /// Answer reads from the sequenced state, before it is durable.
    DirtyReads,
}

#[cfg(feature = "test-util")]
impl From<TestNegativeControl> for pointlock_store::NegativeControl {
    fn from(control: TestNegativeControl) -> Self {
        match control {
            TestNegativeControl::AnswerAtSequencing => Self::AnswerAtSequencing,
            TestNegativeControl::DirtyReads => Self::DirtyReads,
        }
    }
}
