//! Model-based property test over real HTTP: concurrent batches, checked for
//! linearizability per user, on every store.
//!
//! Each case starts a server (the lock layer and a real `KeyedLock` in front
//! of `ProbeStore` with 0..=3 ms of latency per store call), gives each of its
//! 1 to 3 users an opening balance (one charge, answered before anything
//! else is sent), then fires 1 to 40 requests at once: charges and uses,
//! unkeyed or with an idempotency key from a pool of three per user (the same
//! request under a key again, so duplicates race and replay, or another
//! request under it, so 422s happen), balance and history reads. Amounts are
//! small, large, near the maximum balance (10,000) and past it, so 409s happen
//! too. Every answer is kept with the instants its request was sent and its
//! answer read.
//!
//! Then, per user, [`check_user`] decides whether the answers are
//! linearizable against the sequential rules of the README, with the user's
//! history (read once everything has answered) as the order of the applied
//! changes. Each change request has an amount no other request of that user
//! has (a request repeated under its key keeps its amount: it is the same
//! request), so a history row names the request that wrote it:
//!
//! - the history is one sequence: ids increasing, the running balance within
//!   `0..=10,000`, and the final balance (and its `updateMillis`) is its end;
//! - every row was asked for, by exactly one answer that says it applied (200
//!   without `Idempotent-Replayed`), and that answer is the running balance at
//!   that row, with the row's time as `updateMillis`; no request and no key
//!   applies twice;
//! - a replay (`Idempotent-Replayed: true`) answers exactly the bytes of the
//!   answer that applied its key's request; a 422 names the request its key
//!   applied, and that request is another one;
//! - a 409 is the refusal, message and balance included, that the rules give
//!   at some point of the sequence where the request could have run (for a
//!   keyed request: before its key's row);
//! - a balance read is the balance at some such point, a history read a
//!   prefix of the history;
//! - real time: every request's point in the sequence lies after the rows of
//!   requests answered before it was sent, and before the rows of requests
//!   sent after it was answered.
//!
//! Non-mutating answers (refusals, replays, 422s, reads) change nothing, so
//! each can be placed on its own: these checks are the whole linearizability
//! question, not an approximation of it.
//!
//! With every defence on no change may be answered 503, and the store's
//! condition may refuse no commit: nothing bypasses the lock (a control
//! injects one 503 and must fail). The run's tally must show every kind of
//! answer the check judges (applied, replayed, 409, 422, reads).
//!
//! The same property runs with the second line of defence alone (no lock
//! layer, a lock that excludes nothing, the store's condition on), where 503
//! `WRITE_CONFLICT` (nothing changed) is also allowed, and 503
//! `STORE_UNAVAILABLE` (the pipelined SQLite store withholding a refusal or
//! replay computed from sequenced state while a racing change failed: nothing
//! changed either), except on a store that decides each request itself
//! (PostgreSQL), which refuses nothing for contention; it found a real bug,
//! fixed since (a 409 for a keyed request that its duplicate had applied). The negative control runs
//! it with both lines off (the condition switched off too) and must find a
//! violation.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode};
use pointlock::core::policy::MAX_BALANCE_DEFAULT;
use pointlock::core::{KeyedLock, PointError, Policy, StoreErrorKind, TransactionType};
use pointlock::server::AppOptions;
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{json, Value};
use support::{patient, Backend, Fault, ProbeStore, TestServer};

const MAX_BALANCE: u64 = MAX_BALANCE_DEFAULT;
/// Each store call waits 0..=LATENCY_MS ms: the window the lock must close.
const LATENCY_MS: u64 = 3;
const USERS_MAX: usize = 3;
const REQUESTS_MAX: usize = 40;
const KEYS: [&str; 3] = ["k0", "k1", "k2"];

// ---------------------------------------------------------------------------
// What a case sends.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum What {
    Change {
        kind: TransactionType,
        amount: u64,
        key: Option<&'static str>,
    },
    Point,
    Histories,
}

#[derive(Clone, Copy, Debug)]
struct Request {
    /// The user's slot in the case (0..users).
    user: usize,
    what: What,
}

#[derive(Clone, Debug)]
struct Batch {
    users: usize,
    /// Opening charges, (user slot, amount), each answered before the next is sent.
    setup: Vec<(usize, u64)>,
    /// Sent all at once.
    requests: Vec<Request>,
}

/// A drawn request before its amount is made unique.
#[derive(Clone, Copy, Debug)]
enum Drawn {
    Change {
        kind: TransactionType,
        amount: u64,
        /// A key, and whether to send the key's first request again (the
        /// same request) or another one.
        key: Option<(usize, bool)>,
    },
    Point,
    Histories,
}

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 1..=300_u64,
        2 => 1_000..=4_000_u64,
        2 => 7_000..=MAX_BALANCE,
        1 => MAX_BALANCE + 1..=2 * MAX_BALANCE,
    ]
}

fn kind() -> impl Strategy<Value = TransactionType> {
    prop_oneof![Just(TransactionType::Charge), Just(TransactionType::Use)]
}

fn drawn() -> impl Strategy<Value = Drawn> {
    prop_oneof![
        4 => (kind(), amount()).prop_map(|(kind, amount)| Drawn::Change { kind, amount, key: None }),
        4 => (kind(), amount(), 0..KEYS.len()).prop_map(|(kind, amount, key)| Drawn::Change {
            kind,
            amount,
            key: Some((key, true)),
        }),
        1 => (kind(), amount(), 0..KEYS.len()).prop_map(|(kind, amount, key)| Drawn::Change {
            kind,
            amount,
            key: Some((key, false)),
        }),
        1 => Just(Drawn::Point),
        1 => Just(Drawn::Histories),
    ]
}

fn batch() -> impl Strategy<Value = Batch> {
    let opening = prop_oneof![Just(0), 1..=MAX_BALANCE];
    (
        1..=USERS_MAX,
        vec(opening, USERS_MAX),
        vec((0..USERS_MAX, drawn()), 1..=REQUESTS_MAX),
    )
        .prop_map(|(users, opening, drawn)| plan(users, &opening, &drawn))
}

/// The batch to send: per user, every distinct request gets an amount of its
/// own (bumped up past the amounts taken), and a key's repeated request its
/// first amount.
fn plan(users: usize, opening: &[u64], drawn: &[(usize, Drawn)]) -> Batch {
    fn unique(taken: &mut BTreeSet<u64>, mut amount: u64) -> u64 {
        while !taken.insert(amount) {
            amount += 1;
        }
        amount
    }
    let mut taken = vec![BTreeSet::new(); users];
    let setup = opening
        .iter()
        .take(users)
        .enumerate()
        .filter(|(_, amount)| **amount > 0)
        .map(|(user, amount)| (user, unique(&mut taken[user], *amount)))
        .collect();
    let mut first_request: BTreeMap<(usize, usize), (TransactionType, u64)> = BTreeMap::new();
    let requests = drawn
        .iter()
        .map(|(user, drawn)| {
            let user = user % users;
            let what = match *drawn {
                Drawn::Point => What::Point,
                Drawn::Histories => What::Histories,
                Drawn::Change { kind, amount, key } => {
                    let (kind, amount) = match key {
                        Some((key, true)) => *first_request
                            .entry((user, key))
                            .or_insert_with(|| (kind, unique(&mut taken[user], amount))),
                        _ => (kind, unique(&mut taken[user], amount)),
                    };
                    What::Change {
                        kind,
                        amount,
                        key: key.map(|(key, _)| KEYS[key]),
                    }
                }
            };
            Request { user, what }
        })
        .collect();
    Batch {
        users,
        setup,
        requests,
    }
}

// ---------------------------------------------------------------------------
// Sending.

/// A request and its answer, with when it was sent and when its answer was read.
struct Sent {
    request: Request,
    start: Instant,
    end: Instant,
    status: StatusCode,
    replayed: bool,
    body: Bytes,
}

async fn send(server: &TestServer, id: u64, request: Request) -> Sent {
    let (method, path, body, key) = match request.what {
        What::Change { kind, amount, key } => {
            let op = match kind {
                TransactionType::Charge => "charge",
                TransactionType::Use => "use",
            };
            (
                Method::PATCH,
                format!("/point/{id}/{op}"),
                amount.to_string(),
                key,
            )
        }
        What::Point => (Method::GET, format!("/point/{id}"), String::new(), None),
        What::Histories => (
            Method::GET,
            format!("/point/{id}/histories"),
            String::new(),
            None,
        ),
    };
    let headers: Vec<(&str, &[u8])> = key
        .map(|key| ("idempotency-key", key.as_bytes()))
        .into_iter()
        .collect();
    let start = Instant::now();
    let (status, headers, body) = server.send_raw(method, &path, &headers, &body).await;
    let end = Instant::now();
    let replayed = match headers.get("idempotent-replayed") {
        None => false,
        Some(value) => {
            assert_eq!(value, "true", "Idempotent-Replayed is true or absent");
            true
        }
    };
    Sent {
        request,
        start,
        end,
        status,
        replayed,
        body,
    }
}

/// Which defences the server has.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Defences {
    /// The lock layer, a real lock, the store's condition.
    All,
    /// None of them (negative control).
    None,
    /// The store's condition only: no lock layer, a lock that excludes
    /// nothing (several instances on one database behave so).
    ConditionOnly,
}

/// One store for all the cases of a run (each case has users of its own).
struct World {
    store: Arc<ProbeStore>,
    /// The store decides each request itself (PostgreSQL): nothing is ever
    /// refused for contention, whatever the defences.
    decides: bool,
    users_taken: AtomicU64,
    cases: AtomicU64,
    /// Answers seen, by outcome (what the generator reached).
    tally: Mutex<BTreeMap<&'static str, u64>>,
}

/// The outcome of an answer, for the tally.
fn outcome(sent: &Sent) -> &'static str {
    match (sent.request.what, sent.status) {
        (What::Change { .. }, StatusCode::OK) if sent.replayed => "replayed",
        (What::Change { .. }, StatusCode::OK) => "applied",
        (What::Change { .. }, StatusCode::UNPROCESSABLE_ENTITY) => "key reused (422)",
        (What::Change { .. }, StatusCode::CONFLICT) => "refused (409)",
        (What::Change { .. }, StatusCode::SERVICE_UNAVAILABLE) => "write conflict (503)",
        (What::Point | What::Histories, StatusCode::OK) => "read",
        _ => "other",
    }
}

impl World {
    async fn new(backend: Backend) -> Self {
        Self::over(ProbeStore::on(backend, LATENCY_MS).await, backend)
    }

    /// A world over `store`, a store of `backend`.
    fn over(store: ProbeStore, backend: Backend) -> Self {
        Self {
            store: Arc::new(store),
            decides: backend.decides(),
            users_taken: AtomicU64::new(0),
            cases: AtomicU64::new(0),
            tally: Mutex::new(BTreeMap::new()),
        }
    }

    /// Start a server, send the batch, read every user's final state, check.
    async fn run(&self, batch: &Batch, defences: Defences) -> Result<(), String> {
        let server = Arc::new(match defences {
            Defences::All => {
                TestServer::start_shared(
                    Arc::clone(&self.store),
                    patient(),
                    KeyedLock::new(),
                    Policy::default(),
                    true,
                )
                .await
            }
            Defences::None | Defences::ConditionOnly => {
                let options = AppOptions {
                    lock_layer: false,
                    ..patient()
                };
                TestServer::start_shared(
                    Arc::clone(&self.store),
                    options,
                    KeyedLock::unsynchronized(),
                    Policy::default(),
                    defences == Defences::ConditionOnly,
                )
                .await
            }
        });
        let base = self
            .users_taken
            .fetch_add(USERS_MAX as u64, Ordering::Relaxed);
        let ids: Vec<u64> = (1..=batch.users as u64).map(|n| base + n).collect();
        let mut sent = Vec::new();
        for &(user, amount) in &batch.setup {
            let what = What::Change {
                kind: TransactionType::Charge,
                amount,
                key: None,
            };
            sent.push(send(&server, ids[user], Request { user, what }).await);
        }
        let tasks: Vec<_> = batch
            .requests
            .iter()
            .map(|request| {
                let server = Arc::clone(&server);
                let (request, id) = (*request, ids[request.user]);
                tokio::spawn(async move { send(&server, id, request).await })
            })
            .collect();
        for task in tasks {
            sent.push(task.await.expect("a request task panicked"));
        }
        self.cases.fetch_add(1, Ordering::Relaxed);
        let stats = server.get("/stats").await.json;
        let conflicts = stats["service"]["commitConflicts"].as_u64().unwrap_or(0);
        *self
            .tally
            .lock()
            .unwrap()
            .entry("(commits the condition refused)")
            .or_default() += conflicts;
        {
            let mut tally = self.tally.lock().unwrap();
            for s in &sent {
                *tally.entry(outcome(s)).or_default() += 1;
            }
        }
        if defences == Defences::All || self.decides {
            // Nothing bypasses the lock, or the store decides at each
            // request's place: no answer may be a refusal for contention.
            if conflicts > 0 {
                return Err(format!(
                    "{conflicts} commits refused by the store's condition with nothing bypassing \
                     the lock"
                ));
            }
            if let Some(s) = sent
                .iter()
                .find(|s| s.status == StatusCode::SERVICE_UNAVAILABLE)
            {
                return Err(format!(
                    "a 503 with nothing bypassing the lock: {:?} -> {}",
                    s.request,
                    String::from_utf8_lossy(&s.body)
                ));
            }
        }
        for (user, id) in ids.iter().enumerate() {
            let history = server.history(*id).await;
            let point = server.get(&format!("/point/{id}")).await.json;
            let mine: Vec<&Sent> = sent.iter().filter(|s| s.request.user == user).collect();
            check_user(*id, &mine, &history, &point)
                .map_err(|violation| format!("user {id}: {violation}"))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The check.

/// A history row, as read.
struct Row {
    kind: TransactionType,
    amount: u64,
    time: i64,
}

fn parse_rows(id: u64, history: &[Value]) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let mut last_id = 0;
    for row in history {
        let field = |name: &str| row[name].clone();
        if field("userId") != json!(id) {
            return Err(format!("a row of another user: {row}"));
        }
        let row_id = field("id").as_u64().ok_or(format!("row id: {row}"))?;
        if row_id <= last_id {
            return Err(format!("history ids not increasing: {history:?}"));
        }
        last_id = row_id;
        let kind = match field("type").as_str() {
            Some("CHARGE") => TransactionType::Charge,
            Some("USE") => TransactionType::Use,
            _ => return Err(format!("row type: {row}")),
        };
        rows.push(Row {
            kind,
            amount: field("amount").as_u64().ok_or(format!("amount: {row}"))?,
            time: field("timeMillis")
                .as_i64()
                .ok_or(format!("timeMillis: {row}"))?,
        });
    }
    Ok(rows)
}

fn json_of(body: &Bytes) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("not JSON ({e}): {body:?}"))
}

/// `request`'s kind, amount and key, if it is a change.
fn change_of(sent: &Sent) -> Option<(TransactionType, u64, Option<&'static str>)> {
    match sent.request.what {
        What::Change { kind, amount, key } => Some((kind, amount, key)),
        _ => None,
    }
}

/// Whether the answers to `sent` (one user's requests) are linearizable, with
/// `history` as the order of the applied changes; see the module docs.
fn check_user(id: u64, sent: &[&Sent], history: &[Value], point: &Value) -> Result<(), String> {
    let rows = parse_rows(id, history)?;
    let n = rows.len();
    // balance[j]: after the first j rows.
    let mut balance = vec![0_u64];
    for (i, row) in rows.iter().enumerate() {
        let before = i128::from(balance[i]);
        let after = match row.kind {
            TransactionType::Charge => before + i128::from(row.amount),
            TransactionType::Use => before - i128::from(row.amount),
        };
        if !(0..=i128::from(MAX_BALANCE)).contains(&after) {
            return Err(format!(
                "the history runs to {after} at row {}: {history:?}",
                i + 1
            ));
        }
        balance.push(u64::try_from(after).unwrap());
    }
    let time = |j: usize| rows[j - 1].time;
    // The final balance is the end of the sequence.
    let mut end = json!({"id": id, "point": balance[n]});
    if n > 0 {
        end["updateMillis"] = json!(time(n));
    } else {
        end["updateMillis"] = point["updateMillis"].clone();
    }
    if *point != end {
        return Err(format!(
            "final balance {point} is not the end of the history {end}"
        ));
    }

    // Each row names the request that wrote it (amounts are unique per request).
    let mut row_of_amount: BTreeMap<u64, usize> = BTreeMap::new();
    let mut row_of_key: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        let j = i + 1;
        let asker = sent
            .iter()
            .filter_map(|s| change_of(s))
            .find(|(_, amount, _)| *amount == row.amount);
        let Some((kind, _, key)) = asker else {
            return Err(format!(
                "row {j} ({:?} {}) was never asked for",
                row.kind, row.amount
            ));
        };
        if kind != row.kind {
            return Err(format!("row {j} is a {:?} of a {kind:?}", row.kind));
        }
        if let Some(earlier) = row_of_amount.insert(row.amount, j) {
            return Err(format!(
                "one request applied twice: rows {earlier} and {j} ({kind:?} {})",
                row.amount
            ));
        }
        if let Some(key) = key {
            if let Some(earlier) = row_of_key.insert(key, j) {
                return Err(format!("key {key} applied twice: rows {earlier} and {j}"));
            }
        }
    }

    // The rows of the answers that say they applied.
    let mut applied: BTreeMap<usize, &Sent> = BTreeMap::new();
    for s in sent {
        if let (Some((_, amount, _)), StatusCode::OK, false) = (change_of(s), s.status, s.replayed)
        {
            let Some(&j) = row_of_amount.get(&amount) else {
                return Err(format!(
                    "{:?} answered applied ({:?}) but has no row",
                    s.request.what, s.body
                ));
            };
            if applied.insert(j, s).is_some() {
                return Err(format!("row {j} answered as applied twice"));
            }
        }
    }
    if let Some(j) = (1..=n).find(|j| !applied.contains_key(j)) {
        return Err(format!("row {j} has no answer that applied it"));
    }

    // Where in the sequence a request may have taken effect, by real time:
    // after the rows of requests answered before it was sent, before the rows
    // of requests sent after it was answered.
    let window = |s: &Sent| {
        let lo = applied
            .iter()
            .filter(|(_, a)| a.end < s.start)
            .map(|(j, _)| *j)
            .max()
            .unwrap_or(0);
        let hi = applied
            .iter()
            .filter(|(_, a)| a.start > s.end)
            .map(|(j, _)| *j - 1)
            .min()
            .unwrap_or(n);
        (lo, hi)
    };

    for s in sent {
        let (lo, hi) = window(s);
        let what = s.request.what;
        let answer = || format!("{what:?} answered {} {:?}", s.status, s.body);
        match (what, s.status) {
            (What::Change { amount, .. }, StatusCode::OK) if !s.replayed => {
                let j = row_of_amount[&amount];
                let want = json!({"id": id, "point": balance[j], "updateMillis": time(j)});
                if json_of(&s.body)? != want {
                    return Err(format!(
                        "{}, but row {j} of the history makes it {want}",
                        answer()
                    ));
                }
                if !(lo < j && j <= hi) {
                    return Err(format!(
                        "{}: row {j} is out of real-time order (window {lo}..={hi})",
                        answer()
                    ));
                }
            }
            (What::Change { kind, amount, key }, StatusCode::OK) => {
                let Some(&k) = key.and_then(|key| row_of_key.get(key)) else {
                    return Err(format!("{}: a replay of nothing applied", answer()));
                };
                if rows[k - 1].amount != amount || rows[k - 1].kind != kind {
                    return Err(format!(
                        "{}: a replay of another request (row {k})",
                        answer()
                    ));
                }
                if s.body != applied[&k].body {
                    return Err(format!(
                        "{}: not the bytes of the first answer {:?}",
                        answer(),
                        applied[&k].body
                    ));
                }
                if lo.max(k) > hi {
                    return Err(format!(
                        "{}: replays row {k}, not yet written then (window {lo}..={hi})",
                        answer()
                    ));
                }
            }
            (What::Change { kind, amount, key }, StatusCode::UNPROCESSABLE_ENTITY) => {
                let Some(&k) = key.and_then(|key| row_of_key.get(key)) else {
                    return Err(format!("{}: the key applied nothing", answer()));
                };
                let first = &rows[k - 1];
                if (first.kind, first.amount) == (kind, amount) {
                    return Err(format!("{}: the key's request is this one", answer()));
                }
                let want = error_body(&PointError::IdempotencyKeyReused {
                    kind: first.kind.as_str(),
                    amount: first.amount,
                });
                if json_of(&s.body)? != want {
                    return Err(format!("{}; expected {want}", answer()));
                }
                if lo.max(k) > hi {
                    return Err(format!(
                        "{}: row {k} not yet written then (window {lo}..={hi})",
                        answer()
                    ));
                }
            }
            (What::Change { kind, amount, key }, StatusCode::CONFLICT) => {
                // Before its key's row, if its key applied.
                let last = key
                    .and_then(|key| row_of_key.get(key))
                    .map_or(hi, |k| hi.min(k - 1));
                let body = json_of(&s.body)?;
                let fits = (lo..=last).any(|j| {
                    refusal(kind, balance[j], amount).is_some_and(|e| error_body(&e) == body)
                });
                if !fits {
                    return Err(format!(
                        "{}: no point {lo}..={last} of the sequence {balance:?} refuses it so",
                        answer()
                    ));
                }
            }
            (What::Point, StatusCode::OK) => {
                let body = json_of(&s.body)?;
                let fits = (lo..=hi).any(|j| {
                    body["id"] == json!(id)
                        && body["point"] == json!(balance[j])
                        && (j == 0 || body["updateMillis"] == json!(time(j)))
                });
                if !fits {
                    return Err(format!(
                        "{}: not the balance at any point {lo}..={hi} of {balance:?}",
                        answer()
                    ));
                }
            }
            (What::Histories, StatusCode::OK) => {
                let body = json_of(&s.body)?;
                let fits = (lo..=hi).any(|m| body == Value::Array(history[..m].to_vec()));
                if !fits {
                    return Err(format!(
                        "{}: not a prefix {lo}..={hi} of the history",
                        answer()
                    ));
                }
            }
            (What::Change { .. }, StatusCode::SERVICE_UNAVAILABLE)
                if json_of(&s.body)?["code"] == "WRITE_CONFLICT"
                    || json_of(&s.body)?["code"] == "STORE_UNAVAILABLE" =>
            {
                // Retryable, nothing changed: a row of its request, if any, is
                // a duplicate's (checked above: one applied answer per row).
            }
            _ => return Err(format!("{}: unexpected status", answer())),
        }
    }
    Ok(())
}

/// The refusal the rules give `kind` of `amount` at `balance`, if any.
fn refusal(kind: TransactionType, balance: u64, amount: u64) -> Option<PointError> {
    match kind {
        TransactionType::Charge if balance + amount > MAX_BALANCE => {
            Some(PointError::MaxBalanceExceeded {
                balance,
                amount,
                max_balance: MAX_BALANCE,
            })
        }
        TransactionType::Use if amount > balance => {
            Some(PointError::InsufficientBalance { balance, amount })
        }
        _ => None,
    }
}

fn error_body(error: &PointError) -> Value {
    json!({"code": error.code(), "message": error.to_string()})
}

// ---------------------------------------------------------------------------
// The tests.

/// The property with `defences` on `backend`.
async fn linearizable(backend: Backend, defences: Defences) {
    let world = World::new(backend).await;
    tokio::task::block_in_place(|| {
        let runtime = tokio::runtime::Handle::current();
        support::model::check(batch(), |batch| {
            runtime.block_on(world.run(&batch, defences))
        });
    });
    let tally = world.tally.lock().unwrap();
    eprintln!(
        "{} cases, answers by outcome: {tally:?}",
        world.cases.load(Ordering::Relaxed)
    );
    // The generator reached every kind of answer the check judges.
    for reached in [
        "applied",
        "replayed",
        "refused (409)",
        "key reused (422)",
        "read",
    ] {
        assert!(
            tally.get(reached).copied().unwrap_or(0) > 0,
            "no {reached} answer in the whole run: {tally:?}"
        );
    }
}

async fn concurrent_answers_are_linearizable_per_user_on(backend: Backend) {
    linearizable(backend, Defences::All).await;
}

/// The second line of defence alone (how several instances on one database
/// meet): answers stay linearizable; some are 503 `WRITE_CONFLICT`, which
/// changed nothing. This found the refusal of a request whose duplicate had
/// applied (see `core/src/service.rs`:
/// `a_duplicate_applied_between_the_key_lookup_and_the_balance_read_is_replayed_not_refused`).
async fn without_the_lock_the_condition_alone_keeps_answers_linearizable_on(backend: Backend) {
    linearizable(backend, Defences::ConditionOnly).await;
}

on_every_store! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    concurrent_answers_are_linearizable_per_user
        / sqlite_concurrent_answers_are_linearizable_per_user
        / pg_concurrent_answers_are_linearizable_per_user
        => concurrent_answers_are_linearizable_per_user_on;
    without_the_lock_the_condition_alone_keeps_answers_linearizable
        / sqlite_without_the_lock_the_condition_alone_keeps_answers_linearizable
        / pg_without_the_lock_the_condition_alone_keeps_answers_linearizable
        => without_the_lock_the_condition_alone_keeps_answers_linearizable_on;
}

/// Both lines of defence off: the same property, on the same random batches
/// (a fixed seed), must find a violation (lost updates answer balances the
/// history does not have; duplicates apply twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_without_the_lock_and_the_condition_the_check_fails() {
    let world = World::new(Backend::Memory).await;
    let config = support::model::Config {
        cases: 64,
        max_shrink_iters: 0,
        ..support::model::config()
    };
    let found = tokio::task::block_in_place(|| {
        let runtime = tokio::runtime::Handle::current();
        support::model::find_failure(config, batch(), |batch| {
            runtime.block_on(world.run(&batch, Defences::None))
        })
    });
    let (violation, batch) = found.expect("without the lock and the condition the check must fail");
    eprintln!(
        "the negative control's violation, in case {} (of {} requests): {violation}",
        world.cases.load(Ordering::Relaxed),
        batch.requests.len()
    );
}

/// A server that answers one change 503 with every defence on (an injected
/// store failure that changed nothing) must fail the property: a 503 is not
/// an answer the check accepts there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_a_503_with_every_defence_on_fails_the_check() {
    let store = ProbeStore::on(Backend::Memory, LATENCY_MS)
        .await
        .with_fault(3, Fault::Fail(StoreErrorKind::Unavailable));
    let world = World::over(store, Backend::Memory);
    let config = support::model::Config {
        cases: 16,
        max_shrink_iters: 0,
        ..support::model::config()
    };
    let found = tokio::task::block_in_place(|| {
        let runtime = tokio::runtime::Handle::current();
        support::model::find_failure(config, batch(), |batch| {
            runtime.block_on(world.run(&batch, Defences::All))
        })
    });
    let (violation, _) = found.expect("a 503 with every defence on must fail the check");
    assert!(violation.contains("a 503"), "{violation}");
}

/// The check itself can fail: a hand-made run that it accepts, and one
/// mutation of it per rule, each of which it must reject.
#[test]
fn the_check_rejects_each_kind_of_violation() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
    let change = |kind, amount, key| What::Change { kind, amount, key };
    let sent = |(start, end): (u64, u64), what, status, replayed, body: &str| Sent {
        request: Request { user: 0, what },
        start: at(start),
        end: at(end),
        status,
        replayed,
        body: Bytes::from(body.to_owned()),
    };
    let (charge, use_) = (TransactionType::Charge, TransactionType::Use);
    let history = || {
        vec![
            json!({"id": 1, "userId": 7, "type": "CHARGE", "amount": 100, "timeMillis": 1000}),
            json!({"id": 4, "userId": 7, "type": "USE", "amount": 30, "timeMillis": 1001}),
        ]
    };
    let applied_use = r#"{"id":7,"point":70,"updateMillis":1001}"#;
    let good = || {
        vec![
            sent(
                (0, 10),
                change(charge, 100, None),
                StatusCode::OK,
                false,
                r#"{"id":7,"point":100,"updateMillis":1000}"#,
            ),
            sent(
                (20, 30),
                change(use_, 30, Some("k0")),
                StatusCode::OK,
                false,
                applied_use,
            ),
            sent(
                (20, 30),
                change(use_, 30, Some("k0")),
                StatusCode::OK,
                true,
                applied_use,
            ),
            sent(
                (20, 30),
                change(use_, 500, None),
                StatusCode::CONFLICT,
                false,
                &error_body(&PointError::InsufficientBalance {
                    balance: 100,
                    amount: 500,
                })
                .to_string(),
            ),
            sent(
                (40, 50),
                change(charge, 20, Some("k0")),
                StatusCode::UNPROCESSABLE_ENTITY,
                false,
                &error_body(&PointError::IdempotencyKeyReused {
                    kind: "USE",
                    amount: 30,
                })
                .to_string(),
            ),
            sent((20, 30), What::Point, StatusCode::OK, false, applied_use),
        ]
    };
    let end = json!({"id": 7, "point": 70, "updateMillis": 1001});
    let check = |sent: &[Sent], history: &[Value], end: &Value| {
        let refs: Vec<&Sent> = sent.iter().collect();
        check_user(7, &refs, history, end)
    };
    assert_eq!(check(&good(), &history(), &end), Ok(()));

    let mut broken: Vec<(&str, Vec<Sent>, Vec<Value>, Value)> = Vec::new();
    let mut replay_bytes = good();
    replay_bytes[2].body = Bytes::from(r#"{"id":7, "point":70,"updateMillis":1001}"#);
    broken.push((
        "not the bytes of the first answer",
        replay_bytes,
        history(),
        end.clone(),
    ));
    let mut refused_at = good();
    refused_at[3].body = Bytes::from(
        error_body(&PointError::InsufficientBalance {
            balance: 5,
            amount: 500,
        })
        .to_string(),
    );
    broken.push(("refuses it so", refused_at, history(), end.clone()));
    let mut out_of_order = good();
    (out_of_order[1].start, out_of_order[1].end) = (at(0), at(5));
    (out_of_order[0].start, out_of_order[0].end) = (at(10), at(20));
    broken.push((
        "out of real-time order",
        out_of_order,
        history(),
        end.clone(),
    ));
    let mut twice = history();
    twice.push(json!({"id": 5, "userId": 7, "type": "USE", "amount": 30, "timeMillis": 1002}));
    let twice_end = json!({"id": 7, "point": 40, "updateMillis": 1002});
    broken.push(("applied twice", good(), twice, twice_end));
    let mut reuse = good();
    reuse[4].body = Bytes::from(
        error_body(&PointError::IdempotencyKeyReused {
            kind: "USE",
            amount: 31,
        })
        .to_string(),
    );
    broken.push(("expected", reuse, history(), end.clone()));
    let lost = json!({"id": 7, "point": 100, "updateMillis": 1001});
    broken.push(("not the end of the history", good(), history(), lost));
    let mut stale_read = good();
    (stale_read[5].start, stale_read[5].end) = (at(40), at(50));
    stale_read[5].body = Bytes::from(r#"{"id":7,"point":100,"updateMillis":1000}"#);
    broken.push((
        "not the balance at any point",
        stale_read,
        history(),
        end.clone(),
    ));
    let mut lost_answer = good();
    lost_answer[1].body = Bytes::from(r#"{"id":7,"point":-30,"updateMillis":1001}"#);
    broken.push(("makes it", lost_answer, history(), end.clone()));

    for (rule, sent, history, end) in broken {
        let verdict = check(&sent, &history, &end);
        assert!(
            verdict.as_ref().is_err_and(|v| v.contains(rule)),
            "{rule}: {verdict:?}"
        );
    }
}
