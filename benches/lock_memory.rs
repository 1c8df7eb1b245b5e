//! Memory residue of the keyed lock: touch 1,000,000 distinct keys, let them go
//! idle, and compare with the start, two ways:
//!
//! - **live heap bytes**, counted exactly by a counting global allocator
//!   (`stats_alloc` over the system allocator): what the lock itself still owns.
//!   The lock keeps an entry only while a key is held or awaited and shrinks its
//!   tables as keys leave, so this must come back to the start, up to a fixed
//!   bound that does not depend on the number of keys: each of the 64 shards keeps
//!   a table of up to 64 slots (< 8 KiB), so at most 512 KiB.
//! - **resident set size** (RSS, from /proc): what the process holds from the OS,
//!   which also depends on whether the allocator hands freed memory back.
//!
//! Phases, each on 1,000,000 fresh keys:
//! 1. `one_at_a_time`: lock and release each key in turn (the table stays tiny).
//! 2. `held_at_once`: hold every key at once, then release them all (the tables'
//!    peak is 1M entries; every allocation involved is large).
//! 3. `queued_at_once` (twice): as 2, plus one waiter queued behind every holder
//!    (a million small queue buffers), then release all.
//!
//! Run: `cargo bench --bench lock_memory` (Linux: RSS from /proc/self/status). A
//! measurement, not a timed test; it exits non-zero if live heap bytes stay up.

use std::process::ExitCode;

use pointlock::core::KeyedLock;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

/// Counts every allocation, so live heap bytes are known exactly, whatever the
/// allocator then does with freed memory.
#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const KEYS: u64 = 1_000_000;
/// What the lock may keep after any burst: 64 shard tables of up to 64 slots.
const LIVE_RESIDUE_MAX_BYTES: i64 = 512 * 1024;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Heap bytes allocated and not yet freed since `region` began.
fn live_bytes(region: &Region<'_, std::alloc::System>) -> i64 {
    let c = region.change();
    c.bytes_allocated as i64 - c.bytes_deallocated as i64 + c.bytes_reallocated as i64
}

/// Drive a future that is already granted to completion.
fn now<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => panic!("a free key is granted at once"),
    }
}

/// Run one phase on keys `base..base + KEYS`; returns (peak live bytes, peak RSS).
fn phase(
    lock: &KeyedLock<u64>,
    name: &str,
    base: u64,
    region: &Region<'_, std::alloc::System>,
) -> (i64, u64) {
    let keys = base..base + KEYS;
    if name == "one_at_a_time" {
        for key in keys {
            drop(now(lock.lock(key)));
        }
        return (live_bytes(region), rss_kib());
    }
    let guards: Vec<_> = keys
        .clone()
        .map(|key| lock.try_lock(key).expect("fresh key is free"))
        .collect();
    // A waiter behind every holder: its place is taken by the call, unpolled.
    let waiters: Vec<_> = if name.starts_with("queued") {
        keys.map(|key| lock.lock(key)).collect()
    } else {
        Vec::new()
    };
    let peak = (live_bytes(region), rss_kib());
    assert_eq!(lock.len() as u64, KEYS);
    drop(guards); // each hands its key to its waiter, or frees it
    drop(waiters); // granted but never collected: each releases its key
    peak
}

fn main() -> ExitCode {
    let lock = KeyedLock::<u64>::new();
    drop(lock.try_lock(0)); // the tables' first allocations are not per-key residue
    let region = Region::new(GLOBAL);
    let rss_start = rss_kib();
    println!("lock_memory: {KEYS} fresh keys per phase; live heap in KiB (exact), RSS in KiB");
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "phase", "live_peak", "live_after", "rss_start", "rss_peak", "rss_after"
    );
    let mut live_worst = 0_i64;
    let phases = [
        "one_at_a_time",
        "held_at_once",
        "queued_at_once",
        "queued_at_once#2",
    ];
    for (round, name) in (1_u64..).zip(phases) {
        let (live_peak, rss_peak) = phase(&lock, name, round * 10 * KEYS, &region);
        assert!(lock.is_empty(), "{name}: entries left behind");
        let live_after = live_bytes(&region);
        live_worst = live_worst.max(live_after);
        println!(
            "{name:<16} {:>10} {:>10} {rss_start:>10} {rss_peak:>10} {:>10}",
            live_peak / 1024,
            live_after / 1024,
            rss_kib()
        );
    }
    if live_worst > LIVE_RESIDUE_MAX_BYTES {
        println!("lock_memory: FAIL: the lock kept {live_worst} heap bytes after going idle");
        return ExitCode::FAILURE;
    }
    println!(
        "lock_memory: ok: live heap back to the start (+{live_worst} bytes) after every phase"
    );
    ExitCode::SUCCESS
}
