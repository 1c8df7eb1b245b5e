//! `pointlock-sim`: the simulation by hand. `--seeds N` runs seeds
//! `--first..--first+N` (the long mode), `--seed N` replays one seed,
//! `--store memory|sqlite` picks the store, `--plant NAME` plants a bug,
//! `--budget-secs S` bounds the run's wall-clock time.

use std::process::ExitCode;
use std::time::Duration;

use pointlock_sim::plant::Plant;
use pointlock_sim::runner::RunOptions;
use pointlock_sim::sweep::sweep;
use pointlock_sim::workload::StoreKind;

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("pointlock-sim: {message}");
            eprintln!("usage: pointlock-sim [--store memory|sqlite] [--seeds N] [--first N] [--seed N] [--plant NAME] [--budget-secs S]");
            ExitCode::from(2)
        }
    }
}

fn run(args: Vec<String>) -> Result<ExitCode, String> {
    let mut store = StoreKind::Memory;
    let (mut first, mut count) = (0_u64, 1_000_u64);
    let mut plant = None;
    let mut budget = None;
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
                plant = Some(Plant::from_name(&name).ok_or_else(|| format!("unknown plant {name}"))?);
            }
            "--budget-secs" => budget = Some(Duration::from_secs(number(&value()?)?)),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let options = RunOptions {
        plant,
        ..RunOptions::new(store)
    };
    let result = sweep(first, count, &options, budget);
    println!(
        "{} seeds from {first} on {store:?}{}: {} requests, {} crashes, {:.1} s, {:.1} seeds/s",
        result.seeds,
        plant.map(|p| format!(" with plant {}", p.name())).unwrap_or_default(),
        result.requests,
        result.crashes,
        result.elapsed.as_secs_f64(),
        result.seeds_per_second()
    );
    Ok(match result.failure {
        Some(failure) => {
            println!("{failure}");
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    })
}

fn number(raw: &str) -> Result<u64, String> {
    raw.parse().map_err(|_| format!("not a number: {raw}"))
}
