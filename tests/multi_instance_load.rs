//! Four `pointlock` instances on one PostgreSQL database under contention: no
//! request is answered 5xx because another instance wrote the same user, and
//! every answer is the truth about the database.
//!
//! The binaries are the ones cargo builds for this test run, pointed at a fresh
//! database of the throwaway cluster `./scripts/test.sh` starts
//! (`POINTLOCK_TEST_PG_URL`; see `scripts/pg-cluster.sh`). Without that
//! cluster the tests are skipped with a message, except under `CI=true`, where
//! they fail.
//!
//! The load: 64 client threads, each alternating charges and uses over the
//! four instances in turn, for a bounded time and a bounded number of
//! requests. Every request has an amount no other request has, so each history
//! row names the one request that made it. The balance cap and the amounts
//! keep the balance within a few changes of 0 and of the cap: uses are refused
//! for an insufficient balance and charges for the cap, decided under
//! contention.
//!
//! [`check`] lists what a run broke, in two kinds:
//! - answers: anything but 200, or 409 INSUFFICIENT_BALANCE /
//!   MAX_BALANCE_EXCEEDED (no 5xx: the timeouts are generous, so only
//!   contention could produce one);
//! - state: a history that does not replay (in id order, never below 0, never
//!   above the cap) to the balance; a balance that is not the acknowledged
//!   charges minus the acknowledged uses; a row without its 2xx, or a 2xx
//!   without its row; a 2xx whose balance is not the state right after its
//!   row; a refusal decided on a balance the history never had, or that the
//!   policy would not refuse; an instance that reads otherwise than another.
//!
//! The tests expect an empty list. The negative control runs the same load and
//! the same checks on binaries that commit unconditionally
//! (`--test-unconditional-commits`, a hidden flag of test builds), so that the
//! instances overwrite each other's balances, and expects state violations.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::binary::{command, Server};
use support::http::{get_history, request};
use support::pg::{cluster_url, TestDatabase};

/// One test at a time: each wants the machine and the cluster to itself.
static SERIAL: Mutex<()> = Mutex::new(());

const INSTANCES: usize = 4;
const CLIENTS: u64 = 64;
/// How long the clients send (each stops at its first request after this).
const LOAD_FOR: Duration = Duration::from_millis(4_500);
/// The most requests a client sends, however fast the instances answer.
const PER_CLIENT_MAX: u64 = 1_000;
/// The first amount; each request takes the next one: about 1,000,000 each
/// (a few tens of thousands of requests at most), against a cap of
/// 10,000,000: ten net charges reach the cap, one net use reaches 0.
const AMOUNT_BASE: u64 = 1_000_000;
const MAX_BALANCE: u64 = 10_000_000;
/// Users of the spread load.
const SPREAD_USERS: u64 = 1_000;
/// Timeouts no bounded run reaches: a LOCK_TIMEOUT or a store timeout could only
/// mean a stall, so none is an accepted answer. (The request deadline stays
/// under the harness's 30 s wait for an answer.)
const GENEROUS_TIMEOUTS: [&str; 8] = [
    "--lock-timeout-ms",
    "20000",
    "--request-timeout-ms",
    "25000",
    "--pg-statement-timeout-ms",
    "10000",
    "--pg-connect-timeout-ms",
    "10000",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Charge,
    Use,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Charge => "charge",
            Kind::Use => "use",
        }
    }

    fn from_wire(wire: &str) -> Self {
        match wire {
            "CHARGE" => Kind::Charge,
            "USE" => Kind::Use,
            other => panic!("unknown history type {other}"),
        }
    }
}

/// One request of the load, and its answer (`None`: the connection failed).
struct Sent {
    user: u64,
    kind: Kind,
    amount: u64,
    answer: Option<(u16, String)>,
}

impl Sent {
    fn code(&self) -> String {
        match &self.answer {
            None => "no answer".into(),
            Some((status, body)) => format!("{status} {}", json_field(body, "code")),
        }
    }
}

fn json_field(body: &str, field: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v[field].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `pointlock --store URL` with the cap, the generous timeouts and `flags`.
fn instance(dir: &std::path::Path, url: &str, flags: &[&str]) -> Server {
    let mut cmd = command(dir);
    cmd.args(["--store", url, "--max-balance", &MAX_BALANCE.to_string()])
        .args(GENEROUS_TIMEOUTS)
        .args(flags);
    Server::start(cmd)
}

/// The `i`th user of `client` among `users` (spread evenly, no pattern).
fn pick_user(client: u64, i: u64, users: u64) -> u64 {
    let mut z = (client << 32 | i).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    1 + (z ^ (z >> 31)) % users
}

/// The load: `CLIENTS` threads, client `c`'s `i`th request a charge when
/// `c + i` is even (a use otherwise) of a user among `1..=users`, sent to
/// instance `(c + i) % 4`; every request a fresh amount.
fn run_load(addrs: &[String], users: u64) -> Vec<Sent> {
    let next = Arc::new(AtomicU64::new(AMOUNT_BASE));
    let deadline = Instant::now() + LOAD_FOR;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (addrs, next) = (addrs.to_vec(), Arc::clone(&next));
            std::thread::spawn(move || {
                let mut sent = Vec::new();
                for i in 0..PER_CLIENT_MAX {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let user = pick_user(client, i, users);
                    let kind = if (client + i) % 2 == 0 {
                        Kind::Charge
                    } else {
                        Kind::Use
                    };
                    let amount = next.fetch_add(1, Ordering::Relaxed);
                    let addr = &addrs[((client + i) % addrs.len() as u64) as usize];
                    let path = format!("/point/{user}/{}", kind.path());
                    let answer = request(addr, "PATCH", &path, &amount.to_string());
                    sent.push(Sent {
                        user,
                        kind,
                        amount,
                        answer,
                    });
                }
                sent
            })
        })
        .collect();
    clients
        .into_iter()
        .flat_map(|client| client.join().expect("a client thread failed"))
        .collect()
}

/// A user as one instance reads it: the balance and the history rows
/// (id, kind, amount) in the order served.
#[derive(Debug, PartialEq, Eq)]
struct View {
    balance: u64,
    rows: Vec<(u64, Kind, u64)>,
}

fn get(addr: &str, path: &str) -> serde_json::Value {
    match request(addr, "GET", path, "") {
        Some((200, body)) => serde_json::from_str(&body).unwrap(),
        other => panic!("GET {path} at {addr}: {other:?}"),
    }
}

/// Every user of `1..=users` as the instance at `addr` reads it (8 readers).
fn read_all(addr: &str, users: u64) -> BTreeMap<u64, View> {
    const READERS: u64 = 8;
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..READERS)
            .map(|reader| {
                scope.spawn(move || {
                    let mine = (1..=users).filter(|user| user % READERS == reader);
                    mine.map(|user| {
                        let history = get_history(addr, user);
                        let rows = history.as_array().unwrap().iter().map(|row| {
                            let amount = row["amount"].as_u64().unwrap();
                            let kind = Kind::from_wire(row["type"].as_str().unwrap());
                            (row["id"].as_u64().unwrap(), kind, amount)
                        });
                        let rows = rows.collect();
                        let balance = get(addr, &format!("/point/{user}"))["point"]
                            .as_u64()
                            .unwrap();
                        (user, View { balance, rows })
                    })
                    .collect::<Vec<_>>()
                })
            })
            .collect();
        readers
            .into_iter()
            .flat_map(|reader| reader.join().expect("a reader failed"))
            .collect()
    })
}

/// What a run broke (see the file's comment).
#[derive(Default)]
struct Violations {
    answers: Vec<String>,
    state: Vec<String>,
}

impl Violations {
    fn is_empty(&self) -> bool {
        self.answers.is_empty() && self.state.is_empty()
    }

    /// The first few of each kind, and how many there are.
    fn report(&self) -> String {
        let few = |list: &[String]| {
            list.iter()
                .take(12)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        };
        format!(
            "{} answer violations:\n  {}\n{} state violations:\n  {}",
            self.answers.len(),
            few(&self.answers),
            self.state.len(),
            few(&self.state)
        )
    }
}

/// The balance a refusal says it was decided on (`balance N` in its message).
fn refused_at(body: &str) -> Option<u64> {
    let message = json_field(body, "message");
    message.match_indices("balance ").find_map(|(at, found)| {
        let digits: String = message[at + found.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

/// Every violation of the promise in a run over users `1..=users`: `sent` is the
/// load, the instances at `addrs` are read once it is over.
fn check(addrs: &[String], users: u64, sent: &[Sent]) -> Violations {
    let mut found = Violations::default();

    // Answers: 200, or 409 with a policy's refusal; nothing else.
    let server_errors: Vec<&Sent> = sent
        .iter()
        .filter(|s| matches!(s.answer, Some((status, _)) if status >= 500))
        .collect();
    if !server_errors.is_empty() {
        let first: Vec<String> = server_errors
            .iter()
            .take(5)
            .map(|s| s.answer.as_ref().unwrap().1.clone())
            .collect();
        found.answers.push(format!(
            "{} of {} requests answered 5xx; the first bodies: {first:?}",
            server_errors.len(),
            sent.len()
        ));
    }
    for s in sent {
        match &s.answer {
            Some((200, _)) => {}
            Some((409, body)) if refused_at(body).is_some() => {
                let code = json_field(body, "code");
                if !(code == "INSUFFICIENT_BALANCE" || code == "MAX_BALANCE_EXCEEDED") {
                    found.answers.push(format!("409 {body}"));
                }
            }
            Some((status, _)) if *status >= 500 => {} // counted above
            Some((status, body)) => found.answers.push(format!("{status} {body}")),
            None => found.answers.push(format!(
                "{:?} {} of user {}: no answer",
                s.kind, s.amount, s.user
            )),
        }
    }

    // Every instance reads every user the same.
    let views: Vec<BTreeMap<u64, View>> = addrs.iter().map(|a| read_all(a, users)).collect();
    for (instance, view) in views.iter().enumerate().skip(1) {
        for (user, seen) in view {
            if *seen != views[0][user] {
                found.state.push(format!(
                    "user {user}: instance {instance} reads balance {} and {} rows, instance 0 \
                     reads {} and {}",
                    seen.balance,
                    seen.rows.len(),
                    views[0][user].balance,
                    views[0][user].rows.len()
                ));
            }
        }
    }

    let by_amount: HashMap<u64, &Sent> = sent.iter().map(|s| (s.amount, s)).collect();
    let mut by_user: BTreeMap<u64, Vec<&Sent>> = BTreeMap::new();
    for s in sent {
        by_user.entry(s.user).or_default().push(s);
    }
    let max = i128::from(MAX_BALANCE);
    for (user, view) in &views[0] {
        // The history replays, in id order, to the balance; each row is the
        // change of a request answered 200 with the state right after it.
        let mut state: i128 = 0;
        let mut states: HashSet<i128> = HashSet::from([0]);
        let mut in_history = HashSet::new();
        if !view.rows.is_sorted_by(|a, b| a.0 < b.0) {
            found
                .state
                .push(format!("user {user}: the history is not in id order"));
        }
        for &(id, kind, amount) in &view.rows {
            state += match kind {
                Kind::Charge => i128::from(amount),
                Kind::Use => -i128::from(amount),
            };
            states.insert(state);
            in_history.insert(amount);
            if !(0..=max).contains(&state) {
                found.state.push(format!(
                    "user {user}: the history reaches {state} at row {id}, outside 0..={max}"
                ));
            }
            let Some(s) = by_amount.get(&amount) else {
                found.state.push(format!(
                    "user {user}: row {id} ({kind:?} {amount}) is no request's"
                ));
                continue;
            };
            if s.user != *user || s.kind != kind {
                found.state.push(format!(
                    "user {user}: row {id} ({kind:?} {amount}) was sent as {:?} of user {}",
                    s.kind, s.user
                ));
            }
            match &s.answer {
                Some((200, body)) => {
                    let answered = serde_json::from_str::<serde_json::Value>(body).unwrap()
                        ["point"]
                        .as_u64()
                        .unwrap();
                    if i128::from(answered) != state {
                        found.state.push(format!(
                            "user {user}: {kind:?} {amount} was answered balance {answered}, \
                             but the state right after its row {id} is {state}"
                        ));
                    }
                }
                _ => found.state.push(format!(
                    "user {user}: {kind:?} {amount} was answered {}, yet its row {id} is in \
                     the history",
                    s.code()
                )),
            }
        }
        if state != i128::from(view.balance) {
            found.state.push(format!(
                "user {user}: balance {} but the history replays to {state}",
                view.balance
            ));
        }

        // The acknowledged changes are the balance, each with its row; each
        // refusal was decided on a state the history had, and is the policy's.
        let (mut charged, mut used, mut acked) = (0_i128, 0_i128, 0_usize);
        for s in by_user.get(user).map(Vec::as_slice).unwrap_or_default() {
            match &s.answer {
                Some((200, _)) => {
                    acked += 1;
                    match s.kind {
                        Kind::Charge => charged += i128::from(s.amount),
                        Kind::Use => used += i128::from(s.amount),
                    }
                    if !in_history.contains(&s.amount) {
                        found.state.push(format!(
                            "user {user}: {:?} {} was acknowledged but is not in the history",
                            s.kind, s.amount
                        ));
                    }
                }
                Some((409, body)) => {
                    let Some(at) = refused_at(body) else { continue };
                    let at = i128::from(at);
                    let amount = i128::from(s.amount);
                    let policy = match s.kind {
                        Kind::Charge => at + amount > max,
                        Kind::Use => amount > at,
                    };
                    if !states.contains(&at) || !policy {
                        found.state.push(format!(
                            "user {user}: {:?} {} was refused at balance {at}, which {}",
                            s.kind,
                            s.amount,
                            if policy {
                                "the history never had"
                            } else {
                                "allows it"
                            }
                        ));
                    }
                }
                _ => {}
            }
        }
        if charged - used != i128::from(view.balance) {
            found.state.push(format!(
                "user {user}: balance {} but the acknowledged charges minus uses are {}",
                view.balance,
                charged - used
            ));
        }
        if acked != view.rows.len() {
            found.state.push(format!(
                "user {user}: {acked} acknowledged changes but {} history rows",
                view.rows.len()
            ));
        }
    }
    found
}

/// How the load was answered: a count per status and code.
fn tally(sent: &[Sent]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for s in sent {
        let key = match &s.answer {
            Some((200, _)) => format!("200 {:?}", s.kind),
            _ => s.code(),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// Four instances started with `flags` on a fresh database, the load over users
/// `1..=users`, and what [`check`] found; `None` when skipped (no cluster).
fn four_instances_under_load(flags: &[&str], users: u64) -> Option<(Vec<Sent>, Violations)> {
    cluster_url()?;
    let url = TestDatabase::create_left();
    let dir = tempfile::tempdir().unwrap();
    let servers: Vec<Server> = (0..INSTANCES)
        .map(|_| instance(dir.path(), &url, flags))
        .collect();
    let addrs: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
    let started = Instant::now();
    let sent = run_load(&addrs, users);
    let loaded = started.elapsed();
    let found = check(&addrs, users, &sent);
    eprintln!(
        "{flags:?}, {users} users: {} requests in {loaded:.1?} (checked in {:.1?}): {:?}",
        sent.len(),
        started.elapsed() - loaded,
        tally(&sent)
    );
    for server in servers {
        server.stop();
    }
    Some((sent, found))
}

/// The promise, on four instances with `flags`: no violation, and the load did
/// exercise both changes and the refusal of a use under contention.
fn no_5xx_and_every_answer_true(flags: &[&str], users: u64) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((sent, found)) = four_instances_under_load(flags, users) else {
        return;
    };
    assert!(found.is_empty(), "{}", found.report());
    let counts = tally(&sent);
    for exercised in ["200 Charge", "200 Use", "409 INSUFFICIENT_BALANCE"] {
        assert!(
            counts.contains_key(exercised),
            "the load never got {exercised}: {counts:?}"
        );
    }
}

#[test]
fn four_instances_one_hot_user_no_5xx_and_every_answer_is_the_database_truth() {
    no_5xx_and_every_answer_true(&[], 1);
}

#[test]
fn four_unpipelined_instances_one_hot_user_no_5xx_and_every_answer_is_the_database_truth() {
    no_5xx_and_every_answer_true(&["--pg-pipeline", "off"], 1);
}

#[test]
fn four_pipelined_instances_one_hot_user_no_5xx_and_every_answer_is_the_database_truth() {
    no_5xx_and_every_answer_true(&["--pg-pipeline", "on"], 1);
}

#[test]
fn four_instances_spread_over_1000_users_no_5xx_and_every_answer_is_the_database_truth() {
    no_5xx_and_every_answer_true(&[], SPREAD_USERS);
}

#[test]
fn negative_control_unconditional_commits_on_one_hot_user_are_caught() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if cluster_url().is_none() {
        return;
    }
    // The hidden flag exists only in test builds of the binary (the package's
    // dev-dependency on itself turns on its `test-util`).
    let dir = tempfile::tempdir().unwrap();
    let probe = command(dir.path())
        .args(["--test-unconditional-commits", "--help"])
        .output()
        .expect("run pointlock");
    assert!(
        probe.status.success(),
        "this pointlock binary has no --test-unconditional-commits (`cargo test` builds \
         the package's binary with its test-util feature; a release build has none)"
    );
    let Some((_, found)) = four_instances_under_load(&["--test-unconditional-commits"], 1) else {
        return;
    };
    eprintln!("the control, caught:\n{}", found.report());
    assert!(
        !found.state.is_empty(),
        "four instances committing unconditionally overwrite each other's balances, but \
         the checks found nothing wrong with the state:\n{}",
        found.report()
    );
}
