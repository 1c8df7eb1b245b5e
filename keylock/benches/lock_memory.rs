//! Memory residue of the keyed lock: touch 1,000,000 distinct keys, let them go
//! idle, and compare with the start, two ways:
//!
//! - **live heap bytes**, counted exactly by a counting global allocator
//!   (`cap`): what the lock itself still owns. The lock keeps an entry only
//!   while a key is held or awaited and shrinks its tables as keys leave, so this
//!   must come back to the start, up to a fixed bound that does not depend on the
//!   number of keys: each of the 256 shards keeps a table of up to 32 slots
//!   (~1 KiB), so at most 512 KiB.
//! - **resident set size** (RSS, from /proc): what the process holds from the OS,
//!   which also depends on whether the allocator hands freed memory back. The
//!   allocator under the counter is jemalloc (a server's usual choice), with its
//!   background purging thread, which returns freed pages over its decay time
//!   (10 s by default). After each phase the bench idles until RSS is back within
//!   10% of the start or has stopped falling for 5 s (at most 30 s), and reports
//!   how long it idled. It must be back within 10% after `one_at_a_time`; after
//!   the bursts jemalloc keeps its own metadata for the ~250 MB it had mapped
//!   (a few MiB, reported).
//!
//! Phases, each on 1,000,000 fresh keys:
//! 1. `one_at_a_time`: lock and release each key in turn (the table stays tiny).
//! 2. `held_at_once`: hold every key at once, then release them all (the tables'
//!    peak is 1M entries).
//! 3. `queued_at_once` (twice): as 2, plus one waiter queued behind every holder
//!    (a million small queues), then release all.
//!
//! Run: `cargo bench -p keylock --bench lock_memory` (Linux: RSS from /proc/self/status;
//! about a minute, mostly idling). A measurement, not a timed test; it exits
//! non-zero if live heap bytes stay up, or if RSS does not come back after the
//! keys were touched one at a time.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use cap::Cap;
use keylock::KeyedLock;
use tikv_jemallocator::Jemalloc;

/// Counts live heap bytes exactly (`cap`, with no limit), whatever the allocator
/// under it (jemalloc) then does with freed memory.
#[global_allocator]
static GLOBAL: Cap<Jemalloc> = Cap::new(Jemalloc, usize::MAX);

const KEYS: u64 = 1_000_000;
/// What the lock may keep after any burst: 256 shard tables of up to 32 slots.
const LIVE_RESIDUE_MAX_BYTES: i64 = 512 * 1024;
/// RSS counts as back once within this fraction above the start.
const RSS_SLACK: f64 = 0.10;
/// The longest the bench idles for RSS to come back after a phase.
const IDLE_MAX: Duration = Duration::from_secs(30);
/// RSS counts as settled once it has not fallen for this long.
const SETTLED: Duration = Duration::from_secs(5);

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Heap bytes allocated and not yet freed since `start` (from `GLOBAL.allocated()`).
fn live_bytes(start: usize) -> i64 {
    GLOBAL.allocated() as i64 - start as i64
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
fn phase(lock: &KeyedLock<u64>, name: &str, base: u64, start: usize) -> (i64, u64) {
    let keys = base..base + KEYS;
    if name == "one_at_a_time" {
        for key in keys {
            drop(now(lock.lock(key)));
        }
        return (live_bytes(start), rss_kib());
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
    let peak = (live_bytes(start), rss_kib());
    assert_eq!(lock.len() as u64, KEYS);
    drop(guards); // each hands its key to its waiter, or frees it
    drop(waiters); // granted but never collected: each releases its key
    peak
}

/// Idle until RSS is within `RSS_SLACK` of `start`, or has stopped falling for
/// `SETTLED` (or `IDLE_MAX` passes); returns the RSS then and the seconds waited.
fn idle_until_rss_back(start: u64) -> (u64, f64) {
    let began = Instant::now();
    let target = (start as f64 * (1.0 + RSS_SLACK)) as u64;
    let (mut lowest, mut lowest_at) = (u64::MAX, began);
    loop {
        let rss = rss_kib();
        if rss < lowest {
            (lowest, lowest_at) = (rss, Instant::now());
        }
        if rss <= target || lowest_at.elapsed() >= SETTLED || began.elapsed() >= IDLE_MAX {
            return (rss, began.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() -> ExitCode {
    let lock = KeyedLock::<u64>::new();
    drop(lock.try_lock(0)); // the tables' first allocations are not per-key residue
    let start = GLOBAL.allocated();
    let rss_start = rss_kib();
    println!("lock_memory: {KEYS} fresh keys per phase; live heap in KiB (exact), RSS in KiB");
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "phase", "live_peak", "live_after", "rss_start", "rss_peak", "rss_after", "idle_s"
    );
    let mut live_worst = 0_i64;
    let (mut rss_worst, mut rss_peak_worst, mut rss_one_at_a_time) = (0_u64, 0_u64, 0_u64);
    let phases = [
        "one_at_a_time",
        "held_at_once",
        "queued_at_once",
        "queued_at_once#2",
    ];
    for (round, name) in (1_u64..).zip(phases) {
        let (live_peak, rss_peak) = phase(&lock, name, round * 10 * KEYS, start);
        assert!(lock.is_empty(), "{name}: entries left behind");
        let live_after = live_bytes(start);
        live_worst = live_worst.max(live_after);
        let (rss_after, idled) = idle_until_rss_back(rss_start);
        if name == "one_at_a_time" {
            rss_one_at_a_time = rss_after;
        } else {
            rss_worst = rss_worst.max(rss_after);
            rss_peak_worst = rss_peak_worst.max(rss_peak);
        }
        println!(
            "{name:<16} {:>10} {:>10} {rss_start:>10} {rss_peak:>10} {rss_after:>10} {idled:>8.1}",
            live_peak / 1024,
            live_after / 1024,
        );
    }
    let mut ok = true;
    if live_worst > LIVE_RESIDUE_MAX_BYTES {
        println!("lock_memory: FAIL: the lock kept {live_worst} heap bytes after going idle");
        ok = false;
    }
    if rss_one_at_a_time as f64 > rss_start as f64 * (1.0 + RSS_SLACK) {
        println!(
            "lock_memory: FAIL: RSS stayed at {rss_one_at_a_time} KiB after touching {KEYS} \
             keys one at a time, start {rss_start} KiB"
        );
        ok = false;
    }
    if !ok {
        return ExitCode::FAILURE;
    }
    println!(
        "lock_memory: ok: live heap back to the start (+{live_worst} bytes) after every \
         phase; RSS within {}% of the start after touching {KEYS} keys one at a time \
         ({rss_one_at_a_time} vs {rss_start} KiB); after the bursts it came back to \
         {rss_worst} KiB from a peak of {rss_peak_worst} KiB (what stays is the \
         allocator's own bookkeeping, not the lock's: see the live heap)",
        (RSS_SLACK * 100.0) as u32
    );
    ExitCode::SUCCESS
}
