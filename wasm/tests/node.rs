//! wasm-bindgen-test tests, run in Node by wasm-bindgen-test-runner:
//! `CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
//!  cargo test -p pointlock-wasm --target wasm32-unknown-unknown`
//!
//! They drive the exports as `wasm/js/methods.js` does: tickets for the lock,
//! the status protocol of `outcome.rs` for the service.
#![cfg(target_arch = "wasm32")]

use js_sys::{Object, Promise, Reflect};
use pointlock_wasm::{
    abandon, last_error, last_millis, park, release, KeyedLock, PointService, FAILED, PENDING,
};
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

/// A call's status as a Promise, made at once (a PENDING call must be parked
/// before the next call): resolves to the number answered (a balance), rejects
/// with the error's code.
fn settle(status: f64) -> Promise {
    if status >= 0.0 {
        return Promise::resolve(&JsValue::from_f64(status));
    }
    if status == FAILED {
        let both = last_error();
        let code = both.split(':').next().unwrap_or_default().to_owned();
        return Promise::reject(&JsValue::from_str(&code));
    }
    assert_eq!(status, PENDING);
    // `done` gets (point, updateMillis) and `fail` (code, message): the first
    // argument of each is the one kept.
    Promise::new(&mut |resolve, reject| park(resolve, reject))
}

async fn outcome(promise: Promise) -> Result<f64, String> {
    JsFuture::from(promise)
        .await
        .map(|v| v.as_f64().unwrap())
        .map_err(|code| code.as_string().unwrap())
}

#[wasm_bindgen_test]
async fn concurrent_charges_on_the_slow_memory_store_sum_exactly() {
    let svc = PointService::new(Some(options(&[
        ("simulateLatencyMs", 5.0),
        ("lockTimeoutMs", 60_000.0),
    ])))
    .unwrap();
    let calls: Vec<Promise> = (0..20)
        .map(|_| {
            let status = svc.apply_call(0, 1.0, 10.0);
            assert_eq!(status, PENDING, "the store's latency makes every call wait");
            settle(status)
        })
        .collect();
    let mut balances = Vec::new();
    for call in calls {
        balances.push(outcome(call).await.unwrap());
    }
    let expected: Vec<f64> = (1..=20).map(|n| f64::from(n) * 10.0).collect();
    assert_eq!(balances, expected, "in call order, each on the one before");
    assert_eq!(outcome(settle(svc.point_call(1.0))).await, Ok(200.0));
    assert_eq!(svc.locked_users(), 0);
}

#[wasm_bindgen_test]
async fn a_call_on_the_memory_store_is_done_within_the_call() {
    let svc = PointService::new(None).unwrap();
    assert_eq!(svc.apply_call(0, 7.0, 30.0), 30.0);
    assert!(last_millis() > 1.6e12, "updateMillis is now");
    assert_eq!(svc.apply_call(1, 7.0, 10.0), 20.0);
    assert_eq!(svc.point_call(7.0), 20.0);
    assert_eq!(svc.histories_call(7.0), 2.0, "two rows");
    assert_eq!(svc.locked_users(), 0, "nothing is left holding the user");
}

#[wasm_bindgen_test]
async fn errors_reject_with_codes() {
    let svc = PointService::new(Some(options(&[]))).unwrap();
    // Each status is settled as soon as it is answered: the error waits for one
    // reading, before the next call (as methods.js reads it).
    let failed = |status: f64| {
        assert_eq!(status, FAILED);
        settle(status)
    };
    for (call, code) in [
        (failed(svc.apply_call(0, 0.0, 1.0)), "INVALID_USER_ID"),
        (failed(svc.apply_call(0, f64::NAN, 1.0)), "INVALID_USER_ID"),
        (failed(svc.apply_call(0, 1.0, 0.5)), "INVALID_AMOUNT"),
        (
            failed(svc.apply_keyed_call(0, 1.0, 1.0, "")),
            "INVALID_IDEMPOTENCY_KEY",
        ),
        (failed(svc.apply_call(1, 1.0, 1.0)), "INSUFFICIENT_BALANCE"),
        (
            failed(svc.apply_call(0, 1.0, 10_001.0)),
            "MAX_BALANCE_EXCEEDED",
        ),
        (failed(svc.sweep_call(-1.0)), "INVALID_ARGUMENT"),
    ] {
        assert_eq!(outcome(call).await, Err(code.to_owned()));
    }
    assert_eq!(svc.histories_call(1.0), 0.0, "nothing was applied");
}

#[wasm_bindgen_test]
fn keyed_lock_tickets_queue_in_order_and_free_the_key() {
    let lock = KeyedLock::new(Some(options(&[("timeoutMs", 1_000.0)]))).unwrap();
    let holder = lock.lock_number(1.0);
    assert!(holder > 0, "a free key is held at once");
    let first = lock.lock_number(1.0);
    let second = lock.lock_number(1.0);
    assert!(first < 0 && second < 0, "a held key queues");
    let text = lock.lock_string("1");
    assert!(text > 0, "'1' is another key than 1");
    assert_eq!(release(holder), -first, "the key goes to the first waiter");
    assert_eq!(release(-first), -second, "then to the second");
    assert_eq!(release(-second), 0, "then nobody");
    assert_eq!(
        release(-second),
        0,
        "a ticket that holds nothing is ignored"
    );
    assert_eq!(lock.size(), 1, "only '1' is still held");
    assert_eq!(release(text), 0);
    assert_eq!(lock.size(), 0);
}

#[wasm_bindgen_test]
fn keyed_lock_numbers_compare_like_map_keys() {
    let lock = KeyedLock::new(None).unwrap();
    let zero = lock.lock_number(0.0);
    assert!(zero > 0);
    let minus_zero = lock.lock_number(-0.0);
    assert!(minus_zero < 0, "-0 is the key 0");
    let nan = lock.lock_number(f64::NAN);
    assert!(nan > 0);
    let other_nan = lock.lock_number(-f64::NAN);
    assert!(other_nan < 0, "every NaN is one key");
    assert_eq!(release(zero), -minus_zero);
    assert_eq!(release(-minus_zero), 0);
    assert_eq!(release(nan), -other_nan);
    assert_eq!(release(-other_nan), 0);
    assert_eq!(lock.size(), 0);
}

#[wasm_bindgen_test]
fn an_abandoned_wait_leaves_the_queue_and_the_next_waiter_is_served() {
    let lock = KeyedLock::new(None).unwrap();
    let holder = lock.lock_string("k");
    let gives_up = lock.lock_string("k");
    let waits = lock.lock_string("k");
    assert_eq!(
        abandon(gives_up),
        0,
        "the key is still held: nobody is granted"
    );
    assert_eq!(abandon(holder), 0, "a held ticket cannot be abandoned");
    assert_eq!(release(holder), -waits, "the wait given up is skipped");
    assert_eq!(release(-waits), 0);
    assert_eq!(lock.size(), 0);
}

#[wasm_bindgen_test]
fn the_ticket_table_is_given_back_after_a_burst() {
    let lock = KeyedLock::new(None).unwrap();
    let held: Vec<i32> = (0..3000).map(|k| lock.lock_number(f64::from(k))).collect();
    assert!(held.iter().all(|&t| t > 0));
    let queued: Vec<i32> = (0..3000).map(|k| lock.lock_number(f64::from(k))).collect();
    assert!(queued.iter().all(|&t| t < 0));
    for (&holder, &waiter) in held.iter().zip(&queued) {
        assert_eq!(release(holder), -waiter);
    }
    for &waiter in &queued {
        assert_eq!(release(-waiter), 0);
    }
    assert_eq!(lock.size(), 0);
    // 6,000 slots were in use; with none live the table starts afresh.
    let fresh = lock.lock_number(1.0);
    assert_eq!(
        fresh, 1,
        "the first slot again, not slot 6,000 off the free list"
    );
    assert_eq!(release(fresh), 0);
}
