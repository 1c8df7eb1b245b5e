//! [`Life`]: what one incarnation's clients and checkers share, and the
//! checkers that run after every answer (the lock table's and the SQLite
//! pipeline's bounds, and every user's answers against the durable state).

use std::sync::{Arc, Mutex, PoisonError};

use pointlock_core::{KeyedLock, MemoryStore, PointStore, TransactionType, UserId};
use pointlock_store::SqliteStore;

use crate::faults::drive;
use crate::model::{check_user, Answer, Durable, Log};
use crate::workload::OpKind;

/// The most changes the simulated SQLite writer may have queued (its bound,
/// checked after every event).
pub const SQLITE_QUEUE_MAX: usize = 64;

/// The state one incarnation's clients and checkers share.
pub struct Life {
    /// Which incarnation this is.
    pub index: usize,
    /// Every request of the run.
    pub log: Arc<Mutex<Log>>,
    pub(crate) scenario_users: u64,
    pub(crate) max_balance: u64,
    pub(crate) lock: KeyedLock<UserId>,
    pub(crate) lock_queue_max: usize,
    pub(crate) memory: Option<Arc<MemoryStore>>,
    pub(crate) sqlite: Option<Arc<SqliteStore>>,
    pub(crate) lockstep: bool,
    pub(crate) violation: Mutex<Option<String>>,
}

impl Life {
    /// Whether a checker has failed.
    pub fn failed(&self) -> bool {
        self.violation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    pub(crate) fn fail(&self, message: String) {
        let mut slot = self
            .violation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(message);
        }
    }

    /// The checkers after every answer: the bounds of the lock table and of
    /// the SQLite pipeline, and every user's linearizability against the
    /// store's durable state now (requests not yet answered count as
    /// outcome unknown).
    pub async fn after_event(&self) {
        let users = usize::try_from(self.scenario_users).unwrap_or(usize::MAX);
        if self.lock.len() > users {
            self.fail(format!(
                "the lock table holds {} keys for {users} users",
                self.lock.len()
            ));
        }
        if self.lock.waiters() > users * self.lock_queue_max {
            self.fail(format!(
                "{} lock waiters, above {users} users x {}",
                self.lock.waiters(),
                self.lock_queue_max
            ));
        }
        if let Some(sqlite) = &self.sqlite {
            if sqlite.queued_ops() > SQLITE_QUEUE_MAX {
                self.fail(format!(
                    "{} changes queued for the writer, above {SQLITE_QUEUE_MAX}",
                    sqlite.queued_ops()
                ));
            }
            if sqlite.sequenced_users() > users {
                self.fail(format!(
                    "{} users in the sequenced state, above {users}",
                    sqlite.sequenced_users()
                ));
            }
        }
        let store: Option<Arc<dyn PointStore>> = match (&self.memory, &self.sqlite) {
            (Some(memory), _) => Some(Arc::clone(memory) as Arc<dyn PointStore>),
            (None, Some(sqlite)) => Some(Arc::clone(sqlite) as Arc<dyn PointStore>),
            (None, None) => None,
        };
        if let Some(store) = store {
            if let Err(message) = self.check_durable(&store, false).await {
                self.fail(message);
            }
        }
    }

    /// Every user's answers against `store`'s durable state. The answers are
    /// those given before the store was read (one given while it is read is
    /// unknown to the check, never acknowledged before its row was read);
    /// the requests, those that arrived before the read ended.
    /// The balance is checked against the rows only where the two are read
    /// from one state: the memory store, SQLite in lockstep, or a store at
    /// rest (`at_rest`: nothing in flight, not even a dropped request).
    pub(crate) async fn check_durable(
        &self,
        store: &Arc<dyn PointStore>,
        at_rest: bool,
    ) -> Result<(), String> {
        let before = self
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let durable = if self.lockstep {
            drive(read_durable(store, self.scenario_users))?
        } else {
            read_durable(store, self.scenario_users).await?
        };
        // Requests that arrived while the store was read may have rows in
        // it: they are in the check, with their outcome unknown.
        let mut log = self
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (entry, seen) in log.entries.iter_mut().zip(before.entries.iter()) {
            entry.answer = seen.answer.clone();
            entry.answered_at = seen.answered_at;
        }
        for entry in log.entries.iter_mut().skip(before.entries.len()) {
            entry.answer = Answer::Pending;
            entry.answered_at = None;
        }
        let complete = self.sqlite.is_none() || self.lockstep || at_rest;
        for (user, state) in (1..=self.scenario_users).zip(&durable) {
            check_user(
                &log,
                user,
                state,
                self.max_balance,
                complete,
                self.sqlite.is_some(),
            )?;
        }
        Ok(())
    }
}

/// Each user's durable balance and rows in `store`.
pub(crate) async fn read_durable(
    store: &Arc<dyn PointStore>,
    users: u64,
) -> Result<Vec<Durable>, String> {
    let mut all = Vec::new();
    for user in 1..=users {
        let id = UserId::new(user).map_err(|e| format!("user id {user}: {e}"))?;
        let point = store
            .user_point(id)
            .await
            .map_err(|e| format!("reading user {user}'s balance: {e}"))?
            .map_or(0, |p| p.point);
        let rows = store
            .histories(id)
            .await
            .map_err(|e| format!("reading user {user}'s history: {e}"))?
            .into_iter()
            .map(|h| {
                let kind = match h.kind {
                    TransactionType::Charge => OpKind::Charge,
                    TransactionType::Use => OpKind::Use,
                };
                (kind, h.amount.get())
            })
            .collect();
        all.push(Durable { point, rows });
    }
    Ok(all)
}
