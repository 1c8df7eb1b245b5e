//! `PointService` for JavaScript.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use js_sys::Promise;
use pointlock_core::{Amount, KeyedLock, MemoryStore, PointError, PointStore, Policy, UserId};
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
 */
export type PointlockErrorCode =
  | 'INVALID_USER_ID' | 'INVALID_AMOUNT' | 'INSUFFICIENT_BALANCE' | 'MAX_BALANCE_EXCEEDED'
  | 'LOCK_TIMEOUT' | 'WRITE_CONFLICT' | 'STORE_ERROR' | 'STORE_UNAVAILABLE' | 'STORE_OUTCOME_UNKNOWN'
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
        let core = Core::with_lock(store, Policy::new(max_balance), clock, lock);
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
    #[wasm_bindgen(unchecked_return_type = "Promise<UserPoint>")]
    pub fn charge(
        &self,
        #[wasm_bindgen(unchecked_param_type = "number")] id: JsValue,
        #[wasm_bindgen(unchecked_param_type = "number")] amount: JsValue,
    ) -> Promise {
        self.mutate(id, amount, true)
    }

    /// Spend `amount` points; resolves to the updated `{ id, point, updateMillis }`.
    /// Rejects with INSUFFICIENT_BALANCE when `amount` exceeds the balance.
    #[wasm_bindgen(js_name = "use", unchecked_return_type = "Promise<UserPoint>")]
    pub fn use_points(
        &self,
        #[wasm_bindgen(unchecked_param_type = "number")] id: JsValue,
        #[wasm_bindgen(unchecked_param_type = "number")] amount: JsValue,
    ) -> Promise {
        self.mutate(id, amount, false)
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

    fn mutate(&self, id: JsValue, raw_amount: JsValue, charge: bool) -> Promise {
        // Validate first: a rejected call neither queues nor changes anything.
        let (id, amount) = match user_id(&id).and_then(|id| Ok((id, amount(&raw_amount)?))) {
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
            let updated = if charge {
                core.charge(&held, amount).await
            } else {
                core.use_points(&held, amount).await
            };
            drop(held);
            to_js(&updated.map_err(|e| point_error(&e))?)
        })
    }
}
