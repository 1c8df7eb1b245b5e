//! The store's bounded queue of placed work (see the [store's docs](super),
//! "Batches"): per user, its requests, changes and barriers in order; the
//! users ready to be written (work queued, none in a transaction now); and
//! the writers' wake-ups.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use pointlock_core::{Change, Committed, Decided, Request, StoreError, StoreErrorKind, UserId};
use tokio::sync::{oneshot, Notify};

/// Placed work of one user.
pub(super) enum Item {
    /// A request to decide.
    Request(Request, oneshot::Sender<Result<Decided, StoreError>>),
    /// A computed change to commit under its condition (a plain `commit`).
    Change(Change, oneshot::Sender<Result<Committed, StoreError>>),
    /// Answered once everything placed before it is.
    Barrier(oneshot::Sender<Result<(), StoreError>>),
}

/// The bounds of the queue.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bounds {
    /// The most items placed and not yet answered, all users together.
    pub(super) total: usize,
    /// The most items of one user placed and not yet answered.
    pub(super) per_user: usize,
    /// The most users one transaction takes.
    pub(super) batch_users: usize,
    /// The most items of one user one transaction takes.
    pub(super) batch_per_user: usize,
}

/// The queue. Every critical section is a few map and list operations that
/// cannot panic halfway.
pub(super) struct Queue {
    state: Mutex<State>,
    /// A writer waits here for ready users.
    ready: Notify,
    bounds: Bounds,
}

#[derive(Default)]
struct State {
    users: HashMap<UserId, UserQueue>,
    /// Users with items and no transaction in flight, in the order they
    /// became ready.
    ready: VecDeque<UserId>,
    /// Items placed and not answered (queued or in a transaction).
    placed: usize,
    closed: bool,
}

#[derive(Default)]
struct UserQueue {
    items: VecDeque<Item>,
    /// Items of this user in a transaction now.
    in_flight: usize,
}

/// One user's share of a batch: its items, in order.
pub(super) struct Taken {
    pub(super) user: UserId,
    pub(super) items: Vec<Item>,
}

impl Queue {
    pub(super) fn new(bounds: Bounds) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            bounds,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Place `item` behind `user`'s earlier work; `Err` (nothing placed) past
    /// a bound or once closed.
    pub(super) fn place(&self, user: UserId, item: Item) -> Result<(), StoreError> {
        let mut state = self.state();
        if state.closed {
            return Err(closed());
        }
        if state.placed >= self.bounds.total {
            return Err(overloaded(format!(
                "{} requests are queued for PostgreSQL, the most this instance holds",
                self.bounds.total
            )));
        }
        let queue = state.users.entry(user).or_default();
        if queue.items.len() + queue.in_flight >= self.bounds.per_user {
            return Err(overloaded(format!(
                "{} requests of user {user} are queued for PostgreSQL, the most one user may have",
                self.bounds.per_user
            )));
        }
        let becomes_ready = queue.items.is_empty() && queue.in_flight == 0;
        queue.items.push_back(item);
        state.placed += 1;
        if becomes_ready {
            state.ready.push_back(user);
            drop(state);
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Whether `user` has work placed and not answered.
    pub(super) fn is_idle(&self, user: UserId) -> bool {
        !self.state().users.contains_key(&user)
    }

    /// The next batch: up to the bound of ready users, each with up to the
    /// bound of its items, sorted by user id; waits while none is ready.
    /// `None` once closed and drained.
    pub(super) async fn take(&self) -> Option<Vec<Taken>> {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.state();
                if !state.ready.is_empty() {
                    let batch = self.take_ready(&mut state);
                    let more = !state.ready.is_empty();
                    drop(state);
                    if more {
                        self.ready.notify_one();
                    }
                    return Some(batch);
                }
                if state.closed && state.placed == 0 {
                    drop(state);
                    // Wake the other writers: they stop too.
                    self.ready.notify_one();
                    return None;
                }
            }
            notified.await;
        }
    }

    fn take_ready(&self, state: &mut State) -> Vec<Taken> {
        let count = state.ready.len().min(self.bounds.batch_users);
        let users: Vec<UserId> = state.ready.drain(..count).collect();
        let mut batch: Vec<Taken> = users
            .into_iter()
            .filter_map(|user| {
                let queue = state.users.get_mut(&user)?;
                let take = queue.items.len().min(self.bounds.batch_per_user);
                queue.in_flight += take;
                Some(Taken {
                    user,
                    items: queue.items.drain(..take).collect(),
                })
            })
            .collect();
        // One global order of row locks: no two instances deadlock.
        batch.sort_by_key(|taken| taken.user);
        batch
    }

    /// `user`'s `answered` items of a batch are answered: the user is ready
    /// again if it has more work, else forgotten.
    pub(super) fn finish(&self, user: UserId, answered: usize) {
        let mut state = self.state();
        state.placed = state.placed.saturating_sub(answered);
        let Some(queue) = state.users.get_mut(&user) else {
            return;
        };
        queue.in_flight = queue.in_flight.saturating_sub(answered);
        if queue.in_flight > 0 {
            return;
        }
        if queue.items.is_empty() {
            state.users.remove(&user);
            if state.closed && state.placed == 0 {
                drop(state);
                self.ready.notify_one();
            }
        } else {
            state.ready.push_back(user);
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Take no more work; the writers stop once what is placed is answered.
    pub(super) fn close(&self) {
        self.state().closed = true;
        self.ready.notify_waiters();
        self.ready.notify_one();
    }

    /// Items placed and not yet answered.
    pub(super) fn placed(&self) -> usize {
        self.state().placed
    }
}

/// The error of a store that takes no more work.
pub(super) fn closed() -> StoreError {
    StoreError::with_kind(
        StoreErrorKind::Unavailable,
        "the PostgreSQL store is closed; nothing was changed",
    )
}

/// The refusal past a bound: nothing was placed.
fn overloaded(message: String) -> StoreError {
    StoreError::with_kind(
        StoreErrorKind::Overloaded,
        format!("{message}; nothing was changed; retry later"),
    )
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
