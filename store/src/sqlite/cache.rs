//! The write-through cache of committed balances.
//!
//! Balances are read through a cache of committed balances (at most
//! [`SqliteOptions::balance_cache_max`](super::SqliteOptions::balance_cache_max)
//! of them, 30 to 60 bytes each with the hash map's slack; 0 turns it off). The
//! writer puts every committed balance in it after the COMMIT and before
//! answering the caller; a miss reads SQLite and fills the entry unless the
//! writer got there first (the race is reasoned out on [`BalanceCache`]). Unknown
//! users are not cached, so reading ids that do not exist cannot fill it. A full
//! cache shard is emptied (the next reads of its users go to SQLite again). A
//! failed or refused commit removes its user's entry.

use std::collections::HashMap;
use std::sync::MutexGuard;

use pointlock_core::{UserId, UserPoint};

use crate::sharded::Sharded;

/// Shards of the balance cache.
pub const CACHE_SHARDS: usize = 16;

/// The write-through cache of committed balances (see the [module docs](self)).
///
/// Invariant: once the writer has put the balance of commit `C` in the cache
/// (which it does after `C` is committed and before `C`'s caller is answered),
/// the user's entry is absent or holds `C` or a later commit, never an older
/// balance. Entries change in three ways only:
///
/// - the writer puts each committed balance, in commit order, overwriting;
/// - a reader fills an entry after a miss only if the entry is still absent and
///   no entry has left the shard since the miss (the shard's `generation` is
///   unchanged), so its SQLite read began after every removal;
/// - entries leave (a full shard is emptied; a user is forgotten after a failed
///   commit) only with the generation bumped.
///
/// A fill that finds the entry present loses to it. A fill that finds it absent
/// with an unchanged generation read SQLite after the last removal, which came
/// after every commit the writer had put before it, so it read those commits or
/// later ones; any commit it missed is still to be put by the writer, which
/// overwrites.
pub(super) struct BalanceCache {
    shards: Sharded<CacheShard>,
    shard_max: usize,
}

#[derive(Default)]
struct CacheShard {
    /// Balance and `update_millis` by user.
    balances: HashMap<UserId, (u64, i64)>,
    /// Bumped whenever entries leave the shard.
    generation: u64,
}

impl CacheShard {
    fn make_room(&mut self, shard_max: usize) {
        if self.balances.len() >= shard_max {
            self.balances.clear();
            self.generation += 1;
        }
    }
}

/// A cache miss: the generation of the shard when it missed.
#[derive(Clone, Copy)]
pub(super) struct Miss(u64);

impl BalanceCache {
    /// A cache of at most `max` balances; `None` when `max` is 0.
    pub(super) fn new(max: usize) -> Option<Self> {
        (max > 0).then(|| Self {
            shards: Sharded::new(CACHE_SHARDS),
            shard_max: max.div_ceil(CACHE_SHARDS),
        })
    }

    fn shard(&self, id: UserId) -> MutexGuard<'_, CacheShard> {
        // Each critical section is one map operation: a panic cannot leave the
        // shard half-changed.
        self.shards.lock(id)
    }

    pub(super) fn get(&self, id: UserId) -> Result<UserPoint, Miss> {
        let shard = self.shard(id);
        match shard.balances.get(&id) {
            Some(&(point, update_millis)) => Ok(UserPoint {
                id,
                point,
                update_millis,
            }),
            None => Err(Miss(shard.generation)),
        }
    }

    /// The writer, after a commit and before answering it: the user's newest balance.
    pub(super) fn put(&self, point: &UserPoint) {
        let mut shard = self.shard(point.id);
        if !shard.balances.contains_key(&point.id) {
            shard.make_room(self.shard_max);
        }
        shard
            .balances
            .insert(point.id, (point.point, point.update_millis));
    }

    /// A reader, after `miss`: the balance it then read from SQLite, kept only if
    /// the entry is still absent and nothing left the shard since the miss.
    pub(super) fn fill(&self, point: &UserPoint, miss: Miss) {
        let mut shard = self.shard(point.id);
        if shard.generation != miss.0 || shard.balances.contains_key(&point.id) {
            return;
        }
        shard.make_room(self.shard_max);
        shard
            .balances
            .insert(point.id, (point.point, point.update_millis));
    }

    /// The writer, after a failed commit: SQLite alone knows the user's balance.
    pub(super) fn forget(&self, id: UserId) {
        let mut shard = self.shard(id);
        shard.balances.remove(&id);
        shard.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(raw: u64) -> UserId {
        UserId::new(raw).unwrap()
    }

    fn balance(user: u64, point: u64) -> UserPoint {
        UserPoint {
            id: id(user),
            point,
            update_millis: 0,
        }
    }

    #[test]
    fn a_fill_racing_a_commit_never_caches_the_older_balance() {
        let cache = BalanceCache::new(1_000).unwrap();
        // A reader misses, the writer commits 20 and puts it, then the reader
        // fills the 10 it read before that commit: the 20 stays.
        let miss = cache.get(id(1)).unwrap_err();
        cache.put(&balance(1, 20));
        cache.fill(&balance(1, 10), miss);
        assert_eq!(cache.get(id(1)).map(|p| p.point).ok(), Some(20));

        // Same, but the shard is emptied between the put and the fill: the fill
        // missed before the emptying, so it is dropped (the next read goes to SQLite).
        let miss = cache.get(id(2)).unwrap_err();
        cache.put(&balance(2, 20));
        cache.forget(id(2));
        cache.fill(&balance(2, 10), miss);
        assert!(cache.get(id(2)).is_err(), "the older balance was cached");

        // A fill with nothing in between is kept; the writer's next put overwrites it.
        let miss = cache.get(id(3)).unwrap_err();
        cache.fill(&balance(3, 10), miss);
        assert_eq!(cache.get(id(3)).map(|p| p.point).ok(), Some(10));
        cache.put(&balance(3, 30));
        assert_eq!(cache.get(id(3)).map(|p| p.point).ok(), Some(30));
    }

    #[test]
    fn a_full_cache_shard_is_emptied_and_stays_bounded() {
        let cache = BalanceCache::new(CACHE_SHARDS * 4).unwrap();
        let user_in_shard_0 = |i: u64| (i + 1) * CACHE_SHARDS as u64;
        let miss = cache.get(id(user_in_shard_0(100))).unwrap_err();
        for i in 0..4 {
            cache.put(&balance(user_in_shard_0(i), i));
        }
        assert!(cache.get(id(user_in_shard_0(0))).is_ok());
        cache.put(&balance(user_in_shard_0(4), 4));
        let lens: Vec<usize> = cache.shards.each().map(|s| s.balances.len()).collect();
        assert_eq!(lens[0], 1, "emptied, then the new entry");
        assert!(cache.get(id(user_in_shard_0(0))).is_err());
        // A fill that missed before the emptying is dropped.
        cache.fill(&balance(user_in_shard_0(100), 1), miss);
        assert!(cache.get(id(user_in_shard_0(100))).is_err());
        assert!(BalanceCache::new(0).is_none(), "0 turns the cache off");
    }
}
