//! Deterministic simulation of pointlock: the real keyed lock and its tower
//! layer, the server's router and request deadline, the service and the
//! stores (memory, and SQLite crashed and reopened), driven by a seeded
//! workload of many clients with faults injected at every step, and judged
//! by checkers after every answer and at the end.
//!
//! Everything here needs the `test-util` feature (the stores' fault
//! injection, tokio's paused clock, the planted bugs); without it this crate
//! is empty, so a plain `cargo build --workspace` never compiles test-only
//! code into the server.
//!
//! # The scheduler
//!
//! Each incarnation of the process runs on its own tokio **current-thread
//! runtime with paused time**: one thread polls every task, in an order that
//! depends only on what the tasks do, and simulated time moves only when
//! every task waits, straight to the next timer. The lock layer's timeouts,
//! the request deadline, the clients' think times and disconnects, and the
//! fault wrapper's delays are all tokio timers, so they fire in simulated
//! time. The real crates run unchanged (they are written for tokio); turmoil
//! would add a simulated network this in-process stack does not use, and
//! madsim would replace tokio for the whole build.
//!
//! # What is deterministic
//!
//! On the memory store, everything: a seed replays the same requests, the
//! same interleaving and the same answers (`--seed N`; checked by the CI
//! slice, which runs seeds twice and compares digests of every request and
//! answer).
//!
//! The SQLite store writes on an OS thread and reads on tokio's blocking
//! pool, so it runs in one of two modes:
//!
//! - **free-running** (the default): group commit as in production. The
//!   runtime is kept busy while the store's threads work (`runner::pump`),
//!   so simulated time does not run ahead of them and timeouts do not fire
//!   for real-time delays; but which changes share a batch, and when an
//!   answer wakes its task, depend on the OS. A seed replays the same
//!   workload and fault schedule, not bit for bit the same run (about half
//!   of the seeds replay identically; measured with `--replay-check`).
//!   This is the mode that can see the pipeline's own bugs: the window
//!   between a change's place and its durability is open.
//! - **lockstep** (`--lockstep`): the fault wrapper drives each store call
//!   to its end on the runtime's thread and waits until the writer's queue
//!   is empty, so nothing the store's threads do overlaps the tasks; each
//!   change is committed alone. Seeds replay bit for bit. The window between
//!   sequencing and durability is closed, so a bug that needs it (a read of
//!   the sequenced state) cannot show here.
//!
//! A failure prints its seed, the command that replays it and the failing
//! user's requests and answers in arrival order with the durable rows, so a
//! free-running SQLite failure that does not recur is still diagnosable.
//!
//! # Modules
//!
//! (Built only with `test-util`; `cargo doc -p pointlock-sim --features
//! test-util` documents them.)
//!
//! | module | holds |
//! |---|---|
//! | `workload` | the `Scenario` drawn from a seed: clients' scripts, crashes, faults |
//! | `faults` | `FaultStore`: seeded store delays and errors |
//! | `stack` | the simulated HTTP stack (deadline, lock layer, router) |
//! | `client` | a client: sends, records, disconnects, retries |
//! | `model` | the log of requests and the per-user linearizability checker |
//! | `plant` | the planted bugs the checkers must find |
//! | `runner` | one seed: lives, crashes, restarts, quiescence checks |
//! | `life` | what one life's clients share; the checkers after every answer |
//! | `clock` | the service's clock from tokio's paused clock |
//! | `sweep` | many seeds, with seeds per second |
//!
//! # Running it
//!
//! - The CI slice: `cargo test -p pointlock-sim` (part of `cargo test
//!   --workspace`): fixed seed ranges on every store and mode, bit-exact
//!   replay where promised, and one negative control per planted bug.
//! - The long mode: `cargo run -p pointlock-sim --release --features
//!   test-util -- --seeds 100000` (`--store sqlite`, `--lockstep`,
//!   `--first N`, `--budget-secs S`); it prints seeds per second, the
//!   answers by kind and the faults injected.
//! - A failure prints `--seed N` (with its store, plant and mode): the same
//!   command with that flag replays it.

#[cfg(feature = "test-util")]
pub mod client;
#[cfg(feature = "test-util")]
pub mod clock;
#[cfg(feature = "test-util")]
pub mod faults;
#[cfg(feature = "test-util")]
pub mod life;
#[cfg(feature = "test-util")]
pub mod model;
#[cfg(feature = "test-util")]
pub mod plant;
#[cfg(feature = "test-util")]
pub mod runner;
#[cfg(feature = "test-util")]
pub mod stack;
#[cfg(feature = "test-util")]
pub mod sweep;
#[cfg(feature = "test-util")]
pub mod workload;
