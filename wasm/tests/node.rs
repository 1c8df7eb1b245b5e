//! wasm-bindgen-test tests, run in Node by wasm-bindgen-test-runner:
//! `CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
//!  cargo test -p pointlock-wasm --target wasm32-unknown-unknown`
#![cfg(target_arch = "wasm32")]

use js_sys::{Object, Promise, Reflect};
use pointlock_wasm::{KeyedLock, PointService};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::wasm_bindgen_test;

fn options(pairs: &[(&str, f64)]) -> JsValue {
    let object = Object::new();
    for (name, value) in pairs {
        Reflect::set(&object, &(*name).into(), &(*value).into()).unwrap();
    }
    object.into()
}

async fn settle(promise: Promise) -> Result<JsValue, JsValue> {
    JsFuture::from(promise).await
}

fn field(value: &JsValue, name: &str) -> JsValue {
    Reflect::get(value, &name.into()).unwrap()
}

#[wasm_bindgen_test]
async fn concurrent_charges_on_the_slow_memory_store_sum_exactly() {
    let svc = PointService::new(Some(options(&[
        ("simulateLatencyMs", 5.0),
        ("lockTimeoutMs", 60_000.0),
    ])))
    .unwrap();
    let calls: Vec<Promise> = (0..20)
        .map(|_| svc.charge(1.0.into(), 10.0.into(), None))
        .collect();
    for call in calls {
        settle(call).await.unwrap();
    }
    let point = settle(svc.point(1.0.into())).await.unwrap();
    assert_eq!(field(&point, "point").as_f64(), Some(200.0));
    assert_eq!(svc.locked_users(), 0);
}

#[wasm_bindgen_test]
async fn errors_reject_with_codes() {
    let svc = PointService::new(Some(options(&[]))).unwrap();
    for (call, code) in [
        (svc.charge(0.0.into(), 1.0.into(), None), "INVALID_USER_ID"),
        (svc.charge(1.0.into(), 0.5.into(), None), "INVALID_AMOUNT"),
        (
            svc.use_points(1.0.into(), 1.0.into(), None),
            "INSUFFICIENT_BALANCE",
        ),
        (
            svc.charge(1.0.into(), 10_001.0.into(), None),
            "MAX_BALANCE_EXCEEDED",
        ),
    ] {
        let error = settle(call).await.unwrap_err();
        assert_eq!(field(&error, "code").as_string().as_deref(), Some(code));
    }
}

#[wasm_bindgen_test]
async fn keyed_lock_runs_the_function_and_frees_the_key() {
    let lock = KeyedLock::new(Some(options(&[("timeoutMs", 1_000.0)]))).unwrap();
    let answer = js_sys::Function::new_no_args("return 42");
    let value = settle(lock.with_lock("k".into(), answer.into()))
        .await
        .unwrap();
    assert_eq!(value.as_f64(), Some(42.0));
    assert_eq!(lock.size(), 0);
}
