//! The simulation's bounded slice for the test command: a fixed range of
//! seeds on the memory store and on SQLite (with crashes and restarts), each
//! seed checked after every answer and at the end; and the memory store's
//! bit-exact replay. A failure prints its seed and the command that replays it.

use pointlock_sim::runner::{run_seed, RunOptions};
use pointlock_sim::sweep::{sweep, Sweep};
use pointlock_sim::workload::StoreKind;

/// Seeds of the memory store in the slice (about 10 s in a debug build).
const MEMORY_SEEDS: u64 = 1_200;
/// Seeds of the SQLite store in the slice (about 10 s in a debug build).
const SQLITE_SEEDS: u64 = 200;

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

#[test]
fn memory_store_slice_passes_every_checker() {
    let result = sweep(0, MEMORY_SEEDS, &RunOptions::new(StoreKind::Memory), None);
    report("memory", &result);
    assert_eq!(result.seeds, MEMORY_SEEDS);
}

#[test]
fn sqlite_store_slice_with_crashes_passes_every_checker() {
    let result = sweep(0, SQLITE_SEEDS, &RunOptions::new(StoreKind::Sqlite), None);
    report("sqlite", &result);
    assert_eq!(result.seeds, SQLITE_SEEDS);
    assert!(result.crashes > 0, "the slice crashes the process");
}

#[test]
fn a_memory_seed_replays_bit_for_bit() {
    let options = RunOptions::new(StoreKind::Memory);
    for seed in 0..20 {
        let first = run_seed(seed, &options).map(|r| r.digest);
        let second = run_seed(seed, &options).map(|r| r.digest);
        match (first, second) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "seed {seed} ran differently twice"),
            (Err(failure), _) | (_, Err(failure)) => panic!("{failure}"),
        }
    }
}
