//! The lock under the loom model checker.
//!
//! Built only with `RUSTFLAGS="--cfg loom"`, where `crate::sync` hands the lock
//! loom's `Mutex`, `Arc` and `AtomicU64`: loom then runs each model below once per
//! interleaving of the threads' steps (every shard-mutex acquisition, atomic
//! operation and `Arc` count change is a point where another thread may run),
//! exhaustively up to a bound on preemptions, and fails on a panic, a deadlock
//! (every thread blocked: a lost wake-up, a stranded waiter) or a leaked `Arc`.
//! The lock's futures are driven by `loom::future::block_on`, whose waker is
//! loom's, so a waker the lock forgets to call is a deadlock.
//!
//! Each model asserts one holder at a time (`Track`), the order of grants, and an
//! empty table at the end. Each has a negative control: the same model on a lock
//! with a deliberate bug planted (`Bug`, `KeyedLock::with_bug`), which loom must
//! reject, with the failure the bug should cause.
//!
//! Run with `scripts/loom.sh` (bound 3, its own target directory), or (see
//! docs/concurrency.md, "Model checking"):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom \
//!     cargo test -p keylock --release --lib lock::loom_tests
//! ```
//!
//! Without `LOOM_MAX_PREEMPTIONS` the bound is [`PREEMPTIONS_DEFAULT`].

use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use loom::future::{block_on, AtomicWaker};
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use loom::sync::{Arc, Mutex};
use loom::thread;

use super::entry::Entry;
use super::shard::{hand_off, Shard};
use super::{Acquire, KeyGuard, KeyedLock, LockTimedOut};

/// A deliberate bug, planted in a lock by `KeyedLock::with_bug` for a negative
/// control. Each is a plausible edit of the lock; the `…InTwoSteps` ones split
/// one transition of an entry across two critical sections, which shows only
/// under some interleavings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Bug {
    /// The real lock.
    None,
    /// `poll` checks for the hand-off, unlocks, then registers its waker without
    /// checking again: a hand-off in between is never woken (a lost wake-up).
    PollInTwoSteps,
    /// Cancelling a queued waiter reads "not handed to me", unlocks, then leaves
    /// the queue: a hand-off in between is lost with it (a stranded key).
    CancelInTwoSteps,
    /// Releasing takes the entry out of the table, unlocks, then puts it back for
    /// the next waiter: a caller in between finds the key free (barging, and two
    /// holders when the entry goes back).
    ReleaseInTwoSteps,
    /// Cancelling a waiter after the lock was handed to it only leaves the queue,
    /// as if it were still queued: the hand-off is lost (a stranded key).
    CancelForgetsHandOff,
    /// The queue is served newest first.
    Lifo,
    /// The head of the queue takes the key when it is polled, without waiting
    /// for the holder's hand-off.
    HeadTakesTheKey,
    /// No lock at all: `KeyedLock::unsynchronized`, the negative control of the
    /// other test suites.
    Unsynchronized,
}

/// The preemption bound when `LOOM_MAX_PREEMPTIONS` is not set.
const PREEMPTIONS_DEFAULT: usize = 2;

/// Check `model` in every interleaving within the preemption bound, and say how
/// many executions that took (`--nocapture` shows it).
fn check<F: Fn() + Sync + Send + 'static>(model: F) {
    let mut builder = loom::model::Builder::new();
    let bound = *builder.preemption_bound.get_or_insert(PREEMPTIONS_DEFAULT);
    // A std atomic, not a modelled one: it counts loom's executions, outside them.
    let executions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&executions);
    builder.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        model();
    });
    let executions = executions.load(std::sync::atomic::Ordering::Relaxed);
    println!("{executions} executions, at most {bound} preemptions each");
}

/// The negative control of a model: its model with a bug planted, `inner`, run in
/// a child process (this test binary, that one ignored test, at the same
/// `LOOM_MAX_PREEMPTIONS`), must fail, with one of the messages `expected` (which
/// comes first depends on the order in which loom explores). A child, because
/// loom cannot unwind out of every failure: a deadlock panics inside `block_on`,
/// whose waker then panics again as it is dropped, which aborts the process.
fn rejected_in_child(inner: &str, bug: Bug, expected: &[&str]) {
    let module = module_path!();
    let module = module
        .split_once("::")
        .map_or(module, |(_crate, path)| path);
    let test = format!("{module}::{inner}");
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = std::process::Command::new(exe)
        .args([
            "--exact",
            &test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout.contains("running 1 test"),
        "{test} did not run: {stdout}{stderr}"
    );
    assert!(
        !output.status.success(),
        "loom found no failing interleaving with {bug:?} planted: {stdout}{stderr}"
    );
    let failure = stderr
        .lines()
        .skip_while(|line| !line.contains("panicked at"))
        .nth(1)
        .unwrap_or("<no panic message>");
    assert!(
        expected.iter().any(|e| failure.contains(e)),
        "with {bug:?} planted loom failed, but not as expected {expected:?}: {stderr}"
    );
    println!("{bug:?}: {failure}");
}

/// A negative control: `$inner` checks `$model` with `$bug` planted (ignored: it
/// must fail), and `$outer` runs it in a child process and expects that failure.
macro_rules! negative_control {
    ($outer:ident, $inner:ident, $bug:expr, $model:ident, $expected:expr) => {
        #[test]
        #[ignore = "a model with a bug planted, which must fail: run by its negative_control_ test"]
        fn $inner() {
            check(|| $model($bug));
        }

        #[test]
        fn $outer() {
            rejected_in_child(stringify!($inner), $bug, $expected);
        }
    };
}

/// How many hold the key at once, and who was granted it, in order.
#[derive(Default)]
struct Track {
    holders: AtomicUsize,
    grants: Mutex<Vec<usize>>,
}

impl Track {
    fn enter(&self, who: usize) {
        let before = self.holders.fetch_add(1, SeqCst);
        assert_eq!(before, 0, "KeyedLock violated: two holders ({who} entered)");
        self.grants.lock().unwrap().push(who);
    }

    fn leave(&self) {
        self.holders.fetch_sub(1, SeqCst);
    }

    /// Hold `guard` as `who` for a step, then release it.
    fn hold(&self, who: usize, guard: KeyGuard<u64>) {
        assert_eq!(guard.key(), &KEY);
        self.enter(who);
        self.leave();
        drop(guard);
    }

    fn grants(&self) -> Vec<usize> {
        self.grants.lock().unwrap().clone()
    }
}

const KEY: u64 = 7;

/// Poll `acquire` once with a waker that does nothing.
fn poll_once(acquire: &mut Acquire<u64>) -> Poll<KeyGuard<u64>> {
    Pin::new(acquire).poll(&mut Context::from_waker(Waker::noop()))
}

/// The common start: a lock with `bug`, its key held by the model's thread (who 0).
fn held(bug: Bug) -> (KeyedLock<u64>, KeyGuard<u64>, Arc<Track>) {
    let lock = KeyedLock::with_bug(bug);
    let track = Arc::new(Track::default());
    let holder = lock.try_lock(KEY).expect("a new lock is free");
    track.enter(0);
    (lock, holder, track)
}

fn assert_empty(lock: &KeyedLock<u64>) {
    assert_eq!(lock.len(), 0, "KeyedLock violated: the table is not empty");
    assert_eq!(lock.waiters(), 0);
}

// 1. Hand-off.

/// The holder releases while a waiter is queued and a third thread calls
/// `try_lock`: the waiter is granted the key (so it was woken), and the third
/// thread gets it only after the waiter released it.
fn handoff_beats_try_lock(bug: Bug) {
    let (lock, holder, track) = held(bug);
    let queued = lock.lock(KEY);
    assert!(!queued.is_granted());
    let waiter = {
        let track = Arc::clone(&track);
        thread::spawn(move || track.hold(1, block_on(queued)))
    };
    let barger = {
        let (lock, track) = (lock.clone(), Arc::clone(&track));
        thread::spawn(move || {
            if let Some(guard) = lock.try_lock(KEY) {
                track.hold(2, guard);
            }
        })
    };
    track.leave();
    drop(holder);
    waiter.join().unwrap();
    barger.join().unwrap();
    let grants = track.grants();
    assert!(
        grants == [0, 1] || grants == [0, 1, 2],
        "KeyedLock violated: barging, grants in the order {grants:?}"
    );
    assert_empty(&lock);
}

/// The same with a third `lock()` racing the release: it queues behind the
/// waiter, or finds the key free after the waiter, never before.
fn handoff_beats_lock(bug: Bug) {
    let (lock, holder, track) = held(bug);
    let queued = lock.lock(KEY);
    let waiter = {
        let track = Arc::clone(&track);
        thread::spawn(move || track.hold(1, block_on(queued)))
    };
    let late = {
        let (lock, track) = (lock.clone(), Arc::clone(&track));
        thread::spawn(move || track.hold(2, block_on(lock.lock(KEY))))
    };
    track.leave();
    drop(holder);
    waiter.join().unwrap();
    late.join().unwrap();
    let grants = track.grants();
    assert_eq!(
        grants,
        [0, 1, 2],
        "KeyedLock violated: barging, grants in the order {grants:?}"
    );
    assert_empty(&lock);
}

#[test]
fn handoff_to_a_queued_waiter_beats_a_racing_try_lock() {
    check(|| handoff_beats_try_lock(Bug::None));
}

#[test]
fn handoff_to_a_queued_waiter_beats_a_racing_lock() {
    check(|| handoff_beats_lock(Bug::None));
}

negative_control!(
    negative_control_a_waker_registered_after_an_unlock_is_lost,
    bugged_a_waker_registered_after_an_unlock_is_lost,
    Bug::PollInTwoSteps,
    handoff_beats_try_lock,
    &["deadlock"]
);

negative_control!(
    negative_control_a_head_that_does_not_wait_for_the_handoff_holds_with_the_holder,
    bugged_a_head_that_does_not_wait_for_the_handoff_holds_with_the_holder,
    Bug::HeadTakesTheKey,
    handoff_beats_try_lock,
    &["KeyedLock violated", "KeyedLock invariant"]
);

negative_control!(
    negative_control_a_release_in_two_steps_lets_try_lock_barge,
    bugged_a_release_in_two_steps_lets_try_lock_barge,
    Bug::ReleaseInTwoSteps,
    handoff_beats_try_lock,
    &["KeyedLock violated", "KeyedLock invariant"]
);

negative_control!(
    negative_control_a_release_in_two_steps_lets_lock_barge,
    bugged_a_release_in_two_steps_lets_lock_barge,
    Bug::ReleaseInTwoSteps,
    handoff_beats_lock,
    &["KeyedLock violated", "KeyedLock invariant"]
);

// 2. Cancellation after the hand-off.

/// The key is handed to `a`, which had been polled once, and `a` is then
/// dropped without seeing the grant (a `select!` that took another branch),
/// while `b` waits and the model's thread tries the key: the key passes on to
/// `b`, and `try_lock` gets it only after `b`.
fn cancel_after_handoff_passes_on(bug: Bug) {
    let (lock, holder, track) = held(bug);
    let mut a = lock.lock(KEY);
    let b = lock.lock(KEY);
    assert!(poll_once(&mut a).is_pending());
    track.leave();
    drop(holder);
    assert!(a.is_granted(), "handed to a");
    let cancel = thread::spawn(move || drop(a));
    let next = {
        let track = Arc::clone(&track);
        thread::spawn(move || track.hold(1, block_on(b)))
    };
    if let Some(guard) = lock.try_lock(KEY) {
        track.hold(2, guard);
    }
    cancel.join().unwrap();
    next.join().unwrap();
    let grants = track.grants();
    assert!(
        grants == [0, 1] || grants == [0, 1, 2],
        "KeyedLock violated: grants in the order {grants:?}"
    );
    assert_empty(&lock);
    assert_eq!(lock.metrics().cancelled, 1);
}

/// The same with nobody queued behind `a`: its drop frees the key. A racing
/// `try_lock` that succeeds must come after the drop.
fn cancel_after_handoff_frees(bug: Bug) {
    let (lock, holder, track) = held(bug);
    let a = lock.lock(KEY);
    track.leave();
    drop(holder);
    let dropped = Arc::new(AtomicBool::new(false));
    let cancel = {
        let dropped = Arc::clone(&dropped);
        thread::spawn(move || {
            drop(a);
            dropped.store(true, SeqCst);
        })
    };
    let was_dropped = dropped.load(SeqCst);
    let got = lock.try_lock(KEY);
    if was_dropped {
        assert!(got.is_some(), "KeyedLock violated: a freed key is not free");
    }
    drop(got);
    cancel.join().unwrap();
    assert!(
        lock.try_lock(KEY).is_some(),
        "KeyedLock violated: the key was stranded"
    );
    assert_empty(&lock);
}

#[test]
fn a_cancelled_handoff_passes_the_key_to_the_next_waiter() {
    check(|| cancel_after_handoff_passes_on(Bug::None));
}

#[test]
fn a_cancelled_handoff_with_nobody_behind_frees_the_key() {
    check(|| cancel_after_handoff_frees(Bug::None));
}

negative_control!(
    negative_control_a_cancel_that_forgets_the_handoff_strands_the_next_waiter,
    bugged_a_cancel_that_forgets_the_handoff_strands_the_next_waiter,
    Bug::CancelForgetsHandOff,
    cancel_after_handoff_passes_on,
    &["deadlock"]
);

negative_control!(
    negative_control_a_cancel_that_forgets_the_handoff_strands_the_key,
    bugged_a_cancel_that_forgets_the_handoff_strands_the_key,
    Bug::CancelForgetsHandOff,
    cancel_after_handoff_frees,
    &["KeyedLock violated"]
);

// 3. Timeout racing the release.

/// A timer that a thread fires, waking the future that waits for it.
#[derive(Default)]
struct Timer {
    fired: AtomicBool,
    waker: AtomicWaker,
}

impl Timer {
    fn fire(&self) {
        self.fired.store(true, SeqCst);
        self.waker.wake();
    }
}

struct Sleep(Arc<Timer>);

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.fired.load(SeqCst) {
            return Poll::Ready(());
        }
        self.0.waker.register_by_ref(cx.waker());
        if self.0.fired.load(SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// A waiter with a timeout (`lock_timeout`) is queued, then `b`; the holder
/// releases while the timer fires. The timed waiter gets the key or gives up
/// (counted as a timeout); either way `b` gets the key after it, and the
/// table ends empty.
fn timeout_races_release(bug: Bug) {
    let (lock, holder, track) = held(bug);
    let timer = Arc::new(Timer::default());
    let timed = lock.lock_timeout(KEY, Sleep(Arc::clone(&timer)));
    let b = lock.lock(KEY);
    let timed = {
        let track = Arc::clone(&track);
        thread::spawn(move || match block_on(timed) {
            Ok(guard) => {
                track.hold(1, guard);
                false
            }
            Err(LockTimedOut) => true,
        })
    };
    let next = {
        let track = Arc::clone(&track);
        thread::spawn(move || {
            timer.fire();
            track.hold(2, block_on(b));
        })
    };
    track.leave();
    drop(holder);
    let timed_out = timed.join().unwrap();
    next.join().unwrap();
    let grants = track.grants();
    let expected: &[usize] = if timed_out { &[0, 2] } else { &[0, 1, 2] };
    assert_eq!(
        grants, expected,
        "KeyedLock violated: grants in the order {grants:?}"
    );
    assert_eq!(lock.metrics().timeouts, u64::from(timed_out));
    assert_empty(&lock);
}

#[test]
fn a_timeout_racing_the_release_gets_the_key_or_leaves_cleanly() {
    check(|| timeout_races_release(Bug::None));
}

negative_control!(
    negative_control_a_timeout_that_cancels_in_two_steps_strands_the_key,
    bugged_a_timeout_that_cancels_in_two_steps_strands_the_key,
    Bug::CancelInTwoSteps,
    timeout_races_release,
    &["deadlock", "KeyedLock violated"]
);

// 4. Drop while queued.

/// `a` (polled once) and `b` are queued; `a` is dropped while the holder
/// releases: whether the release finds `a` still queued or already gone, `b`
/// gets the key and the table ends empty.
fn drop_while_queued(bug: Bug) {
    let (lock, holder, track) = held(bug);
    let mut a = lock.lock(KEY);
    let b = lock.lock(KEY);
    assert!(poll_once(&mut a).is_pending());
    let cancel = thread::spawn(move || drop(a));
    let next = {
        let track = Arc::clone(&track);
        thread::spawn(move || track.hold(1, block_on(b)))
    };
    track.leave();
    drop(holder);
    cancel.join().unwrap();
    next.join().unwrap();
    assert_eq!(track.grants(), [0, 1]);
    assert_eq!(lock.metrics().cancelled, 1);
    assert_empty(&lock);
}

#[test]
fn a_waiter_dropped_while_the_holder_releases_strands_nobody() {
    check(|| drop_while_queued(Bug::None));
}

negative_control!(
    negative_control_a_cancel_in_two_steps_strands_the_next_waiter,
    bugged_a_cancel_in_two_steps_strands_the_next_waiter,
    Bug::CancelInTwoSteps,
    drop_while_queued,
    &["deadlock", "KeyedLock violated"]
);

// 5. Mutual exclusion and FIFO.

/// Three threads lock one key; each records its call to `lock()` in `calls`
/// in the same critical section as the call, so `calls` is the queue order.
/// One holder at a time, grants in call order, an empty table at the end.
fn three_contenders(bug: Bug) {
    let lock = KeyedLock::with_bug(bug);
    let track = Arc::new(Track::default());
    let calls = Arc::new(Mutex::new(Vec::new()));
    let contenders: Vec<_> = (1..=3)
        .map(|who| {
            let (lock, track, calls) = (lock.clone(), Arc::clone(&track), Arc::clone(&calls));
            thread::spawn(move || {
                let acquire = {
                    let mut calls = calls.lock().unwrap();
                    calls.push(who);
                    lock.lock(KEY)
                };
                track.hold(who, block_on(acquire));
            })
        })
        .collect();
    for contender in contenders {
        contender.join().unwrap();
    }
    let calls = calls.lock().unwrap().clone();
    let grants = track.grants();
    assert_eq!(grants, calls, "KeyedLock violated: not FIFO");
    assert_empty(&lock);
}

/// Three threads lock one key as in `three_contenders`, but the second gives up
/// after one poll (a timeout, a disconnect) whether or not it was granted: the
/// others hold one at a time, in call order, and the table ends empty.
fn three_contenders_one_cancels(bug: Bug) {
    let lock = KeyedLock::with_bug(bug);
    let track = Arc::new(Track::default());
    let calls = Arc::new(Mutex::new(Vec::new()));
    let contenders: Vec<_> = (1..=3)
        .map(|who| {
            let (lock, track, calls) = (lock.clone(), Arc::clone(&track), Arc::clone(&calls));
            thread::spawn(move || {
                let mut acquire = {
                    let mut calls = calls.lock().unwrap();
                    if who != 2 {
                        calls.push(who);
                    }
                    lock.lock(KEY)
                };
                if who == 2 {
                    // Dropped at once if granted, else left queued then dropped.
                    drop(poll_once(&mut acquire));
                    drop(acquire);
                    return;
                }
                track.hold(who, block_on(acquire));
            })
        })
        .collect();
    for contender in contenders {
        contender.join().unwrap();
    }
    let calls = calls.lock().unwrap().clone();
    let grants = track.grants();
    assert_eq!(grants, calls, "KeyedLock violated: not FIFO");
    assert_empty(&lock);
}

#[test]
fn three_contenders_one_cancelling_hold_one_at_a_time_in_call_order() {
    check(|| three_contenders_one_cancels(Bug::None));
}

negative_control!(
    negative_control_with_one_cancelling_a_cancel_in_two_steps_strands_the_key,
    bugged_with_one_cancelling_a_cancel_in_two_steps_strands_the_key,
    Bug::CancelInTwoSteps,
    three_contenders_one_cancels,
    &["deadlock", "KeyedLock violated"]
);

#[test]
fn three_contenders_hold_one_at_a_time_in_call_order() {
    check(|| three_contenders(Bug::None));
}

negative_control!(
    negative_control_a_lifo_queue_is_not_fifo,
    bugged_a_lifo_queue_is_not_fifo,
    Bug::Lifo,
    three_contenders,
    &["KeyedLock violated: not FIFO"]
);

negative_control!(
    negative_control_no_lock_admits_two_holders,
    bugged_no_lock_admits_two_holders,
    Bug::Unsynchronized,
    three_contenders,
    &["KeyedLock violated: two holders"]
);

negative_control!(
    negative_control_a_release_in_two_steps_admits_two_holders,
    bugged_a_release_in_two_steps_admits_two_holders,
    Bug::ReleaseInTwoSteps,
    three_contenders,
    &["KeyedLock violated", "KeyedLock invariant"]
);

// The bugs, each a copy of the real code with the one change `Bug` describes.

/// `Acquire::poll` (queued) with `Bug::PollInTwoSteps` or `Bug::HeadTakesTheKey`.
pub(super) fn poll_wrongly<K: Hash + Eq + Clone>(
    acquire: &mut Acquire<K>,
    id: u64,
    since_nanos: u64,
    cx: &mut Context<'_>,
) -> Poll<KeyGuard<K>> {
    let shard = acquire.shard();
    {
        let mut state = shard.lock();
        let (_, entry) = state
            .table
            .find_mut(acquire.hash, |(k, _)| *k == acquire.key)
            .expect("KeyedLock invariant: a queued waiter's key has an entry");
        let head = entry.queue.as_ref().and_then(|queue| queue.front());
        if shard.bug == Bug::HeadTakesTheKey && head.is_some_and(|waiter| waiter.id == id) {
            // The bug: the key is still held.
            entry.pop();
            drop(state);
            shard.record_contended(since_nanos);
            return Poll::Ready(acquire.guard());
        }
        if entry.handoff == id {
            entry.handoff = 0;
            drop(state);
            shard.record_contended(since_nanos);
            return Poll::Ready(acquire.guard());
        }
        if shard.bug == Bug::HeadTakesTheKey {
            let waiter = entry
                .waiter_mut(id)
                .expect("KeyedLock invariant: a queued waiter is in its queue");
            waiter.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
    }
    // The bug: the shard was unlocked, and the hand-off is not checked again.
    let mut state = shard.lock();
    if let Some((_, entry)) = state
        .table
        .find_mut(acquire.hash, |(k, _)| *k == acquire.key)
    {
        if let Some(waiter) = entry.waiter_mut(id) {
            waiter.waker = Some(cx.waker().clone());
        }
    }
    Poll::Pending
}

/// `Acquire::drop` (queued) with `Bug::CancelInTwoSteps` or
/// `Bug::CancelForgetsHandOff`.
pub(super) fn cancel_wrongly<K: Hash + Eq + Clone>(acquire: &mut Acquire<K>, id: u64) {
    let shard = acquire.shard();
    let handed_to_me = match shard.bug {
        Bug::CancelInTwoSteps => {
            let state = shard.lock();
            let (_, entry) = state
                .table
                .find(acquire.hash, |(k, _)| *k == acquire.key)
                .expect("KeyedLock invariant: a queued waiter's key has an entry");
            entry.handoff == id
            // The bug: the shard is unlocked here, and the answer trusted below.
        }
        // The bug: the hand-off is not looked at.
        _ => false,
    };
    let waker = {
        let mut state = shard.lock();
        let (_, entry) = state
            .table
            .find_mut(acquire.hash, |(k, _)| *k == acquire.key)
            .expect("KeyedLock invariant: a queued waiter's key has an entry");
        if handed_to_me {
            entry.handoff = 0;
            hand_off(shard, &mut state.table, acquire.hash, &acquire.key)
        } else {
            entry.remove_waiter(id);
            None
        }
    };
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// `Shard::release` with `Bug::ReleaseInTwoSteps`.
pub(super) fn release_in_two_steps<K: Hash + Eq>(shard: &Shard<K>, hash: u64, key: &K) {
    let (held_key, mut entry): (K, Entry) = {
        let mut state = shard.lock();
        let Ok(found) = state.table.find_entry(hash, |(k, _)| k == key) else {
            unreachable!("KeyedLock invariant: a released key has an entry");
        };
        found.remove().0
    };
    // The bug: the shard is unlocked here with the key out of the table.
    let Some(next) = entry.pop() else {
        return;
    };
    entry.handoff = next.id;
    {
        let mut state = shard.lock();
        match state.table.entry(hash, |(k, _)| k == key, shard.rehash()) {
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert((held_key, entry));
            }
            hashbrown::hash_table::Entry::Occupied(mut taken) => {
                // Someone took the key meanwhile: the waiters go back in front of
                // any that queued behind it, and the head is granted anyway.
                let now = &mut taken.get_mut().1;
                now.handoff = next.id;
                if let Some(mut older) = entry.queue.take() {
                    if let Some(newer) = now.queue.take() {
                        older.extend(*newer);
                    }
                    now.queue = Some(older);
                }
            }
        }
    }
    if let Some(waker) = next.waker {
        waker.wake();
    }
}
