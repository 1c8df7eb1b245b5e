//! The course contract over real HTTP: routes, JSON shapes, validation, policies,
//! error codes. Every rejected request must change nothing.
//!
//! The tests whose outcome goes through the store (shapes of charges, uses and
//! histories, policies, rejected input changing nothing, stats) run on every
//! store: memory (the plain name), SQLite (`sqlite_…`) and PostgreSQL (`pg_…`,
//! skipped without `POINTLOCK_TEST_PG_URL` outside CI). The rest is the HTTP
//! layer's and runs on the memory store.

mod support;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use pointlock::server::AppOptions;
use support::{Backend, ProbeStore, TestServer};
use tokio::io::AsyncWriteExt;

async fn server() -> TestServer {
    server_on(Backend::Memory).await
}

async fn server_on(backend: Backend) -> TestServer {
    TestServer::start(ProbeStore::on(backend, 0).await, AppOptions::default()).await
}

on_every_store! {
    #[tokio::test]
    unknown_user_has_zero_points_and_empty_history / sqlite_unknown_user_has_zero_points_and_empty_history / pg_unknown_user_has_zero_points_and_empty_history => unknown_user_has_zero_points_and_empty_history_on;
    charge_use_and_histories_have_the_template_shapes / sqlite_charge_use_and_histories_have_the_template_shapes / pg_charge_use_and_histories_have_the_template_shapes => charge_use_and_histories_have_the_template_shapes_on;
    max_balance_is_inclusive_and_overdraft_fails / sqlite_max_balance_is_inclusive_and_overdraft_fails / pg_max_balance_is_inclusive_and_overdraft_fails => max_balance_is_inclusive_and_overdraft_fails_on;
    invalid_ids_are_400_and_change_nothing / sqlite_invalid_ids_are_400_and_change_nothing / pg_invalid_ids_are_400_and_change_nothing => invalid_ids_are_400_and_change_nothing_on;
    invalid_amounts_and_json_are_400_and_change_nothing / sqlite_invalid_amounts_and_json_are_400_and_change_nothing / pg_invalid_amounts_and_json_are_400_and_change_nothing => invalid_amounts_and_json_are_400_and_change_nothing_on;
    health_and_stats_report_an_empty_lock_table_after_work / sqlite_health_and_stats_report_an_empty_lock_table_after_work / pg_health_and_stats_report_an_empty_lock_table_after_work => health_and_stats_report_an_empty_lock_table_after_work_on;
}

async fn unknown_user_has_zero_points_and_empty_history_on(backend: Backend) {
    let s = server_on(backend).await;
    let r = s.get("/point/42").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["id"], 42);
    assert_eq!(r.json["point"], 0);
    assert!(r.json["updateMillis"].as_i64().unwrap() > 1_600_000_000_000);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(s.history(42).await, Vec::<serde_json::Value>::new());
}

async fn charge_use_and_histories_have_the_template_shapes_on(backend: Backend) {
    let s = server_on(backend).await;
    let r = s.charge(1, 100).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        (r.json["id"].as_u64(), r.json["point"].as_u64()),
        (Some(1), Some(100))
    );
    let keys: Vec<_> = r.json.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["id", "point", "updateMillis"]);

    // Spring template: a bare number body.
    let r = s.send(Method::PATCH, "/point/1/use", Some("40")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["point"], 60);

    let h = s.history(1).await;
    assert_eq!(h.len(), 2);
    let keys: Vec<_> = h[0].as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["amount", "id", "timeMillis", "type", "userId"]);
    assert_eq!(
        (
            h[0]["id"].as_u64(),
            h[0]["type"].as_str(),
            h[0]["amount"].as_u64()
        ),
        (Some(1), Some("CHARGE"), Some(100))
    );
    assert_eq!(
        (
            h[1]["id"].as_u64(),
            h[1]["type"].as_str(),
            h[1]["amount"].as_u64()
        ),
        (Some(2), Some("USE"), Some(40))
    );
    assert_eq!(h[1]["userId"], 1);
}

async fn max_balance_is_inclusive_and_overdraft_fails_on(backend: Backend) {
    let s = server_on(backend).await;
    assert_eq!(s.charge(1, 10_000).await.status, StatusCode::OK);
    let r = s.charge(1, 1).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::CONFLICT, Some("MAX_BALANCE_EXCEEDED"))
    );
    let r = s.charge(1, 9_223_372_036_854_775_807).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::CONFLICT, Some("MAX_BALANCE_EXCEEDED"))
    );
    assert_eq!(s.use_points(1, 10_000).await.json["point"], 0);
    let r = s.use_points(1, 1).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::CONFLICT, Some("INSUFFICIENT_BALANCE"))
    );
    assert!(r.json["message"].as_str().unwrap().contains("insufficient"));
    assert_eq!(s.balance(1).await, 0);
    assert_eq!(s.history(1).await.len(), 2);
}

async fn invalid_ids_are_400_and_change_nothing_on(backend: Backend) {
    let s = server_on(backend).await;
    for path in [
        "/point/0",
        "/point/-1",
        "/point/abc",
        "/point/1.5",
        "/point/1e3",
        "/point/9223372036854775808",
        "/point/99999999999999999999999",
        "/point/%31",
        "/point/0/histories",
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(r.json["code"], "INVALID_USER_ID", "{path}");
    }
    for path in ["/point/0/charge", "/point/abc/use", "/point/-5/charge"] {
        let r = s.send(Method::PATCH, path, Some(r#"{"amount":10}"#)).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("INVALID_USER_ID")),
            "{path}"
        );
    }
    assert!(s.lock.is_empty());
    assert_eq!(s.lock.metrics().acquisitions, 0, "invalid ids never lock");
}

async fn invalid_amounts_and_json_are_400_and_change_nothing_on(backend: Backend) {
    let s = server_on(backend).await;
    assert_eq!(s.charge(1, 500).await.status, StatusCode::OK);
    for (body, code) in [
        ("", "INVALID_JSON"),
        ("{", "INVALID_JSON"),
        ("amount=5", "INVALID_JSON"),
        (r#"{"amount":0}"#, "INVALID_AMOUNT"),
        (r#"{"amount":-10}"#, "INVALID_AMOUNT"),
        (r#"{"amount":10.5}"#, "INVALID_AMOUNT"),
        (r#"{"amount":1e3}"#, "INVALID_AMOUNT"),
        (r#"{"amount":"10"}"#, "INVALID_AMOUNT"),
        (r#"{"amount":null}"#, "INVALID_AMOUNT"),
        (r#"{}"#, "INVALID_AMOUNT"),
        (r#"{"amount":9223372036854775808}"#, "INVALID_AMOUNT"),
        (
            r#"{"amount":1000000000000000000000000000}"#,
            "INVALID_AMOUNT",
        ),
        ("0", "INVALID_AMOUNT"),
        ("-1", "INVALID_AMOUNT"),
        ("null", "INVALID_AMOUNT"),
    ] {
        for route in ["charge", "use"] {
            let r = s
                .send(Method::PATCH, &format!("/point/1/{route}"), Some(body))
                .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{route} {body:?}");
            assert_eq!(r.json["code"], code, "{route} {body:?}");
            assert!(!r.json["message"].as_str().unwrap().is_empty());
        }
    }
    assert_eq!(s.balance(1).await, 500);
    assert_eq!(s.history(1).await.len(), 1);
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_with_allow() {
    let s = server().await;
    for path in [
        "/",
        "/points/1",
        "/point/1/unknown",
        "/point/1/charge/x",
        "/point/1/",
    ] {
        let r = s.get(path).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("NOT_FOUND")),
            "{path}"
        );
    }
    for (method, path, allow) in [
        (Method::POST, "/point/1/charge", "PATCH"),
        (Method::GET, "/point/1/charge", "PATCH"),
        (Method::PUT, "/point/1/use", "PATCH"),
        (Method::PATCH, "/point/1", "GET"),
        (Method::DELETE, "/point/1/histories", "GET"),
    ] {
        let r = s.send(method.clone(), path, Some("10")).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(r.headers["allow"], allow);
        assert_eq!(r.json["code"], "METHOD_NOT_ALLOWED");
    }
    assert_eq!(s.history(1).await.len(), 0);
}

#[tokio::test]
async fn oversized_bodies_are_413_json_whether_declared_or_streamed() {
    let s = server().await;
    let big = format!(r#"{{"amount":1,"pad":"{}"}}"#, "x".repeat(8 * 1024));
    let r = s.send(Method::PATCH, "/point/1/charge", Some(&big)).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("PAYLOAD_TOO_LARGE"))
    );

    // HTTP/1.1 chunked: refused before the body is read (bodies must come with
    // a Content-Length: see tests/hostile_http.rs), the connection closed.
    let mut raw = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut request = String::from(
        "PATCH /point/1/charge HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    for _ in 0..10 {
        request.push_str(&format!("400\r\n{}\r\n", " ".repeat(1024)));
    }
    request.push_str("0\r\n\r\n");
    raw.write_all(request.as_bytes()).await.unwrap();
    let response = support::http::read_until(&mut raw, "}").await;
    assert!(response.starts_with("HTTP/1.1 411"), "{response}");
    assert!(
        response.contains(r#""code":"LENGTH_REQUIRED""#),
        "{response}"
    );

    // Streamed with no length (HTTP/2 DATA frames): caught while the handler
    // reads the body.
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::patch(format!("http://{}/point/1/charge", s.addr))
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    for _ in 0..10 {
        body.send_data(Bytes::from(vec![b' '; 1024]), false)
            .unwrap();
    }
    body.send_data(Bytes::from_static(b"1"), true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 413);
    let mut bytes = Vec::new();
    let mut stream = response.into_body();
    while let Some(chunk) = stream.data().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["code"], "PAYLOAD_TOO_LARGE");
    assert_eq!(s.history(1).await.len(), 0);
}

#[tokio::test]
async fn request_ids_are_set_and_propagated() {
    let s = server().await;
    let r = s.get("/point/1").await;
    assert!(r.headers.contains_key("x-request-id"));
    let client = support::http::client();
    let req = http::Request::get(format!("http://{}/point/1", s.addr))
        .header("x-request-id", "trace-me-123")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-me-123");
}

async fn health_and_stats_report_an_empty_lock_table_after_work_on(backend: Backend) {
    let s = server_on(backend).await;
    assert_eq!(s.get("/health").await.json["status"], "ok");
    for _ in 0..5 {
        s.charge(3, 1).await;
    }
    let stats = s.get("/stats").await.json;
    assert_eq!(stats["lock"]["keys"], 0);
    assert_eq!(stats["lock"]["waiters"], 0);
    assert_eq!(stats["lock"]["acquisitions"], 5);
    assert_eq!(s.assert_history_replays(3).await, 5, "every charge stored");
}

#[tokio::test]
async fn http2_cleartext_is_served_with_the_same_contract() {
    let s = server().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = http::Request::patch(format!("http://{}/point/5/charge", s.addr))
        .body(Full::new(Bytes::from_static(b"{\"amount\":25}")))
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(s.balance(5).await, 25);
}
