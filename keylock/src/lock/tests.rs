//! The lock driven poll by poll, outside any model checker: FIFO, hand-off,
//! cancellation, timeouts, the queue bound, metrics and the table's memory.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use super::entry::PROBES;
use super::shard::SHRINK_CAPACITY_MIN;
use super::*;

/// A clock that moves only when the test says so.
#[derive(Default)]
struct ManualClock(AtomicU64);

impl ManualClock {
    fn advance_millis(&self, millis: u64) {
        self.0.fetch_add(millis * 1_000_000, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn monotonic_nanos(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[test]
fn tables_shrink_back_after_a_burst_of_keys() {
    let lock = KeyedLock::<u64>::new();
    let guards: Vec<_> = (0..20_000).map(|k| lock.try_lock(k).unwrap()).collect();
    let peak: usize = lock
        .inner
        .shards
        .iter()
        .map(|s| s.lock().table.capacity())
        .sum();
    assert!(peak >= 20_000);
    drop(guards);
    for shard in lock.inner.shards.iter() {
        let capacity = shard.lock().table.capacity();
        assert!(
            capacity <= SHRINK_CAPACITY_MIN,
            "a shard kept {capacity} slots"
        );
    }
}

/// A waker that records whether it was woken.
#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Flag {
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}

/// A queued acquire with its own waker.
struct Probe {
    acquire: Acquire<u64>,
    flag: Arc<Flag>,
}

impl Probe {
    fn new(lock: &KeyedLock<u64>, key: u64) -> Self {
        Self {
            acquire: lock.lock(key),
            flag: Arc::default(),
        }
    }

    fn poll(&mut self) -> Poll<KeyGuard<u64>> {
        let waker = Waker::from(Arc::clone(&self.flag));
        Pin::new(&mut self.acquire).poll(&mut Context::from_waker(&waker))
    }

    fn pending(&mut self) -> bool {
        self.poll().is_pending()
    }

    fn ready(&mut self) -> KeyGuard<u64> {
        match self.poll() {
            Poll::Ready(guard) => guard,
            Poll::Pending => panic!("expected the lock to be granted"),
        }
    }
}

fn ready_now<F: Future + Unpin>(mut fut: F) -> F::Output {
    match Pin::new(&mut fut).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("expected the future to be ready"),
    }
}

#[test]
fn uncontended_lock_is_granted_at_once_and_leaves_nothing() {
    let lock = KeyedLock::new();
    let guard = ready_now(lock.lock(1));
    assert_eq!(guard.key(), &1);
    assert_eq!(lock.len(), 1);
    drop(guard);
    assert_eq!(lock.len(), 0);
    assert_eq!(lock.metrics().acquisitions, 1);
    assert_eq!(lock.metrics().contended, 0);
}

#[test]
fn fifo_with_four_waiters_and_wakes_only_the_head() {
    let lock = KeyedLock::new();
    let holder = ready_now(lock.lock(1));
    let mut waiters: Vec<Probe> = (0..4).map(|_| Probe::new(&lock, 1)).collect();
    for w in &mut waiters {
        assert!(w.pending());
    }
    assert_eq!(lock.waiters(), 4);

    drop(holder);
    let mut held = None;
    for i in 0..4 {
        // Only the head was woken, and only it can take the lock.
        assert!(waiters[i].flag.take(), "waiter {i} must be woken");
        for later in &mut waiters[i + 1..] {
            assert!(!later.flag.take());
            assert!(later.pending());
        }
        drop(held.take());
        held = Some(waiters[i].ready());
        if i + 1 < 4 {
            assert!(!waiters[i + 1].flag.take(), "not woken before the release");
        }
        drop(held.take());
    }
    assert_eq!(lock.len(), 0);
    assert_eq!(lock.metrics().contended, 4);
}

#[test]
fn queue_position_is_taken_by_the_call_not_the_first_poll() {
    let lock = KeyedLock::new();
    let holder = ready_now(lock.lock(1));
    let mut first = Probe::new(&lock, 1);
    let mut second = Probe::new(&lock, 1);
    // Poll in the opposite order: the second caller must still wait.
    assert!(second.pending());
    assert!(first.pending());
    drop(holder);
    assert!(second.pending());
    let g = first.ready();
    drop(g);
    drop(second.ready());
    assert!(lock.is_empty());
}

#[test]
fn a_waiter_dropped_mid_queue_does_not_strand_the_next() {
    let lock = KeyedLock::new();
    let holder = ready_now(lock.lock(1));
    let mut a = Probe::new(&lock, 1);
    let b = Probe::new(&lock, 1);
    let mut c = Probe::new(&lock, 1);
    assert!(a.pending() && c.pending());
    drop(b);
    assert_eq!(lock.waiters(), 2);
    drop(holder);
    let ga = a.ready();
    assert!(c.pending());
    drop(ga);
    assert!(c.flag.take(), "c is woken when a releases");
    drop(c.ready());
    assert!(lock.is_empty());
    assert_eq!(lock.metrics().cancelled, 1);
}

#[test]
fn a_waiter_dropped_after_the_handoff_passes_the_lock_on() {
    let lock = KeyedLock::new();
    let holder = ready_now(lock.lock(1));
    let mut a = Probe::new(&lock, 1);
    let mut b = Probe::new(&lock, 1);
    assert!(a.pending() && b.pending());
    drop(holder);
    assert!(a.acquire.is_granted(), "handed to a");
    drop(a); // cancelled before collecting its guard
    assert!(b.flag.take(), "the hand-off moves on to b");
    drop(b.ready());
    assert!(lock.is_empty());
}

#[test]
fn a_granted_but_never_polled_acquire_releases_on_drop() {
    let lock = KeyedLock::new();
    let a = lock.lock(1);
    assert!(a.is_granted());
    let mut b = Probe::new(&lock, 1);
    assert!(b.pending());
    drop(a);
    drop(b.ready());
    assert!(lock.is_empty());
}

#[test]
fn churn_with_cancelled_waiters_leaves_an_empty_table() {
    let lock = KeyedLock::new();
    let mut rng = fastrand::Rng::with_seed(7);
    for round in 0..200_u64 {
        let keys = 1 + round % 5;
        let mut guards = Vec::new();
        let mut probes = Vec::new();
        for key in 0..keys {
            guards.push(ready_now(lock.lock(key)));
            for _ in 0..rng.usize(0..6) {
                let mut p = Probe::new(&lock, key);
                if rng.bool() {
                    assert!(p.pending());
                }
                probes.push(p);
            }
        }
        // Cancel a random half of the waiters, release holders, then drain.
        rng.shuffle(&mut probes);
        probes.truncate(probes.len() / 2);
        guards.clear();
        while !probes.is_empty() {
            let mut progressed = false;
            probes.retain_mut(|p| match p.poll() {
                Poll::Ready(g) => {
                    drop(g);
                    progressed = true;
                    false
                }
                Poll::Pending => true,
            });
            assert!(progressed, "a waiter was stranded");
        }
        assert_eq!(lock.len(), 0, "round {round}");
        assert_eq!(lock.waiters(), 0);
    }
}

/// A timeout future the test fires by hand.
#[derive(Clone, Default)]
struct Trigger(Arc<AtomicBool>);

impl Future for Trigger {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if self.0.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[test]
fn timeout_gives_up_cleanly_and_counts() {
    let lock = KeyedLock::new();
    let holder = ready_now(lock.lock(1));
    let trigger = Trigger::default();
    let mut timed = Box::pin(lock.lock_timeout(1, trigger.clone()));
    let mut behind = Probe::new(&lock, 1);
    let cx = &mut Context::from_waker(Waker::noop());
    assert!(timed.as_mut().poll(cx).is_pending());
    trigger.0.store(true, Ordering::SeqCst);
    assert_eq!(
        timed.as_mut().poll(cx).map(|r| r.err()),
        Poll::Ready(Some(LockTimedOut))
    );
    assert_eq!(lock.waiters(), 1, "the timed-out waiter left the queue");
    assert_eq!(lock.metrics().timeouts, 1);
    drop(holder);
    drop(behind.ready());
    assert!(lock.is_empty());
}

#[test]
fn timeout_loses_to_an_available_lock() {
    let lock = KeyedLock::new();
    let fired = Trigger(Arc::new(AtomicBool::new(true)));
    let mut timed = Box::pin(lock.lock_timeout(1, fired));
    let cx = &mut Context::from_waker(Waker::noop());
    match timed.as_mut().poll(cx) {
        Poll::Ready(Ok(guard)) => drop(guard),
        other => panic!("expected the guard, got {:?}", other.map(|r| r.is_ok())),
    }
    assert_eq!(lock.metrics().timeouts, 0);
}

#[test]
fn different_keys_never_block_each_other() {
    let lock = KeyedLock::new();
    let guards: Vec<_> = (0..1_000).map(|k| ready_now(lock.lock(k))).collect();
    assert_eq!(lock.len(), 1_000);
    assert_eq!(lock.waiters(), 0);
    drop(guards);
    assert!(lock.is_empty());
}

#[test]
fn try_lock_fails_only_while_held() {
    let lock = KeyedLock::new();
    let g = lock.try_lock(1).expect("free");
    assert!(lock.try_lock(1).is_none());
    assert!(lock.try_lock(2).is_some());
    drop(g);
    assert!(lock.try_lock(1).is_some());
    assert!(lock.is_empty());
}

#[test]
fn guard_moves_to_another_thread_and_releases_there() {
    fn assert_send_static<T: Send + 'static>(_: &T) {}
    let lock = KeyedLock::new();
    let guard = ready_now(lock.lock(1));
    assert_send_static(&guard);
    let mut waiter = Probe::new(&lock, 1);
    assert!(waiter.pending());
    std::thread::spawn(move || drop(guard))
        .join()
        .expect("thread");
    assert!(waiter.flag.take());
    drop(waiter.ready());
    assert!(lock.is_empty());
}

#[test]
fn wait_time_is_measured_with_the_clock() {
    let clock = Arc::new(ManualClock::default());
    let lock = KeyedLock::with_clock(clock.clone());
    let holder = ready_now(lock.lock(1));
    let mut w = Probe::new(&lock, 1);
    assert!(w.pending());
    clock.advance_millis(5);
    drop(holder);
    drop(w.ready());
    let m = lock.metrics();
    assert_eq!(m.wait_nanos_total, 5_000_000);
    assert_eq!(m.wait_nanos_max, 5_000_000);
    // 5 ms falls in the "<= 10 ms" bucket.
    assert_eq!(m.wait_histogram[4], 1);
}

#[test]
fn lock_bounded_refuses_past_the_bound_queues_nothing_and_counts() {
    let lock = KeyedLock::new();
    let holder = lock.lock_bounded(1, 2).unwrap();
    assert!(
        holder.is_granted(),
        "a free key is granted whatever the bound"
    );
    let mut waiting: Vec<Probe> = (0..2)
        .map(|_| Probe {
            acquire: lock.lock_bounded(1, 2).unwrap(),
            flag: Arc::default(),
        })
        .collect();
    assert_eq!(
        lock.lock_bounded(1, 2).err(),
        Some(QueueFull { waiters_max: 2 })
    );
    assert_eq!(lock.waiters(), 2, "the refused call queued nothing");
    assert_eq!(lock.metrics().queue_full, 1);
    assert!(
        lock.lock_bounded(2, 0).is_ok(),
        "other keys are not affected"
    );
    assert!(lock.lock_bounded(1, 3).is_ok(), "the bound is the caller's");
    drop(holder);
    drop(waiting.remove(0).ready());
    assert!(
        lock.lock_bounded(1, 0).is_err(),
        "held by the second waiter"
    );
}

#[test]
fn finding_a_waiter_deep_in_a_long_queue_compares_few_waiters() {
    let lock = KeyedLock::new();
    let holder = ready_now(lock.lock(1));
    let mut waiters: Vec<Probe> = (0..10_000).map(|_| Probe::new(&lock, 1)).collect();
    PROBES.with(|p| p.set(0));
    // Poll the last waiter and cancel one in the middle: each finds its place
    // in the queue by binary search (a scan would compare ~15,000 waiters).
    assert!(waiters[9_999].pending());
    drop(waiters.remove(5_000));
    let probes = PROBES.with(|p| p.get());
    assert!(probes > 0, "both lookups went through `position`");
    assert!(probes <= 2 * 15, "{probes} waiters compared");
    drop(holder);
    assert_eq!(lock.waiters(), 9_998);
    // Order is kept: the head is granted first, then the next.
    assert!(waiters[1].pending());
    drop(waiters.remove(0).ready());
    assert!(waiters[1].pending());
    drop(waiters.remove(0).ready());
}

#[cfg(feature = "test-util")]
#[test]
fn unsynchronized_lock_excludes_nothing() {
    let lock = KeyedLock::unsynchronized();
    let a = ready_now(lock.lock(1));
    let b = ready_now(lock.lock(1));
    assert!(lock.try_lock(1).is_some());
    assert!(lock.is_empty());
    drop((a, b));
}
