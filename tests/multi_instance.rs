//! Several `pointlock` processes on one PostgreSQL database.
//!
//! The binaries are the ones cargo builds for this test run, pointed at a fresh
//! database of the throwaway cluster `./scripts/test.sh` starts
//! (`POINTLOCK_TEST_PG_URL` and friends; see `scripts/pg-cluster.sh`). Without
//! that cluster the tests are skipped with a message, except under `CI=true`,
//! where they fail.
//!
//! - Four instances, concurrent charges and uses of the same few users through
//!   all of them: exact balances, never negative, every history replays to its
//!   balance. Its negative control runs the same load on binaries whose store
//!   condition is switched off (`--test-unconditional-commits`, a hidden flag of
//!   test builds): updates are lost.
//! - `kill -9` of one instance mid-load loses no acknowledged change.
//! - A PostgreSQL restart mid-load gives in-flight requests a 5xx (never a lost
//!   2xx), corrupts nothing, and service resumes by itself.
//!
//! The tests of this file run one at a time (the restart test stops the shared
//! cluster): each takes `SERIAL`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::binary::{command, Server};
use support::http::{get_json, request, send};
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

/// `pointlock --store URL` on a free port, with a balance cap no load reaches.
fn instance(dir: &std::path::Path, url: &str, extra: &[&str]) -> Server {
    let mut cmd = command(dir);
    cmd.args(["--store", url, "--max-balance", "9223372036854775807"])
        .args(extra);
    Server::start(cmd)
}

/// Every user's balance equals the replay of its history, which never dips
/// below 0; returns (balance, rows) per user.
fn replay(addr: &str, users: u64) -> BTreeMap<u64, (i128, Vec<serde_json::Value>)> {
    let mut out = BTreeMap::new();
    for user in 1..=users {
        let rows = get_json(addr, &format!("/point/{user}/histories"))
            .as_array()
            .unwrap()
            .clone();
        let mut running: i128 = 0;
        for row in &rows {
            let amount = i128::from(row["amount"].as_u64().unwrap());
            match row["type"].as_str().unwrap() {
                "CHARGE" => running += amount,
                "USE" => running -= amount,
                other => panic!("unknown type {other}"),
            }
            assert!(running >= 0, "user {user}: the history goes negative");
        }
        let balance = i128::from(
            get_json(addr, &format!("/point/{user}"))["point"]
                .as_u64()
                .unwrap(),
        );
        out.insert(user, (balance, rows));
        let _ = running;
    }
    out
}

/// What the load saw succeed, per user: (charged, used, 2xx count).
type Acked = BTreeMap<u64, (i128, i128, usize)>;

/// `threads` threads, each sending `per_thread` requests round-robin over the
/// instances: charges of 10 and (if `uses`) uses of 7 of users `1..=users`.
fn mixed_load(addrs: &[String], users: u64, threads: u64, per_thread: u64, uses: bool) -> Acked {
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let addrs = addrs.to_vec();
            std::thread::spawn(move || {
                let mut acked = Acked::new();
                for i in 0..per_thread {
                    let user = 1 + (thread + i) % users;
                    let addr = &addrs[((thread + i) % addrs.len() as u64) as usize];
                    let charge = !uses || (i + thread) % 3 != 2;
                    let (path, amount) = if charge {
                        (format!("/point/{user}/charge"), 10)
                    } else {
                        (format!("/point/{user}/use"), 7)
                    };
                    let (status, body) =
                        request(addr, "PATCH", &path, &amount.to_string()).expect("answered");
                    let entry = acked.entry(user).or_insert((0, 0, 0));
                    match status {
                        200 if charge => *entry = (entry.0 + amount, entry.1, entry.2 + 1),
                        200 => *entry = (entry.0, entry.1 + amount, entry.2 + 1),
                        409 => assert!(body.contains("INSUFFICIENT_BALANCE"), "{body}"),
                        // STORE_UNAVAILABLE only with --pg-pipeline on: a
                        // refusal computed on a pipelined change that another
                        // instance's write made fail (nothing changed).
                        503 => assert!(
                            body.contains("WRITE_CONFLICT")
                                || body.contains("LOCK_TIMEOUT")
                                || body.contains("STORE_UNAVAILABLE"),
                            "{body}"
                        ),
                        other => panic!("unexpected {other}: {body}"),
                    }
                }
                acked
            })
        })
        .collect();
    let mut total = Acked::new();
    for handle in handles {
        for (user, (c, u, n)) in handle.join().expect("a load thread failed") {
            let entry = total.entry(user).or_insert((0, 0, 0));
            *entry = (entry.0 + c, entry.1 + u, entry.2 + n);
        }
    }
    total
}

/// Four instances (started with `extra` flags) under mixed load on three
/// users: every 2xx is in the history, balances are the acknowledged sums.
fn four_instances_lose_no_update(extra: &[&str]) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cluster) = Cluster::from_env() else {
        return;
    };
    let url = cluster.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let servers: Vec<Server> = (0..4).map(|_| instance(dir.path(), &url, extra)).collect();
    let addrs: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();

    let acked = mixed_load(&addrs, 3, 16, 40, true);
    let seen = replay(&addrs[0], 3);
    for (user, (charged, used, count)) in &acked {
        let (balance, rows) = &seen[user];
        assert_eq!(
            *balance,
            charged - used,
            "user {user}: balance != acknowledged changes"
        );
        assert_eq!(rows.len(), *count, "user {user}: one history row per 2xx");
    }
    // Every instance reads the same balances.
    for addr in &addrs[1..] {
        for user in 1..=3 {
            let point = get_json(addr, &format!("/point/{user}"))["point"]
                .as_u64()
                .unwrap();
            assert_eq!(i128::from(point), seen[&user].0);
        }
    }
    for server in servers {
        server.stop();
    }
}

#[test]
fn four_instances_on_one_database_lose_no_update() {
    four_instances_lose_no_update(&[]);
}

#[test]
fn four_pipelined_instances_on_one_database_lose_no_update() {
    // Each instance releases a user once its change is sequenced; another
    // instance's write makes its later pipelined changes fail (503), never lost.
    four_instances_lose_no_update(&["--pg-pipeline", "on"]);
}

#[test]
fn negative_control_without_the_condition_instances_lose_updates() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cluster) = Cluster::from_env() else {
        return;
    };
    let url = cluster.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    // The hidden flag exists only in test builds of the binary (the package's
    // dev-dependency on itself turns on its `test-util`).
    let probe = command(dir.path())
        .args(["--test-unconditional-commits", "--help"])
        .output()
        .expect("run pointlock");
    assert!(
        probe.status.success(),
        "this pointlock binary has no --test-unconditional-commits (`cargo test` builds \
         the package's binary with its test-util feature; a release build has none)"
    );
    let flag = ["--test-unconditional-commits"];
    let servers: Vec<Server> = (0..4).map(|_| instance(dir.path(), &url, &flag)).collect();
    let addrs: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();

    let acked = mixed_load(&addrs, 1, 16, 40, false);
    let seen = replay(&addrs[0], 1);
    let (charged, _, count) = acked[&1];
    let (balance, rows) = &seen[&1];
    assert_eq!(
        rows.len(),
        count,
        "every acknowledged charge left its history row"
    );
    assert!(
        *balance < charged,
        "without the condition four instances must lose updates, but the balance is \
         {balance} of {charged}"
    );
    for server in servers {
        server.stop();
    }
}

/// Charges of unique amounts to users `1..=users` over `addrs`, from `threads`
/// threads, until `stop` is set; every acknowledged (user, amount), and every
/// other answer's status. A thread whose instance stops answering moves on to
/// the next instance.
fn unique_charges(
    addrs: Vec<String>,
    users: u64,
    threads: u64,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<(u64, u64)>>>,
    others: Arc<Mutex<Vec<(u16, String)>>>,
) -> Vec<std::thread::JoinHandle<()>> {
    let next = Arc::new(AtomicU64::new(1_000_000));
    (0..threads)
        .map(|thread| {
            let (addrs, stop, acks, others, next) = (
                addrs.clone(),
                Arc::clone(&stop),
                Arc::clone(&acks),
                Arc::clone(&others),
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
                    match request(&addrs[target], "PATCH", &path, &amount.to_string()) {
                        Some((200, _)) => acks.lock().unwrap().push((user, amount)),
                        Some((status, body)) => others.lock().unwrap().push((status, body)),
                        None => target = (target + 1) % addrs.len(), // killed: move on
                    }
                }
            })
        })
        .collect()
}

/// Every acknowledged charge is in its user's history, and every balance equals
/// its history's sum.
fn every_ack_is_there(addr: &str, users: u64, acks: &[(u64, u64)]) {
    let mut want: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for &(user, amount) in acks {
        want.entry(user).or_default().insert(amount);
    }
    for (user, (balance, rows)) in replay(addr, users) {
        let amounts: BTreeSet<u64> = rows.iter().map(|r| r["amount"].as_u64().unwrap()).collect();
        let missing: Vec<_> = want
            .remove(&user)
            .unwrap_or_default()
            .into_iter()
            .filter(|a| !amounts.contains(a))
            .collect();
        assert!(
            missing.is_empty(),
            "user {user}: acknowledged charges lost: {missing:?}"
        );
        let sum: i128 = rows
            .iter()
            .map(|r| i128::from(r["amount"].as_u64().unwrap()))
            .sum();
        assert_eq!(balance, sum, "user {user}: balance != sum(history)");
    }
}

#[test]
fn kill_9_of_one_instance_mid_load_loses_no_acknowledged_change() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cluster) = Cluster::from_env() else {
        return;
    };
    let url = cluster.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let victim = instance(dir.path(), &url, &[]);
    let survivor = instance(dir.path(), &url, &[]);
    let addrs = vec![victim.addr.clone(), survivor.addr.clone()];
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::new()));
    let others = Arc::new(Mutex::new(Vec::new()));
    let threads = unique_charges(
        addrs,
        10,
        8,
        Arc::clone(&stop),
        Arc::clone(&acks),
        Arc::clone(&others),
    );
    wait_for_acks(&acks, 200);
    victim.kill9();
    let at_kill = acks.lock().unwrap().len();
    wait_for_acks(&acks, at_kill + 200); // the survivor goes on serving
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("a load thread failed");
    }
    let others = others.lock().unwrap();
    assert!(
        others.iter().all(|(status, _)| *status == 503),
        "only retryable refusals besides 2xx: {others:?}"
    );
    every_ack_is_there(&survivor.addr, 10, &acks.lock().unwrap());
    survivor.stop();
}

#[test]
fn a_postgres_restart_mid_load_gives_5xx_corrupts_nothing_and_service_resumes() {
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
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::new()));
    let others = Arc::new(Mutex::new(Vec::new()));
    let threads = unique_charges(
        addrs.clone(),
        10,
        8,
        Arc::clone(&stop),
        Arc::clone(&acks),
        Arc::clone(&others),
    );
    wait_for_acks(&acks, 200);
    cluster.restart();
    // Service resumes by itself: acknowledgements flow again after the restart.
    let after_restart = acks.lock().unwrap().len();
    wait_for_acks(&acks, after_restart + 200);
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("a load thread failed");
    }
    let others = others.lock().unwrap();
    assert!(
        !others.is_empty(),
        "requests during the restart were refused, not lost"
    );
    for (status, body) in others.iter() {
        assert!(
            *status == 503 || (*status == 500 && body.contains("STORE_OUTCOME_UNKNOWN")),
            "in-flight requests get a coded 5xx: {status} {body}"
        );
    }
    every_ack_is_there(&addrs[0], 10, &acks.lock().unwrap());
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
    every_ack_is_there(&server.addr, 1, &[(1, 5), (1, 7)]);
    let balance = get_json(&server.addr, "/point/1")["point"]
        .as_u64()
        .unwrap();
    assert_eq!(balance, 12, "the refused charge changed nothing");
    server.stop();
}

/// Wait (bounded: 60 s) until at least `count` charges were acknowledged.
fn wait_for_acks(acks: &Mutex<Vec<(u64, u64)>>, count: usize) {
    let started = Instant::now();
    while acks.lock().unwrap().len() < count {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} of {count} acknowledgements within 60 s",
            acks.lock().unwrap().len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
