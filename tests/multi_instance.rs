//! Several `pointlock` processes on one PostgreSQL database, through faults.
//!
//! The binaries are the ones cargo builds for this test run, pointed at a fresh
//! database of the throwaway cluster `./scripts/test.sh` starts
//! (`POINTLOCK_TEST_PG_URL` and friends; see `scripts/pg-cluster.sh`). Without
//! that cluster the tests are skipped with a message, except under `CI=true`,
//! where they fail.
//!
//! Contention without faults (four instances, one hot user or many, and the
//! negative control without the store's condition) is `multi_instance_load.rs`.
//! Here, charges of unique amounts run through the fault, so that each history
//! row names the request that made it:
//! - `kill -9` of one instance mid-load: the survivor answers every request
//!   2xx, no acknowledged change is lost, nothing is half-applied.
//! - A PostgreSQL restart mid-load: 5xx only for requests in flight while the
//!   database is down (none before the restart begins, none sent after it is
//!   back), no 5xx for a change that was made, nothing half-applied, and
//!   service resumes by itself on every instance.
//! - The database down: a 503 with Retry-After, the user released, recovery.
//!
//! The tests of this file run one at a time (the restart test stops the shared
//! cluster): each takes `SERIAL`.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::binary::{command, Server};
use support::http::{get_history, get_json, request, send};
use support::pg::{cluster_url, TestDatabase};

static SERIAL: Mutex<()> = Mutex::new(());

/// The throwaway cluster, from the environment `./scripts/test.sh` exports.
struct Cluster {
    data: String,
    bin: String,
    user: String,
}

impl Cluster {
    fn from_env() -> Option<Self> {
        cluster_url()?;
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        Some(Self {
            data: var("POINTLOCK_TEST_PG_DATA"),
            bin: var("POINTLOCK_TEST_PG_BIN"),
            user: var("POINTLOCK_TEST_PG_USER"),
        })
    }

    /// A new, empty database; its URL.
    fn fresh_database(&self) -> String {
        TestDatabase::create_left()
    }

    /// `pg_ctl restart -m fast`: every connection is cut, in-flight statements
    /// are rolled back, the server comes back on the same port.
    fn restart(&self) {
        self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "60"]);
    }

    /// Run `pg_ctl -D DATA -l LOG ACTION…` as the cluster's user.
    fn pg_ctl(&self, action: &[&str]) {
        assert!(
            !self.data.is_empty() && !self.bin.is_empty(),
            "POINTLOCK_TEST_PG_DATA and POINTLOCK_TEST_PG_BIN are needed to control the cluster"
        );
        let pg_ctl = format!("{}/pg_ctl", self.bin);
        // The server's log goes to a file: without `-l` it would inherit (and
        // hold open) this test's stdout for as long as the cluster runs.
        let log = format!("{}/restart.log", self.data);
        let mut args = vec!["-D", self.data.as_str(), "-l", log.as_str()];
        args.extend_from_slice(action);
        let as_root = std::env::var("USER").as_deref() == Ok("root") || is_root();
        let mut cmd = if as_root && !self.user.is_empty() && self.user != "root" {
            let mut runuser = Command::new("runuser");
            runuser.args(["-u", &self.user, "--", &pg_ctl]);
            runuser
        } else {
            Command::new(&pg_ctl)
        };
        let status = cmd
            .args(&args)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run pg_ctl");
        assert!(status.success(), "pg_ctl {action:?} failed: {status}");
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| out.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// `pointlock --store URL` on a free port, with a balance cap no load reaches
/// and lock and request deadlines no bounded test reaches (so a LOCK_TIMEOUT
/// could only be a stall, never an accepted answer), plus `extra`.
fn instance(dir: &std::path::Path, url: &str, extra: &[&str]) -> Server {
    let mut cmd = command(dir);
    cmd.args(["--store", url, "--max-balance", "9223372036854775807"])
        .args([
            "--lock-timeout-ms",
            "20000",
            "--request-timeout-ms",
            "25000",
        ])
        .args(extra);
    Server::start(cmd)
}

/// The users of the fault tests' loads: few, so that the instances contend
/// for them while the fault strikes.
const USERS: u64 = 2;

/// One charge of a [`ChargeLoad`]: the instance it went to, its user and
/// unique amount, when it was sent and answered, and the answer (`None`: the
/// connection failed).
struct Attempt {
    instance: usize,
    user: u64,
    amount: u64,
    sent: Instant,
    answered: Instant,
    answer: Option<(u16, String)>,
}

impl Attempt {
    fn acked(&self) -> bool {
        matches!(self.answer, Some((200, _)))
    }

    /// `status CODE`, or `no answer`.
    fn outcome(&self) -> String {
        match &self.answer {
            None => "no answer".into(),
            Some((status, body)) => {
                let code = serde_json::from_str::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v["code"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                format!("{status} {code}")
            }
        }
    }
}

/// Charges of unique amounts to users `1..=users` from `threads` threads, each
/// on one instance until that instance stops answering, then on the next;
/// until [`finish`](Self::finish) (or a drop: a failing test leaves no load
/// running).
struct ChargeLoad {
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    threads: Vec<JoinHandle<()>>,
}

impl ChargeLoad {
    fn start(addrs: &[String], users: u64, threads: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicU64::new(1_000_000));
        let threads = (0..threads)
            .map(|thread| {
                let (addrs, stop, attempts, next) = (
                    addrs.to_vec(),
                    Arc::clone(&stop),
                    Arc::clone(&attempts),
                    Arc::clone(&next),
                );
                std::thread::spawn(move || {
                    let mut target = thread as usize % addrs.len();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let user = 1 + (thread * 7 + i) % users;
                        let amount = next.fetch_add(1, Ordering::Relaxed);
                        let path = format!("/point/{user}/charge");
                        let sent = Instant::now();
                        let answer = request(&addrs[target], "PATCH", &path, &amount.to_string());
                        let attempt = Attempt {
                            instance: target,
                            user,
                            amount,
                            sent,
                            answered: Instant::now(),
                            answer,
                        };
                        let gone = attempt.answer.is_none();
                        attempts.lock().unwrap().push(attempt);
                        if gone {
                            target = (target + 1) % addrs.len(); // killed: move on
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            attempts,
            threads,
        }
    }

    /// Wait (bounded: 60 s) until `count` charges sent at or after `since`
    /// were acknowledged by instance `instance` (any, if `None`).
    fn wait_for_acks(&self, since: Instant, instance: Option<usize>, count: usize) {
        let started = Instant::now();
        loop {
            let acked = self
                .attempts
                .lock()
                .unwrap()
                .iter()
                .filter(|a| {
                    a.sent >= since && a.acked() && instance.is_none_or(|i| i == a.instance)
                })
                .count();
            if acked >= count {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "only {acked} of {count} acknowledgements (instance {instance:?}) within 60 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stop the load; every attempt it made.
    fn finish(mut self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in std::mem::take(&mut self.threads) {
            thread.join().expect("a load thread failed");
        }
        std::mem::take(&mut *self.attempts.lock().unwrap())
    }
}

impl Drop for ChargeLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What the database holds after a load, against its attempts, as the list of
/// what is wrong: every history row is the change of a charge acknowledged
/// with the balance right after that row, or of one whose client cannot know
/// its outcome (no answer, or 500 STORE_OUTCOME_UNKNOWN), never of one refused
/// with "nothing changed"; every acknowledged charge has its row; every
/// balance is its history's sum, on every instance of `addrs`.
fn state_violations(addrs: &[String], users: u64, attempts: &[Attempt]) -> Vec<String> {
    let by_amount: HashMap<u64, &Attempt> = attempts.iter().map(|a| (a.amount, a)).collect();
    let mut found = Vec::new();
    let mut in_history = HashMap::new();
    for user in 1..=users {
        let rows = get_history(&addrs[0], user);
        let mut running: u64 = 0;
        let ids = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["id"].as_u64());
        if !ids.is_sorted_by(|a, b| a < b) {
            found.push(format!("user {user}: the history is not in id order"));
        }
        for row in rows.as_array().unwrap() {
            let (id, amount) = (row["id"].as_u64().unwrap(), row["amount"].as_u64().unwrap());
            if row["type"] != "CHARGE" {
                found.push(format!("user {user}: row {id} is not a charge: {row}"));
                continue;
            }
            running += amount;
            in_history.insert(amount, user);
            let Some(attempt) = by_amount.get(&amount) else {
                found.push(format!(
                    "user {user}: row {id} (charge {amount}) is no request's"
                ));
                continue;
            };
            match &attempt.answer {
                _ if attempt.user != user => found.push(format!(
                    "user {user}: row {id} (charge {amount}) was sent for user {}",
                    attempt.user
                )),
                Some((200, body)) => {
                    let point: serde_json::Value = serde_json::from_str(body).unwrap();
                    if point["point"].as_u64() != Some(running) {
                        found.push(format!(
                            "user {user}: charge {amount} was answered {body}, but the balance \
                             right after its row {id} is {running}"
                        ));
                    }
                }
                // Its client cannot know: a change either made or not is fine.
                None => {}
                Some((500, body)) if body.contains("STORE_OUTCOME_UNKNOWN") => {}
                Some(_) => found.push(format!(
                    "user {user}: charge {amount} was answered {} (nothing changed), yet its \
                     row {id} is in the history",
                    attempt.outcome()
                )),
            }
        }
        for (instance, addr) in addrs.iter().enumerate() {
            let balance = get_json(addr, &format!("/point/{user}"))["point"].as_u64();
            if balance != Some(running) {
                found.push(format!(
                    "user {user}: instance {instance} reads balance {balance:?}, but the \
                     history sums to {running}"
                ));
            }
        }
    }
    for attempt in attempts.iter().filter(|a| a.acked()) {
        if in_history.get(&attempt.amount) != Some(&attempt.user) {
            found.push(format!(
                "user {}: charge {} was acknowledged but is not in the history",
                attempt.user, attempt.amount
            ));
        }
    }
    found
}

/// `list`, a line each (the first 20, and how many there are).
fn listed(list: &[String]) -> String {
    let first: Vec<&str> = list.iter().take(20).map(String::as_str).collect();
    format!("{} found:\n  {}", list.len(), first.join("\n  "))
}

/// A count per outcome of the attempts that were not acknowledged.
fn refusals(attempts: &[Attempt]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for attempt in attempts.iter().filter(|a| !a.acked()) {
        *counts.entry(attempt.outcome()).or_default() += 1;
    }
    counts
}

#[test]
fn kill_9_of_one_instance_mid_load_loses_no_acknowledged_change_and_the_survivor_answers_all() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cluster) = Cluster::from_env() else {
        return;
    };
    let url = cluster.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let victim = instance(dir.path(), &url, &[]);
    let survivor = instance(dir.path(), &url, &[]);
    let addrs = vec![victim.addr.clone(), survivor.addr.clone()];
    let started = Instant::now();
    // Four threads on each instance, two users: the instances contend, and
    // the victim dies in the middle of changes of the users the survivor waits for.
    let load = ChargeLoad::start(&addrs, USERS, 8);
    load.wait_for_acks(started, Some(0), 100);
    load.wait_for_acks(started, Some(1), 100);
    let killed = Instant::now();
    victim.kill9();
    // The survivor goes on serving, the victim's threads with it.
    load.wait_for_acks(Instant::now(), Some(1), 200);
    let attempts = load.finish();

    // No fault but the victim's death: every answer is a 2xx; the victim's
    // requests after its death get no answer.
    let died_with_the_victim =
        |a: &Attempt| a.instance == 0 && a.answer.is_none() && a.answered >= killed;
    let mut found: Vec<String> = attempts
        .iter()
        .filter(|a| !(a.acked() || died_with_the_victim(a)))
        .map(|a| {
            format!(
                "charge {} of user {} on instance {}: {}, sent at {:?} (killed at {:?})",
                a.amount,
                a.user,
                a.instance,
                a.outcome(),
                a.sent.duration_since(started),
                killed.duration_since(started)
            )
        })
        .collect();
    found.extend(state_violations(&addrs[1..], USERS, &attempts));
    let in_flight = attempts
        .iter()
        .filter(|a| a.instance == 0 && a.sent < killed && a.answer.is_none())
        .count();
    eprintln!(
        "kill -9: {} charges ({} acknowledged), {in_flight} in flight on the victim at the kill; \
         not acknowledged: {:?}",
        attempts.len(),
        attempts.iter().filter(|a| a.acked()).count(),
        refusals(&attempts)
    );
    assert!(found.is_empty(), "{}", listed(&found));
    survivor.stop();
}

#[test]
fn a_postgres_restart_mid_load_gives_5xx_only_while_down_corrupts_nothing_and_service_resumes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cluster) = Cluster::from_env() else {
        return;
    };
    let url = cluster.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let servers = [
        instance(dir.path(), &url, &[]),
        instance(dir.path(), &url, &[]),
    ];
    let addrs: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
    let started = Instant::now();
    let load = ChargeLoad::start(&addrs, USERS, 8);
    load.wait_for_acks(started, None, 200);
    let down = Instant::now();
    cluster.restart();
    let up = Instant::now();
    // Service resumes by itself: each instance acknowledges charges sent once
    // the database is back.
    for instance in 0..addrs.len() {
        load.wait_for_acks(up, Some(instance), 100);
    }
    let attempts = load.finish();

    // A 5xx only for a request in flight while the database was down (sent
    // before it was back, answered after the restart began), and only a coded
    // one: 503 STORE_UNAVAILABLE (nothing changed) or 500
    // STORE_OUTCOME_UNKNOWN. Everything else is a 2xx.
    let at = |t: Instant| t.saturating_duration_since(started);
    let mut found: Vec<String> = attempts
        .iter()
        .filter(|a| {
            let outcome = a.outcome();
            let coded =
                outcome == "503 STORE_UNAVAILABLE" || outcome == "500 STORE_OUTCOME_UNKNOWN";
            let while_down = a.sent < up && a.answered > down;
            !(a.acked() || coded && while_down)
        })
        .map(|a| {
            format!(
                "charge {} of user {} on instance {}: {}, sent at {:?}, answered at {:?} \
                 (the database was down from {:?} to {:?})",
                a.amount,
                a.user,
                a.instance,
                a.outcome(),
                at(a.sent),
                at(a.answered),
                at(down),
                at(up)
            )
        })
        .collect();
    // The restart hit the load: requests were in flight while it ran.
    let overlapping = attempts
        .iter()
        .filter(|a| a.sent < up && a.answered > down)
        .count();
    if overlapping == 0 {
        found.push("no request was in flight during the restart".into());
    }
    found.extend(state_violations(&addrs, USERS, &attempts));
    eprintln!(
        "restart: down for {:?}; {} charges ({} acknowledged), {overlapping} in flight during \
         it; not acknowledged: {:?}",
        up - down,
        attempts.len(),
        attempts.iter().filter(|a| a.acked()).count(),
        refusals(&attempts)
    );
    assert!(found.is_empty(), "{}", listed(&found));
    for server in servers {
        server.stop();
    }
}

#[test]
fn a_database_down_answers_503_with_retry_after_releases_the_user_and_recovers() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cluster) = Cluster::from_env() else {
        return;
    };
    let url = cluster.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let server = instance(dir.path(), &url, &[]);
    let (status, _) = request(&server.addr, "PATCH", "/point/1/charge", "5").unwrap();
    assert_eq!(status, 200);

    assert_eq!(request(&server.addr, "GET", "/ready", "").unwrap().0, 200);
    cluster.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"]);
    let down = send(&server.addr, "PATCH", "/point/1/charge", "", "7");
    let (ready_status, ready_body) = request(&server.addr, "GET", "/ready", "").unwrap();
    cluster.pg_ctl(&["start", "-w", "-t", "60"]);
    assert_eq!(ready_status, 503, "not ready while the database is down");
    assert!(ready_body.contains("STORE_UNAVAILABLE"), "{ready_body}");
    // A 503 (not the 408 of the 10 s request deadline): the pool's connect
    // timeout answered it; nothing was changed; the user's lock was released.
    assert!(down.starts_with("HTTP/1.1 503"), "{down}");
    assert!(down.contains("STORE_UNAVAILABLE"), "{down}");
    assert!(
        down.to_ascii_lowercase().contains("retry-after: 1"),
        "{down}"
    );
    let stats = get_json(&server.addr, "/stats");
    assert_eq!(stats["lock"]["keys"], 0, "{stats}");

    // Service resumes by itself (the pool reconnects), no restart of pointlock.
    let started = Instant::now();
    loop {
        let (status, body) = request(&server.addr, "PATCH", "/point/1/charge", "7").unwrap();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no recovery: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        request(&server.addr, "GET", "/ready", "").unwrap().0,
        200,
        "ready again"
    );
    // The refused charge changed nothing: the history is the two acknowledged
    // charges, and the balance their sum.
    let history = get_history(&server.addr, 1);
    let amounts: Vec<u64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["amount"].as_u64().unwrap())
        .collect();
    assert_eq!(amounts, [5, 7], "{history}");
    let balance = get_json(&server.addr, "/point/1")["point"]
        .as_u64()
        .unwrap();
    assert_eq!(balance, 12, "the refused charge changed nothing");
    server.stop();
}
