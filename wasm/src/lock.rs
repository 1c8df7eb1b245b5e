//! `KeyedLock` for JavaScript: a correct per-key mutex map.

use std::time::Duration;

use js_sys::{Function, Promise};
use pointlock_core::KeyedLock as CoreLock;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{future_to_promise, JsFuture};

use crate::js::{acquire, coded_error, get, message_of};

/// `await lock.withLock(key, async () => ...)`: FIFO per key, released when the
/// function settles (also when it throws), entry freed when idle.
#[wasm_bindgen]
pub struct KeyedLock {
    lock: CoreLock<String>,
    timeout: Option<Duration>,
}

/// Numbers and strings are keys; `1` and `'1'` are different keys.
fn key_of(key: &JsValue) -> Option<String> {
    if let Some(n) = key.as_f64() {
        return Some(format!("n:{n}"));
    }
    key.as_string().map(|s| format!("s:{s}"))
}

#[wasm_bindgen]
impl KeyedLock {
    /// `new KeyedLock({ timeoutMs })`; without `timeoutMs` waits are unbounded.
    #[wasm_bindgen(constructor)]
    pub fn new(
        #[wasm_bindgen(unchecked_optional_param_type = "KeyedLockOptions")] options: Option<
            JsValue,
        >,
    ) -> Result<KeyedLock, JsValue> {
        let options = options.unwrap_or(JsValue::UNDEFINED);
        let timeout = match get(&options, "timeoutMs") {
            None => None,
            Some(v) => match v.as_f64() {
                Some(ms) if ms.is_finite() && ms >= 0.0 => Some(Duration::from_millis(ms as u64)),
                _ => {
                    return Err(coded_error(
                        "INVALID_OPTION",
                        "timeoutMs must be a non-negative number",
                    ))
                }
            },
        };
        Ok(Self {
            lock: CoreLock::new(),
            timeout,
        })
    }

    /// Run `fn` while holding `key`; resolves or rejects with its result.
    #[wasm_bindgen(js_name = withLock, unchecked_return_type = "Promise<any>")]
    pub fn with_lock(
        &self,
        #[wasm_bindgen(unchecked_param_type = "number | string")] key: JsValue,
        #[wasm_bindgen(unchecked_param_type = "() => unknown")] func: JsValue,
    ) -> Promise {
        let Some(key) = key_of(&key) else {
            return Promise::reject(&coded_error(
                "INVALID_KEY",
                "key must be a number or a string",
            ));
        };
        let Ok(func) = func.dyn_into::<Function>() else {
            return Promise::reject(&coded_error(
                "INVALID_ARGUMENT",
                "withLock needs a function",
            ));
        };
        let acquiring = acquire(
            &self.lock,
            key,
            self.timeout,
            "timed out waiting for the key's lock",
        );
        future_to_promise(async move {
            let guard = acquiring.await?;
            let result = match func.call0(&JsValue::UNDEFINED) {
                Ok(value) => JsFuture::from(Promise::resolve(&value)).await,
                Err(thrown) => Err(thrown),
            };
            drop(guard); // released when the function settles, success or throw
            result.map_err(|e| {
                if e.is_object() {
                    e
                } else {
                    coded_error("ERROR", &message_of(&e))
                }
            })
        })
    }

    /// The number of keys held or awaited.
    #[wasm_bindgen(getter)]
    pub fn size(&self) -> usize {
        self.lock.len()
    }
}
