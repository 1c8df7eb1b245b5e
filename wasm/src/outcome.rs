//! How a `PointService` call's outcome reaches JavaScript, in numbers.
//!
//! Every call is an [`Operation`]: a future that waits for the user's lock (its
//! place in the queue taken when the call is made) and then runs the core's
//! method. [`start`] polls it once, right away:
//!
//! - done (the memory store answers at once, and an uncontended lock is granted
//!   at once): the answer's number is returned (the balance, a row count, a
//!   count) and the rest waits in this module for JavaScript to read
//!   (`__plMillis()`, `__plRows()`), in the same synchronous step;
//! - failed: [`FAILED`], the error's code and message waiting in `__plError()`;
//! - not yet (a held lock, the template's tables, simulated latency):
//!   [`PENDING`]; JavaScript then creates the Promise and hands its callbacks to
//!   `__plPark(done, fail)`, which runs the rest as a `spawn_local` task.
//!
//! So the exports return numbers and strings (or nothing), never an object or a
//! Promise: an export returning a single `externref` is what V8 11.x (Node 20)
//! crashes on when a lazy deoptimization lands inside an inlined call to it
//! (README, "The V8 crash"), and results built in JavaScript from numbers cost
//! less than objects built through serde or `Reflect.set` calls from Rust.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use js_sys::{Float64Array, Function};
use pointlock_core::{PointError, PointHistory, TransactionType, UserPoint};
use wasm_bindgen::prelude::*;

/// The call failed: `__plError()` has the code and the message.
pub const FAILED: f64 = -1.0;
/// The call goes on: JavaScript must call `__plPark(done, fail)` now.
pub const PENDING: f64 = -2.0;

/// What a call answers.
pub enum Answer {
    /// A balance: `{ id, point, updateMillis }`.
    Point(UserPoint),
    /// A history, oldest first.
    Rows(Vec<PointHistory>),
    /// A count (of swept idempotency records).
    Count(usize),
}

/// A rejection: the `code` and `message` of the `Error` JavaScript builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: &'static str,
    pub message: String,
}

impl Failure {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A core error with its stable code. Ids and amounts from JavaScript are
/// limited to safe integers, so those messages say so.
impl From<PointError> for Failure {
    fn from(error: PointError) -> Self {
        let message = match &error {
            PointError::InvalidUserId => {
                "user id must be a positive safe integer (1 to Number.MAX_SAFE_INTEGER)".to_owned()
            }
            PointError::InvalidAmount => {
                "amount must be a positive safe integer (1 to Number.MAX_SAFE_INTEGER)".to_owned()
            }
            other => other.to_string(),
        };
        Self::new(error.code(), message)
    }
}

/// A call in progress.
pub type Operation = Pin<Box<dyn Future<Output = Result<Answer, Failure>>>>;

thread_local! {
    /// `updateMillis` of the last balance answered at once.
    static MILLIS: Cell<f64> = const { Cell::new(0.0) };
    /// The rows of the last history answered at once, five numbers a row.
    static ROWS: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
    /// The last failure answered at once.
    static ERROR: RefCell<Option<Failure>> = const { RefCell::new(None) };
    /// The call that answered PENDING, until JavaScript parks it.
    static PARKED: RefCell<Option<Operation>> = const { RefCell::new(None) };
}

/// Five numbers a row: `id, userId, type (0 CHARGE, 1 USE), amount, timeMillis`.
fn flat_rows(rows: &[PointHistory]) -> Vec<f64> {
    let mut flat = Vec::with_capacity(rows.len() * 5);
    for row in rows {
        flat.extend([
            row.id as f64,
            row.user_id.get() as f64,
            match row.kind {
                TransactionType::Charge => 0.0,
                TransactionType::Use => 1.0,
            },
            row.amount.get() as f64,
            row.time_millis as f64,
        ]);
    }
    flat
}

/// Poll `operation` once now: its number when it is done, [`FAILED`], or
/// [`PENDING`] (then parked until `__plPark`).
pub fn start(mut operation: Operation) -> f64 {
    let mut cx = Context::from_waker(Waker::noop());
    match operation.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(answer)) => match answer {
            Answer::Point(point) => {
                MILLIS.set(point.update_millis as f64);
                point.point as f64
            }
            Answer::Rows(rows) => {
                ROWS.set(flat_rows(&rows));
                rows.len() as f64
            }
            Answer::Count(count) => count as f64,
        },
        Poll::Ready(Err(failure)) => fail_now(failure),
        Poll::Pending => {
            // The waker it was polled with wakes nothing: the task `__plPark`
            // spawns polls it again with its own (futures register the waker of
            // every poll, so no wake-up is lost in between).
            let earlier = PARKED.replace(Some(operation));
            debug_assert!(
                earlier.is_none(),
                "JavaScript parks every PENDING call at once"
            );
            PENDING
        }
    }
}

/// Answer [`FAILED`] with `failure` waiting in `__plError()`.
pub fn fail_now(failure: Failure) -> f64 {
    ERROR.set(Some(failure));
    FAILED
}

/// `updateMillis` of the balance the last call answered at once.
#[wasm_bindgen(js_name = __plMillis, skip_typescript)]
pub fn last_millis() -> f64 {
    MILLIS.get()
}

/// The rows of the history the last call answered at once (five numbers a row).
#[wasm_bindgen(js_name = __plRows, skip_typescript)]
pub fn last_rows() -> Vec<f64> {
    ROWS.take()
}

/// `"CODE:message"` of the last call that answered FAILED.
#[wasm_bindgen(js_name = __plError, skip_typescript)]
pub fn last_error() -> String {
    match ERROR.take() {
        Some(failure) => format!("{}:{}", failure.code, failure.message),
        None => "INTERNAL:no error to report".to_owned(),
    }
}

/// Run the call that just answered PENDING to its end: `done` gets a balance as
/// `(point, updateMillis)`, a history as a `Float64Array` (five numbers a row),
/// a count as a number; `fail` gets `(code, message)`.
#[wasm_bindgen(js_name = __plPark, skip_typescript)]
pub fn park(done: Function, fail: Function) {
    let Some(operation) = PARKED.take() else {
        let _ = fail.call2(
            &JsValue::UNDEFINED,
            &"INTERNAL".into(),
            &"no call to park".into(),
        );
        return;
    };
    wasm_bindgen_futures::spawn_local(async move {
        let this = JsValue::UNDEFINED;
        // A callback that throws has nobody to tell: the Promise it settles is
        // the caller's, and it is settled either way.
        let _ = match operation.await {
            Ok(Answer::Point(point)) => done.call2(
                &this,
                &(point.point as f64).into(),
                &(point.update_millis as f64).into(),
            ),
            Ok(Answer::Rows(rows)) => {
                done.call1(&this, &Float64Array::from(flat_rows(&rows).as_slice()))
            }
            Ok(Answer::Count(count)) => done.call1(&this, &(count as f64).into()),
            Err(failure) => fail.call2(&this, &failure.code.into(), &failure.message.into()),
        };
    });
}
