//! `pointlock-sim`: the simulation by hand. `--seeds N` runs seeds
//! `--first..--first+N` (the long mode), `--seed N` replays one seed,
//! `--store memory|sqlite` picks the store, `--plant NAME` plants a bug,
//! `--budget-secs S` bounds the run's wall-clock time, `--lockstep` runs
//! SQLite in lockstep with the runtime (bit-exact replay, no group commit),
//! `--replay-check` runs each seed twice and compares the two runs.

use std::process::ExitCode;
use std::time::Duration;

use pointlock_sim::plant::Plant;
use pointlock_sim::runner::{run_seed, RunOptions};
use pointlock_sim::sweep::sweep;
use pointlock_sim::workload::StoreKind;

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("pointlock-sim: {message}");
            eprintln!("usage: pointlock-sim [--store memory|sqlite] [--seeds N] [--first N] [--seed N] [--plant NAME] [--budget-secs S] [--lockstep] [--replay-check]");
            ExitCode::from(2)
        }
    }
}

fn run(args: Vec<String>) -> Result<ExitCode, String> {
    let mut store = StoreKind::Memory;
    let (mut first, mut count) = (0_u64, 1_000_u64);
    let mut plant = None;
    let mut budget = None;
    let mut replay_check = false;
    let mut lockstep = false;
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--store" => {
                store = match value()?.as_str() {
                    "memory" => StoreKind::Memory,
                    "sqlite" => StoreKind::Sqlite,
                    other => return Err(format!("unknown store {other}")),
                }
            }
            "--seeds" => count = number(&value()?)?,
            "--first" => first = number(&value()?)?,
            "--seed" => {
                first = number(&value()?)?;
                count = 1;
            }
            "--plant" => {
                let name = value()?;
                plant =
                    Some(Plant::from_name(&name).ok_or_else(|| format!("unknown plant {name}"))?);
            }
            "--budget-secs" => budget = Some(Duration::from_secs(number(&value()?)?)),
            "--replay-check" => replay_check = true,
            "--lockstep" => lockstep = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let options = RunOptions {
        plant,
        lockstep,
        ..RunOptions::new(store)
    };
    if replay_check {
        return Ok(check_replays(first, count, &options));
    }
    let result = sweep(first, count, &options, budget);
    println!(
        "{} seeds from {first} on {store:?}{}: {} requests, {} crashes, {:.1} s, {:.1} seeds/s",
        result.seeds,
        plant
            .map(|p| format!(" with plant {}", p.name()))
            .unwrap_or_default(),
        result.requests,
        result.crashes,
        result.elapsed.as_secs_f64(),
        result.seeds_per_second()
    );
    println!(
        "  incarnations whose SQLite store failed stop (failed COMMIT or writer panic): {}",
        result.fail_stops
    );
    println!(
        "  injected by the store wrapper: {} delays, {} errors before the store, {} durable changes answered outcome-unknown",
        result.injected[0], result.injected[1], result.injected[2]
    );
    for (kind, count) in &result.answers {
        println!("  {count:>8}  {kind}");
    }
    Ok(match result.failure {
        Some(failure) => {
            println!("{failure}");
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    })
}

/// Run every seed twice and count the seeds whose two runs differ (in any
/// request or answer).
fn check_replays(first: u64, count: u64, options: &RunOptions) -> ExitCode {
    let (mut same, mut differ) = (0_u64, Vec::new());
    for seed in first..first.saturating_add(count) {
        let digests: Vec<Option<u64>> = (0..2)
            .map(|_| run_seed(seed, options).ok().map(|report| report.digest))
            .collect();
        if digests[0].is_some() && digests[0] == digests[1] {
            same += 1;
        } else {
            differ.push(seed);
        }
    }
    println!(
        "{same} of {count} seeds replayed identically; differing (or failing): {:?}",
        differ.get(..differ.len().min(20)).unwrap_or_default()
    );
    if differ.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn number(raw: &str) -> Result<u64, String> {
    raw.parse().map_err(|_| format!("not a number: {raw}"))
}
