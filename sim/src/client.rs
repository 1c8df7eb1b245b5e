//! A simulated client: sends its script's requests one after another through
//! the stack, records each at arrival and at its answer, drops a request
//! mid-flight when its script says so (a disconnect), and retries a keyed
//! mutation whose outcome it could not learn.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use pointlock_server::routes::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
use tower::ServiceExt;
use tower_service::Service;

use crate::life::Life;
use crate::model::Answer;
use crate::stack::{SimResponse, Stack};
use crate::workload::{ClientOp, OpKind};

/// The most times a keyed mutation is sent (the first and two retries).
pub const ATTEMPTS_MAX: u32 = 3;

/// Run `script` on `stack`, one request after another; stops early once a
/// checker has failed.
pub async fn run(life: Arc<Life>, script: Vec<ClientOp>, stack: Stack, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    for op in script {
        tokio::time::sleep(Duration::from_millis(op.think_millis)).await;
        for attempt in 1..=ATTEMPTS_MAX {
            let answer = send(&life, &op, stack.clone()).await;
            life.after_event().await;
            if life.failed() {
                return;
            }
            let retry = op.key.is_some() && attempt < ATTEMPTS_MAX && outcome_unknown(&answer);
            if !retry {
                break;
            }
            tokio::time::sleep(Duration::from_millis(rng.u64(0..50))).await;
        }
    }
}

/// Whether the client cannot tell if its mutation applied.
fn outcome_unknown(answer: &Answer) -> bool {
    match answer {
        Answer::Dropped | Answer::Pending => true,
        Answer::Error { status, code } => {
            *status == 408 || *status == 500 || code == "STORE_OUTCOME_UNKNOWN"
        }
        _ => false,
    }
}

/// Send one request: recorded at arrival (just before the stack's `call`,
/// which takes the lock layer's place), answered or dropped.
async fn send(life: &Life, op: &ClientOp, stack: Stack) -> Answer {
    let Some(request) = request(op) else {
        // Never: every part is made here (a fixed method, a path of digits,
        // ASCII headers). Logged with a code the checker refuses.
        let answer = Answer::Error {
            status: 0,
            code: "MALFORMED_SIMULATED_REQUEST".into(),
        };
        let mut log = life.log.lock().unwrap_or_else(PoisonError::into_inner);
        let index = log.arrive(life.index, op.user, op.kind, op.amount, op.key.clone());
        log.answer(index, answer.clone());
        return answer;
    };
    let Ok(mut service) = stack.ready_oneshot().await;
    let index = life
        .log
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .arrive(life.index, op.user, op.kind, op.amount, op.key.clone());
    let future = service.call(request);
    let response = match op.disconnect_after_millis {
        None => Some(future.await),
        Some(millis) => tokio::time::timeout(Duration::from_millis(millis), future)
            .await
            .ok(),
    };
    let answer = match response {
        None => Answer::Dropped,
        Some(Ok(response)) => read_answer(op.kind, response).await,
        Some(Err(never)) => match never {},
    };
    life.log
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .answer(index, answer.clone());
    answer
}

/// The HTTP request of `op` (`None` only if one of its parts were invalid).
fn request(op: &ClientOp) -> Option<Request<Full<Bytes>>> {
    let (method, path, body) = match op.kind {
        OpKind::Charge => (
            Method::PATCH,
            format!("/point/{}/charge", op.user),
            amount_body(op),
        ),
        OpKind::Use => (
            Method::PATCH,
            format!("/point/{}/use", op.user),
            amount_body(op),
        ),
        OpKind::ReadPoint => (Method::GET, format!("/point/{}", op.user), Bytes::new()),
        OpKind::ReadHistory => (
            Method::GET,
            format!("/point/{}/histories", op.user),
            Bytes::new(),
        ),
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len());
    if let Some(key) = &op.key {
        builder = builder.header(IDEMPOTENCY_KEY, key.as_str());
    }
    builder.body(Full::new(body)).ok()
}

fn amount_body(op: &ClientOp) -> Bytes {
    Bytes::from(format!("{{\"amount\":{}}}", op.amount))
}

/// The answer as the model needs it.
async fn read_answer(kind: OpKind, response: SimResponse) -> Answer {
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get(IDEMPOTENT_REPLAYED)
        .is_some_and(|value| value == "true");
    let body = match response.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    if status != 200 {
        let code = json["code"].as_str().unwrap_or_default().to_owned();
        return Answer::Error { status, code };
    }
    let point = json["point"].as_u64();
    match (kind, point) {
        (OpKind::Charge | OpKind::Use, Some(point)) => Answer::Applied { point, replayed },
        (OpKind::ReadPoint, Some(point)) => Answer::Point(point),
        (OpKind::ReadHistory, _) => match json.as_array() {
            Some(rows) => Answer::History(rows.iter().map(history_row).collect()),
            None => Answer::Error {
                status,
                code: "UNREADABLE_200".into(),
            },
        },
        _ => Answer::Error {
            status,
            code: "UNREADABLE_200".into(),
        },
    }
}

fn history_row(row: &serde_json::Value) -> (OpKind, u64) {
    let kind = if row["type"] == "CHARGE" {
        OpKind::Charge
    } else {
        OpKind::Use
    };
    (kind, row["amount"].as_u64().unwrap_or_default())
}
