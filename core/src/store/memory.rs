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

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use foldhash::fast::RandomState;

use crate::domain::{PointHistory, UserId, UserPoint};
use crate::error::StoreError;
use crate::idempotency::{IdempotencyKey, IdempotencyRecord};
use crate::store::{BoxFuture, Change, Committed, PointStore, Sleeper};

/// Users are spread over this many independently locked shards.
const SHARDS: usize = 64;

/// In-memory balances and histories. See the [module docs](self).
///
/// The tables are split into 64 shards by user, each behind its own
/// mutex, so requests of different users on different worker threads do not
/// queue for one mutex (a profile of the server under load showed the single
/// mutex's two lock/unlock pairs per charge among its most expensive lines).
/// History ids come from one atomic counter, taken under the user's shard lock:
/// unique, from 1, increasing across all users, and in commit order per user.
pub struct MemoryStore {
    shards: Box<[Shard]>,
    /// Picks a user's shard (and is the shards' map hasher).
    hasher: RandomState,
    history_id_last: AtomicU64,
    latency: Option<Latency>,
}

/// One shard's tables, on its own cache lines.
#[repr(align(128))]
struct Shard(Mutex<Tables>);

/// A user's balance and rows, written together by each commit.
struct Account {
    point: UserPoint,
    /// Oldest first (the template keeps one array and filters it).
    history: Vec<PointHistory>,
    /// The user's idempotency records, written with the change they record.
    keys: HashMap<IdempotencyKey, IdempotencyRecord, RandomState>,
}

struct Tables {
    accounts: HashMap<UserId, Account, RandomState>,
    /// Every idempotency record written in this shard, oldest first, for the
    /// sweep (an entry whose record was replaced since is skipped).
    written_keys: VecDeque<(i64, UserId, IdempotencyKey)>,
}

impl Tables {
    fn with_hasher(hasher: RandomState) -> Self {
        Self {
            accounts: HashMap::with_hasher(hasher),
            written_keys: VecDeque::new(),
        }
    }

    /// Remove at most `limit` records made at or before `expired_before`.
    fn sweep(&mut self, expired_before: i64, limit: usize) -> usize {
        let mut removed = 0;
        while removed < limit {
            match self.written_keys.front() {
                Some((made, _, _)) if *made <= expired_before => {}
                _ => break,
            }
            let Some((made, user, key)) = self.written_keys.pop_front() else {
                break;
            };
            let Some(account) = self.accounts.get_mut(&user) else {
                continue;
            };
            // Replaced by a newer record of the same key: that one stays.
            if account
                .keys
                .get(&key)
                .is_some_and(|r| r.time_millis == made)
            {
                account.keys.remove(&key);
                removed += 1;
            }
        }
        removed
    }
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
        Self::with(None)
    }

    /// A store whose every call first waits a random `0..=max_millis` ms through
    /// `sleep`. `seed` makes the delays reproducible.
    pub fn with_latency(max_millis: u64, sleep: Sleeper, seed: u64) -> Self {
        let latency = (max_millis > 0).then(|| Latency {
            max_millis,
            sleep,
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        });
        Self::with(latency)
    }

    fn with(latency: Option<Latency>) -> Self {
        let hasher = RandomState::default();
        Self {
            shards: (0..SHARDS)
                .map(|_| Shard(Mutex::new(Tables::with_hasher(hasher.clone()))))
                .collect(),
            hasher,
            history_id_last: AtomicU64::new(0),
            latency,
        }
    }

    /// The tables holding `id`, locked.
    fn tables(&self, id: UserId) -> MutexGuard<'_, Tables> {
        let hash = std::hash::BuildHasher::hash_one(&self.hasher, id);
        // Bits 32..: the maps inside take a slot's position from the low bits of
        // the same hash and its tag from the top 7, which must still differ
        // between the users of one shard.
        let shard = &self.shards[((hash >> 32) as usize) % SHARDS];
        // Every critical section below is infallible map work; poisoning cannot
        // leave the tables half-written.
        shard.0.lock().unwrap_or_else(PoisonError::into_inner)
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
    fn idempotency_record(
        &self,
        id: UserId,
        key: &IdempotencyKey,
    ) -> BoxFuture<'_, Result<Option<IdempotencyRecord>, StoreError>> {
        let delay = self.delay();
        let key = key.clone();
        Box::pin(async move {
            if let Some(delay) = delay {
                delay.await;
            }
            Ok(self
                .tables(id)
                .accounts
                .get(&id)
                .and_then(|a| a.keys.get(&key).cloned()))
        })
    }

    fn sweep_idempotency(
        &self,
        expired_before: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        let mut removed = 0;
        for shard in self.shards.iter() {
            if removed >= limit {
                break;
            }
            let mut tables = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
            removed += tables.sweep(expired_before, limit - removed);
        }
        Box::pin(std::future::ready(Ok(removed)))
    }

    fn user_point(&self, id: UserId) -> BoxFuture<'_, Result<Option<UserPoint>, StoreError>> {
        let delay = self.delay();
        Box::pin(async move {
            if let Some(delay) = delay {
                delay.await;
            }
            Ok(self.tables(id).accounts.get(&id).map(|a| a.point))
        })
    }

    fn histories(&self, id: UserId) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
        let delay = self.delay();
        Box::pin(async move {
            if let Some(delay) = delay {
                delay.await;
            }
            Ok(self
                .tables(id)
                .accounts
                .get(&id)
                .map(|a| a.history.clone())
                .unwrap_or_default())
        })
    }

    fn histories_page(
        &self,
        id: UserId,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
        let delay = self.delay();
        Box::pin(async move {
            if let Some(delay) = delay {
                delay.await;
            }
            let tables = self.tables(id);
            let Some(account) = tables.accounts.get(&id) else {
                return Ok(Vec::new());
            };
            // A user's rows are in id order: find the page, copy only it.
            let start = account.history.partition_point(|row| row.id <= after);
            let rest = &account.history[start..];
            Ok(rest[..limit.min(rest.len())].to_vec())
        })
    }

    fn commit(&self, change: Change) -> BoxFuture<'_, Result<Committed, StoreError>> {
        let delay = self.delay();
        Box::pin(async move {
            if let Some(delay) = delay {
                delay.await;
            }
            // One synchronous step under the user's shard lock: the condition,
            // then all of the change, or none of it.
            let user_id = change.user_id();
            let mut tables = self.tables(user_id);
            let account = tables.accounts.entry(user_id);
            let stored = match &account {
                Entry::Occupied(found) => found.get().point.point,
                Entry::Vacant(_) => 0,
            };
            if !change.holds_for(stored) {
                return Err(change.conflict(stored));
            }
            let record = change.idempotency_record();
            if let (Some(record), Entry::Occupied(found)) = (&record, &account) {
                let made = found.get().keys.get(&record.key).map(|r| r.time_millis);
                if !change.key_holds_for(made) {
                    return Err(change.key_conflict());
                }
            }
            let committed =
                change.committed(self.history_id_last.fetch_add(1, Ordering::Relaxed) + 1);
            let found = match account {
                Entry::Occupied(found) => {
                    let found = found.into_mut();
                    found.point = committed.user_point;
                    found.history.push(committed.history);
                    found
                }
                Entry::Vacant(slot) => slot.insert(Account {
                    point: committed.user_point,
                    history: vec![committed.history],
                    keys: HashMap::default(),
                }),
            };
            if let Some(record) = record {
                let entry = (record.time_millis, user_id, record.key.clone());
                found.keys.insert(record.key.clone(), record);
                tables.written_keys.push_back(entry);
            }
            Ok(committed)
        })
    }
}

// Not under loom: these tests use the lock outside a loom model (see lock/loom_tests.rs).
#[cfg(all(test, not(loom)))]
mod tests {
    use std::collections::HashSet;
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::domain::{Amount, TransactionType};
    use crate::lock::KeyedLock;

    /// The output of a future that is ready in its first poll (a store without latency).
    fn ready<F: Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        match future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(output) => output,
            Poll::Pending => panic!("a store without latency answers at once"),
        }
    }

    /// A charge from `read` to `point`, conditional on `read` or not, under a
    /// guard of a lock that excludes nothing (these tests are about the store
    /// alone, as if the lock had been bypassed).
    fn change(user: u64, read: u64, point: u64, conditional: bool) -> Change {
        let lock = KeyedLock::unsynchronized();
        let held = Arc::new(ready(lock.lock(UserId::new(user).unwrap())));
        let amount = Amount::new(point - read).unwrap();
        let expected = conditional.then_some(read);
        Change::for_tests(held, expected, point, TransactionType::Charge, amount, 0)
    }

    fn charge(store: &MemoryStore, user: u64, point: u64) -> Committed {
        ready(store.commit(change(user, 0, point, false))).unwrap()
    }

    #[test]
    fn a_change_computed_from_a_stale_balance_is_refused_and_changes_nothing() {
        let store = MemoryStore::new();
        let id = UserId::new(1).unwrap();
        ready(store.commit(change(1, 0, 100, true))).unwrap();
        // Two changes computed from the same read (100), committed without the
        // lock: the first applies, the second is refused, nothing is lost.
        let first = ready(store.commit(change(1, 100, 110, true)));
        let second = ready(store.commit(change(1, 100, 120, true)));
        assert_eq!(first.unwrap().user_point.point, 110);
        let refused = second.unwrap_err();
        assert!(refused.is_conflict(), "{refused}");
        assert_eq!(refused.code(), "WRITE_CONFLICT");
        assert_eq!(ready(store.user_point(id)).unwrap().unwrap().point, 110);
        assert_eq!(ready(store.histories(id)).unwrap().len(), 2);
        // An absent user counts as 0.
        assert!(ready(store.commit(change(2, 5, 6, true)))
            .unwrap_err()
            .is_conflict());
        assert!(ready(store.user_point(UserId::new(2).unwrap()))
            .unwrap()
            .is_none());
        assert!(ready(store.histories(UserId::new(2).unwrap()))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn negative_control_without_the_condition_the_same_two_changes_lose_an_update() {
        let store = MemoryStore::new();
        let id = UserId::new(1).unwrap();
        ready(store.commit(change(1, 0, 100, false))).unwrap();
        ready(store.commit(change(1, 100, 110, false))).unwrap();
        ready(store.commit(change(1, 100, 120, false))).unwrap();
        // History: +100, +10, +20 = 130; balance 120: an update was lost.
        let history = ready(store.histories(id)).unwrap();
        let sum: u64 = history.iter().map(|h| h.amount.get()).sum();
        assert_eq!(sum, 130);
        assert_eq!(ready(store.user_point(id)).unwrap().unwrap().point, 120);
    }

    #[test]
    fn history_ids_are_unique_gapless_and_in_order_per_user_across_threads() {
        let store = Arc::new(MemoryStore::new());
        // Four threads commit to the same 100 users at once (no user lock here):
        // each user's rows must still come out in id order, so the id must be
        // taken under the same lock that appends the row.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for round in 1..=50 {
                        for user in 1..=100 {
                            charge(&store, user, round);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let mut ids = HashSet::new();
        for user in 1..=100 {
            let id = UserId::new(user).unwrap();
            let history = ready(store.histories(id)).unwrap();
            assert_eq!(history.len(), 200);
            assert!(
                history.windows(2).all(|w| w[0].id < w[1].id),
                "a user's rows are in id order"
            );
            assert!(ready(store.user_point(id)).unwrap().is_some());
            ids.extend(history.iter().map(|h| h.id));
        }
        assert_eq!(ids.len(), 20_000, "no id given twice");
        assert_eq!(ids.iter().min(), Some(&1));
        assert_eq!(ids.iter().max(), Some(&20_000), "no gaps");
    }

    #[test]
    fn an_unknown_user_reads_as_absent_and_is_not_stored() {
        let store = MemoryStore::new();
        let id = UserId::new(7).unwrap();
        assert_eq!(ready(store.user_point(id)).unwrap(), None);
        assert!(ready(store.histories(id)).unwrap().is_empty());
        charge(&store, 8, 1);
        assert_eq!(ready(store.user_point(id)).unwrap(), None);
    }
}
