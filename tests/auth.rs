//! Bearer JWT authentication on a running server: every wallet
//! route against every kind of bad token, for each of the three
//! configurations (HS256, RS256, ES256); a refused request changes nothing
//! and takes no lock, not even behind a user held by another request; the
//! operator routes; and, as negative controls, the same requests against a
//! server without authentication (each gets through: the matrix is not
//! vacuous) and against the layer placed after the lock (it takes the lock:
//! the lock assertions can fail).

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, Request, Response, StatusCode};
use pointlock::core::{KeyedLock, UserId};
use pointlock::keylock::layer::KeyedLockLayer;
use pointlock::server::app::AppBody;
use pointlock::server::auth::BearerAuth;
use pointlock::server::routes::user_key;
use pointlock::server::AppOptions;
use serde_json::{json, Value};
use support::jwt::{admin_claims, alg_none, bearer, claims, now, Scheme};
use support::{ProbeStore, TestServer};
use tokio::sync::Semaphore;
use tower::{service_fn, Layer, ServiceExt};

/// The four wallet routes on user 1: (method, path, body).
const ROUTES: [(&str, &str, &str); 4] = [
    ("GET", "/point/1", ""),
    ("GET", "/point/1/histories", ""),
    ("PATCH", "/point/1/charge", "5"),
    ("PATCH", "/point/1/use", "1"),
];

/// What a case must get from a server with authentication on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// 401 `UNAUTHORIZED` with this `WWW-Authenticate`.
    Unauthorized(&'static str),
    /// 403 `FORBIDDEN`.
    Forbidden,
    /// Through to the wallet: 200.
    Passes,
}

const NO_TOKEN: &str = r#"Bearer realm="pointlock""#;
const INVALID_TOKEN: &str = r#"Bearer realm="pointlock", error="invalid_token""#;
const INVALID_REQUEST: &str = r#"Bearer realm="pointlock", error="invalid_request""#;

/// One kind of request, for user 1's wallet: (name, `Authorization` value, expected).
fn cases(scheme: Scheme) -> Vec<(&'static str, Option<String>, Expect)> {
    let token = |claims: &Value| Some(bearer(&scheme.sign(claims)));
    let mut expired = claims(json!("1"));
    expired["exp"] = json!(now() - 3_600);
    let mut early = claims(json!("1"));
    early["nbf"] = json!(now() + 3_600);
    let mut no_exp = claims(json!("1"));
    no_exp.as_object_mut().unwrap().remove("exp");
    vec![
        ("no token", None, Expect::Unauthorized(NO_TOKEN)),
        (
            "another scheme",
            Some("Basic dXNlcjpwYXNz".into()),
            Expect::Unauthorized(INVALID_REQUEST),
        ),
        (
            "malformed",
            Some(bearer("not-a-jwt")),
            Expect::Unauthorized(INVALID_TOKEN),
        ),
        (
            "expired",
            token(&expired),
            Expect::Unauthorized(INVALID_TOKEN),
        ),
        (
            "not yet valid",
            token(&early),
            Expect::Unauthorized(INVALID_TOKEN),
        ),
        (
            "no exp",
            token(&no_exp),
            Expect::Unauthorized(INVALID_TOKEN),
        ),
        (
            "wrong signature",
            Some(bearer(&scheme.sign_with_another_key(&claims(json!("1"))))),
            Expect::Unauthorized(INVALID_TOKEN),
        ),
        (
            "alg: none",
            Some(bearer(&alg_none(&claims(json!("1"))))),
            Expect::Unauthorized(INVALID_TOKEN),
        ),
        (
            "algorithm confusion",
            Some(bearer(&scheme.sign_confused(&claims(json!("1"))))),
            Expect::Unauthorized(INVALID_TOKEN),
        ),
        ("wrong sub", token(&claims(json!("2"))), Expect::Forbidden),
        (
            "wrong sub, a scope without admin",
            token(&{
                let mut c = claims(json!(2));
                c["scope"] = json!("points:read points:write");
                c
            }),
            Expect::Forbidden,
        ),
        ("admin scope", token(&admin_claims()), Expect::Passes),
        ("right sub", token(&claims(json!("1"))), Expect::Passes),
        (
            "right sub, a number",
            token(&claims(json!(1))),
            Expect::Passes,
        ),
    ]
}

/// A request to `server` with an optional `Authorization` value.
async fn send(
    server: &TestServer,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: &str,
) -> (StatusCode, HeaderMap, Value) {
    let headers: Vec<(&str, &[u8])> = authorization
        .map(|value| ("authorization", value.as_bytes()))
        .into_iter()
        .collect();
    let (status, headers, bytes) = server
        .send_raw(method.parse().unwrap(), path, &headers, body)
        .await;
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, json)
}

async fn server_with(auth: Option<BearerAuth>) -> TestServer {
    let options = AppOptions {
        auth,
        ..AppOptions::default()
    };
    TestServer::start(ProbeStore::new(0), options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_against_every_token_on_every_scheme() {
    for scheme in Scheme::ALL {
        let server = server_with(Some(scheme.auth())).await;
        let admin = bearer(&scheme.sign(&admin_claims()));
        // A balance to use from, and a history to compare.
        let (status, _, _) = send(&server, "PATCH", "/point/1/charge", Some(&admin), "100").await;
        assert_eq!(status, StatusCode::OK, "{scheme:?}");
        let before = wallet_as(&server, &admin).await;
        let locks = server.lock.metrics().acquisitions;
        let commits = server.store.commits();
        let cases = cases(scheme);
        // Every refusal first: nothing changes, no lock is taken.
        for (name, authorization, expect) in &cases {
            if *expect == Expect::Passes {
                continue;
            }
            for (method, path, body) in ROUTES {
                let what = format!("{scheme:?} {name}: {method} {path}");
                let (status, headers, json) =
                    send(&server, method, path, authorization.as_deref(), body).await;
                let challenge = headers
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap().to_owned());
                match expect {
                    Expect::Unauthorized(expected) => {
                        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {json}");
                        assert_eq!(json["code"], "UNAUTHORIZED", "{what}");
                        assert_eq!(challenge.as_deref(), Some(*expected), "{what}");
                    }
                    Expect::Forbidden => {
                        assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {json}");
                        assert_eq!(json["code"], "FORBIDDEN", "{what}");
                        assert_eq!(
                            challenge.as_deref(),
                            Some(
                                r#"Bearer realm="pointlock", error="insufficient_scope", scope="points:admin""#
                            ),
                            "{what}"
                        );
                    }
                    Expect::Passes => unreachable!(),
                }
                assert!(json["message"].is_string(), "{what}: the JSON error shape");
                assert!(headers.contains_key("x-request-id"), "{what}");
                assert_eq!(
                    server.lock.metrics().acquisitions,
                    locks,
                    "{what}: no lock taken"
                );
                assert_eq!(server.store.commits(), commits, "{what}: no commit");
            }
        }
        assert_eq!(
            wallet_as(&server, &admin).await,
            before,
            "{scheme:?}: balance and history unchanged by every refusal"
        );
        // Then the tokens that grant user 1: each route answers, under the lock.
        for (name, authorization, expect) in &cases {
            if *expect != Expect::Passes {
                continue;
            }
            for (method, path, body) in ROUTES {
                let what = format!("{scheme:?} {name}: {method} {path}");
                let locks = server.lock.metrics().acquisitions;
                let (status, headers, json) =
                    send(&server, method, path, authorization.as_deref(), body).await;
                assert_eq!(status, StatusCode::OK, "{what}: {json}");
                assert!(!headers.contains_key("www-authenticate"), "{what}");
                assert_eq!(
                    server.lock.metrics().acquisitions,
                    locks + 1,
                    "{what}: the positive control takes the lock"
                );
            }
        }
        let (point, history) = wallet_as(&server, &admin).await;
        // 100, then three passing cases of +5 and -1.
        assert_eq!(point, 112, "{scheme:?}");
        assert_eq!(history.as_array().map(Vec::len), Some(7), "{scheme:?}");
    }
}

/// User 1's balance and history, read with `admin` (the reads take the lock:
/// call outside a measured window).
async fn wallet_as(server: &TestServer, admin: &str) -> (Value, Value) {
    let (status, _, point) = send(server, "GET", "/point/1", Some(admin), "").await;
    assert_eq!(status, StatusCode::OK, "{point}");
    let (_, _, history) = send(server, "GET", "/point/1/histories", Some(admin), "").await;
    (point["point"].clone(), history)
}

/// Negative control of the matrix: without authentication (the default)
/// every one of those requests gets through, whatever its `Authorization`
/// header, and takes the user's lock. The refusals above are the layer's
/// doing, not an accident of the requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_every_request_gets_through_as_before() {
    let server = server_with(None).await;
    let (status, _, _) = send(&server, "PATCH", "/point/1/charge", None, "100").await;
    assert_eq!(status, StatusCode::OK);
    let mut passed = 0;
    for scheme in Scheme::ALL {
        for (name, authorization, _) in cases(scheme) {
            for (method, path, body) in ROUTES {
                let what = format!("{scheme:?} {name}: {method} {path}");
                let locks = server.lock.metrics().acquisitions;
                let (status, headers, json) =
                    send(&server, method, path, authorization.as_deref(), body).await;
                assert_eq!(status, StatusCode::OK, "{what}: {json}");
                assert!(!headers.contains_key("www-authenticate"), "{what}");
                assert_eq!(server.lock.metrics().acquisitions, locks + 1, "{what}");
                passed += 1;
            }
        }
    }
    assert_eq!(passed, 3 * 14 * 4);
    // The operator routes too.
    for path in ["/metrics", "/stats", "/health", "/ready", "/openapi.json"] {
        let (status, _, _) = send(&server, "GET", path, None, "").await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
}

/// A refused request never queues behind a user: with user 1 held by a charge
/// at the store's gate (and a 30 s lock timeout), refusals for user 1 answer at
/// once and nothing waits for the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_never_waits_behind_a_held_user() {
    let gate = Arc::new(Semaphore::new(0));
    let options = AppOptions {
        auth: Some(Scheme::Hs256.auth()),
        ..support::patient()
    };
    let server =
        Arc::new(TestServer::start(ProbeStore::new(0).with_gate(Arc::clone(&gate)), options).await);
    let owner = bearer(&Scheme::Hs256.sign(&claims(json!("1"))));
    let holder = {
        let server = Arc::clone(&server);
        let owner = owner.clone();
        tokio::spawn(
            async move { send(&server, "PATCH", "/point/1/charge", Some(&owner), "5").await },
        )
    };
    server.wait_for_lock("the holder", |l| l.len() == 1).await;
    let stranger = bearer(&Scheme::Hs256.sign(&claims(json!("2"))));
    let forged = bearer(&alg_none(&claims(json!("1"))));
    for (authorization, status) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some(forged.as_str()), StatusCode::UNAUTHORIZED),
        (Some(stranger.as_str()), StatusCode::FORBIDDEN),
    ] {
        for (method, path, body) in ROUTES {
            // Bounded: a request queued behind the holder would wait the 30 s
            // lock timeout, so an answer within 10 s shows it never queued.
            let answer = tokio::time::timeout(
                Duration::from_secs(10),
                send(&server, method, path, authorization, body),
            )
            .await
            .unwrap_or_else(|_| panic!("{method} {path} queued behind the holder"));
            assert_eq!(answer.0, status, "{method} {path}");
            assert_eq!(server.lock.waiters(), 0, "nothing waits for user 1");
            assert_eq!(server.lock.len(), 1, "the holder still holds user 1");
        }
    }
    assert_eq!(
        server.store.commits(),
        1,
        "only the holder reached the store"
    );
    gate.add_permits(1_000);
    assert_eq!(holder.await.unwrap().0, StatusCode::OK);
}

/// Negative control of "takes no lock": the same refusal with the layer
/// placed after the lock (the wrong order) takes and waits for the user's
/// lock; the assertions above would catch it.
#[tokio::test]
async fn the_layer_after_the_lock_would_queue_and_lock() {
    let lock: KeyedLock<UserId> = KeyedLock::new();
    let inner = service_fn(|_req: Request<()>| async {
        Ok::<_, std::convert::Infallible>(Response::new(AppBody::default()))
    });
    let wrong_order =
        KeyedLockLayer::new(lock.clone(), user_key::<()>).layer(Scheme::Hs256.auth().layer(inner));
    let anonymous = || Request::builder().uri("/point/1").body(()).unwrap();
    // Free key: the refusal is answered, but after taking the lock.
    let res = wrong_order.clone().oneshot(anonymous()).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        lock.metrics().acquisitions,
        1,
        "the wrong order takes the lock"
    );
    // Held key: the refusal queues behind the holder.
    let held = lock.try_lock(UserId::new(1).unwrap()).expect("free");
    let mut queued = Box::pin(wrong_order.oneshot(anonymous()));
    assert!(
        futures_poll_once(queued.as_mut()).await.is_none(),
        "the refusal waits for the lock"
    );
    assert_eq!(lock.waiters(), 1);
    drop(held);
    assert_eq!(queued.await.unwrap().status(), StatusCode::UNAUTHORIZED);
}

/// Poll `future` once: `Some` of its output if it is ready.
async fn futures_poll_once<F: std::future::Future + Unpin>(mut future: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut future).poll(cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

#[tokio::test]
async fn the_open_and_operator_routes() {
    let owner = bearer(&Scheme::Hs256.sign(&claims(json!("1"))));
    let admin = bearer(&Scheme::Hs256.sign(&admin_claims()));
    // Metrics open (the default with authentication on).
    let server = server_with(Some(Scheme::Hs256.auth())).await;
    for path in ["/health", "/ready", "/openapi.json", "/metrics", "/stats"] {
        let (status, headers, _) = send(&server, "GET", path, None, "").await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!headers.contains_key("www-authenticate"), "{path}");
    }
    // --metrics-require-admin: /metrics and /stats need the admin scope.
    let server = server_with(Some(Scheme::Hs256.auth().operations_admin_only(true))).await;
    for path in ["/metrics", "/stats"] {
        let cases = [
            (None, StatusCode::UNAUTHORIZED),
            (Some(bearer("x.y.z")), StatusCode::UNAUTHORIZED),
            (Some(owner.clone()), StatusCode::FORBIDDEN),
            (Some(admin.clone()), StatusCode::OK),
        ];
        for (authorization, expected) in cases {
            let (status, _, _) = send(&server, "GET", path, authorization.as_deref(), "").await;
            assert_eq!(status, expected, "{path} {authorization:?}");
        }
    }
    for path in ["/health", "/ready", "/openapi.json"] {
        let (status, _, _) = send(&server, "GET", path, None, "").await;
        assert_eq!(status, StatusCode::OK, "{path} stays open");
    }
    // Authentication first: the anonymous learn nothing about the path.
    let cases = [
        ("POST", "/point/1", None, StatusCode::UNAUTHORIZED),
        (
            "POST",
            "/point/1",
            Some(&owner),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        ("GET", "/point/abc", None, StatusCode::UNAUTHORIZED),
        ("GET", "/point/abc", Some(&owner), StatusCode::BAD_REQUEST),
        ("GET", "/point/1/nope", None, StatusCode::UNAUTHORIZED),
        ("GET", "/point/1/nope", Some(&owner), StatusCode::NOT_FOUND),
        ("GET", "/nope", None, StatusCode::NOT_FOUND),
        ("POST", "/health", None, StatusCode::METHOD_NOT_ALLOWED),
    ];
    let big = "1".repeat(5_000);
    let more: [(&str, &str, Option<&String>, StatusCode); 2] = [
        // A body over the limit: 401 for the anonymous, 413 for the owner.
        ("PATCH", "/point/1/charge", None, StatusCode::UNAUTHORIZED),
        (
            "PATCH",
            "/point/1/charge",
            Some(&owner),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (i, (method, path, authorization, expected)) in cases.into_iter().chain(more).enumerate() {
        let body = if i < cases.len() { "" } else { big.as_str() };
        let locks = server.lock.metrics().acquisitions;
        let (status, _, json) = send(
            &server,
            method,
            path,
            authorization.map(String::as_str),
            body,
        )
        .await;
        let what = format!("{method} {path} {authorization:?}: {json}");
        assert_eq!(status, expected, "{what}");
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(server.lock.metrics().acquisitions, locks, "{what}: no lock");
        }
    }
}

#[tokio::test]
async fn refusals_carry_the_request_id_and_are_counted() {
    let server = server_with(Some(Scheme::Es256.auth())).await;
    let (status, headers, _) = server
        .send_raw(Method::GET, "/point/1", &[("x-request-id", b"order-7")], "")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["x-request-id"], "order-7");
    let stranger = bearer(&Scheme::Es256.sign(&claims(json!("2"))));
    let (status, _, _) = send(&server, "PATCH", "/point/1/use", Some(&stranger), "1").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, _, text) = server.get_text("/metrics").await;
    for line in [
        r#"pointlock_http_requests_total{method="GET",route="/point/{id}",status="401"} 1"#,
        r#"pointlock_http_requests_total{method="PATCH",route="/point/{id}/use",status="403"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
}

/// The clock leeway on a running server: a token expired a few seconds ago is
/// accepted, one expired two minutes ago is not.
#[tokio::test]
async fn the_leeway_is_small() {
    let server = server_with(Some(Scheme::Rs256.auth())).await;
    for (exp_ago, expected) in [(5, StatusCode::OK), (120, StatusCode::UNAUTHORIZED)] {
        let mut c = claims(json!("1"));
        c["exp"] = json!(now() - exp_ago);
        let token = bearer(&Scheme::Rs256.sign(&c));
        let (status, _, json) = send(&server, "GET", "/point/1", Some(&token), "").await;
        assert_eq!(status, expected, "expired {exp_ago} s ago: {json}");
    }
}
