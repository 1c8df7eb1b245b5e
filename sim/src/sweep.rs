//! Many seeds in a row: the CI slice, the long mode and the negative
//! controls all run through [`sweep`].

use std::time::{Duration, Instant};

use crate::runner::{run_seed, Failure, RunOptions};

/// What a sweep did.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// Seeds run (the failing one included).
    pub seeds: u64,
    /// Requests sent over all seeds.
    pub requests: usize,
    /// Incarnations that ended in a crash.
    pub crashes: usize,
    /// Wall-clock time taken.
    pub elapsed: Duration,
    /// The first failing seed, if any.
    pub failure: Option<Failure>,
}

impl Sweep {
    /// Seeds per second of wall-clock time.
    pub fn seeds_per_second(&self) -> f64 {
        self.seeds as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Run seeds `first..first + count` (stopping at the first failure, or once
/// `budget` of wall-clock time is spent).
pub fn sweep(first: u64, count: u64, options: &RunOptions, budget: Option<Duration>) -> Sweep {
    let started = Instant::now();
    let mut result = Sweep {
        seeds: 0,
        requests: 0,
        crashes: 0,
        elapsed: Duration::ZERO,
        failure: None,
    };
    for seed in first..first.saturating_add(count) {
        if budget.is_some_and(|budget| started.elapsed() >= budget) {
            break;
        }
        result.seeds += 1;
        match run_seed(seed, options) {
            Ok(report) => {
                result.requests += report.requests;
                result.crashes += report.crashes;
            }
            Err(failure) => {
                result.failure = Some(failure);
                break;
            }
        }
    }
    result.elapsed = started.elapsed();
    result
}
