//! [`MemoryStore`]: the course template's in-memory tables, optionally slow.
//!
//! Modelled on the template's `UserPointTable` and `PointHistoryTable`: balances
//! keyed by user, history ids from 1 increasing across all users, an unknown user
//! reads as absent (the service shows it as 0) and is not stored by a read.
//!
//! With simulated latency every call first waits a random `0..=max` milliseconds
//! through the injected [`Sleeper`], like the template's `randomInt(…)` delays. That
//! reproduces the read-modify-write race the per-user lock exists to prevent. The
//! commit itself happens after the wait in one synchronous step, so dropping a
//! commit future leaves either the whole change or none of it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

// foldhash, like the lock's tables: a charge looks its user up three times.
use foldhash::fast::RandomState;

use crate::domain::{PointHistory, UserId, UserPoint};
use crate::error::StoreError;
use crate::store::{BoxFuture, Change, Committed, PointStore, Sleeper};

/// In-memory balances and histories. See the [module docs](self).
pub struct MemoryStore {
    tables: Mutex<Tables>,
    latency: Option<Latency>,
}

#[derive(Default)]
struct Tables {
    points: HashMap<UserId, UserPoint, RandomState>,
    /// Each user's rows, oldest first (the template keeps one array and filters it).
    histories: HashMap<UserId, Vec<PointHistory>, RandomState>,
    history_id_last: u64,
}

struct Latency {
    max_millis: u64,
    sleep: Sleeper,
    rng: Mutex<fastrand::Rng>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A fast store: no simulated latency.
    pub fn new() -> Self {
        Self {
            tables: Mutex::default(),
            latency: None,
        }
    }

    /// A store whose every call first waits a random `0..=max_millis` ms through
    /// `sleep`. `seed` makes the delays reproducible.
    pub fn with_latency(max_millis: u64, sleep: Sleeper, seed: u64) -> Self {
        let latency = (max_millis > 0).then(|| Latency {
            max_millis,
            sleep,
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        });
        Self {
            tables: Mutex::default(),
            latency,
        }
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        // Every critical section below is infallible map work; poisoning cannot
        // leave the tables half-written.
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The simulated delay of one call, or `None` for a fast store.
    fn delay(&self) -> Option<BoxFuture<'static, ()>> {
        let latency = self.latency.as_ref()?;
        let millis = latency
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .u64(0..=latency.max_millis);
        Some((latency.sleep)(Duration::from_millis(millis)))
    }
}

impl PointStore for MemoryStore {
    fn user_point(&self, id: UserId) -> BoxFuture<'_, Result<Option<UserPoint>, StoreError>> {
        let delay = self.delay();
        Box::pin(async move {
            if let Some(delay) = delay {
                delay.await;
            }
            Ok(self.tables().points.get(&id).copied())
        })
    }

    fn histories(&self, id: UserId) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
        let delay = self.delay();
        Box::pin(async move {
            if let Some(delay) = delay {
                delay.await;
            }
            Ok(self
                .tables()
                .histories
                .get(&id)
                .cloned()
                .unwrap_or_default())
        })
    }

    fn commit(&self, change: Change) -> BoxFuture<'_, Result<Committed, StoreError>> {
        let delay = self.delay();
        Box::pin(async move {
            if let Some(delay) = delay {
                delay.await;
            }
            // One synchronous step: all of the change or none of it.
            let mut tables = self.tables();
            tables.history_id_last += 1;
            let history = PointHistory {
                id: tables.history_id_last,
                user_id: change.user_id,
                kind: change.kind,
                amount: change.amount,
                time_millis: change.time_millis,
            };
            let user_point = UserPoint {
                id: change.user_id,
                point: change.point,
                update_millis: change.time_millis,
            };
            tables.points.insert(change.user_id, user_point);
            tables
                .histories
                .entry(change.user_id)
                .or_default()
                .push(history);
            Ok(Committed {
                user_point,
                history,
            })
        })
    }
}
