//! Fuzz targets' properties for pointlock's three input parsers.
//!
//! - the wallet path: `routes::user_segment`, `routes::user_key` and
//!   `UserId::from_str`, and the whole dispatch of a path by the lock layer
//!   and the router ([`check_path`]);
//! - the charge body: `routes::parse_amount` ([`check_amount`]);
//! - the `Idempotency-Key` header: `IdempotencyKey::from_bytes`
//!   ([`check_idempotency_key`]);
//! - round trips of all three ([`check_roundtrips`]);
//! - the same over a real socket, through the whole stack the binary serves
//!   ([`loopback`], [`check_path_over_http`], [`check_amount_over_http`],
//!   [`check_idempotency_key_over_http`]).
//!
//! Each check takes any bytes, compares the parser with an oracle of
//! [`oracle`] (or a model of [`gen`]) and panics on the first difference; the
//! bolero targets in `tests/targets.rs` and `tests/full_stack.rs` feed them.
//! See `fuzz/README.md`.

#![forbid(unsafe_code)]

pub mod gen;
pub mod loopback;
pub mod oracle;
pub mod stack;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use keylock::layer::KeyDecision;
use pointlock_core::{Amount, IdempotencyKey, PointError, UserId};
use pointlock_server::routes::{parse_amount, user_key, user_segment, IDEMPOTENCY_KEY};
use serde_json::Value;

use crate::loopback::Loopback;
use crate::oracle::{Answer, Change};
use crate::stack::{Reply, Stack};

/// The default policy's maximum balance (the stack runs it).
pub const MAX_BALANCE: u64 = 10_000;

/// The methods every path is tried with: the two the routes take and one they
/// never take.
const METHODS: [Method; 3] = [Method::GET, Method::PATCH, Method::DELETE];

/// The files of `target`'s committed corpus (`tests/__fuzz__/<target>/corpus/`,
/// where bolero looks for it), sorted by name, with their bytes. Panics if
/// the directory is missing or holds fewer than `at_least` files: a corpus that
/// moved must not be skipped in silence.
pub fn corpus(target: &str, at_least: usize) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/__fuzz__")
        .join(target)
        .join("corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).expect("a corpus file");
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= at_least,
        "{}: {} files, expected at least {at_least}",
        dir.display(),
        files.len()
    );
    files
}

/// Lossy text of bytes, for failure messages.
pub fn show(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

/// The path properties, for any bytes taken as a request target:
///
/// - as text, `user_segment` finds the oracle's `{id}` segment and
///   `UserId::from_str` agrees with the oracle on the segment and on the whole
///   input;
/// - as a URI (when `http` accepts it, as hyper would), `user_key` locks,
///   passes or rejects as the oracle says, and the stack answers GET, PATCH
///   and DELETE exactly as [`oracle::dispatch`] says: a 2xx or a 4xx, JSON,
///   never a 5xx, never a panic.
pub fn check_path(stack: &mut Stack, raw: &[u8]) {
    if let Ok(text) = std::str::from_utf8(raw) {
        check_path_text(text);
    }
    let Ok(uri) = http::Uri::from_maybe_shared(Bytes::copy_from_slice(raw)) else {
        return;
    };
    let path = uri.path().to_owned();
    check_path_text(&path);
    let req = Request::builder()
        .uri(uri.clone())
        .body(())
        .expect("a request of a valid URI");
    let wallet = oracle::wallet_path(&path);
    match (user_key(&req), wallet) {
        (KeyDecision::Pass, None) => {}
        (KeyDecision::Lock(id), Some((segment, _))) => assert_eq!(
            Some(id.get()),
            oracle::user_id(segment.as_bytes()),
            "user_key locked {id} for {path:?}"
        ),
        (KeyDecision::Reject(res), Some((segment, _))) => {
            assert_eq!(
                oracle::user_id(segment.as_bytes()),
                None,
                "user_key rejected {path:?}"
            );
            assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{path:?}");
        }
        (decision, wallet) => {
            let decision = match decision {
                KeyDecision::Pass => "pass",
                KeyDecision::Lock(_) => "lock",
                KeyDecision::Reject(_) => "reject",
            };
            panic!("user_key chose to {decision} {path:?}; the oracle cut it as {wallet:?}");
        }
    }
    for method in METHODS {
        let reply = stack.call(method.clone(), uri.clone(), &[], b"1");
        let expected = oracle::dispatch(method.as_str(), &path);
        check_answer(&expected, &reply, &format!("{method} {:?}", show(raw)));
    }
}

fn check_path_text(text: &str) {
    let wallet = oracle::wallet_path(text);
    assert_eq!(
        user_segment(text),
        wallet.map(|(segment, _)| segment),
        "user_segment({text:?})"
    );
    let whole = text.parse::<UserId>();
    assert_eq!(
        whole.as_ref().ok().map(|id| id.get()),
        oracle::user_id(text.as_bytes()),
        "UserId::from_str({text:?})"
    );
    if let Err(error) = whole {
        assert_eq!(error, PointError::InvalidUserId, "{text:?}");
    }
    if let Some((segment, _)) = wallet {
        assert_eq!(
            segment.parse::<UserId>().ok().map(UserId::get),
            oracle::user_id(segment.as_bytes()),
            "UserId::from_str({segment:?}) of {text:?}"
        );
    }
}

/// Whether `reply` is the oracle's `expected` answer; panics with `what` if not.
pub fn check_answer(expected: &Answer, reply: &Reply, what: &str) {
    let status = reply.status;
    assert!(
        status.is_success() || status.is_client_error(),
        "{what}: {status} {}",
        show(&reply.body)
    );
    assert!(
        reply
            .content_type
            .as_deref()
            .is_some_and(|ct| ct.starts_with("application/json")),
        "{what}: content type {:?}",
        reply.content_type
    );
    let Some(json) = &reply.json else {
        panic!("{what}: not JSON: {}", show(&reply.body));
    };
    let code = json.get("code").and_then(Value::as_str);
    let seen = format!("{what}: {status} {json}");
    match *expected {
        Answer::Error {
            status: wanted,
            code: wanted_code,
            allow,
        } => {
            assert_eq!(status.as_u16(), wanted, "{seen}");
            assert_eq!(code, Some(wanted_code), "{seen}");
            assert!(json["message"].is_string(), "{seen}");
            assert_eq!(reply.allow.as_deref(), allow, "{seen}");
        }
        Answer::Balance { id } => check_balance(json, status, id, &seen),
        Answer::Histories { id } => {
            assert_eq!(status, StatusCode::OK, "{seen}");
            let rows = json.as_array().unwrap_or_else(|| panic!("{seen}"));
            for row in rows {
                assert_eq!(row["userId"].as_u64(), Some(id), "{seen}");
            }
        }
        Answer::Change { id, change } => {
            if status == StatusCode::OK {
                check_balance(json, status, id, &seen);
            } else {
                let refusal = match change {
                    Change::Charge => "MAX_BALANCE_EXCEEDED",
                    Change::Use => "INSUFFICIENT_BALANCE",
                };
                assert_eq!(
                    (status, code),
                    (StatusCode::CONFLICT, Some(refusal)),
                    "{seen}"
                );
            }
        }
        Answer::Status(wanted) => {
            assert_eq!(status, StatusCode::OK, "{seen}");
            assert_eq!(json, &serde_json::json!({ "status": wanted }), "{seen}");
        }
        Answer::Object => {
            assert_eq!(status, StatusCode::OK, "{seen}");
            assert!(json.is_object(), "{seen}");
        }
    }
}

fn check_balance(json: &Value, status: StatusCode, id: u64, seen: &str) {
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(json["id"].as_u64(), Some(id), "{seen}");
    assert!(
        json["point"].as_u64().is_some_and(|p| p <= MAX_BALANCE),
        "{seen}"
    );
    assert!(json["updateMillis"].is_i64(), "{seen}");
}

/// The user the amount checks charge (no path target uses it).
pub const AMOUNT_USER: u64 = 8_080_808_080;
/// The user the key checks charge.
pub const KEY_USER: u64 = 4_242_424_242;

/// What a check knows of [`AMOUNT_USER`]'s balance in a [`Stack`].
#[derive(Debug, Default)]
pub struct Wallet {
    balance: u64,
    generation: u64,
}

/// The amount properties, for any bytes as a charge body:
///
/// - `parse_amount` answers what `expected` says (from [`oracle::amount`] for
///   raw bytes, or from the model that built the body), with the same code;
///   with no expectation (the oracle cannot judge), one of its two codes or
///   an amount;
/// - `PATCH /point/{id}/charge` with that body through the stack answers that
///   code with a 400, or charges exactly that amount (the balance moves by
///   it), or refuses a charge past the maximum balance with a 409.
pub fn check_amount(
    stack: &mut Stack,
    wallet: &mut Wallet,
    body: &[u8],
    expected: Option<Result<u64, &'static str>>,
) {
    let got = parse_amount(body).map(Amount::get).map_err(|e| e.code());
    match expected {
        Some(expected) => assert_eq!(got, expected, "parse_amount({})", show(body)),
        None => assert!(
            matches!(
                got,
                Ok(1..=oracle::VALUE_MAX) | Err("INVALID_JSON" | "INVALID_AMOUNT")
            ),
            "parse_amount({}): {got:?}",
            show(body)
        ),
    }

    if wallet.generation != stack.generation() {
        *wallet = Wallet {
            balance: 0,
            generation: stack.generation(),
        };
    }
    let uri: http::Uri = format!("/point/{AMOUNT_USER}/charge")
        .parse()
        .expect("a valid URI");
    let reply = stack.call(Method::PATCH, uri, &[], body);
    if stack.generation() != wallet.generation {
        // Served by a fresh stack: the balance started again from zero.
        *wallet = Wallet {
            balance: 0,
            generation: stack.generation(),
        };
    }
    let what = format!("PATCH charge {}", show(body));
    match got {
        Err(code) => check_answer(
            &Answer::Error {
                status: 400,
                code,
                allow: None,
            },
            &reply,
            &what,
        ),
        Ok(n) => {
            let after = wallet.balance.checked_add(n).filter(|&b| b <= MAX_BALANCE);
            let expected = match after {
                Some(_) => Answer::Balance { id: AMOUNT_USER },
                None => Answer::Error {
                    status: 409,
                    code: "MAX_BALANCE_EXCEEDED",
                    allow: None,
                },
            };
            check_answer(&expected, &reply, &what);
            if let Some(after) = after {
                let point = reply.json.as_ref().and_then(|j| j["point"].as_u64());
                assert_eq!(point, Some(after), "{what}: the balance moved by {n}");
                wallet.balance = after;
            }
        }
    }
    if wallet.balance > MAX_BALANCE / 2 {
        // Spend it all, so that charges keep being accepted.
        let uri: http::Uri = format!("/point/{AMOUNT_USER}/use").parse().expect("a URI");
        let body = wallet.balance.to_string();
        let reply = stack.call(Method::PATCH, uri, &[], body.as_bytes());
        if stack.generation() == wallet.generation {
            assert_eq!(reply.status, StatusCode::OK, "use {body}: {reply:?}");
            assert_eq!(reply.json.as_ref().map(|j| &j["point"]), Some(&0.into()));
        }
        *wallet = Wallet {
            balance: 0,
            generation: stack.generation(),
        };
    }
}

/// The key properties, for any bytes as an `Idempotency-Key` value:
///
/// - `IdempotencyKey::from_bytes` accepts exactly what [`oracle::idempotency_key`]
///   accepts (and what the model that built the key says, if given), keeps the
///   bytes as they are, and its `Debug` shows only the length;
/// - through the stack, a charge with that header is a 400
///   `INVALID_IDEMPOTENCY_KEY` for an invalid key, and for a valid one a 200
///   whose repetition is replayed byte for byte (`Idempotent-Replayed: true`).
pub fn check_idempotency_key(stack: &mut Stack, raw: &[u8], model: Option<bool>) {
    let valid = oracle::idempotency_key(raw);
    if let Some(model) = model {
        assert_eq!(
            valid,
            model,
            "the key oracle and the model on {}",
            show(raw)
        );
    }
    match IdempotencyKey::from_bytes(raw) {
        Ok(key) => {
            assert!(valid, "from_bytes accepted {}", show(raw));
            assert_eq!(key.as_str().as_bytes(), raw);
            assert_eq!(IdempotencyKey::new(key.as_str()).as_ref(), Ok(&key));
            assert_eq!(
                format!("{key:?}"),
                format!("IdempotencyKey(<{} chars>)", raw.len())
            );
        }
        Err(error) => {
            assert!(!valid, "from_bytes refused {}", show(raw));
            assert_eq!(error, PointError::InvalidIdempotencyKey);
        }
    }

    // hyper hands the router any header value `http` accepts.
    let Ok(value) = HeaderValue::from_bytes(raw) else {
        return;
    };
    let uri: http::Uri = format!("/point/{KEY_USER}/charge").parse().expect("a URI");
    let headers: [(HeaderName, HeaderValue); 1] = [(IDEMPOTENCY_KEY, value)];
    let generation = stack.generation();
    let first = stack.call(Method::PATCH, uri.clone(), &headers, b"1");
    let what = format!("charge with key {}", show(raw));
    if !valid {
        let expected = Answer::Error {
            status: 400,
            code: "INVALID_IDEMPOTENCY_KEY",
            allow: None,
        };
        check_answer(&expected, &first, &what);
        return;
    }
    let expected = Answer::Change {
        id: KEY_USER,
        change: Change::Charge,
    };
    check_answer(&expected, &first, &what);
    let again = stack.call(Method::PATCH, uri, &headers, b"1");
    check_answer(&expected, &again, &what);
    if first.status == StatusCode::OK && stack.generation() == generation {
        assert_eq!(again.replayed.as_deref(), Some("true"), "{what}: replayed");
        assert_eq!(again.body, first.body, "{what}: the same answer");
    }
}

/// Round trips, from any bytes: a number formatted as an id, zero-padded or
/// not, parses back to itself when in range; formatted as a bare or an
/// object body, `parse_amount` reads it back; a key of visible characters
/// reads back as itself.
pub fn check_roundtrips(bytes: &[u8]) {
    let mut cursor = gen::Cursor::new(bytes);
    let n = cursor.u64_any_width();
    let in_range = (1..=oracle::VALUE_MAX).contains(&n);

    // Ids: Display → from_str, and zero-padded to any width up to 20.
    let text = n.to_string();
    assert_eq!(
        text.parse::<UserId>().ok().map(UserId::get),
        in_range.then_some(n),
        "{text}"
    );
    if let Ok(id) = UserId::new(n) {
        assert_eq!(id.to_string().parse::<UserId>(), Ok(id));
    }
    let width = cursor.below(24);
    let padded = format!("{n:0>width$}");
    let fits = padded.len() <= 20;
    assert_eq!(
        padded.parse::<UserId>().ok().map(UserId::get),
        (in_range && fits).then_some(n),
        "{padded}"
    );

    // Amounts: the bare number and the object, with and without spaces.
    let expected = if in_range {
        Ok(n)
    } else {
        Err("INVALID_AMOUNT")
    };
    for body in [
        text.clone(),
        format!(r#"{{"amount":{text}}}"#),
        format!("\n{{ \"amount\" : {text} , \"note\" : \"{text}\" }}\t"),
        format!(r#"{{"amount":"{text}","amount":{text}}}"#),
    ] {
        let got = parse_amount(body.as_bytes())
            .map(Amount::get)
            .map_err(|e| e.code());
        assert_eq!(got, expected, "{body}");
    }
    if let Ok(amount) = Amount::new(n) {
        let back = parse_amount(amount.to_string().as_bytes()).map(Amount::get);
        assert_eq!(back.ok(), Some(n));
    }

    // Keys: any visible ASCII string of 1 to 255 characters.
    let len = 1 + cursor.below(oracle::KEY_LEN_MAX);
    let raw: Vec<u8> = (0..len).map(|_| b'!' + cursor.byte() % 94).collect();
    let key = IdempotencyKey::from_bytes(&raw).unwrap_or_else(|e| panic!("{}: {e}", show(&raw)));
    assert_eq!(key.as_str().as_bytes(), &raw[..]);
}

/// The body limit of the default options (`--body-limit-bytes`).
const BODY_LIMIT: usize = 4 * 1024;

/// [`check_path`]'s dispatch property over HTTP: any bytes that `http`
/// accepts as an origin-form request target (or an absolute one, sent as its
/// path and query) are answered by the whole stack as [`oracle::dispatch`]
/// says, for GET, PATCH and DELETE.
pub fn check_path_over_http(server: &Loopback, raw: &[u8]) {
    let Ok(uri) = http::Uri::from_maybe_shared(Bytes::copy_from_slice(raw)) else {
        return;
    };
    let Some(target) = uri.path_and_query().map(|pq| pq.as_str().to_owned()) else {
        return;
    };
    if !target.starts_with('/') {
        return;
    }
    for method in METHODS {
        let Some(reply) = server.call(method.clone(), &target, &[], b"1") else {
            panic!("{target:?} parsed once and not again");
        };
        let expected = oracle::dispatch(method.as_str(), uri.path());
        check_answer(&expected, &reply, &format!("HTTP {method} {target:?}"));
    }
}

/// [`check_amount`]'s property over HTTP: a charge of a fresh `user` with
/// `body` is answered as `parse_amount` reads the body (a 413 past the body
/// limit).
pub fn check_amount_over_http(server: &Loopback, body: &[u8], user: u64) {
    let target = format!("/point/{user}/charge");
    let reply = server
        .call(Method::PATCH, &target, &[], body)
        .expect("a valid target");
    let what = format!("HTTP PATCH {target} {}", show(body));
    let error = |status, code| Answer::Error {
        status,
        code,
        allow: None,
    };
    if body.len() > BODY_LIMIT {
        return check_answer(&error(413, "PAYLOAD_TOO_LARGE"), &reply, &what);
    }
    match parse_amount(body).map(Amount::get) {
        Err(e) => check_answer(&error(400, e.code()), &reply, &what),
        Ok(n) if n > MAX_BALANCE => {
            check_answer(&error(409, "MAX_BALANCE_EXCEEDED"), &reply, &what);
        }
        Ok(n) => {
            check_answer(&Answer::Balance { id: user }, &reply, &what);
            let point = reply.json.as_ref().and_then(|j| j["point"].as_u64());
            assert_eq!(point, Some(n), "{what}");
        }
    }
}

/// [`check_idempotency_key`]'s property over HTTP: a charge of a fresh `user`
/// with `raw` as its `Idempotency-Key` is a 400 `INVALID_IDEMPOTENCY_KEY`
/// exactly when the oracle refuses the value hyper hands on (HTTP drops the
/// spaces and tabs around a field value), and a 200 otherwise.
pub fn check_idempotency_key_over_http(server: &Loopback, raw: &[u8], user: u64) {
    let Ok(value) = HeaderValue::from_bytes(raw) else {
        return;
    };
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = raw.iter().position(|b| !is_ows(b)).unwrap_or(raw.len());
    let end = raw
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    let received = &raw[start..end];
    let target = format!("/point/{user}/charge");
    let reply = server
        .call(Method::PATCH, &target, &[(IDEMPOTENCY_KEY, value)], b"1")
        .expect("a valid target");
    let what = format!("HTTP charge with key {}", show(raw));
    let expected = if oracle::idempotency_key(received) {
        Answer::Balance { id: user }
    } else {
        Answer::Error {
            status: 400,
            code: "INVALID_IDEMPOTENCY_KEY",
            allow: None,
        }
    };
    check_answer(&expected, &reply, &what);
}
