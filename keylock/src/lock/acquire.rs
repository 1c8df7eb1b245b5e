//! [`Acquire`]: the future that waits for a key, from its place in the queue to
//! the guard.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

#[cfg(all(test, loom))]
use super::loom_tests::{self, Bug};
use super::shard::{hand_off, Shard};
use super::KeyGuard;
// `std`'s, or loom's model of it in the loom tests (see `crate::sync`).
use crate::sync::Arc;

/// The future returned by [`KeyedLock::lock`](super::KeyedLock::lock): resolves
/// to the key's guard.
///
/// Cancel safe: dropping it leaves the queue (or, if the lock was already handed to
/// it, passes the lock on). It has already taken its place in the queue.
#[must_use = "the queue position is given up when this future is dropped"]
pub struct Acquire<K: Hash + Eq + Clone> {
    /// The key's shard; moved into the guard when it is handed out.
    shard: Option<Arc<Shard<K>>>,
    /// The key's hash, computed once by `lock()`.
    pub(super) hash: u64,
    pub(super) key: K,
    state: AcquireState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AcquireState {
    /// Held by this future; the guard has not been handed out yet.
    Granted,
    /// Queued with this id since the given monotonic time.
    Queued { id: u64, since_nanos: u64 },
    /// The guard was handed out; nothing left to do.
    Done,
}

// `Acquire` is never structurally pinned: all its fields move freely.
impl<K: Hash + Eq + Clone> Unpin for Acquire<K> {}

impl<K: Hash + Eq + Clone> Acquire<K> {
    pub(super) fn new(shard: Arc<Shard<K>>, hash: u64, key: K, state: AcquireState) -> Self {
        Self {
            shard: Some(shard),
            hash,
            key,
            state,
        }
    }

    /// The key this future waits for.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Whether the lock is already held by this future (poll it to collect the guard).
    pub fn is_granted(&self) -> bool {
        match self.state {
            AcquireState::Granted => true,
            AcquireState::Queued { id, .. } => {
                let state = self.shard().lock();
                let entry = state.table.find(self.hash, |(k, _)| *k == self.key);
                entry.is_some_and(|(_, e)| e.handoff == id)
            }
            AcquireState::Done => false,
        }
    }

    /// The guard at once if the key was free when this future was made (it
    /// waited for nothing); otherwise this future, still in its place in the
    /// queue. A caller with work to start can skip a first poll (and a waker)
    /// on the uncontended path.
    pub fn granted(mut self) -> Result<KeyGuard<K>, Self> {
        match self.state {
            AcquireState::Granted => Ok(self.guard()),
            AcquireState::Queued { .. } | AcquireState::Done => Err(self),
        }
    }

    /// Drop this wait because the caller's timeout fired, counting the timeout.
    pub fn abandon_timed_out(self) {
        self.shard().counters.timeouts.fetch_add(1, Relaxed);
        drop(self);
    }

    pub(super) fn shard(&self) -> &Shard<K> {
        self.shard
            .as_ref()
            .expect("KeyedLock invariant: an Acquire owns its shard until it hands out the guard")
    }

    pub(super) fn guard(&mut self) -> KeyGuard<K> {
        self.state = AcquireState::Done;
        let shard = self
            .shard
            .take()
            .expect("KeyedLock invariant: the guard is handed out once");
        KeyGuard::new(shard, self.hash, self.key.clone())
    }
}

impl<K: Hash + Eq + Clone> Future for Acquire<K> {
    type Output = KeyGuard<K>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<KeyGuard<K>> {
        let this = self.get_mut();
        match this.state {
            AcquireState::Granted => Poll::Ready(this.guard()),
            AcquireState::Queued { id, since_nanos } => {
                #[cfg(all(test, loom))]
                if let Bug::PollInTwoSteps | Bug::HeadTakesTheKey = this.shard().bug {
                    return loom_tests::poll_wrongly(this, id, since_nanos, cx);
                }
                let shard = this.shard();
                let mut state = shard.lock();
                let (_, entry) = state
                    .table
                    .find_mut(this.hash, |(k, _)| *k == this.key)
                    .expect("KeyedLock invariant: a queued waiter's key has an entry");
                if entry.handoff == id {
                    entry.handoff = 0;
                    drop(state);
                    shard.record_contended(since_nanos);
                    return Poll::Ready(this.guard());
                }
                let waiter = entry
                    .waiter_mut(id)
                    .expect("KeyedLock invariant: a queued waiter is in its queue");
                match &mut waiter.waker {
                    Some(waker) => waker.clone_from(cx.waker()),
                    empty => *empty = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            AcquireState::Done => panic!("`Acquire` polled after it returned its guard"),
        }
    }
}

impl<K: Hash + Eq + Clone> Drop for Acquire<K> {
    fn drop(&mut self) {
        let id = match self.state {
            AcquireState::Done => return,
            AcquireState::Granted => return self.shard().release(self.hash, &self.key),
            AcquireState::Queued { id, .. } => id,
        };
        let shard = self.shard();
        shard.counters.cancelled.fetch_add(1, Relaxed);
        #[cfg(all(test, loom))]
        if let Bug::CancelInTwoSteps | Bug::CancelForgetsHandOff = shard.bug {
            return loom_tests::cancel_wrongly(self, id);
        }
        let waker = {
            let mut state = shard.lock();
            let (_, entry) = state
                .table
                .find_mut(self.hash, |(k, _)| *k == self.key)
                .expect("KeyedLock invariant: a queued waiter's key has an entry");
            if entry.handoff == id {
                // Handed to us but never collected: pass it on.
                entry.handoff = 0;
                hand_off(shard, &mut state.table, self.hash, &self.key)
            } else {
                entry.remove_waiter(id);
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<K: Hash + Eq + Clone + fmt::Debug> fmt::Debug for Acquire<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("key", &self.key)
            .field("state", &self.state)
            .finish()
    }
}
