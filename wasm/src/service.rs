//! `PointService` for JavaScript.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use js_sys::Promise;
use pointlock_core::{
    Amount, IdempotencyKey, KeyedLock, MemoryStore, PointError, PointStore, Policy,
    TransactionType, UserId,
};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::js::{acquire, coded_error, get, point_error, sleeper, to_js, Acquiring, JsClock};
use crate::store::TemplateStore;

type Core = pointlock_core::PointService<Box<dyn PointStore>>;

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** A user's balance. A user never charged has point 0. */
export interface UserPoint { id: number; point: number; updateMillis: number; }

/** One committed change, oldest first in `histories`. */
export interface PointHistory {
  id: number; userId: number; type: 'CHARGE' | 'USE'; amount: number; timeMillis: number;
}

/**
 * The course NestJS template's `UserPointTable`; methods may return values or Promises.
 * `selectById` is also called right before each write: a balance that changed since
 * the service read it is not overwritten (the call is retried, or WRITE_CONFLICT).
 */
export interface UserPointTableLike {
  selectById(id: number): UserPoint | undefined | Promise<UserPoint | undefined>;
  insertOrUpdate(id: number, point: number): unknown;
}

/** The template's `PointHistoryTable`; `type` is its numeric enum: 0 = CHARGE, 1 = USE. */
export interface PointHistoryTableLike {
  insert(userId: number, amount: number, type: 0 | 1, timeMillis: number): { id: number } | Promise<{ id: number }>;
  selectAllByUserId(userId: number): Array<object> | Promise<Array<object>>;
}

/** Options of `new PointService(...)`. Give both tables, or neither for the in-memory store. */
export interface PointServiceOptions {
  /** Inclusive balance cap; default 10000. */
  maxBalance?: number;
  /** Longest wait for a user's earlier calls before LOCK_TIMEOUT; default: no limit. */
  lockTimeoutMs?: number;
  /**
   * How long an idempotency key's record is kept, in ms; default 86400000 (24 h).
   * After it the key may be used again.
   */
  idempotencyTtlMs?: number;
  /** In-memory store only: every store call waits a random 0..=N ms. */
  simulateLatencyMs?: number;
  userPointTable?: UserPointTableLike;
  pointHistoryTable?: PointHistoryTableLike;
}

/** Options of `new KeyedLock(...)`. Without `timeoutMs`, waits are unbounded. */
export interface KeyedLockOptions { timeoutMs?: number; }

/**
 * Every rejection is an `Error` with one of these codes. WRITE_CONFLICT: the
 * balance kept changing between the service's read and its write (a writer that
 * bypassed the lock); nothing was changed, retry. STORE_ERROR: a table method
 * threw or rejected. STORE_UNAVAILABLE and STORE_OUTCOME_UNKNOWN are the core's
 * codes for stores that stop after a failure; this package's stores never give them.
 * INVALID_IDEMPOTENCY_KEY: the key is not 1 to 255 visible ASCII characters.
 * IDEMPOTENCY_KEY_REUSED: the key was first used for another operation or amount.
 */
export type PointlockErrorCode =
  | 'INVALID_USER_ID' | 'INVALID_AMOUNT' | 'INSUFFICIENT_BALANCE' | 'MAX_BALANCE_EXCEEDED'
  | 'LOCK_TIMEOUT' | 'WRITE_CONFLICT' | 'STORE_ERROR' | 'STORE_UNAVAILABLE' | 'STORE_OUTCOME_UNKNOWN'
  | 'INVALID_IDEMPOTENCY_KEY' | 'IDEMPOTENCY_KEY_REUSED'
  | 'INVALID_OPTION' | 'INVALID_KEY' | 'INVALID_ARGUMENT' | 'INTERNAL';

export interface PointlockError extends Error { code: PointlockErrorCode; }
"#;

/// The point wallet: policies and a per-user FIFO lock over a store. Calls for one
/// user run one at a time in call order; different users run concurrently. Every
/// method returns a Promise; failures reject with a `PointlockError`.
#[wasm_bindgen]
pub struct PointService {
    core: Rc<Core>,
    /// `None`: wait as long as it takes (the default, like `KeyedLock`).
    lock_timeout: Option<Duration>,
}

const USER_LOCK_TIMEOUT: &str = "timed out waiting for this user's earlier calls to finish";

fn option_number(options: &JsValue, name: &str) -> Result<Option<f64>, JsValue> {
    match get(options, name) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(n) if n.is_finite() && n >= 0.0 && n.fract() == 0.0 => Ok(Some(n)),
            _ => Err(coded_error(
                "INVALID_OPTION",
                &format!("option {name} must be a non-negative integer"),
            )),
        },
    }
}

fn user_id(raw: &JsValue) -> Result<UserId, PointError> {
    raw.as_f64()
        .ok_or(PointError::InvalidUserId)
        .and_then(UserId::from_f64)
}

fn amount(raw: &JsValue) -> Result<Amount, PointError> {
    raw.as_f64()
        .ok_or(PointError::InvalidAmount)
        .and_then(Amount::from_f64)
}

/// An optional key: `undefined` or `null` for none; otherwise a valid string.
fn idempotency_key(raw: Option<JsValue>) -> Result<Option<IdempotencyKey>, PointError> {
    match raw.filter(|v| !v.is_undefined() && !v.is_null()) {
        None => Ok(None),
        Some(v) => {
            let text = v.as_string().ok_or(PointError::InvalidIdempotencyKey)?;
            IdempotencyKey::new(&text).map(Some)
        }
    }
}

fn rejected(error: PointError) -> Promise {
    Promise::reject(&point_error(&error))
}

#[wasm_bindgen]
impl PointService {
    /// `new PointService({ maxBalance, lockTimeoutMs, simulateLatencyMs })` for the
    /// in-memory store, or `new PointService({ userPointTable, pointHistoryTable })`
    /// to run over the course template's tables.
    #[wasm_bindgen(constructor)]
    pub fn new(
        #[wasm_bindgen(unchecked_optional_param_type = "PointServiceOptions")] options: Option<
            JsValue,
        >,
    ) -> Result<PointService, JsValue> {
        let options = options.unwrap_or(JsValue::UNDEFINED);
        let max_balance = option_number(&options, "maxBalance")?.map_or(10_000, |n| n as u64);
        let lock_timeout =
            option_number(&options, "lockTimeoutMs")?.map(|ms| Duration::from_millis(ms as u64));
        let latency_ms = option_number(&options, "simulateLatencyMs")?.unwrap_or(0.0) as u64;
        let tables = (
            get(&options, "userPointTable"),
            get(&options, "pointHistoryTable"),
        );
        let store: Box<dyn PointStore> = match tables {
            (Some(points), Some(histories)) => Box::new(TemplateStore::new(points, histories)),
            (None, None) => Box::new(MemoryStore::with_latency(
                latency_ms,
                sleeper(),
                js_sys::Date::now() as u64,
            )),
            _ => {
                return Err(coded_error(
                    "INVALID_OPTION",
                    "give both userPointTable and pointHistoryTable, or neither",
                ))
            }
        };
        let clock = Arc::new(JsClock);
        let lock = KeyedLock::with_clock(clock.clone());
        let mut core = Core::with_lock(store, Policy::new(max_balance), clock, lock);
        if let Some(ttl) = option_number(&options, "idempotencyTtlMs")? {
            core = core.with_idempotency_ttl(Duration::from_millis(ttl as u64));
        }
        Ok(Self {
            core: Rc::new(core),
            lock_timeout,
        })
    }

    /// `{ id, point, updateMillis }`; a user never charged has 0.
    #[wasm_bindgen(unchecked_return_type = "Promise<UserPoint>")]
    pub fn point(&self, #[wasm_bindgen(unchecked_param_type = "number")] id: JsValue) -> Promise {
        self.read(id, |core, id| async move { core.point(id).await })
    }

    /// `[{ id, userId, type: 'CHARGE' | 'USE', amount, timeMillis }]`, oldest first.
    #[wasm_bindgen(unchecked_return_type = "Promise<PointHistory[]>")]
    pub fn histories(
        &self,
        #[wasm_bindgen(unchecked_param_type = "number")] id: JsValue,
    ) -> Promise {
        self.read(id, |core, id| async move { core.histories(id).await })
    }

    /// Add `amount` points; resolves to the updated `{ id, point, updateMillis }`.
    /// Rejects with MAX_BALANCE_EXCEEDED past `maxBalance` (reaching it is allowed).
    ///
    /// `idempotencyKey` (optional, 1 to 255 visible ASCII characters, per user):
    /// a later call with the same key, operation and amount applies nothing and
    /// resolves to the first call's answer again (counted by
    /// `idempotentReplays`); with another operation or amount it rejects with
    /// IDEMPOTENCY_KEY_REUSED. Only applied changes are recorded.
    #[wasm_bindgen(unchecked_return_type = "Promise<UserPoint>")]
    pub fn charge(
        &self,
        #[wasm_bindgen(unchecked_param_type = "number")] id: JsValue,
        #[wasm_bindgen(unchecked_param_type = "number")] amount: JsValue,
        #[wasm_bindgen(unchecked_optional_param_type = "string")] idempotency_key: Option<JsValue>,
    ) -> Promise {
        self.mutate(id, amount, idempotency_key, TransactionType::Charge)
    }

    /// Spend `amount` points; resolves to the updated `{ id, point, updateMillis }`.
    /// Rejects with INSUFFICIENT_BALANCE when `amount` exceeds the balance.
    /// `idempotencyKey` as for `charge`.
    #[wasm_bindgen(js_name = "use", unchecked_return_type = "Promise<UserPoint>")]
    pub fn use_points(
        &self,
        #[wasm_bindgen(unchecked_param_type = "number")] id: JsValue,
        #[wasm_bindgen(unchecked_param_type = "number")] amount: JsValue,
        #[wasm_bindgen(unchecked_optional_param_type = "string")] idempotency_key: Option<JsValue>,
    ) -> Promise {
        self.mutate(id, amount, idempotency_key, TransactionType::Use)
    }

    /// Calls answered again from an idempotency record so far.
    #[wasm_bindgen(getter, js_name = idempotentReplays)]
    pub fn idempotent_replays(&self) -> f64 {
        self.core.idempotent_replays() as f64
    }

    /// Remove at most `limit` (default 1000) expired idempotency records;
    /// resolves to how many were removed. Expired keys are free again either
    /// way: this only gives their memory back.
    #[wasm_bindgen(js_name = sweepIdempotencyKeys, unchecked_return_type = "Promise<number>")]
    pub fn sweep_idempotency_keys(
        &self,
        #[wasm_bindgen(unchecked_optional_param_type = "number")] limit: Option<JsValue>,
    ) -> Promise {
        let limit = match limit.filter(|v| !v.is_undefined() && !v.is_null()) {
            None => 1_000,
            Some(v) => match v.as_f64() {
                Some(n) if n.is_finite() && n >= 0.0 && n.fract() == 0.0 => n as usize,
                _ => {
                    return Promise::reject(&coded_error(
                        "INVALID_ARGUMENT",
                        "limit must be a non-negative integer",
                    ))
                }
            },
        };
        let core = Rc::clone(&self.core);
        future_to_promise(async move {
            let removed = core
                .sweep_idempotency(limit)
                .await
                .map_err(|e| point_error(&e))?;
            Ok(JsValue::from_f64(removed as f64))
        })
    }

    /// The number of users whose lock is held or awaited right now.
    #[wasm_bindgen(getter, js_name = lockedUsers)]
    pub fn locked_users(&self) -> usize {
        self.core.lock().len()
    }
}

impl PointService {
    /// Queue for `id`'s lock now, in call order.
    fn acquire(&self, id: UserId) -> Acquiring<UserId> {
        acquire(self.core.lock(), id, self.lock_timeout, USER_LOCK_TIMEOUT)
    }

    /// A read, queued behind the user's earlier calls like every call.
    fn read<T, F, Fut>(&self, id: JsValue, read: F) -> Promise
    where
        T: serde::Serialize,
        F: FnOnce(Rc<Core>, UserId) -> Fut + 'static,
        Fut: std::future::Future<Output = Result<T, PointError>> + 'static,
    {
        let id = match user_id(&id) {
            Ok(id) => id,
            Err(e) => return rejected(e),
        };
        let acquiring = self.acquire(id);
        let core = Rc::clone(&self.core);
        future_to_promise(async move {
            let _held = acquiring.await?;
            to_js(&read(core, id).await.map_err(|e| point_error(&e))?)
        })
    }

    fn mutate(
        &self,
        id: JsValue,
        raw_amount: JsValue,
        raw_key: Option<JsValue>,
        kind: TransactionType,
    ) -> Promise {
        // Validate first: a rejected call neither queues nor changes anything.
        let valid = user_id(&id).and_then(|id| {
            let amount = amount(&raw_amount)?;
            Ok((id, amount, idempotency_key(raw_key)?))
        });
        let (id, amount, key) = match valid {
            Ok(valid) => valid,
            Err(e) => return rejected(e),
        };
        // The queue position is taken now, in call order.
        let acquiring = self.acquire(id);
        let core = Rc::clone(&self.core);
        future_to_promise(async move {
            // The core takes the guard as an `Arc` (the store keeps a clone until it
            // has answered for the change). On wasm32 the guard is not `Send`, and
            // there is one thread: the lint's concern does not arise.
            #[expect(
                clippy::arc_with_non_send_sync,
                reason = "the core's API is Arc<KeyGuard>; wasm32 has one thread"
            )]
            let held = Arc::new(acquiring.await?);
            let applied = core.apply(&held, kind, amount, key.as_ref()).await;
            drop(held);
            to_js(&applied.map_err(|e| point_error(&e))?.point)
        })
    }
}
