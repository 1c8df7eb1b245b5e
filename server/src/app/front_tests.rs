//! The front layer as a whole: each step's answer, and the order of the steps.

use std::sync::Mutex;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use tokio::sync::oneshot;

use super::*;
use crate::middleware::request_id::{RequestId, X_REQUEST_ID};

/// A service that answers each request when its sender fires (with the
/// request's id in `x-seen`), or at once with `status` if one is set.
#[derive(Clone, Default)]
struct Held {
    calls: Arc<Mutex<Vec<oneshot::Sender<StatusCode>>>>,
}

impl Held {
    fn answer(&self, status: StatusCode) {
        let sender = self.calls.lock().expect("calls").remove(0);
        sender.send(status).expect("waiting");
    }

    fn called(&self) -> usize {
        self.calls.lock().expect("calls").len()
    }
}

impl Service<Request<()>> for Held {
    type Response = Response<AppBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<AppBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        let (tx, rx) = oneshot::channel();
        self.calls.lock().expect("calls").push(tx);
        let seen = req.extensions().get::<RequestId>().cloned();
        Box::pin(async move {
            let status = rx.await.unwrap_or(StatusCode::OK);
            let body = Full::new(Bytes::from_static(b"ok")).map_err(|never| match never {});
            let mut res = Response::new(AppBody::new(body));
            *res.status_mut() = status;
            if let Some(seen) = seen {
                res.headers_mut().insert("x-seen", seen.header_value());
            }
            Ok(res)
        })
    }
}

fn front(in_flight: &InFlight, inner: &Held) -> Front<Held> {
    FrontLayer::new(in_flight.clone(), 16 * 1024, Duration::from_secs(10), 4096)
        .exempt(&["/health"])
        .layer(inner.clone())
}

fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).expect("request")
}

async fn json(res: Response<AppBody>) -> serde_json::Value {
    let body = res.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&body).expect("json")
}

#[tokio::test]
async fn beyond_the_in_flight_bound_503_at_once_with_an_id_and_inner_not_called() {
    let inner = Held::default();
    let in_flight = InFlight::new(2);
    let mut service = front(&in_flight, &inner);
    let first = tokio::spawn(service.call(get("/point/1")));
    let second = tokio::spawn(service.call(get("/point/2")));
    assert_eq!(in_flight.current(), 2);

    let refused = service.call(get("/point/3")).await.expect("infallible");
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(refused.headers()[X_REQUEST_ID], "3");
    assert_eq!(json(refused).await["code"], "SERVER_OVERLOADED");
    assert_eq!(inner.called(), 2, "inner not called");

    // One answer frees one slot, as soon as it is ready.
    inner.answer(StatusCode::OK);
    let first = first.await.expect("task").expect("ok");
    assert_eq!(first.headers()["x-seen"], "1", "the id reached the request");
    assert_eq!(in_flight.current(), 1);
    let third = tokio::spawn(service.call(get("/point/3")));
    inner.answer(StatusCode::OK);
    inner.answer(StatusCode::OK);
    assert_eq!(second.await.expect("task").expect("ok").status(), 200);
    assert_eq!(third.await.expect("task").expect("ok").status(), 200);
    assert_eq!(in_flight.current(), 0);
}

#[tokio::test]
async fn an_exempt_path_passes_a_full_bound_and_a_dropped_request_frees_its_slot() {
    let inner = Held::default();
    let in_flight = InFlight::new(1);
    let mut service = front(&in_flight, &inner);
    let holder = service.call(get("/point/1"));
    let health = tokio::spawn(service.call(get("/health")));
    assert_eq!(inner.called(), 2);
    let other = service.call(get("/healthz")).await.expect("infallible");
    assert_eq!(other.status(), 503);
    assert_eq!(in_flight.current(), 1, "the exempt request took no slot");
    inner.answer(StatusCode::OK);
    drop(holder);
    inner.calls.lock().expect("calls").clear();
    assert_eq!(health.await.expect("task").expect("ok").status(), 200);
    assert_eq!(in_flight.current(), 0);
}

#[tokio::test]
async fn an_oversized_head_or_a_chunked_body_is_refused_before_the_inner_service() {
    let inner = Held::default();
    let in_flight = InFlight::new(4);
    let mut service =
        FrontLayer::new(in_flight.clone(), 64, Duration::from_secs(10), 4096).layer(inner.clone());
    let big = Request::get("/point/1")
        .header("x-big", "b".repeat(100))
        .body(())
        .expect("request");
    let res = service.call(big).await.expect("infallible");
    assert_eq!(res.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(json(res).await["code"], "HEADERS_TOO_LARGE");
    let chunked = Request::patch("/p")
        .header("transfer-encoding", "chunked")
        .body(())
        .expect("request");
    let res = service.call(chunked).await.expect("infallible");
    assert_eq!(res.status(), StatusCode::LENGTH_REQUIRED);
    assert_eq!(inner.called(), 0);
    assert_eq!(in_flight.current(), 0, "a refused request holds no slot");
}

#[tokio::test]
async fn bare_413_and_the_deadline_408_become_json_with_the_request_id() {
    let inner = Held::default();
    let in_flight = InFlight::new(4);
    let mut service = front(&in_flight, &inner);
    let too_large = tokio::spawn(service.call(get("/point/1")));
    inner.answer(StatusCode::PAYLOAD_TOO_LARGE);
    let res = too_large.await.expect("task").expect("ok");
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(res.headers()[X_REQUEST_ID], "1");
    let body = json(res).await;
    assert_eq!(body["code"], "PAYLOAD_TOO_LARGE");

    tokio::time::pause();
    let mut late = FrontLayer::new(in_flight.clone(), 1024, Duration::from_millis(50), 4096)
        .layer(inner.clone());
    let res = late.call(get("/point/2")).await.expect("infallible");
    assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(json(res).await["code"], "REQUEST_TIMEOUT");
    assert_eq!(in_flight.current(), 0);
}

#[tokio::test]
async fn requests_are_counted_with_what_the_client_got() {
    let metrics = crate::metrics::Metrics::new();
    let inner = Held::default();
    let in_flight = InFlight::new(1);
    let mut service = FrontLayer::new(in_flight, 1024, Duration::from_secs(10), 4096)
        .metrics(Some(
            metrics.request_counter(&["/point/{id}", "other"], |_| 0),
        ))
        .layer(inner.clone());
    let held = tokio::spawn(service.call(get("/point/1")));
    let refused = service.call(get("/point/2")).await.expect("infallible");
    assert_eq!(refused.status(), 503);
    inner.answer(StatusCode::OK);
    held.await.expect("task").expect("ok");
    let text = metrics.render().expect("render");
    for status in ["200", "503"] {
        let line = format!(
            "http_requests_total{{method=\"GET\",route=\"/point/{{id}}\",status=\"{status}\"}} 1"
        );
        assert!(text.contains(&line), "{line} in\n{text}");
    }
}
