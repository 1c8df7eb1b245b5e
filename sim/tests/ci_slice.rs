//! The simulation's bounded slice for the test command: fixed ranges of
//! seeds on the memory store and on SQLite (free-running and in lockstep,
//! with crashes and restarts), each seed checked after every answer and at
//! the end; and bit-exact replay where the simulation promises it. A failure
//! prints its seed and the command that replays it.

use pointlock_sim::runner::{run_seed, RunOptions};
use pointlock_sim::sweep::{sweep, Sweep};
use pointlock_sim::workload::StoreKind;

/// Seeds of the memory store in the slice.
const MEMORY_SEEDS: u64 = 1_500;
/// Seeds of the free-running SQLite store in the slice.
const SQLITE_SEEDS: u64 = 200;
/// Seeds of the SQLite store in lockstep in the slice.
const LOCKSTEP_SEEDS: u64 = 200;
/// Seeds run twice to compare.
const REPLAYED_SEEDS: u64 = 25;

fn report(name: &str, result: &Sweep) {
    println!(
        "{name}: {} seeds, {} requests, {} crashes, {:.1} s, {:.1} seeds/s",
        result.seeds,
        result.requests,
        result.crashes,
        result.elapsed.as_secs_f64(),
        result.seeds_per_second()
    );
    if let Some(failure) = &result.failure {
        panic!("{failure}");
    }
}

fn lockstep() -> RunOptions {
    RunOptions {
        lockstep: true,
        ..RunOptions::new(StoreKind::Sqlite)
    }
}

fn replays_bit_for_bit(options: &RunOptions) {
    for seed in 0..REPLAYED_SEEDS {
        let first = run_seed(seed, options).map(|r| r.digest);
        let second = run_seed(seed, options).map(|r| r.digest);
        match (first, second) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "seed {seed} ran differently twice"),
            (Err(failure), _) | (_, Err(failure)) => panic!("{failure}"),
        }
    }
}

#[test]
fn memory_store_slice_passes_every_checker() {
    let result = sweep(0, MEMORY_SEEDS, &RunOptions::new(StoreKind::Memory), None);
    report("memory", &result);
    assert_eq!(result.seeds, MEMORY_SEEDS);
}

#[test]
fn sqlite_store_slice_with_crashes_passes_every_checker() {
    let result = sweep(0, SQLITE_SEEDS, &RunOptions::new(StoreKind::Sqlite), None);
    report("sqlite (free-running)", &result);
    assert_eq!(result.seeds, SQLITE_SEEDS);
    assert!(result.crashes > 0, "the slice crashes the process");
}

#[test]
fn sqlite_store_in_lockstep_passes_every_checker() {
    let result = sweep(0, LOCKSTEP_SEEDS, &lockstep(), None);
    report("sqlite (lockstep)", &result);
    assert_eq!(result.seeds, LOCKSTEP_SEEDS);
}

#[test]
fn a_memory_seed_replays_bit_for_bit() {
    replays_bit_for_bit(&RunOptions::new(StoreKind::Memory));
}

#[test]
fn a_sqlite_seed_in_lockstep_replays_bit_for_bit() {
    replays_bit_for_bit(&lockstep());
}
