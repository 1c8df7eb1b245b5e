//! `PointService` for JavaScript.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use js_sys::Promise;
use pointlock_core::{Amount, KeyedLock, MemoryStore, PointError, PointStore, Policy, UserId};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::js::{coded_error, get, point_error, sleep, sleeper, to_js, JsClock};
use crate::store::TemplateStore;

type Core = pointlock_core::PointService<Box<dyn PointStore>>;

/// The point wallet: policies and a per-user FIFO lock over a store.
#[wasm_bindgen]
pub struct PointService {
    core: Rc<Core>,
    lock_timeout: Duration,
}

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
    pub fn new(options: JsValue) -> Result<PointService, JsValue> {
        let max_balance = option_number(&options, "maxBalance")?.map_or(10_000, |n| n as u64);
        let lock_timeout_ms = option_number(&options, "lockTimeoutMs")?.unwrap_or(3_000.0);
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
            lock_timeout: Duration::from_millis(lock_timeout_ms as u64),
        })
    }

    /// `{ id, point, updateMillis }`; a user never charged has 0.
    pub fn point(&self, id: JsValue) -> Promise {
        let id = match user_id(&id) {
            Ok(id) => id,
            Err(e) => return rejected(e),
        };
        let acquire = self.core.lock().lock_timeout(id, sleep(self.lock_timeout));
        let core = Rc::clone(&self.core);
        future_to_promise(async move {
            let _held = acquire
                .await
                .map_err(|_| point_error(&PointError::LockTimeout))?;
            let point = core.point(id).await.map_err(|e| point_error(&e))?;
            to_js(&point)
        })
    }

    /// `[{ id, userId, type: 'CHARGE' | 'USE', amount, timeMillis }]`, oldest first.
    pub fn histories(&self, id: JsValue) -> Promise {
        let id = match user_id(&id) {
            Ok(id) => id,
            Err(e) => return rejected(e),
        };
        let acquire = self.core.lock().lock_timeout(id, sleep(self.lock_timeout));
        let core = Rc::clone(&self.core);
        future_to_promise(async move {
            let _held = acquire
                .await
                .map_err(|_| point_error(&PointError::LockTimeout))?;
            let rows = core.histories(id).await.map_err(|e| point_error(&e))?;
            to_js(&rows)
        })
    }

    /// Add `amount` points; resolves to the updated `{ id, point, updateMillis }`.
    pub fn charge(&self, id: JsValue, amount: JsValue) -> Promise {
        self.mutate(id, amount, true)
    }

    /// Spend `amount` points; resolves to the updated `{ id, point, updateMillis }`.
    #[wasm_bindgen(js_name = "use")]
    pub fn use_points(&self, id: JsValue, amount: JsValue) -> Promise {
        self.mutate(id, amount, false)
    }

    /// The number of users whose lock is held or awaited right now.
    #[wasm_bindgen(getter, js_name = lockedUsers)]
    pub fn locked_users(&self) -> usize {
        self.core.lock().len()
    }
}

impl PointService {
    fn mutate(&self, id: JsValue, raw_amount: JsValue, charge: bool) -> Promise {
        // Validate first: a rejected call neither queues nor changes anything.
        let (id, amount) = match user_id(&id).and_then(|id| Ok((id, amount(&raw_amount)?))) {
            Ok(valid) => valid,
            Err(e) => return rejected(e),
        };
        // The queue position is taken now, in call order.
        let acquire = self.core.lock().lock_timeout(id, sleep(self.lock_timeout));
        let core = Rc::clone(&self.core);
        future_to_promise(async move {
            let held = acquire
                .await
                .map_err(|_| point_error(&PointError::LockTimeout))?;
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
