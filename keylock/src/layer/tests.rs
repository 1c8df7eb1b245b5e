//! The layer driven poll by poll: what holds at each step.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::oneshot;
use tower_layer::Layer;
use tower_service::Service;

use super::*;
use crate::{KeyGuard, KeyedLock};

/// An inner service whose every response waits for the test to open its gate.
/// It records each request it is called with and whether it carried the guard.
/// On `/point/{n}/keep` it keeps the request's `HeldLock` (as a careless inner
/// service might); on `/point/{n}/lend` it keeps a strong guard from it.
#[derive(Clone, Default)]
struct Gated {
    gates: Arc<Mutex<VecDeque<oneshot::Receiver<()>>>>,
    calls: Arc<Mutex<Vec<(String, bool)>>>,
    finished: Arc<Mutex<Vec<String>>>,
    kept: Arc<Mutex<Vec<HeldLock<u64>>>>,
    lent: Arc<Mutex<Vec<Arc<KeyGuard<u64>>>>>,
}

impl Gated {
    fn gate(&self) -> oneshot::Sender<()> {
        let (open, gate) = oneshot::channel();
        self.gates.lock().unwrap().push_back(gate);
        open
    }

    fn calls(&self) -> Vec<(String, bool)> {
        self.calls.lock().unwrap().clone()
    }
}

impl Service<Request<()>> for Gated {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let held = req.extensions().get::<HeldLock<u64>>().cloned();
        self.calls
            .lock()
            .unwrap()
            .push((path.clone(), held.is_some()));
        if let Some(held) = held {
            if path.ends_with("/keep") {
                self.kept.lock().unwrap().push(held.clone());
            }
            if path.ends_with("/lend") {
                self.lent
                    .lock()
                    .unwrap()
                    .push(held.guard().expect("held while called"));
            }
        }
        let gate = self.gates.lock().unwrap().pop_front();
        let finished = Arc::clone(&self.finished);
        Box::pin(async move {
            assert!(!path.ends_with("/panic"), "inner service panicked");
            if let Some(gate) = gate {
                let _ = gate.await;
            }
            finished.lock().unwrap().push(path);
            Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
        })
    }
}

type Fut = ResponseFuture<Gated, (), u64>;
type Svc = KeyedLockService<Gated, u64, fn(&Request<()>) -> KeyDecision<u64>>;

/// The test's key grammar: `/point/{n}` and `/point/{n}/...` lock `n` (digits,
/// `1..=2^63-1`), anything else after `/point/` is a 400; other paths pass.
fn key_of(req: &Request<()>) -> KeyDecision<u64> {
    let Some(rest) = req.uri().path().strip_prefix("/point/") else {
        return KeyDecision::Pass;
    };
    let segment = rest.split('/').next().unwrap_or_default();
    let key = segment
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| segment.parse::<u64>().ok())
        .flatten()
        .filter(|n| (1..=i64::MAX as u64).contains(n));
    match key {
        Some(key) => KeyDecision::Lock(key),
        None => {
            let mut bad = Response::new(Full::from(r#"{"code":"INVALID_KEY"}"#));
            *bad.status_mut() = StatusCode::BAD_REQUEST;
            KeyDecision::Reject(bad)
        }
    }
}

fn setup_with(
    layer: impl FnOnce(
        KeyedLockLayer<u64, fn(&Request<()>) -> KeyDecision<u64>>,
    ) -> KeyedLockLayer<u64, fn(&Request<()>) -> KeyDecision<u64>>,
) -> (Svc, Gated, KeyedLock<u64>) {
    let lock = KeyedLock::new();
    let inner = Gated::default();
    let extract: fn(&Request<()>) -> KeyDecision<u64> = key_of;
    let svc = layer(KeyedLockLayer::new(lock.clone(), extract)).layer(inner.clone());
    (svc, inner, lock)
}

fn setup(timeout_ms: u64) -> (Svc, Gated, KeyedLock<u64>) {
    setup_with(|layer| layer.timeout(Duration::from_millis(timeout_ms)))
}

fn request(path: &str) -> Request<()> {
    Request::builder().uri(path).body(()).unwrap()
}

async fn poll_once(
    fut: &mut Fut,
) -> Poll<Result<Response<KeyedLockBody<Full<Bytes>>>, Infallible>> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

async fn body_json(res: Response<KeyedLockBody<Full<Bytes>>>) -> serde_json::Value {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

fn user(raw: u64) -> u64 {
    raw
}

#[tokio::test]
async fn driving_to_ready_does_not_take_the_lock() {
    let (mut svc, _, lock) = setup(1_000);
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    assert!(lock.is_empty());
}

#[tokio::test]
async fn the_lock_is_held_until_the_response_resolves_then_handed_on() {
    let (mut svc, inner, lock) = setup(1_000);
    let open_first = inner.gate();
    let open_second = inner.gate();

    let mut first = svc.call(request("/point/1/charge"));
    let mut second = svc.call(request("/point/1/use"));
    // Both took their places in `call`; the first found the key free and
    // called the inner service there, the second waits.
    assert_eq!(lock.len(), 1);
    assert_eq!(lock.waiters(), 1);
    assert_eq!(inner.calls(), vec![("/point/1/charge".into(), true)]);

    assert!(poll_once(&mut second).await.is_pending());
    assert!(poll_once(&mut first).await.is_pending());
    assert_eq!(inner.calls(), vec![("/point/1/charge".into(), true)]);

    // The second is still queued: its inner service has not been called.
    assert!(poll_once(&mut second).await.is_pending());
    assert_eq!(inner.calls().len(), 1);

    open_first.send(()).unwrap();
    assert!(poll_once(&mut first).await.is_ready());
    drop(first);
    // Handed off, not released: the key is still held.
    assert_eq!(lock.len(), 1);
    assert!(poll_once(&mut second).await.is_pending());
    assert_eq!(inner.calls()[1], ("/point/1/use".into(), true));
    open_second.send(()).unwrap();
    assert!(poll_once(&mut second).await.is_ready());
    drop(second);
    assert!(lock.is_empty());
}

#[tokio::test]
async fn other_users_are_not_blocked() {
    let (mut svc, inner, lock) = setup(1_000);
    let _hold_user_1 = inner.gate();
    let mut one = svc.call(request("/point/1"));
    assert!(poll_once(&mut one).await.is_pending());
    let mut two = svc.call(request("/point/2"));
    assert!(poll_once(&mut two).await.is_ready());
    assert_eq!(lock.len(), 1);
}

#[tokio::test]
async fn a_rejected_request_is_answered_without_locking_or_calling_inner() {
    let (mut svc, inner, lock) = setup(1_000);
    for path in [
        "/point/abc",
        "/point/0/charge",
        "/point/-1",
        "/point/",
        "/point/9223372036854775808",
    ] {
        let mut fut = svc.call(request(path));
        assert!(lock.is_empty());
        let Poll::Ready(Ok(res)) = poll_once(&mut fut).await else {
            panic!("{path}: expected an immediate answer");
        };
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(body_json(res).await["code"], "INVALID_KEY");
    }
    assert!(inner.calls().is_empty());
}

#[tokio::test]
async fn other_paths_pass_through_without_locking() {
    let (mut svc, inner, lock) = setup(1_000);
    let _gate = inner.gate();
    let mut fut = svc.call(request("/health"));
    assert!(poll_once(&mut fut).await.is_pending());
    assert!(lock.is_empty());
    assert_eq!(inner.calls(), vec![("/health".into(), false)]);
}

#[tokio::test(start_paused = true)]
async fn a_lock_timeout_answers_503_with_retry_after_and_never_calls_inner() {
    let (mut svc, inner, lock) = setup(100);
    let holder = lock.try_lock(user(1)).unwrap();
    let mut fut = svc.call(request("/point/1/charge"));
    assert!(poll_once(&mut fut).await.is_pending());
    tokio::time::advance(Duration::from_millis(101)).await;
    let Poll::Ready(Ok(res)) = poll_once(&mut fut).await else {
        panic!("expected the timeout answer");
    };
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(body_json(res).await["code"], "LOCK_TIMEOUT");
    assert!(inner.calls().is_empty());
    assert_eq!(lock.waiters(), 0);
    assert_eq!(lock.metrics().timeouts, 1);
    drop(holder);
    assert!(lock.is_empty());
}

#[tokio::test]
async fn a_response_dropped_mid_flight_finishes_its_work_before_releasing() {
    let (mut svc, inner, lock) = setup(1_000);
    let open = inner.gate();
    let mut fut = svc.call(request("/point/1/charge"));
    assert!(poll_once(&mut fut).await.is_pending());
    let mut queued = svc.call(request("/point/1/use"));
    drop(fut); // the client went away mid-request
    assert_eq!(lock.len(), 1, "still held by the detached work");
    assert!(poll_once(&mut queued).await.is_pending());
    assert_eq!(inner.calls().len(), 1, "the queued request waits");
    assert!(inner.finished.lock().unwrap().is_empty());
    open.send(()).unwrap();
    // The queued request gets the lock only after the detached work finished.
    let res = std::future::poll_fn(|cx| Pin::new(&mut queued).poll(cx)).await;
    assert!(res.is_ok());
    assert_eq!(
        *inner.finished.lock().unwrap(),
        vec!["/point/1/charge".to_owned(), "/point/1/use".to_owned()]
    );
    drop(queued);
    assert!(lock.is_empty());
}

#[tokio::test]
async fn a_response_dropped_while_queued_leaves_the_queue() {
    let (mut svc, inner, lock) = setup(1_000);
    let open = inner.gate();
    let mut first = svc.call(request("/point/1/charge"));
    assert!(poll_once(&mut first).await.is_pending());
    let mut gone = svc.call(request("/point/1/use"));
    assert!(poll_once(&mut gone).await.is_pending());
    drop(gone);
    assert_eq!(lock.waiters(), 0);
    open.send(()).unwrap();
    assert!(poll_once(&mut first).await.is_ready());
    drop(first);
    assert!(lock.is_empty());
    assert_eq!(inner.calls().len(), 1);
}

#[tokio::test]
async fn a_panicking_inner_future_is_dropped_not_resumed_and_releases() {
    let (mut svc, inner, lock) = setup(1_000);
    let mut fut = svc.call(request("/point/1/panic"));
    let waker = std::task::Waker::noop();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = Pin::new(&mut fut).poll(&mut Context::from_waker(waker));
    }));
    assert!(panicked.is_err());
    drop(fut);
    assert!(lock.is_empty(), "released, not detached");
    assert!(inner.finished.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_full_queue_refuses_at_once_queueing_nothing_and_never_calls_inner() {
    let (mut svc, inner, lock) = setup_with(|layer| layer.queue_max(1));
    let gate = inner.gate();
    let mut holder = svc.call(request("/point/1/charge"));
    assert!(poll_once(&mut holder).await.is_pending());
    let mut waiting = svc.call(request("/point/1/use"));
    assert_eq!(lock.waiters(), 1);
    let mut refused = svc.call(request("/point/1/use"));
    let Poll::Ready(Ok(res)) = poll_once(&mut refused).await else {
        panic!("expected an immediate answer");
    };
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(body_json(res).await["code"], "LOCK_QUEUE_FULL");
    assert_eq!(lock.waiters(), 1, "nothing was queued");
    assert_eq!(lock.metrics().queue_full, 1);
    assert_eq!(inner.calls().len(), 1);
    // Other keys are not affected by user 1's full queue.
    let mut other = svc.call(request("/point/2"));
    assert!(poll_once(&mut other).await.is_ready());
    assert!(poll_once(&mut waiting).await.is_pending());
    drop(gate);
    assert!(poll_once(&mut holder).await.is_ready());
    drop(holder);
    assert!(poll_once(&mut waiting).await.is_ready());
    drop(waiting);
    assert!(lock.is_empty());
}

#[tokio::test]
async fn a_kept_extension_does_not_keep_the_key_locked_past_the_response() {
    let (mut svc, inner, lock) = setup(1_000);
    let mut fut = svc.call(request("/point/1/keep"));
    assert!(poll_once(&mut fut).await.is_ready());
    drop(fut);
    assert!(
        lock.is_empty(),
        "released although the inner service kept HeldLock"
    );
    let kept = inner.kept.lock().unwrap().pop().unwrap();
    assert_eq!(kept.key(), &1);
    assert!(
        kept.guard().is_none(),
        "the kept extension has no guard to lend"
    );
}

#[tokio::test]
async fn a_lent_guard_keeps_the_key_until_it_is_dropped() {
    let (mut svc, inner, lock) = setup(1_000);
    let mut fut = svc.call(request("/point/1/lend"));
    assert!(poll_once(&mut fut).await.is_ready());
    drop(fut);
    let mut next = svc.call(request("/point/1"));
    assert!(
        poll_once(&mut next).await.is_pending(),
        "still held by the lent guard"
    );
    inner.lent.lock().unwrap().clear();
    assert!(poll_once(&mut next).await.is_ready());
    drop(next);
    assert!(lock.is_empty());
}
