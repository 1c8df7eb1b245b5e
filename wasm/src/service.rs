//! `PointService` for JavaScript.
//!
//! The Rust side validates, queues for the user's lock and runs the core; the
//! Promise and the result objects are made in JavaScript (`wasm/js/methods.js`)
//! from the numbers the exports return ([`crate::outcome`] says how). A call on
//! the memory store whose user is not busy is done within the call: granted at
//! once, applied, answered, no future left behind.

use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use pointlock_core::{
    Acquire, Amount, IdempotencyKey, KeyGuard, KeyedLock, MemoryStore, PointError, PointStore,
    Policy, TransactionType, UserId,
};
use wasm_bindgen::prelude::*;

use crate::js::{coded_error, get, sleep, sleeper, JsClock};
use crate::outcome::{fail_now, start, Answer, Failure};
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

export interface KeyedLock {
  /**
   * Run `fn` while holding `key`; resolves or rejects with its result. FIFO per
   * key: the place in the queue is taken by this call. The key is released when
   * `fn` settles, also when it throws; a thrown non-object becomes an `Error`
   * with code ERROR. Numbers and strings are keys (`1` and `'1'` are different
   * keys; numbers compare like a `Map`'s keys). With `timeoutMs`, a call queued
   * that long rejects with LOCK_TIMEOUT and `fn` never runs.
   */
  withLock<T>(key: number | string, fn: () => T | PromiseLike<T>): Promise<T>;
}

export interface PointService {
  /** `{ id, point, updateMillis }`; a user never charged has 0. */
  point(id: number): Promise<UserPoint>;
  /** `[{ id, userId, type: 'CHARGE' | 'USE', amount, timeMillis }]`, oldest first. */
  histories(id: number): Promise<PointHistory[]>;
  /**
   * Add `amount` points; resolves to the updated `{ id, point, updateMillis }`.
   * Rejects with MAX_BALANCE_EXCEEDED past `maxBalance` (reaching it is allowed).
   *
   * `idempotencyKey` (optional, 1 to 255 visible ASCII characters, per user):
   * a later call with the same key, operation and amount applies nothing and
   * resolves to the first call's answer again (counted by
   * `idempotentReplays`); with another operation or amount it rejects with
   * IDEMPOTENCY_KEY_REUSED. Only applied changes are recorded.
   */
  charge(id: number, amount: number, idempotencyKey?: string): Promise<UserPoint>;
  /**
   * Spend `amount` points; resolves to the updated `{ id, point, updateMillis }`.
   * Rejects with INSUFFICIENT_BALANCE when `amount` exceeds the balance.
   * `idempotencyKey` as for `charge`.
   */
  use(id: number, amount: number, idempotencyKey?: string): Promise<UserPoint>;
  /**
   * Remove at most `limit` (default 1000) expired idempotency records;
   * resolves to how many were removed. Expired keys are free again either
   * way: this only gives their memory back.
   */
  sweepIdempotencyKeys(limit?: number): Promise<number>;
}

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

/// The operation `__apply` takes: 0 charges, 1 uses.
fn kind_of(raw: u32) -> TransactionType {
    if raw == 1 {
        TransactionType::Use
    } else {
        TransactionType::Charge
    }
}

/// Wait for the lock `acquire` queued for: at once when it was free (no timer),
/// else until the holders before it are done or `timeout` passes.
async fn wait(
    acquire: Acquire<UserId>,
    timeout: Option<Duration>,
) -> Result<KeyGuard<UserId>, Failure> {
    let Some(limit) = timeout.filter(|_| !acquire.is_granted()) else {
        return Ok(acquire.await);
    };
    // The core's `lock_timeout`, for a place already taken: the timer starts now
    // (the first poll is made within the call), and a wait it ends is abandoned.
    let mut acquire = Some(acquire);
    let mut timer = pin!(sleep(limit));
    std::future::poll_fn(|cx| {
        let Some(pending) = acquire.as_mut() else {
            return Poll::Ready(Err(Failure::new("LOCK_TIMEOUT", USER_LOCK_TIMEOUT)));
        };
        if let Poll::Ready(guard) = Pin::new(pending).poll(cx) {
            return Poll::Ready(Ok(guard));
        }
        if timer.as_mut().poll(cx).is_ready() {
            if let Some(abandoned) = acquire.take() {
                abandoned.abandon_timed_out();
            }
            return Poll::Ready(Err(Failure::new("LOCK_TIMEOUT", USER_LOCK_TIMEOUT)));
        }
        Poll::Pending
    })
    .await
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

    /// `charge` (`kind` 0) or `use` (1) without an idempotency key; the status
    /// protocol of `outcome.rs`: the new balance, FAILED or PENDING.
    #[wasm_bindgen(js_name = __apply, skip_typescript)]
    pub fn apply_call(&self, kind: u32, id: f64, amount: f64) -> f64 {
        self.mutate(kind_of(kind), id, amount, None)
    }

    /// `__apply` with an idempotency key (JavaScript passes `''`, which is
    /// invalid, for a key that is not a string).
    #[wasm_bindgen(js_name = __applyKeyed, skip_typescript)]
    pub fn apply_keyed_call(&self, kind: u32, id: f64, amount: f64, key: &str) -> f64 {
        self.mutate(kind_of(kind), id, amount, Some(key))
    }

    /// `point(id)`: the balance (`__plMillis()` its time), FAILED or PENDING.
    #[wasm_bindgen(js_name = __point, skip_typescript)]
    pub fn point_call(&self, id: f64) -> f64 {
        self.read(id, |core, id| async move {
            Ok(Answer::Point(core.point(id).await?))
        })
    }

    /// `histories(id)`: the row count (`__plRows()` the rows), FAILED or PENDING.
    #[wasm_bindgen(js_name = __histories, skip_typescript)]
    pub fn histories_call(&self, id: f64) -> f64 {
        self.read(id, |core, id| async move {
            Ok(Answer::Rows(core.histories(id).await?))
        })
    }

    /// `sweepIdempotencyKeys(limit)`: the count removed, FAILED or PENDING.
    /// JavaScript passes 1000 for no limit and NaN for one that is not a number.
    #[wasm_bindgen(js_name = __sweep, skip_typescript)]
    pub fn sweep_call(&self, limit: f64) -> f64 {
        if !(limit.is_finite() && limit >= 0.0 && limit.fract() == 0.0) {
            return fail_now(Failure::new(
                "INVALID_ARGUMENT",
                "limit must be a non-negative integer",
            ));
        }
        let core = Rc::clone(&self.core);
        start(Box::pin(async move {
            let removed = core.sweep_idempotency(limit as usize).await?;
            Ok(Answer::Count(removed))
        }))
    }

    /// Calls answered again from an idempotency record so far.
    #[wasm_bindgen(getter, js_name = idempotentReplays)]
    pub fn idempotent_replays(&self) -> f64 {
        self.core.idempotent_replays() as f64
    }

    /// The number of users whose lock is held or awaited right now.
    #[wasm_bindgen(getter, js_name = lockedUsers)]
    pub fn locked_users(&self) -> usize {
        self.core.lock().len()
    }
}

impl PointService {
    /// A read, queued behind the user's earlier calls like every call.
    fn read<F, Fut>(&self, id: f64, read: F) -> f64
    where
        F: FnOnce(Rc<Core>, UserId) -> Fut + 'static,
        Fut: Future<Output = Result<Answer, Failure>> + 'static,
    {
        let id = match UserId::from_f64(id) {
            Ok(id) => id,
            Err(e) => return fail_now(e.into()),
        };
        // The queue position is taken now, in call order.
        let acquire = self.core.lock().lock(id);
        let timeout = self.lock_timeout;
        let core = Rc::clone(&self.core);
        start(Box::pin(async move {
            let _held = wait(acquire, timeout).await?;
            read(core, id).await
        }))
    }

    fn mutate(&self, kind: TransactionType, id: f64, amount: f64, key: Option<&str>) -> f64 {
        // Validate first: a rejected call neither queues nor changes anything.
        let valid = UserId::from_f64(id).and_then(|id| {
            let amount = Amount::from_f64(amount)?;
            let key = key.map(IdempotencyKey::new).transpose()?;
            Ok::<_, PointError>((id, amount, key))
        });
        let (id, amount, key) = match valid {
            Ok(valid) => valid,
            Err(e) => return fail_now(e.into()),
        };
        // The queue position is taken now, in call order.
        let acquire = self.core.lock().lock(id);
        let timeout = self.lock_timeout;
        let core = Rc::clone(&self.core);
        start(Box::pin(async move {
            // The core takes the guard as an `Arc`, handed over (the store keeps
            // a clone until it has answered for the change). On wasm32 the guard
            // is not `Send`, and there is one thread: the lint's concern does not
            // arise.
            #[expect(
                clippy::arc_with_non_send_sync,
                reason = "the core's API is Arc<KeyGuard>; wasm32 has one thread"
            )]
            let held = Arc::new(wait(acquire, timeout).await?);
            let applied = core.apply(held, kind, amount, key.as_ref()).await;
            Ok(Answer::Point(applied?.point))
        }))
    }
}
