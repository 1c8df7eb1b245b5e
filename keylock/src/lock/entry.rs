//! A held key's entry: the FIFO queue of its waiters and the hand-off mark.

use std::collections::VecDeque;
use std::task::Waker;

/// A held key. Invariant: the entry exists iff the key is held by a guard, is being
/// handed to a waiter (`handoff`), or both; waiters queue only behind a holder.
///
/// 16 bytes, so an uncontended lock and unlock (which insert and remove the entry)
/// move little: the queue is only allocated once a second acquirer waits, and the
/// hand-off is a waiter id (ids start at 1; 0 is none).
#[derive(Default)]
pub(super) struct Entry {
    // Boxed on purpose: 8 bytes instead of a 32-byte `VecDeque` in every entry
    // (and in every table slot), for an extra allocation only when a key is contended.
    #[allow(clippy::box_collection)]
    pub(super) queue: Option<Box<VecDeque<Waiter>>>,
    /// The id of the waiter the lock has been handed to, until it collects the
    /// guard; 0 if none.
    pub(super) handoff: u64,
}

/// A future queued for a key: its id in the shard and the waker to call when the
/// key is handed to it.
pub(super) struct Waiter {
    pub(super) id: u64,
    pub(super) waker: Option<Waker>,
}

impl Entry {
    pub(super) fn waiters(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.len())
    }

    pub(super) fn push(&mut self, waiter: Waiter) {
        self.queue
            .get_or_insert_with(Box::default)
            .push_back(waiter);
    }

    pub(super) fn pop(&mut self) -> Option<Waiter> {
        self.queue.as_mut()?.pop_front()
    }

    /// The waiter `id`, found by binary search: ids are handed out in increasing
    /// order within a shard and waiters only join at the back, so every queue is
    /// sorted by id (a linear scan made each poll of a waiter deep in a long
    /// queue cost the queue's length).
    pub(super) fn waiter_mut(&mut self, id: u64) -> Option<&mut Waiter> {
        let queue = self.queue.as_mut()?;
        let at = position(queue, id)?;
        queue.get_mut(at)
    }

    pub(super) fn remove_waiter(&mut self, id: u64) {
        if let Some(queue) = &mut self.queue {
            if let Some(at) = position(queue, id) {
                // Moves the shorter side of the ring buffer: at most half the queue,
                // which `lock_bounded` caps.
                queue.remove(at);
            }
        }
    }
}

/// Where waiter `id` is in `queue` (sorted by id), by binary search.
fn position(queue: &VecDeque<Waiter>, id: u64) -> Option<usize> {
    #[cfg(test)]
    let queue_probes = std::cell::Cell::new(0_usize);
    let found = queue.binary_search_by(|w| {
        #[cfg(test)]
        queue_probes.set(queue_probes.get() + 1);
        w.id.cmp(&id)
    });
    #[cfg(test)]
    PROBES.with(|probes| probes.set(probes.get() + queue_probes.get()));
    found.ok()
}

#[cfg(test)]
thread_local! {
    /// Waiters compared by `position` on this thread (tests of the lookup's cost).
    pub(super) static PROBES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}
