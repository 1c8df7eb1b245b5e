//! The runner of the model-based property tests (`tests/model.rs`,
//! `tests/model_http.rs`): the case budget and a failure reported with its
//! shrunk input.

use std::fmt::Debug;

use proptest::strategy::Strategy;
pub use proptest::test_runner::Config;
use proptest::test_runner::{TestCaseError, TestError, TestRng, TestRunner};

/// Cases per property when `PROPTEST_CASES` is unset: the budget of a local
/// run and of CI alike. A longer search: `PROPTEST_CASES=10000 cargo test
/// --test model`.
pub const CASES_DEFAULT: u32 = 64;

/// The cases per property: `PROPTEST_CASES`, else [`CASES_DEFAULT`].
pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|raw| raw.trim().parse().ok())
        .unwrap_or(CASES_DEFAULT)
}

/// proptest's configuration (which reads its other `PROPTEST_*` variables,
/// `PROPTEST_RNG_SEED` among them) with our budget, and no failure files
/// written into the source tree: a failure prints its shrunk input, which is
/// then kept as a named regression test.
pub fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Run `test` on `cases()` inputs drawn from `strategy` (a random seed, or
/// `PROPTEST_RNG_SEED`); on a failure, shrink it and panic with the smallest
/// failing input found and the reason.
pub fn check<S>(strategy: S, test: impl Fn(S::Value) -> Result<(), String>)
where
    S: Strategy,
    S::Value: Debug,
{
    let mut runner = TestRunner::new(config());
    if let Err(error) = runner.run(&strategy, |value| test(value).map_err(TestCaseError::fail)) {
        panic!("{}", describe(&error));
    }
}

/// Run `test` like [`check`], but with a fixed seed and `config` (a negative
/// control must fail the same way every run): the first failure found,
/// shrunk as far as `config` allows, or `None` when every case passed.
pub fn find_failure<S>(
    config: Config,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), String>,
) -> Option<(String, S::Value)>
where
    S: Strategy,
    S::Value: Debug,
{
    let rng = TestRng::deterministic_rng(config.rng_algorithm);
    let mut runner = TestRunner::new_with_rng(config, rng);
    match runner.run(&strategy, |value| test(value).map_err(TestCaseError::fail)) {
        Ok(()) => None,
        Err(TestError::Fail(reason, value)) => Some((reason.message().to_owned(), value)),
        Err(TestError::Abort(reason)) => panic!("the property run aborted: {reason}"),
    }
}

fn describe<T: Debug>(error: &TestError<T>) -> String {
    match error {
        TestError::Abort(reason) => format!("the property run aborted: {reason}"),
        TestError::Fail(reason, value) => format!(
            "a case failed: {}\nshrunk input (keep it as a regression test):\n{value:#?}",
            reason.message()
        ),
    }
}
