//! `TemplateStore`: the course NestJS template's tables, handed in from JavaScript.
//!
//! Any objects with the template's methods, synchronous or returning Promises:
//! `selectById(id)`, `insertOrUpdate(id, point)`, `insert(userId, amount, type,
//! timeMillis)` (type is the template's numeric enum: 0 = CHARGE, 1 = USE) and
//! `selectAllByUserId(userId)`. History rows read back are normalised to
//! `type: 'CHARGE' | 'USE'`.
//!
//! # The commit condition, as far as such tables allow
//!
//! The template's tables have no transactions and no compare-and-set, so a commit
//! is a sequence of awaited calls:
//!
//! 1. `selectById(id)`: the balance is read again, right before writing. If it is
//!    not the balance the change was computed from ([`Change::holds_for`]), the
//!    commit is refused with [`Change::conflict`] (nothing written) and the
//!    service reads, re-applies the policy and retries, a bounded number of times,
//!    then rejects with `WRITE_CONFLICT`.
//! 2. `insertOrUpdate(id, point)`: the new balance.
//! 3. `insert(userId, amount, type, timeMillis)`: the history row. If it fails,
//!    the balance read in step 1 is written back (best effort) and the call
//!    rejects with `STORE_ERROR`.
//!
//! What this guarantees: a change computed from a balance that some other writer
//! changed *before* step 1 (a write that bypassed the package's lock, between the
//! service's read and this commit) is refused, not written over the newer
//! balance. What it does not: steps 1 and 2 are separate awaited calls, so a
//! writer that bypasses the lock and writes *between* them is not caught (its
//! write is overwritten, a lost update), and the write-back of step 3 can likewise
//! overwrite such a write. Only a store that checks and writes atomically closes
//! that window. With the package's own lock in front of every write (all writes
//! go through one `PointService`), nothing bypasses it and neither window exists.
//!
//! The future owns the [`Change`] (and so the user's lock) until it has answered.
//!
//! # Idempotency records
//!
//! The template has no table for them, so this store keeps them in the
//! package's own memory (in-process, like the template's tables themselves). A
//! keyed change checks the key's record with the balance in step 1 and writes
//! the record right after step 3 succeeds, in the same synchronous step (no
//! await in between): a change whose history insert failed leaves no record,
//! and no record exists without its change.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use pointlock_core::store::{BoxFuture, Change, Committed, PointStore};
use pointlock_core::{
    Amount, IdempotencyKey, IdempotencyRecord, PointHistory, StoreError, TransactionType, UserId,
    UserPoint,
};
use wasm_bindgen::JsValue;

use crate::js::{call_method, get};

/// The template's two tables, and the idempotency records kept beside them.
pub struct TemplateStore {
    user_points: JsValue,
    histories: JsValue,
    keys: RefCell<Keys>,
}

/// Idempotency records by user and key, and the order they were written in
/// (for the sweep; an entry whose record was replaced since is skipped).
#[derive(Default)]
struct Keys {
    records: HashMap<(UserId, IdempotencyKey), IdempotencyRecord>,
    written: VecDeque<(i64, UserId, IdempotencyKey)>,
}

impl TemplateStore {
    pub fn new(user_points: JsValue, histories: JsValue) -> Self {
        Self {
            user_points,
            histories,
            keys: RefCell::default(),
        }
    }

    fn key_made(&self, id: UserId, key: &IdempotencyKey) -> Option<i64> {
        self.keys
            .borrow()
            .records
            .get(&(id, key.clone()))
            .map(|r| r.time_millis)
    }
}

fn number(row: &JsValue, field: &str) -> Result<f64, StoreError> {
    get(row, field)
        .and_then(|v| v.as_f64())
        .filter(|n| n.is_finite())
        .ok_or_else(|| StoreError::new(format!("row has no numeric {field:?}")))
}

/// A non-negative safe integer field.
fn count(row: &JsValue, field: &str) -> Result<u64, StoreError> {
    let n = number(row, field)?;
    if n >= 0.0 && n.fract() == 0.0 && n <= 9_007_199_254_740_991.0 {
        Ok(n as u64)
    } else {
        Err(StoreError::new(format!(
            "{field} is not a non-negative integer: {n}"
        )))
    }
}

fn kind_of(row: &JsValue) -> Result<TransactionType, StoreError> {
    let value = get(row, "type").ok_or_else(|| StoreError::new("history row has no type"))?;
    match (value.as_f64(), value.as_string().as_deref()) {
        (Some(0.0), _) => Ok(TransactionType::Charge),
        (Some(1.0), _) => Ok(TransactionType::Use),
        (_, Some("CHARGE")) => Ok(TransactionType::Charge),
        (_, Some("USE")) => Ok(TransactionType::Use),
        _ => Err(StoreError::new(format!("unknown history type {value:?}"))),
    }
}

fn type_code(kind: TransactionType) -> JsValue {
    JsValue::from_f64(match kind {
        TransactionType::Charge => 0.0,
        TransactionType::Use => 1.0,
    })
}

fn history_row(row: &JsValue) -> Result<PointHistory, StoreError> {
    let user = UserId::new(count(row, "userId")?).map_err(|e| StoreError::new(e.to_string()))?;
    let amount = Amount::new(count(row, "amount")?).map_err(|e| StoreError::new(e.to_string()))?;
    Ok(PointHistory {
        id: count(row, "id")?,
        user_id: user,
        kind: kind_of(row)?,
        amount,
        time_millis: number(row, "timeMillis")? as i64,
    })
}

fn id_arg(id: UserId) -> JsValue {
    JsValue::from_f64(id.get() as f64)
}

impl PointStore for TemplateStore {
    fn user_point(&self, id: UserId) -> BoxFuture<'_, Result<Option<UserPoint>, StoreError>> {
        Box::pin(async move {
            let row = call_method(&self.user_points, "selectById", &[id_arg(id)])
                .await
                .map_err(StoreError::new)?;
            if row.is_undefined() || row.is_null() {
                return Ok(None);
            }
            Ok(Some(UserPoint {
                id,
                point: count(&row, "point")?,
                update_millis: number(&row, "updateMillis")? as i64,
            }))
        })
    }

    fn histories(&self, id: UserId) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
        Box::pin(async move {
            let rows = call_method(&self.histories, "selectAllByUserId", &[id_arg(id)])
                .await
                .map_err(StoreError::new)?;
            if !js_sys::Array::is_array(&rows) {
                return Err(StoreError::new("selectAllByUserId did not return an array"));
            }
            let mut out: Vec<PointHistory> = js_sys::Array::from(&rows)
                .iter()
                .map(|row| history_row(&row))
                .collect::<Result<_, _>>()?;
            out.sort_by_key(|h| h.id); // oldest first, whatever the table's order
            Ok(out)
        })
    }

    fn commit(&self, change: Change) -> BoxFuture<'_, Result<Committed, StoreError>> {
        // `change` moves into the future: the user stays locked until it answers.
        Box::pin(async move {
            let user = id_arg(change.user_id());
            // The condition: as close to the write as these tables allow (see the
            // module docs for the window between this read and the write).
            let stored = self
                .user_point(change.user_id())
                .await?
                .map_or(0, |p| p.point);
            if !change.holds_for(stored) {
                return Err(change.conflict(stored));
            }
            if let Some(key) = change.idempotency_key() {
                if !change.key_holds_for(self.key_made(change.user_id(), key)) {
                    return Err(change.key_conflict());
                }
            }
            let point_arg = JsValue::from_f64(change.point() as f64);
            call_method(
                &self.user_points,
                "insertOrUpdate",
                &[user.clone(), point_arg],
            )
            .await
            .map_err(StoreError::new)?;
            let inserted = call_method(
                &self.histories,
                "insert",
                &[
                    user.clone(),
                    JsValue::from_f64(change.amount().get() as f64),
                    type_code(change.kind()),
                    JsValue::from_f64(change.time_millis() as f64),
                ],
            )
            .await;
            let row = match inserted {
                Ok(row) => row,
                Err(message) => {
                    // Undo the balance write so the tables stay consistent: back to
                    // the balance read above (best effort).
                    let _ = call_method(
                        &self.user_points,
                        "insertOrUpdate",
                        &[user, JsValue::from_f64(stored as f64)],
                    )
                    .await;
                    return Err(StoreError::new(message));
                }
            };
            if get(&row, "id").is_none() {
                return Err(StoreError::new("insert did not return the history row"));
            }
            let committed = change.committed(count(&row, "id")?);
            if let Some(record) = change.idempotency_record() {
                let user = change.user_id();
                let mut keys = self.keys.borrow_mut();
                keys.written
                    .push_back((record.time_millis, user, record.key.clone()));
                keys.records.insert((user, record.key.clone()), record);
            }
            Ok(committed)
        })
    }

    fn idempotency_record(
        &self,
        id: UserId,
        key: &IdempotencyKey,
    ) -> BoxFuture<'_, Result<Option<IdempotencyRecord>, StoreError>> {
        let found = self.keys.borrow().records.get(&(id, key.clone())).cloned();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn sweep_idempotency(
        &self,
        expired_before: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        let mut keys = self.keys.borrow_mut();
        let mut removed = 0;
        while removed < limit {
            match keys.written.front() {
                Some((made, _, _)) if *made <= expired_before => {}
                _ => break,
            }
            let Some((made, user, key)) = keys.written.pop_front() else {
                break;
            };
            let entry = (user, key);
            if keys
                .records
                .get(&entry)
                .is_some_and(|r| r.time_millis == made)
            {
                keys.records.remove(&entry);
                removed += 1;
            }
        }
        Box::pin(std::future::ready(Ok(removed)))
    }
}
