//! The start-up validation of the PostgreSQL timing flags, as a property: for
//! any values (up to `u64::MAX`), `Config::validate` never panics, and it
//! accepts exactly the settings in which a stuck database is answered 503
//! before the request deadline answers 408: both timeouts at least 1 ms, the
//! statement timeout within PostgreSQL's range, and their sum (computed
//! without overflow) shorter than `--request-timeout-ms`.

use clap::Parser;
use pointlock::server::config::PG_STATEMENT_TIMEOUT_MS_MAX as STATEMENT_MAX;
use pointlock::server::Config;
use proptest::prelude::*;

/// The flags with the three timeouts; the rest valid for any of them (the
/// lock and body timeouts 1 ms, far below any request timeout >= 2 ms).
fn config(connect: u64, statement: u64, request: u64) -> Config {
    let args = [
        "pointlock".to_owned(),
        "--store".to_owned(),
        "postgres://pointlock@127.0.0.1:5432/wallet".to_owned(),
        "--pg-connect-timeout-ms".to_owned(),
        connect.to_string(),
        "--pg-statement-timeout-ms".to_owned(),
        statement.to_string(),
        "--request-timeout-ms".to_owned(),
        request.to_string(),
        "--lock-timeout-ms".to_owned(),
        "1".to_owned(),
        "--body-timeout-ms".to_owned(),
        "1".to_owned(),
    ];
    Config::try_parse_from(args).expect("the flags parse")
}

/// What the validation must decide.
fn accepted(connect: u64, statement: u64, request: u64) -> bool {
    connect >= 1
        && (1..=STATEMENT_MAX).contains(&statement)
        && connect
            .checked_add(statement)
            .is_some_and(|sum| sum < request)
}

/// Values at the edges as often as anywhere: 0, 1, the statement maximum,
/// around u64::MAX, and anything.
fn millis() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1u64),
        Just(STATEMENT_MAX),
        Just(STATEMENT_MAX + 1),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        0u64..10_000,
        any::<u64>(),
    ]
}

proptest! {
    // No regressions file: a failure prints its shrunk input (keep it as a
    // named test, as the model tests do).
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_pg_timeouts_are_accepted_exactly_when_a_stuck_database_is_a_503(
        connect in millis(),
        statement in millis(),
        request in 2u64..=u64::MAX,
    ) {
        let verdict = config(connect, statement, request).validate();
        prop_assert_eq!(
            verdict.is_ok(),
            accepted(connect, statement, request),
            "connect {} statement {} request {}: {:?}",
            connect,
            statement,
            request,
            verdict
        );
    }
}

#[test]
fn a_sum_past_u64_max_is_refused_with_a_message_not_a_panic() {
    let verdict = config(u64::MAX, STATEMENT_MAX, u64::MAX).validate();
    let message = verdict.expect_err("an overflowing sum is refused");
    assert!(message.contains("too large"), "{message}");
}
