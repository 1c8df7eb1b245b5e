//! A batch's decisions (see the [store's docs](super), "Batches"): with the
//! batch's rows locked and read, each user's items in order on the state the
//! ones before left, and what the batch then writes, as the columns of its
//! multi-row statements. No I/O here.

use std::collections::HashMap;

use pointlock_core::{
    Change, Committed, Decided, IdempotencyKey, IdempotencyRecord, Request, StoreError, UserId,
    UserPoint,
};

use super::queue::{Item, Taken};
use crate::rows::to_i64;

/// The answer of one item, before the COMMIT (applied ones with history id 0).
pub(super) enum Answer {
    Request(Result<Decided, StoreError>),
    Change(Result<Committed, StoreError>),
    Barrier,
}

/// The rows the batch locked and read: balances by user, records by user and key.
#[derive(Default)]
pub(super) struct Found {
    pub(super) points: HashMap<UserId, UserPoint>,
    pub(super) records: HashMap<(UserId, IdempotencyKey), IdempotencyRecord>,
}

/// Balances to write: `(ids, points, update_millis)`.
#[derive(Default)]
pub(super) struct Points {
    pub(super) ids: Vec<i64>,
    pub(super) points: Vec<i64>,
    pub(super) millis: Vec<i64>,
}

/// History rows to insert, in order.
#[derive(Default)]
pub(super) struct History {
    pub(super) users: Vec<i64>,
    pub(super) kinds: Vec<&'static str>,
    pub(super) amounts: Vec<i64>,
    pub(super) millis: Vec<i64>,
}

/// Idempotency records to write.
#[derive(Default)]
pub(super) struct Keys {
    pub(super) users: Vec<i64>,
    pub(super) keys: Vec<String>,
    pub(super) kinds: Vec<&'static str>,
    pub(super) amounts: Vec<i64>,
    pub(super) points: Vec<i64>,
    pub(super) millis: Vec<i64>,
}

/// What a batch decided: every item's answer, and what to write for them.
#[derive(Default)]
pub(super) struct Plan {
    /// Per user of the batch (same order), per item.
    pub(super) answers: Vec<Vec<Answer>>,
    /// Users whose rows the batch holds.
    pub(super) updates: Points,
    /// Users who had no row.
    pub(super) inserts: Points,
    pub(super) history: History,
    pub(super) keys: Keys,
    /// `(user, item)` of each history row, in order.
    slots: Vec<(usize, usize)>,
    /// Changes refused by their condition.
    pub(super) conflicts: u64,
}

/// The most a balance may be: the columns are signed 64-bit.
const POINT_MAX: u64 = i64::MAX as u64;

/// Decide `batch` on `found`.
pub(super) fn plan(batch: &[Taken], found: &Found) -> Plan {
    let mut plan = Plan::default();
    for (u, taken) in batch.iter().enumerate() {
        let user = taken.user;
        let stored = found.points.get(&user).copied();
        let mut state = UserState {
            point: stored,
            records: HashMap::new(),
            key_rows: HashMap::new(),
        };
        let mut answers = Vec::with_capacity(taken.items.len());
        for (i, item) in taken.items.iter().enumerate() {
            let answer = match item {
                Item::Request(request, _) => {
                    Answer::Request(plan.request(&mut state, found, request, (u, i)))
                }
                Item::Change(change, _) => {
                    Answer::Change(plan.change(&mut state, found, change, (u, i)))
                }
                Item::Barrier(_) => Answer::Barrier,
            };
            answers.push(answer);
        }
        if let Some(point) = state.point.filter(|now| Some(*now) != stored) {
            let points = if stored.is_some() {
                &mut plan.updates
            } else {
                &mut plan.inserts
            };
            points.ids.push(to_i64(user.get()));
            points.points.push(to_i64(point.point));
            points.millis.push(point.update_millis);
        }
        plan.answers.push(answers);
    }
    plan
}

/// One user's state as the batch goes through its items.
struct UserState {
    point: Option<UserPoint>,
    /// Records made earlier in this batch.
    records: HashMap<IdempotencyKey, IdempotencyRecord>,
    /// Where each of those is in the batch's key columns: one row per user
    /// and key in a statement, so a key written twice in one batch (its
    /// first record expired at once) keeps the last.
    key_rows: HashMap<IdempotencyKey, usize>,
}

impl UserState {
    fn record<'a>(
        &'a self,
        found: &'a Found,
        user: UserId,
        key: Option<&IdempotencyKey>,
    ) -> Option<&'a IdempotencyRecord> {
        let key = key?;
        self.records
            .get(key)
            .or_else(|| found.records.get(&(user, key.clone())))
    }
}

impl Plan {
    fn request(
        &mut self,
        state: &mut UserState,
        found: &Found,
        request: &Request,
        slot: (usize, usize),
    ) -> Result<Decided, StoreError> {
        let user = request.user_id();
        let record = state.record(found, user, request.idempotency_key());
        let decided = request.decide(state.point.as_ref(), record);
        if let Decided::Applied(committed) = &decided {
            let point = committed.user_point.point;
            fits(point)?;
            self.apply(state, committed, request.record(point), slot);
        }
        Ok(decided)
    }

    fn change(
        &mut self,
        state: &mut UserState,
        found: &Found,
        change: &Change,
        slot: (usize, usize),
    ) -> Result<Committed, StoreError> {
        let user = change.user_id();
        let stored = state.point.map_or(0, |p| p.point);
        if !change.holds_for(stored) {
            self.conflicts += 1;
            return Err(change.conflict(stored));
        }
        let made = state
            .record(found, user, change.idempotency_key())
            .map(|record| record.time_millis);
        if !change.key_holds_for(made) {
            self.conflicts += 1;
            return Err(change.key_conflict());
        }
        fits(change.point())?;
        let committed = change.committed(0);
        self.apply(state, &committed, change.idempotency_record(), slot);
        Ok(committed)
    }

    /// `committed` (and its `record`) is the user's state from here, and rows
    /// to write.
    fn apply(
        &mut self,
        state: &mut UserState,
        committed: &Committed,
        record: Option<IdempotencyRecord>,
        slot: (usize, usize),
    ) {
        let history = &committed.history;
        state.point = Some(committed.user_point);
        self.history.users.push(to_i64(history.user_id.get()));
        self.history.kinds.push(history.kind.as_str());
        self.history.amounts.push(to_i64(history.amount.get()));
        self.history.millis.push(history.time_millis);
        self.slots.push(slot);
        if let Some(record) = record {
            let user = to_i64(history.user_id.get());
            let keys = &mut self.keys;
            let at = *state.key_rows.entry(record.key.clone()).or_insert_with(|| {
                keys.users.push(user);
                keys.keys.push(record.key.as_str().to_owned());
                keys.kinds.push("");
                keys.amounts.push(0);
                keys.points.push(0);
                keys.millis.push(0);
                keys.users.len() - 1
            });
            self.keys.kinds[at] = record.kind.as_str();
            self.keys.amounts[at] = to_i64(record.amount.get());
            self.keys.points[at] = to_i64(record.point);
            self.keys.millis[at] = record.time_millis;
            state.records.insert(record.key.clone(), record);
        }
    }

    /// Whether the batch writes anything.
    pub(super) fn writes(&self) -> bool {
        !self.history.users.is_empty()
    }

    /// The history ids the database assigned (any order): ascending, they
    /// are the rows' ids in insertion order.
    pub(super) fn assign(&mut self, mut ids: Vec<i64>) -> Result<(), StoreError> {
        if ids.len() != self.slots.len() {
            return Err(StoreError::new(format!(
                "PostgreSQL returned {} history ids for {} rows",
                ids.len(),
                self.slots.len()
            )));
        }
        ids.sort_unstable();
        for (&(u, i), id) in self.slots.iter().zip(ids) {
            let id = u64::try_from(id)
                .map_err(|_| StoreError::new("PostgreSQL assigned a negative history id"))?;
            match &mut self.answers[u][i] {
                Answer::Request(Ok(Decided::Applied(committed)))
                | Answer::Change(Ok(committed)) => {
                    committed.history.id = id;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A balance the columns cannot hold fails its request, nothing written.
fn fits(point: u64) -> Result<(), StoreError> {
    if point > POINT_MAX {
        return Err(StoreError::new(format!(
            "balance {point} does not fit the PostgreSQL store (at most {POINT_MAX}); nothing was changed"
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
