//! Many seeds in a row: the CI slice, the long mode and the negative
//! controls all run through [`sweep`].

use std::collections::BTreeMap;
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
    /// Incarnations in which the SQLite store failed stop.
    pub fail_stops: usize,
    /// Answers of each kind over all seeds.
    pub answers: BTreeMap<String, usize>,
    /// Faults the wrapper injected over all seeds: delays, errors before
    /// the store, durable changes answered "outcome unknown".
    pub injected: [usize; 3],
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
        fail_stops: 0,
        answers: BTreeMap::new(),
        injected: [0; 3],
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
                result.fail_stops += report.fail_stops;
                for (kind, count) in report.answers {
                    *result.answers.entry(kind).or_default() += count;
                }
                for (total, count) in result.injected.iter_mut().zip(report.injected) {
                    *total += count;
                }
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
