//! The OpenAPI document (`server/openapi.json`, served at `GET /openapi.json`)
//! held to the code four ways:
//!
//! 1. it is a valid OpenAPI 3.1 description: checked against the official
//!    schema of the OpenAPI Initiative, vendored in `tests/openapi/` (no
//!    network), Schema Objects included (the OAS dialect);
//! 2. its operations are exactly the router's [`ROUTES`] (which the router's own
//!    test holds to the dispatch), and each is served by a running server;
//! 3. its error codes and statuses are exactly those the error type produces;
//! 4. every answer of a running server (successes and every error code,
//!    provoked for real over loopback HTTP; the 401 and 403 of bearer
//!    authentication on a second server started with it) validates against the
//!    response the document declares for its operation and status: body
//!    schema, media type and headers; and every example in the document
//!    validates against its schema. The document's security requirements are
//!    held to the authentication layer's own map of what each path needs.
//!
//! A feature may be documented ahead of its code (built on a branch of its own):
//! [`PENDING_ROUTES`] and [`PENDING_CODES`] list what is, its live check is an
//! `#[ignore]`d test, and `pending_features_are_not_in_the_code_yet` fails as
//! soon as it lands, to say that the lists must be emptied and the test enabled.
//! Today: `GET /metrics`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use jsonschema::{Draft, Registry, Validator};
use pointlock::core::{
    BoxFuture, Change, Committed, KeyedLock, MemoryStore, PointError, PointHistory, PointStore,
    Policy, StoreError, StoreErrorKind, UserId, UserPoint,
};
use pointlock::server::app::{build_app, service};
use pointlock::server::auth::{access, Access};
use pointlock::server::clock::SystemClock;
use pointlock::server::error::{Denial, TokenRejection};
use pointlock::server::openapi::DOCUMENT;
use pointlock::server::routes::{StoreStats, ROUTES};
use pointlock::server::{ApiError, AppOptions};
use pointlock::store::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore};
use serde_json::{json, Value};
use support::app::drain;
use support::http::{client, Client};
use support::jwt::{admin_claims, alg_none, bearer, claims, now, Scheme};
use support::{ProbeStore, Served, TestServer};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

/// Documented routes not served yet (none: the mechanism stays for the next
/// feature built on a branch of its own).
const PENDING_ROUTES: &[(&str, &str)] = &[];

/// Documented codes the error type does not produce yet (none: keep the
/// mechanism for the next feature built on a branch of its own).
const PENDING_CODES: &[&str] = &[];

/// Where the document is registered for `$ref` resolution (never fetched).
const DOC_URI: &str = "https://pointlock.invalid/openapi.json";

/// The official OpenAPI 3.1 schemas (see `tests/openapi/README.md`).
const OAS_SCHEMAS: [&str; 4] = [
    include_str!("openapi/oas-3.1-schema-2025-09-15.json"),
    include_str!("openapi/oas-3.1-schema-base-2025-09-15.json"),
    include_str!("openapi/oas-3.1-dialect-2024-11-10.json"),
    include_str!("openapi/oas-3.1-meta-2024-11-10.json"),
];

/// The OpenAPI 3.1 schema that also validates Schema Objects (the OAS dialect).
const OAS_SCHEMA_BASE: &str = "https://spec.openapis.org/oas/3.1/schema-base/2025-09-15";

fn document() -> Value {
    serde_json::from_str(DOCUMENT).expect("server/openapi.json is JSON")
}

// ---------------------------------------------------------------------------
// The document and its schemas
// ---------------------------------------------------------------------------

/// The document with a registry to resolve its `$ref`s, and the codes of the
/// answers checked so far.
struct Contract {
    doc: Value,
    registry: Registry<'static>,
    seen_codes: Mutex<BTreeSet<String>>,
    seen_responses: Mutex<BTreeSet<(String, String, String)>>,
}

impl Contract {
    fn new() -> Self {
        Self::of(document())
    }

    fn of(doc: Value) -> Self {
        let registry = Registry::new()
            .draft(Draft::Draft202012)
            .add(DOC_URI, doc.clone())
            .expect("a valid URI")
            .prepare()
            .expect("the document registers");
        Self {
            doc,
            registry,
            seen_codes: Mutex::default(),
            seen_responses: Mutex::default(),
        }
    }

    /// `value`, or what its `$ref` (`#/...` in this document) points at.
    fn resolve<'a>(&'a self, value: &'a Value) -> &'a Value {
        let mut value = value;
        while let Some(target) = value.get("$ref").and_then(Value::as_str) {
            let pointer = target
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("only local references: {target}"));
            value = self
                .doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling reference {target}"));
        }
        value
    }

    /// A validator for a Schema Object of this document (its `$ref`s resolved
    /// in the document).
    fn validator(&self, schema: &Value) -> Validator {
        jsonschema::options()
            .with_draft(Draft::Draft202012)
            .with_registry(&self.registry)
            .build(&absolute_refs(schema))
            .unwrap_or_else(|e| panic!("schema {schema} does not build: {e}"))
    }

    /// Errors of `instance` against `schema`, as text (empty when valid).
    fn errors(&self, schema: &Value, instance: &Value) -> Vec<String> {
        self.validator(schema)
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    /// Every operation: (METHOD, path template, Operation Object).
    fn operations(&self) -> Vec<(String, String, &Value)> {
        let mut ops = Vec::new();
        for (path, item) in self.doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("a Path Item") {
                if HTTP_METHODS.contains(&method.as_str()) {
                    ops.push((method.to_uppercase(), path.clone(), op));
                }
            }
        }
        ops
    }

    /// The documented template `path` is an instance of (any `{param}` segment
    /// matches any segment).
    fn template_of(&self, path: &str) -> Option<String> {
        let path = path.split_once('?').map_or(path, |(path, _query)| path);
        let segments: Vec<_> = path.split('/').collect();
        self.doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .find(|template| {
                let template: Vec<_> = template.split('/').collect();
                template.len() == segments.len()
                    && template
                        .iter()
                        .zip(&segments)
                        .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')))
            })
            .cloned()
    }

    /// The Response Object the document declares for `method path` answering
    /// `status`: the operation's, or for a path or method it does not list, the
    /// shared `NotFound` (404) or `MethodNotAllowed` (405).
    fn declared(&self, method: &Method, path: &str, status: StatusCode) -> (String, &Value) {
        let template = self.template_of(path);
        let operation = template
            .as_ref()
            .and_then(|template| self.doc["paths"][template].get(method.as_str().to_lowercase()));
        let (name, response) = match (operation, status.as_u16()) {
            (Some(op), code) => (
                format!("{method} {}", template.as_deref().unwrap_or_default()),
                op["responses"].get(code.to_string()).unwrap_or_else(|| {
                    panic!("{method} {path}: status {status} is not documented")
                }),
            ),
            (None, 404) => (
                "NotFound".to_owned(),
                &self.doc["components"]["responses"]["NotFound"],
            ),
            (None, 405) => (
                "MethodNotAllowed".to_owned(),
                &self.doc["components"]["responses"]["MethodNotAllowed"],
            ),
            (None, _) => panic!("{method} {path} ({status}): no such operation documented"),
        };
        (name, self.resolve(response))
    }

    /// Check an answer to `method path` against the document; its error code, if any.
    fn check(&self, method: &Method, path: &str, answer: &Answer) -> Option<String> {
        let what = format!("{method} {path} -> {} {}", answer.status, answer.text());
        let (operation, response) = self.declared(method, path, answer.status);
        // The media type.
        let content = response["content"].as_object().expect("content");
        assert_eq!(content.len(), 1, "one media type: {what}");
        let (media, media_type) = content.iter().next().expect("a media type");
        let content_type = answer.header("content-type").unwrap_or_default();
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        assert_eq!(essence, media, "content-type {content_type:?}: {what}");
        // The body.
        let schema = self.resolve(&media_type["schema"]);
        let body = if media == "application/json" {
            serde_json::from_slice(&answer.body)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {what}"))
        } else {
            Value::String(String::from_utf8(answer.body.to_vec()).expect("text is UTF-8"))
        };
        let errors = self.errors(schema, &body);
        assert!(errors.is_empty(), "{what}\nschema errors: {errors:#?}");
        // The headers: every required one present, every present one valid, and
        // none of the headers the document declares somewhere present undeclared.
        let declared: BTreeMap<String, &Value> = response
            .get("headers")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(name, header)| (name.to_lowercase(), self.resolve(header)))
            .collect();
        assert!(
            declared.contains_key("x-request-id"),
            "{operation} {}: every response declares x-request-id",
            answer.status
        );
        for (name, header) in &declared {
            match answer.header(name) {
                None => assert!(
                    header["required"] != true,
                    "required header {name} missing: {what}"
                ),
                Some(value) => {
                    let schema = self.resolve(&header["schema"]);
                    let value = if schema["type"] == "integer" {
                        serde_json::from_str(value).unwrap_or(Value::String(value.to_owned()))
                    } else {
                        Value::String(value.to_owned())
                    };
                    let errors = self.errors(schema, &value);
                    assert!(errors.is_empty(), "header {name}: {errors:?}: {what}");
                }
            }
        }
        for name in [
            "retry-after",
            "allow",
            "idempotent-replayed",
            "www-authenticate",
        ] {
            assert!(
                declared.contains_key(name) || answer.header(name).is_none(),
                "undeclared header {name}: {what}"
            );
        }
        self.seen_responses.lock().unwrap().insert((
            method.to_string(),
            self.template_of(path).unwrap_or_else(|| operation.clone()),
            answer.status.as_u16().to_string(),
        ));
        let code = body.get("code").and_then(Value::as_str).map(str::to_owned);
        if let Some(code) = &code {
            self.seen_codes.lock().unwrap().insert(code.clone());
        }
        code
    }
}

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// `schema` with every local `$ref` (`#/...`) made absolute in the document.
fn absolute_refs(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| match (key.as_str(), value) {
                    ("$ref", Value::String(target)) if target.starts_with('#') => {
                        (key.clone(), Value::String(format!("{DOC_URI}{target}")))
                    }
                    _ => (key.clone(), absolute_refs(value)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(absolute_refs).collect()),
        other => other.clone(),
    }
}

/// Errors of `doc` against the official OpenAPI 3.1 schema (Schema Objects
/// included), offline: every schema it refers to is vendored or built in.
fn openapi_errors(doc: &Value) -> Vec<String> {
    let resources = OAS_SCHEMAS.map(|text| {
        let schema: Value = serde_json::from_str(text).expect("a vendored schema is JSON");
        let id = schema["$id"].as_str().expect("$id").to_owned();
        (id, schema)
    });
    let registry = Registry::new()
        .extend(resources)
        .expect("valid URIs")
        .prepare()
        .expect("the vendored schemas register without the network");
    let validator = jsonschema::options()
        .with_registry(&registry)
        .build(&json!({ "$ref": OAS_SCHEMA_BASE }))
        .expect("the OpenAPI 3.1 schema builds");
    validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn the_document_is_a_valid_openapi_3_1_description() {
    let doc = document();
    let errors = openapi_errors(&doc);
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    // Negative controls: the validator is not vacuous. Each breaks the document
    // in one place the OpenAPI schema (or the dialect, for Schema Objects) forbids.
    type Breakage = (&'static str, fn(&mut Value));
    let breakages: [Breakage; 6] = [
        ("no info", |d| {
            d.as_object_mut().unwrap().remove("info");
        }),
        ("version 3.0", |d| d["openapi"] = json!("3.0.3")),
        ("a path without /", |d| {
            let item = d["paths"]["/health"].clone();
            d["paths"]["health"] = item;
        }),
        ("a response without description", |d| {
            d["paths"]["/health"]["get"]["responses"]["200"]
                .as_object_mut()
                .unwrap()
                .remove("description");
        }),
        ("a parameter in the body", |d| {
            d["components"]["parameters"]["UserId"]["in"] = json!("body");
        }),
        ("a schema of an unknown type", |d| {
            d["components"]["schemas"]["Amount"]["type"] = json!("integr");
        }),
    ];
    for (what, breaks) in breakages {
        let mut broken = doc.clone();
        breaks(&mut broken);
        assert!(
            !openapi_errors(&broken).is_empty(),
            "{what} must be refused"
        );
    }
}

#[test]
fn every_reference_resolves_and_every_response_declares_x_request_id() {
    let contract = Contract::new();
    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("$ref", Value::String(target)) => out.push(target),
                        _ => refs(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut targets = Vec::new();
    refs(&contract.doc, &mut targets);
    assert!(targets.len() > 50, "{}", targets.len());
    for target in targets {
        let pointer = target.strip_prefix('#').expect("local references only");
        assert!(contract.doc.pointer(pointer).is_some(), "dangling {target}");
    }
    let mut responses: Vec<&Value> = contract.doc["components"]["responses"]
        .as_object()
        .unwrap()
        .values()
        .collect();
    for (_, _, op) in contract.operations() {
        responses.extend(op["responses"].as_object().unwrap().values());
    }
    for response in responses {
        let response = contract.resolve(response);
        assert!(
            response["headers"].get("x-request-id").is_some(),
            "{response}"
        );
    }
    // Every operation takes x-request-id (from its Path Item).
    for (path, item) in contract.doc["paths"].as_object().unwrap() {
        let params: Vec<&Value> = item["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| contract.resolve(p))
            .collect();
        assert!(params.iter().any(|p| p["name"] == "x-request-id"), "{path}");
    }
}

// ---------------------------------------------------------------------------
// The document and the router
// ---------------------------------------------------------------------------

#[test]
fn the_documented_operations_are_exactly_the_routers_routes() {
    let contract = Contract::new();
    let documented: BTreeSet<(String, String)> = contract
        .operations()
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .chain(PENDING_ROUTES)
        .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    assert_eq!(documented, routed, "server/openapi.json vs routes::ROUTES");
}

#[test]
fn pending_features_are_not_in_the_code_yet() {
    for pending in PENDING_ROUTES {
        assert!(
            !ROUTES.contains(pending),
            "{pending:?} is served now: remove it from PENDING_ROUTES and the #[ignore] of \
             metrics_is_served_as_documented"
        );
    }
    let produced: BTreeSet<&str> = producible_errors().iter().map(ApiError::code).collect();
    for code in PENDING_CODES {
        assert!(
            !produced.contains(code),
            "{code} is produced now: remove it from PENDING_CODES and the #[ignore] of \
             its test"
        );
    }
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let server = TestServer::start(ProbeStore::new(0), AppOptions::default()).await;
    let http = Http::new();
    let contract = Contract::new();
    for (method, template, _) in contract.operations() {
        if PENDING_ROUTES.contains(&(method.as_str(), template.as_str())) {
            continue;
        }
        let path = template.replace("{id}", "1");
        let method: Method = method.parse().unwrap();
        let body = if method == Method::PATCH { "1" } else { "" };
        let answer = http
            .send(server.addr, method.clone(), &path, &[], body)
            .await;
        assert!(
            answer.status != StatusCode::NOT_FOUND
                && answer.status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {} {}",
            answer.status,
            answer.text()
        );
        assert_eq!(answer.status, StatusCode::OK, "{method} {path}");
        contract.check(&method, &path, &answer);
    }
}

// ---------------------------------------------------------------------------
// The document and the error type
// ---------------------------------------------------------------------------

/// Every error the server can answer with, one of each kind. The match below
/// does not compile when `ApiError` or `PointError` gains a variant: list it here
/// (and document it) then.
fn producible_errors() -> Vec<ApiError> {
    fn _every_variant_is_listed(error: ApiError) {
        match error {
            ApiError::Point(error) => match error {
                PointError::InvalidUserId
                | PointError::InvalidAmount
                | PointError::InsufficientBalance { .. }
                | PointError::MaxBalanceExceeded { .. }
                | PointError::LockTimeout
                | PointError::WriteConflict { .. }
                | PointError::InvalidIdempotencyKey
                | PointError::IdempotencyKeyReused { .. }
                | PointError::ForeignGuard
                | PointError::Store(_) => {}
            },
            ApiError::Unauthorized(rejection) => match rejection {
                TokenRejection::Missing
                | TokenRejection::NotBearer
                | TokenRejection::Malformed
                | TokenRejection::Algorithm
                | TokenRejection::Signature
                | TokenRejection::Expired
                | TokenRejection::NotYetValid
                | TokenRejection::Claims
                | TokenRejection::Audience => {}
            },
            ApiError::Forbidden(Denial::AnotherUser | Denial::NotAdmin) => {}
            ApiError::InvalidJson(_)
            | ApiError::HeadersTooLarge { .. }
            | ApiError::LengthRequired
            | ApiError::BadBody(_)
            | ApiError::InvalidQuery(_)
            | ApiError::NotFound { .. }
            | ApiError::MethodNotAllowed { .. }
            | ApiError::PayloadTooLarge { .. }
            | ApiError::RequestTimeout
            | ApiError::BodyTimeout { .. }
            | ApiError::LockQueueFull { .. }
            | ApiError::Overloaded { .. }
            | ApiError::NotReady(_)
            | ApiError::Internal(_) => {}
        }
    }
    let store = |kind| PointError::Store(StoreError::with_kind(kind, "x"));
    vec![
        ApiError::Point(PointError::InvalidUserId),
        ApiError::Point(PointError::InvalidAmount),
        ApiError::Point(PointError::InvalidIdempotencyKey),
        ApiError::HeadersTooLarge { limit_bytes: 1 },
        ApiError::LengthRequired,
        ApiError::Unauthorized(TokenRejection::Missing),
        ApiError::Unauthorized(TokenRejection::NotBearer),
        ApiError::Unauthorized(TokenRejection::Malformed),
        ApiError::Unauthorized(TokenRejection::Algorithm),
        ApiError::Unauthorized(TokenRejection::Signature),
        ApiError::Unauthorized(TokenRejection::Expired),
        ApiError::Unauthorized(TokenRejection::NotYetValid),
        ApiError::Unauthorized(TokenRejection::Claims),
        ApiError::Unauthorized(TokenRejection::Audience),
        ApiError::Forbidden(Denial::AnotherUser),
        ApiError::Forbidden(Denial::NotAdmin),
        ApiError::Point(PointError::IdempotencyKeyReused {
            kind: "CHARGE",
            amount: 1,
        }),
        ApiError::Point(PointError::InsufficientBalance {
            balance: 1,
            amount: 2,
        }),
        ApiError::Point(PointError::MaxBalanceExceeded {
            balance: 1,
            amount: 2,
            max_balance: 2,
        }),
        ApiError::Point(PointError::LockTimeout),
        ApiError::Point(PointError::WriteConflict { attempts: 8 }),
        ApiError::Point(PointError::ForeignGuard),
        // StoreErrorKind is non-exhaustive: its four kinds as of this writing.
        ApiError::Point(store(StoreErrorKind::Failed)),
        ApiError::Point(store(StoreErrorKind::Conflict)),
        ApiError::Point(store(StoreErrorKind::Unavailable)),
        ApiError::Point(store(StoreErrorKind::OutcomeUnknown)),
        ApiError::Point(store(StoreErrorKind::Overloaded)),
        ApiError::InvalidJson("x".into()),
        ApiError::BadBody("x".into()),
        ApiError::InvalidQuery("x"),
        ApiError::NotFound {
            method: "GET".into(),
            path: "/x".into(),
        },
        ApiError::MethodNotAllowed {
            method: "POST".into(),
            allow: "GET",
        },
        ApiError::PayloadTooLarge { limit_bytes: 1 },
        ApiError::RequestTimeout,
        ApiError::BodyTimeout { timeout_ms: 1 },
        ApiError::LockQueueFull { waiters_max: 1 },
        ApiError::Overloaded { in_flight_max: 1 },
        // What `GET /ready` can say: the stores' `ready` fail with these kinds.
        ApiError::NotReady(store(StoreErrorKind::Unavailable)),
        ApiError::NotReady(store(StoreErrorKind::Failed)),
        ApiError::Internal("x".into()),
    ]
}

/// The shared responses of `components/responses` and their statuses.
const SHARED_RESPONSES: [(&str, u16); 9] = [
    ("Unauthorized", 401),
    ("Forbidden", 403),
    ("NotFound", 404),
    ("MethodNotAllowed", 405),
    ("RequestTimeout", 408),
    ("LengthRequired", 411),
    ("PayloadTooLarge", 413),
    ("HeadersTooLarge", 431),
    ("Internal", 500),
];

/// (code, status) of every error response the document declares, from the
/// per-response `code` enums.
fn documented_error_pairs(contract: &Contract) -> BTreeSet<(String, u16)> {
    let shared = contract.doc["components"]["responses"].as_object().unwrap();
    let mut names: Vec<&str> = shared.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut expected: Vec<&str> = SHARED_RESPONSES.iter().map(|(name, _)| *name).collect();
    expected.sort_unstable();
    assert_eq!(names, expected, "components/responses");
    let mut responses: Vec<(u16, &Value)> = SHARED_RESPONSES
        .iter()
        .map(|(name, status)| (*status, &shared[*name]))
        .collect();
    for (_, _, op) in contract.operations() {
        for (status, response) in op["responses"].as_object().unwrap() {
            let status = status.parse().expect("a status");
            responses.push((status, contract.resolve(response)));
        }
    }
    let mut pairs = BTreeSet::new();
    for (status, response) in responses {
        if status < 400 {
            continue;
        }
        let schema = &response["content"]["application/json"]["schema"];
        assert_eq!(
            schema["allOf"],
            json!([{ "$ref": "#/components/schemas/Error" }]),
            "{status}: an error response is an Error"
        );
        let codes = schema["properties"]["code"]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{status}: the response lists its codes: {schema}"));
        for code in codes {
            pairs.insert((code.as_str().unwrap().to_owned(), status));
        }
    }
    pairs
}

#[test]
fn error_codes_and_statuses_are_the_error_types() {
    let contract = Contract::new();
    let documented = documented_error_pairs(&contract);
    let pending = |code: &str| PENDING_CODES.contains(&code);
    let produced: BTreeSet<(String, u16)> = producible_errors()
        .iter()
        .map(|e| (e.code().to_owned(), e.status().as_u16()))
        .collect();
    let documented_now: BTreeSet<_> = documented
        .iter()
        .filter(|(code, _)| !pending(code))
        .cloned()
        .collect();
    assert_eq!(
        documented_now, produced,
        "(code, status) pairs: server/openapi.json vs ApiError"
    );
    let mut enum_codes: Vec<&str> = contract.doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    enum_codes.sort_unstable();
    let mut codes: Vec<&str> = documented.iter().map(|(code, _)| code.as_str()).collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(
        enum_codes, codes,
        "ErrorCode lists every code an operation can answer"
    );
    // The pending codes have the statuses the feature specifies.
    assert!(documented.contains(&("INVALID_IDEMPOTENCY_KEY".into(), 400)));
    assert!(documented.contains(&("IDEMPOTENCY_KEY_REUSED".into(), 422)));
    // Every code's example is an Error with that code.
    for code in enum_codes {
        assert_eq!(
            contract.doc["components"]["examples"][code]["value"]["code"],
            code
        );
    }
}

// ---------------------------------------------------------------------------
// Examples
// ---------------------------------------------------------------------------

/// Check every example of the document against its schema: `example` and
/// `examples` of Media Type, Parameter and Header Objects, and the `examples`
/// arrays of Schema Objects. (number checked, errors)
fn check_examples(contract: &Contract) -> (usize, Vec<String>) {
    fn schema_examples(at: &str, schema: &Value, out: &mut Vec<(String, Value, Value)>) {
        let Some(map) = schema.as_object() else {
            return;
        };
        if let Some(examples) = map.get("examples").and_then(Value::as_array) {
            for (i, example) in examples.iter().enumerate() {
                out.push((
                    format!("{at}/examples/{i}"),
                    schema.clone(),
                    example.clone(),
                ));
            }
        }
        for (key, value) in map {
            match key.as_str() {
                "properties" => {
                    for (name, sub) in value.as_object().into_iter().flatten() {
                        schema_examples(&format!("{at}/properties/{name}"), sub, out);
                    }
                }
                "items" | "not" | "additionalProperties" => {
                    schema_examples(&format!("{at}/{key}"), value, out);
                }
                "oneOf" | "anyOf" | "allOf" => {
                    for (i, sub) in value.as_array().into_iter().flatten().enumerate() {
                        schema_examples(&format!("{at}/{key}/{i}"), sub, out);
                    }
                }
                _ => {}
            }
        }
    }
    fn walk(contract: &Contract, at: &str, value: &Value, out: &mut Vec<(String, Value, Value)>) {
        match value {
            Value::Object(map) => {
                if let Some(schema) = map.get("schema") {
                    let schema = contract.resolve(schema);
                    schema_examples(&format!("{at}/schema"), schema, out);
                    if let Some(example) = map.get("example") {
                        out.push((format!("{at}/example"), schema.clone(), example.clone()));
                    }
                    for (name, example) in map
                        .get("examples")
                        .and_then(Value::as_object)
                        .into_iter()
                        .flatten()
                    {
                        let example = contract.resolve(example);
                        out.push((
                            format!("{at}/examples/{name}"),
                            schema.clone(),
                            example["value"].clone(),
                        ));
                    }
                }
                for (key, value) in map {
                    if key != "schema" && !(at == "#/components" && key == "schemas") {
                        walk(contract, &format!("{at}/{key}"), value, out);
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(contract, &format!("{at}/{i}"), item, out);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(contract, "#", &contract.doc, &mut found);
    for (name, schema) in contract.doc["components"]["schemas"].as_object().unwrap() {
        schema_examples(&format!("#/components/schemas/{name}"), schema, &mut found);
    }
    let mut errors = Vec::new();
    for (at, schema, example) in &found {
        for error in contract.errors(schema, example) {
            errors.push(format!("{at}: {error}"));
        }
    }
    (found.len(), errors)
}

#[test]
fn every_example_validates_against_its_schema() {
    let (checked, errors) = check_examples(&Contract::new());
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(checked >= 80, "only {checked} examples found");
    // Negative control: a wrong example in each kind of place is caught.
    let mut doc = document();
    doc["components"]["examples"]["INSUFFICIENT_BALANCE"]["value"]["code"] = json!("NOPE");
    doc["components"]["schemas"]["UserPoint"]["examples"][0]["point"] = json!(-1);
    doc["components"]["parameters"]["UserId"]["example"] = json!(0);
    doc["components"]["headers"]["RetryAfter"]["example"] = json!("soon");
    doc["paths"]["/point/{id}/use"]["patch"]["responses"]["409"]["content"]["application/json"]
        ["examples"]["MAX_BALANCE_EXCEEDED"] =
        json!({ "$ref": "#/components/examples/MAX_BALANCE_EXCEEDED" });
    let (_, errors) = check_examples(&Contract::of(doc));
    for wrong in [
        "NOPE",
        "UserPoint/examples/0",
        "parameters/UserId/example",
        "RetryAfter/example",
        "/point/{id}/use/patch/responses/409/content/application/json/examples/MAX_BALANCE_EXCEEDED",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(wrong)),
            "{wrong} not caught: {errors:#?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Answers of a running server
// ---------------------------------------------------------------------------

/// An answer, as received.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        text.chars().take(300).collect()
    }
}

/// A plain HTTP/1.1 client that lets a test set any header and body.
struct Http {
    client: Client,
}

impl Http {
    fn new() -> Self {
        Self { client: client() }
    }

    async fn send(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (name, value) in headers {
            // From bytes: a test may send what a client should not (obs-text).
            let value = http::HeaderValue::from_bytes(value.as_bytes()).expect("a header value");
            req = req.header(*name, value);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("a valid request");
        let res = self.client.request(req).await.expect("request failed");
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body,
        }
    }
}

/// Send `request` as is on a new connection and read one answer (the server
/// answers and closes: every request says `connection: close`).
async fn raw(addr: SocketAddr, request: &str) -> Answer {
    raw_on(addr, request, false).await
}

/// [`raw`], closing the client's half of the connection after the request.
async fn raw_half_closed(addr: SocketAddr, request: &str) -> Answer {
    raw_on(addr, request, true).await
}

async fn raw_on(addr: SocketAddr, request: &str, half_close: bool) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    if half_close {
        stream.shutdown().await.unwrap();
    }
    let text = support::http::read_until(&mut stream, "\"}").await;
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete answer");
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').expect("a header line");
        headers.append(
            http::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            value.trim().parse().unwrap(),
        );
    }
    Answer {
        status: StatusCode::from_u16(status).unwrap(),
        headers,
        body: Bytes::from(body.to_owned()),
    }
}

/// An answer that must be the error `code` with `status`.
fn expect(code: Option<String>, answer: &Answer, status: u16, expected: &str) {
    assert_eq!(
        (answer.status.as_u16(), code.as_deref()),
        (status, Some(expected)),
        "{}",
        answer.text()
    );
}

/// One request and the error it must get: (method, path, body, status, code).
type Case = (&'static str, &'static str, &'static str, u16, &'static str);

/// Send each case to `addr` and check its answer against the document.
async fn run_cases(contract: &Contract, http: &Http, addr: SocketAddr, cases: &[Case]) {
    for &(method, path, body, status, code) in cases {
        let method: Method = method.parse().unwrap();
        let answer = http.send(addr, method.clone(), path, &[], body).await;
        let got = contract.check(&method, path, &answer);
        expect(got, &answer, status, code);
    }
}

/// The documented responses no test here provokes, with why.
const NOT_PROVOKED: &[(&str, &str, &str, &str)] = &[
    (
        "GET",
        "/health",
        "500",
        "its handler calls nothing that can fail",
    ),
    (
        "GET",
        "/openapi.json",
        "500",
        "its handler calls nothing that can fail",
    ),
    (
        "GET",
        "/metrics",
        "500",
        "its text encoder fails only on a formatting error of the standard library",
    ),
];

/// Every documented response and every error code, provoked on a running server
/// and checked against the document: body schema, media type, headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_of_a_running_server_matches_the_document() {
    let contract = Contract::new();
    let http = Http::new();
    the_contract(&contract, &http).await;
    the_deadlines_and_the_lock(&contract, &http).await;
    store_failures(&contract, &http).await;
    durable_store_stats(&contract, &http).await;
    idempotency_key(&contract, &http).await;
    bearer_auth(&contract, &http).await;

    // Every error code was provoked (those of features not built here aside).
    let all: BTreeSet<String> = contract.doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .filter(|c| !PENDING_CODES.contains(&c.as_str()))
        .collect();
    let seen = contract.seen_codes.lock().unwrap().clone();
    assert_eq!(seen, all, "every error code provoked and checked");
    // And every documented response, but those listed with a reason.
    let seen = contract.seen_responses.lock().unwrap().clone();
    let mut missing = Vec::new();
    for (method, template, op) in contract.operations() {
        for status in op["responses"].as_object().unwrap().keys() {
            let excused = NOT_PROVOKED
                .iter()
                .any(|&(m, t, s, _)| (m, t, s) == (&*method, &*template, &**status));
            let key = (method.clone(), template.clone(), status.clone());
            match (seen.contains(&key), excused) {
                (false, false) => missing.push(key),
                (true, true) => panic!("{key:?} is provoked now: drop it from NOT_PROVOKED"),
                _ => {}
            }
        }
    }
    assert!(
        missing.is_empty(),
        "documented, never provoked: {missing:#?}"
    );
}

/// The course's contract on the memory store (a charge of 13 panics): every
/// operation's success, the client errors, 404, 405, 413 and a broken body.
async fn the_contract(contract: &Contract, http: &Http) {
    let s = TestServer::start(ProbeStore::new(0).with_panic_on(13), AppOptions::default()).await;
    let ok = |method: &str, path: &str, body: &str| {
        let method: Method = method.parse().unwrap();
        let (path, body) = (path.to_owned(), body.to_owned());
        async move {
            let answer = http.send(s.addr, method.clone(), &path, &[], &body).await;
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "{method} {path}: {}",
                answer.text()
            );
            contract.check(&method, &path, &answer);
            serde_json::from_slice::<Value>(&answer.body).unwrap()
        }
    };
    assert_eq!(ok("GET", "/point/1", "").await["point"], 0);
    assert_eq!(
        ok("PATCH", "/point/1/charge", r#"{"amount":100}"#).await["point"],
        100
    );
    assert_eq!(ok("PATCH", "/point/1/use", "40").await["point"], 60);
    let rows = ok("GET", "/point/1/histories", "").await;
    assert_eq!(rows.as_array().map(Vec::len), Some(2), "both rows checked");
    // A page with rows after it: the Link header checked against its schema.
    let r = http
        .send(s.addr, Method::GET, "/point/1/histories?limit=1", &[], "")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    contract.check(&Method::GET, "/point/1/histories?limit=1", &r);
    let link = r.header("link").expect("a next link");
    assert!(link.ends_with("rel=\"next\""), "{link}");
    let first_id = rows[0]["id"].as_u64().expect("id");
    let last = ok(
        "GET",
        &format!("/point/1/histories?limit=1&after={first_id}"),
        "",
    )
    .await;
    assert_eq!(last.as_array().map(Vec::len), Some(1));
    for path in ["/health", "/ready", "/stats", "/openapi.json"] {
        ok("GET", path, "").await;
    }
    let r = http.send(s.addr, Method::GET, "/metrics", &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    contract.check(&Method::GET, "/metrics", &r);
    let r = http
        .send(s.addr, Method::GET, "/openapi.json", &[], "")
        .await;
    assert_eq!(r.body, DOCUMENT.as_bytes(), "the document is served as is");
    // The client's x-request-id comes back unchanged.
    let r = http
        .send(
            s.addr,
            Method::GET,
            "/point/1",
            &[("x-request-id", "order-7")],
            "",
        )
        .await;
    contract.check(&Method::GET, "/point/1", &r);
    assert_eq!(r.header("x-request-id"), Some("order-7"));

    run_cases(
        contract,
        http,
        s.addr,
        &[
            ("GET", "/point/abc", "", 400, "INVALID_USER_ID"),
            ("GET", "/point/0/histories", "", 400, "INVALID_USER_ID"),
            (
                "GET",
                "/point/1/histories?limit=0",
                "",
                400,
                "INVALID_QUERY",
            ),
            (
                "GET",
                "/point/1/histories?after=x",
                "",
                400,
                "INVALID_QUERY",
            ),
            (
                "PATCH",
                "/point/9223372036854775808/charge",
                "1",
                400,
                "INVALID_USER_ID",
            ),
            ("PATCH", "/point/-1/use", "1", 400, "INVALID_USER_ID"),
            (
                "PATCH",
                "/point/1/charge",
                r#"{"amount":0}"#,
                400,
                "INVALID_AMOUNT",
            ),
            ("PATCH", "/point/1/use", "1.0", 400, "INVALID_AMOUNT"),
            ("PATCH", "/point/1/charge", "{", 400, "INVALID_JSON"),
            ("PATCH", "/point/1/use", "", 400, "INVALID_JSON"),
            ("PATCH", "/point/1/use", "61", 409, "INSUFFICIENT_BALANCE"),
            (
                "PATCH",
                "/point/1/charge",
                "9941",
                409,
                "MAX_BALANCE_EXCEEDED",
            ),
            ("PATCH", "/point/2/charge", "13", 500, "INTERNAL"),
            ("GET", "/nope", "", 404, "NOT_FOUND"),
            ("GET", "/point/1/", "", 404, "NOT_FOUND"),
            ("PATCH", "/point/1/refund", "1", 404, "NOT_FOUND"),
            ("POST", "/point/1", "", 405, "METHOD_NOT_ALLOWED"),
            ("GET", "/point/1/charge", "", 405, "METHOD_NOT_ALLOWED"),
            ("DELETE", "/openapi.json", "", 405, "METHOD_NOT_ALLOWED"),
        ],
    )
    .await;
    // 413 on every operation: a declared length over the limit is refused at once.
    let big = "x".repeat(5_000);
    for (method, template, _) in contract.operations() {
        if PENDING_ROUTES.contains(&(method.as_str(), template.as_str())) {
            continue;
        }
        let path = template.replace("{id}", "1");
        let method: Method = method.parse().unwrap();
        let r = http.send(s.addr, method.clone(), &path, &[], &big).await;
        let code = contract.check(&method, &path, &r);
        expect(code, &r, 413, "PAYLOAD_TOO_LARGE");
    }
    // 431 and 411 on every operation: a head over the limit, a chunked body
    // (refused before the route is looked at; the connection closes).
    let big_header = "x".repeat(17 * 1024);
    for (method, template, _) in contract.operations() {
        if PENDING_ROUTES.contains(&(method.as_str(), template.as_str())) {
            continue;
        }
        let path = template.replace("{id}", "1");
        let method: Method = method.parse().unwrap();
        let r = http
            .send(
                s.addr,
                method.clone(),
                &path,
                &[("x-big", big_header.as_str())],
                "",
            )
            .await;
        let code = contract.check(&method, &path, &r);
        expect(code, &r, 431, "HEADERS_TOO_LARGE");
        let r = raw(
            s.addr,
            &format!(
                "{method} {path} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
                 1\r\n5\r\n0\r\n\r\n"
            ),
        )
        .await;
        let code = contract.check(&method, &path, &r);
        expect(code, &r, 411, "LENGTH_REQUIRED");
    }
    // A body the client breaks off (fewer bytes than its Content-Length, then
    // its half of the connection closed) cannot be read.
    let r = raw_half_closed(
        s.addr,
        "PATCH /point/1/charge HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n12",
    )
    .await;
    let code = contract.check(&Method::PATCH, "/point/1/charge", &r);
    expect(code, &r, 400, "BAD_BODY");
    assert_eq!(s.balance(1).await, 60, "no error changed anything");
}

/// The body deadline, the lock timeout, a full lock queue and the request
/// deadline, with commits held at a gate.
async fn the_deadlines_and_the_lock(contract: &Contract, http: &Http) {
    // A change first: for the request deadline, it is the one at the gate.
    let every_wallet_route: [Case; 4] = [
        ("PATCH", "/point/1/charge", "1", 0, ""),
        ("PATCH", "/point/1/use", "1", 0, ""),
        ("GET", "/point/1", "", 0, ""),
        ("GET", "/point/1/histories", "", 0, ""),
    ];
    let answering = |status: u16, code: &'static str| {
        every_wallet_route.map(|(method, path, body, _, _)| (method, path, body, status, code))
    };
    let gated = |options: AppOptions| async move {
        let gate = Arc::new(Semaphore::new(0));
        let store = ProbeStore::new(0).with_gate(gate.clone());
        (Arc::new(TestServer::start(store, options).await), gate)
    };

    // The body never comes; then user 1 is held by a charge at the gate.
    let options = AppOptions {
        lock_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(200),
        ..AppOptions::default()
    };
    let (s, gate) = gated(options).await;
    let r = raw(
        s.addr,
        "PATCH /point/1/use HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
         content-length: 5\r\n\r\n",
    )
    .await;
    let code = contract.check(&Method::PATCH, "/point/1/use", &r);
    expect(code, &r, 408, "BODY_TIMEOUT");
    let holder = s.spawn_charge(1, 1);
    s.wait_for_lock("the holder", |l| l.len() == 1).await;
    run_cases(contract, http, s.addr, &answering(503, "LOCK_TIMEOUT")).await;
    gate.add_permits(1_000);
    assert_eq!(holder.await.unwrap().status, StatusCode::OK);

    // --lock-queue-max 1: a holder at the gate, one waiter, then refusals.
    let options = AppOptions {
        lock_queue_max: Some(1),
        ..support::patient()
    };
    let (s, gate) = gated(options).await;
    let holder = s.spawn_charge(1, 1);
    s.wait_for_lock("the holder", |l| l.len() == 1).await;
    let waiter = s.spawn_charge(1, 2);
    s.wait_for_lock("one waiter", |l| l.waiters() == 1).await;
    run_cases(contract, http, s.addr, &answering(503, "LOCK_QUEUE_FULL")).await;
    gate.add_permits(1_000);
    assert_eq!(holder.await.unwrap().status, StatusCode::OK);
    assert_eq!(waiter.await.unwrap().status, StatusCode::OK);

    // --max-in-flight 1: a change at the gate fills the stack; every route
    // but /health and /metrics is refused at once.
    let options = AppOptions {
        max_in_flight: 1,
        ..support::patient()
    };
    let (s, gate) = gated(options).await;
    let holder = s.spawn_charge(1, 1);
    s.wait_for_lock("the holder", |l| l.len() == 1).await;
    let mut overloaded: Vec<Case> = answering(503, "SERVER_OVERLOADED").to_vec();
    overloaded.extend([
        ("GET", "/ready", "", 503, "SERVER_OVERLOADED"),
        ("GET", "/stats", "", 503, "SERVER_OVERLOADED"),
        ("GET", "/openapi.json", "", 503, "SERVER_OVERLOADED"),
    ]);
    run_cases(contract, http, s.addr, &overloaded).await;
    for exempt in ["/health", "/metrics"] {
        let answer = http.send(s.addr, Method::GET, exempt, &[], "").await;
        assert_eq!(contract.check(&Method::GET, exempt, &answer), None);
        assert_eq!(answer.status, StatusCode::OK, "{exempt} is exempt");
    }
    gate.add_permits(1_000);
    assert_eq!(holder.await.unwrap().status, StatusCode::OK);

    // The whole-request deadline: a change at the gate, then the requests
    // queued behind it (the started change keeps the user's lock).
    let options = AppOptions {
        request_timeout: Duration::from_millis(300),
        ..AppOptions::default()
    };
    let (s, gate) = gated(options).await;
    run_cases(contract, http, s.addr, &answering(408, "REQUEST_TIMEOUT")).await;
    gate.add_permits(1_000);
}

/// How [`ScriptedStore`] answers a call.
#[derive(Clone, Copy, Debug)]
enum Script {
    Work,
    Fail(StoreErrorKind),
    Panic,
    Hang,
}

/// A memory store whose reads, commits and readiness fail as a test says: the
/// store failures of the real stores (a failed read or commit, a commit of
/// unknown outcome, a conflict, an unreachable database), on demand.
struct ScriptedStore {
    inner: MemoryStore,
    script: Mutex<[Script; 3]>,
}

const READS: usize = 0;
const COMMITS: usize = 1;
const READY: usize = 2;

impl ScriptedStore {
    async fn follow(&self, call: usize) -> Result<(), StoreError> {
        let script = self.script.lock().unwrap()[call];
        match script {
            Script::Work => Ok(()),
            Script::Fail(kind) => Err(StoreError::with_kind(kind, "scripted failure")),
            Script::Panic => panic!("scripted panic"),
            Script::Hang => std::future::pending().await,
        }
    }
}

impl PointStore for ScriptedStore {
    fn user_point(&self, id: UserId) -> BoxFuture<'_, Result<Option<UserPoint>, StoreError>> {
        Box::pin(async move {
            self.follow(READS).await?;
            self.inner.user_point(id).await
        })
    }

    fn histories(&self, id: UserId) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
        Box::pin(async move {
            self.follow(READS).await?;
            self.inner.histories(id).await
        })
    }

    fn commit(&self, change: Change) -> BoxFuture<'_, Result<Committed, StoreError>> {
        Box::pin(async move {
            self.follow(COMMITS).await?;
            self.inner.commit(change).await
        })
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.follow(READY))
    }

    fn idempotency_record(
        &self,
        id: UserId,
        key: &pointlock::core::IdempotencyKey,
    ) -> BoxFuture<'_, Result<Option<pointlock::core::IdempotencyRecord>, StoreError>> {
        let key = key.clone();
        Box::pin(async move {
            self.follow(READS).await?;
            self.inner.idempotency_record(id, &key).await
        })
    }

    fn sweep_idempotency(
        &self,
        expired_before: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.inner.sweep_idempotency(expired_before, limit)
    }
}

/// The full stack over `store` on a loopback port, until dropped.
async fn serve_store(store: Arc<dyn PointStore>, options: AppOptions) -> Served {
    let svc = service(
        store,
        Policy::default(),
        Arc::new(SystemClock::default()),
        KeyedLock::new(),
    );
    let app = build_app(svc, &options);
    Served::start(app, drain(Duration::from_secs(1))).await
}

/// Every store failure, scripted, on every operation that reaches the store; a
/// statistics source that panics.
async fn store_failures(contract: &Contract, http: &Http) {
    use Script::{Fail, Hang, Panic, Work};
    use StoreErrorKind::{Conflict, Failed, OutcomeUnknown, Overloaded, Unavailable};
    let store = Arc::new(ScriptedStore {
        inner: MemoryStore::new(),
        script: Mutex::new([Work; 3]),
    });
    // Long enough for every answer but the one that hangs.
    let options = AppOptions {
        request_timeout: Duration::from_secs(1),
        store_stats: Some(StoreStats::new(|| panic!("scripted stats panic"))),
        ..AppOptions::default()
    };
    let served = serve_store(store.clone(), options).await;
    let addr = served.addr;
    // A use needs points to reach its commit.
    let r = http
        .send(addr, Method::PATCH, "/point/1/charge", &[], "50")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let scripted: [([Script; 3], Case); 16] = [
        (
            [Fail(Failed), Work, Work],
            ("GET", "/point/1", "", 500, "STORE_ERROR"),
        ),
        (
            [Fail(Failed), Work, Work],
            ("GET", "/point/1/histories", "", 500, "STORE_ERROR"),
        ),
        (
            [Fail(Unavailable), Work, Work],
            ("GET", "/point/1", "", 503, "STORE_UNAVAILABLE"),
        ),
        (
            [Fail(Unavailable), Work, Work],
            ("GET", "/point/1/histories", "", 503, "STORE_UNAVAILABLE"),
        ),
        (
            [Panic, Work, Work],
            ("GET", "/point/1", "", 500, "INTERNAL"),
        ),
        (
            [Panic, Work, Work],
            ("GET", "/point/1/histories", "", 500, "INTERNAL"),
        ),
        (
            [Work, Fail(Failed), Work],
            ("PATCH", "/point/1/charge", "1", 500, "STORE_ERROR"),
        ),
        (
            [Work, Fail(OutcomeUnknown), Work],
            ("PATCH", "/point/1/use", "1", 500, "STORE_OUTCOME_UNKNOWN"),
        ),
        (
            [Work, Fail(Conflict), Work],
            ("PATCH", "/point/1/charge", "1", 503, "WRITE_CONFLICT"),
        ),
        (
            [Work, Fail(Unavailable), Work],
            ("PATCH", "/point/1/use", "1", 503, "STORE_UNAVAILABLE"),
        ),
        (
            [Work, Fail(Overloaded), Work],
            ("PATCH", "/point/1/charge", "1", 503, "STORE_OVERLOADED"),
        ),
        (
            [Work, Work, Fail(Unavailable)],
            ("GET", "/ready", "", 503, "STORE_UNAVAILABLE"),
        ),
        (
            [Work, Work, Fail(Failed)],
            ("GET", "/ready", "", 503, "STORE_ERROR"),
        ),
        ([Work, Work, Panic], ("GET", "/ready", "", 500, "INTERNAL")),
        (
            [Work, Work, Hang],
            ("GET", "/ready", "", 408, "REQUEST_TIMEOUT"),
        ),
        ([Work, Work, Work], ("GET", "/stats", "", 500, "INTERNAL")),
    ];
    for (script, case) in scripted {
        *store.script.lock().unwrap() = script;
        run_cases(contract, http, addr, &[case]).await;
    }
}

/// `GET /stats` of the SQLite store and, when the test cluster is there, the
/// PostgreSQL store, wired as the binary wires them.
async fn durable_store_stats(contract: &Contract, http: &Http) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let sqlite = Arc::new(SqliteStore::open(path, SqliteOptions::default()).unwrap());
    let read = Arc::clone(&sqlite);
    let stats = StoreStats::new(move || serde_json::to_value(read.stats()).unwrap());
    let mut stores: Vec<(Arc<dyn PointStore>, StoreStats)> = vec![(sqlite, stats)];
    let _db = if support::postgres_skipped() {
        None
    } else {
        let db = support::pg::TestDatabase::create().await;
        let options = PostgresOptions::default();
        let pg = Arc::new(PostgresStore::connect(db.url(), options).await.unwrap());
        let read = Arc::clone(&pg);
        let stats = StoreStats::new(move || serde_json::to_value(read.stats()).unwrap());
        stores.push((pg, stats));
        Some(db)
    };
    for (store, stats) in stores {
        let options = AppOptions {
            store_stats: Some(stats),
            ..AppOptions::default()
        };
        let served = serve_store(store, options).await;
        let addr = served.addr;
        let r = http
            .send(addr, Method::PATCH, "/point/1/charge", &[], "5")
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let r = http.send(addr, Method::GET, "/stats", &[], "").await;
        assert_eq!(r.status, StatusCode::OK);
        contract.check(&Method::GET, "/stats", &r);
        let stats: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(stats["store"].is_object(), "{stats}");
    }
}

// ---------------------------------------------------------------------------
// Features documented ahead of their code (other branches)
// ---------------------------------------------------------------------------

/// `GET /metrics` as documented: 200 with the OpenMetrics text, the body-limit
/// 413 like every route, 405 for another method.
#[tokio::test]
async fn metrics_is_served_as_documented() {
    let contract = Contract::new();
    let http = Http::new();
    let s = TestServer::start(ProbeStore::new(0), AppOptions::default()).await;
    s.charge(1, 5).await;
    let r = http.send(s.addr, Method::GET, "/metrics", &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    contract.check(&Method::GET, "/metrics", &r);
    assert!(!r.body.is_empty());
    let r = http
        .send(s.addr, Method::GET, "/metrics", &[], &"x".repeat(5_000))
        .await;
    contract.check(&Method::GET, "/metrics", &r);
    let r = http.send(s.addr, Method::POST, "/metrics", &[], "").await;
    let code = contract.check(&Method::POST, "/metrics", &r);
    expect(code, &r, 405, "METHOD_NOT_ALLOWED");
}

/// `Idempotency-Key` on charge and use: the replay (header, same bytes), 422 for a
/// reused key, 400 for malformed ones, each answer checked against the document.
async fn idempotency_key(contract: &Contract, http: &Http) {
    let s = TestServer::start(ProbeStore::new(0), AppOptions::default()).await;
    let a = s.addr;
    let key = |k: &'static str| [("idempotency-key", k)];
    let first = http
        .send(
            a,
            Method::PATCH,
            "/point/1/charge",
            &key("k-1"),
            r#"{"amount":10}"#,
        )
        .await;
    contract.check(&Method::PATCH, "/point/1/charge", &first);
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("idempotent-replayed"), None);
    // A retry, in either body form: the first answer, byte for byte, not applied again.
    for body in [r#"{"amount":10}"#, "10"] {
        let again = http
            .send(a, Method::PATCH, "/point/1/charge", &key("k-1"), body)
            .await;
        contract.check(&Method::PATCH, "/point/1/charge", &again);
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(again.body, first.body, "byte for byte");
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
    }
    assert_eq!(s.balance(1).await, 10, "applied once");
    // The same key for another amount or operation: 422, nothing changed.
    for (path, body) in [("/point/1/charge", "11"), ("/point/1/use", "10")] {
        let r = http.send(a, Method::PATCH, path, &key("k-1"), body).await;
        let code = contract.check(&Method::PATCH, path, &r);
        expect(code, &r, 422, "IDEMPOTENCY_KEY_REUSED");
    }
    // Keys are per user: user 2 may use k-1 for its own charge.
    let other = http
        .send(a, Method::PATCH, "/point/2/charge", &key("k-1"), "7")
        .await;
    contract.check(&Method::PATCH, "/point/2/charge", &other);
    assert_eq!(other.status, StatusCode::OK);
    // Malformed keys: 400, nothing changed.
    let long = "k".repeat(256);
    for bad in ["a b", long.as_str(), "caf\u{e9}"] {
        let r = http
            .send(
                a,
                Method::PATCH,
                "/point/1/use",
                &[("idempotency-key", bad)],
                "1",
            )
            .await;
        let code = contract.check(&Method::PATCH, "/point/1/use", &r);
        expect(code, &r, 400, "INVALID_IDEMPOTENCY_KEY");
    }
    // 255 visible characters are a valid key.
    let longest = "k".repeat(255);
    let r = http
        .send(
            a,
            Method::PATCH,
            "/point/1/use",
            &[("idempotency-key", longest.as_str())],
            "1",
        )
        .await;
    contract.check(&Method::PATCH, "/point/1/use", &r);
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(s.balance(1).await, 9);
}

// ---------------------------------------------------------------------------
// Bearer authentication
// ---------------------------------------------------------------------------

/// The document's security requirements are the authentication layer's: an
/// operation declares bearer (optional: off by default) exactly where
/// `auth::access` asks for a token, the admin scope where it asks for one,
/// and 401 and 403 exactly there.
#[test]
fn the_security_requirements_are_the_auth_layers() {
    let contract = Contract::new();
    assert_eq!(
        contract.doc["components"]["securitySchemes"]["bearerAuth"]
            .as_object()
            .map(|scheme| (&scheme["type"], &scheme["scheme"], &scheme["bearerFormat"])),
        Some((&json!("http"), &json!("bearer"), &json!("JWT")))
    );
    assert!(
        contract.doc.get("security").is_none(),
        "no requirement for the whole API: the open routes stay open"
    );
    let mut protected = 0;
    for (method, template, op) in contract.operations() {
        let path = template.replace("{id}", "1");
        let expected = match access(&path, true) {
            Access::User(_) => Some(json!([{ "bearerAuth": [] }, {}])),
            Access::Admin => Some(json!([{ "bearerAuth": ["points:admin"] }, {}])),
            Access::Open => None,
            Access::Authenticated => panic!("{template}: a documented path with a valid id"),
        };
        let what = format!("{method} {template}");
        assert_eq!(op.get("security"), expected.as_ref(), "{what}");
        for status in ["401", "403"] {
            assert_eq!(
                op["responses"].get(status).is_some(),
                expected.is_some(),
                "{what}: {status} documented where a token is needed"
            );
        }
        protected += usize::from(expected.is_some());
    }
    assert_eq!(protected, 6, "the four wallet routes, /metrics and /stats");
}

/// 401 and 403 on every operation that documents them, from a server with
/// bearer authentication on (HS256, `--metrics-require-admin`), each answer
/// checked against the document; the tokens that grant each operation; and
/// the open operations answering without a token.
async fn bearer_auth(contract: &Contract, http: &Http) {
    let options = AppOptions {
        auth: Some(Scheme::Hs256.auth().operations_admin_only(true)),
        ..AppOptions::default()
    };
    let s = TestServer::start(ProbeStore::new(0), options).await;
    let sign = |claims: &Value| bearer(&Scheme::Hs256.sign(claims));
    let mut expired = claims(json!("1"));
    expired["exp"] = json!(now() - 3_600);
    let owner = sign(&claims(json!("1")));
    let stranger = sign(&claims(json!("2")));
    let admin = sign(&admin_claims());
    let refusals: [(&str, Option<String>, u16, &str); 5] = [
        ("no token", None, 401, "UNAUTHORIZED"),
        ("expired", Some(sign(&expired)), 401, "UNAUTHORIZED"),
        (
            "alg: none",
            Some(bearer(&alg_none(&claims(json!("1"))))),
            401,
            "UNAUTHORIZED",
        ),
        ("not bearer", Some("Basic eDp5".into()), 401, "UNAUTHORIZED"),
        ("another user", Some(stranger), 403, "FORBIDDEN"),
    ];
    let mut protected = 0;
    for (method, template, op) in contract.operations() {
        let path = template.replace("{id}", "1");
        let method: Method = method.parse().unwrap();
        let body = if method == Method::PATCH { "1" } else { "" };
        let send = |authorization: Option<String>| {
            let (method, path) = (method.clone(), path.clone());
            async move {
                let headers: Vec<(&str, &str)> = authorization
                    .as_deref()
                    .map(|value| ("authorization", value))
                    .into_iter()
                    .collect();
                http.send(s.addr, method, &path, &headers, body).await
            }
        };
        if op["responses"].get("401").is_none() {
            let r = send(None).await;
            contract.check(&method, &path, &r);
            assert_eq!(r.status, StatusCode::OK, "{method} {path} is open");
            continue;
        }
        protected += 1;
        for (name, authorization, status, code) in &refusals {
            let r = send(authorization.clone()).await;
            let got = contract.check(&method, &path, &r);
            assert!(
                r.header("www-authenticate").is_some(),
                "{name}: {method} {path}"
            );
            expect(got, &r, *status, code);
        }
        let granted: &[&str] = if template.contains("{id}") {
            &[&owner, &admin]
        } else {
            &[&admin]
        };
        for authorization in granted {
            let r = send(Some((*authorization).to_owned())).await;
            contract.check(&method, &path, &r);
            assert_eq!(r.status, StatusCode::OK, "{method} {path}: {}", r.text());
        }
    }
    assert_eq!(protected, 6);
    assert_eq!(
        s.store.commits(),
        4,
        "only the granted changes reached the store"
    );
}
