//! JavaScript plumbing: errors with codes, timers, the clock, table calls.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use js_sys::{Function, Promise, Reflect};
use pointlock_core::store::{BoxFuture, Sleeper};
use pointlock_core::Clock;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(callback: &Function, millis: f64) -> JsValue;

    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(id: &JsValue);
}

/// A `setTimeout` as a future. Dropping it clears the timer, so a lock acquired
/// before its timeout leaves no pending timer behind (which in Node would keep the
/// process alive until it fired).
pub struct Sleep {
    timer: JsValue,
    fired: JsFuture,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.fired).poll(cx).map(|_| ())
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        // Clearing a timer that already fired is a no-op.
        clear_timeout(&self.timer);
    }
}

/// A future resolving after `duration`.
pub fn sleep(duration: Duration) -> Sleep {
    let mut timer = JsValue::UNDEFINED;
    let promise = Promise::new(&mut |resolve, _reject| {
        timer = set_timeout(&resolve, duration.as_secs_f64() * 1_000.0);
    });
    Sleep {
        timer,
        fired: JsFuture::from(promise),
    }
}

/// The memory store's simulated latency, through `setTimeout`.
pub fn sleeper() -> Sleeper {
    std::sync::Arc::new(|d| -> BoxFuture<'static, ()> { Box::pin(sleep(d)) })
}

/// Wall time from `Date.now()`; the monotonic reading is derived from it (good
/// enough for wait-time metrics; `performance` is not on every global).
#[derive(Debug, Default)]
pub struct JsClock;

impl Clock for JsClock {
    fn now_millis(&self) -> i64 {
        js_sys::Date::now() as i64
    }
}

impl keylock::Clock for JsClock {
    fn monotonic_nanos(&self) -> u64 {
        (js_sys::Date::now() * 1_000_000.0) as u64
    }
}

/// An `Error` with a `code` property.
pub fn coded_error(code: &str, message: &str) -> JsValue {
    let error = js_sys::Error::new(message);
    let _ = Reflect::set(&error, &"code".into(), &code.into());
    error.into()
}

/// The message of a thrown JavaScript value (an `Error`'s message, or its string form).
pub fn message_of(thrown: &JsValue) -> String {
    if let Some(error) = thrown.dyn_ref::<js_sys::Error>() {
        return String::from(error.message());
    }
    thrown.as_string().unwrap_or_else(|| format!("{thrown:?}"))
}

/// Read `name` from `object`, if present and not `undefined`/`null`.
pub fn get(object: &JsValue, name: &str) -> Option<JsValue> {
    Reflect::get(object, &name.into())
        .ok()
        .filter(|v| !v.is_undefined() && !v.is_null())
}

/// Call `object[name](...args)` and await the result, whether it is a Promise or
/// a plain value. A synchronous throw and a rejection both become `Err(message)`.
pub async fn call_method(
    object: &JsValue,
    name: &str,
    args: &[JsValue],
) -> Result<JsValue, String> {
    let method = get(object, name)
        .and_then(|m| m.dyn_into::<Function>().ok())
        .ok_or_else(|| format!("{name} is not a function"))?;
    let array: js_sys::Array = args.iter().collect();
    let value = method
        .apply(object, &array)
        .map_err(|thrown| format!("{name} threw: {}", message_of(&thrown)))?;
    JsFuture::from(Promise::resolve(&value))
        .await
        .map_err(|thrown| format!("{name} rejected: {}", message_of(&thrown)))
}
