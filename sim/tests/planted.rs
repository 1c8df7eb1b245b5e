//! Negative controls: each bug class the checkers exist for, planted on
//! purpose, must be found within a stated number of seeds from seed 0. Each
//! test prints the seed that found it (replayable with `--seed N --plant NAME`).

use pointlock_sim::plant::Plant;
use pointlock_sim::runner::RunOptions;
use pointlock_sim::sweep::sweep;
use pointlock_sim::workload::StoreKind;

/// Run seeds from 0 with `plant` until a checker fails; assert it does
/// within `within` seeds, and that the failure says `expect`.
fn found(plant: Plant, store: StoreKind, within: u64, expect: &str) {
    let options = RunOptions {
        plant: Some(plant),
        ..RunOptions::new(store)
    };
    let result = sweep(0, within, &options, None);
    let Some(failure) = result.failure else {
        panic!(
            "plant {} not found within {within} seeds on {store:?}",
            plant.name()
        );
    };
    println!(
        "plant {} found on seed {} ({} seeds run):\n{failure}",
        plant.name(),
        failure.seed,
        result.seeds
    );
    assert!(
        failure.message.contains(expect),
        "plant {} was found, but not by the checker expected ({expect}): {failure}",
        plant.name()
    );
}

#[test]
fn an_answer_before_durable_is_found() {
    found(
        Plant::AnswerBeforeDurable,
        StoreKind::Sqlite,
        25,
        "acknowledged",
    );
}

#[test]
fn a_read_of_sequenced_state_is_found() {
    found(Plant::ReadSequencedState, StoreKind::Sqlite, 25, "explains");
}

#[test]
fn a_lost_update_is_found() {
    found(Plant::LostUpdate, StoreKind::Memory, 10, "explains");
}

#[test]
fn a_fifo_inversion_is_found() {
    found(
        Plant::FifoInversion,
        StoreKind::Memory,
        10,
        "out of arrival order",
    );
}

#[test]
fn a_leaked_guard_is_found() {
    found(Plant::LeakedGuard, StoreKind::Memory, 10, "leaked guard");
}
