//! Idempotency records with the binary: they survive a clean restart and
//! `kill -9` on the durable stores (SQLite, PostgreSQL), a retry after either
//! gets the first answer byte for byte and applies nothing, and records expire
//! after `--idempotency-ttl-hours` and are swept.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use support::binary::{command, Server};
use support::http::{exchange, get_json, split};
use support::pg::{cluster_url, TestDatabase};

/// The answer to one request: status, whether it was replayed, body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    replayed: bool,
    body: String,
}

/// A PATCH with an `Idempotency-Key` on its own connection; `None` if the
/// server is gone.
fn keyed(addr: &str, op: &str, user: u64, key: &str, amount: u64) -> Option<Answer> {
    let headers = format!("idempotency-key: {key}\r\ncontent-type: application/json\r\n");
    let path = format!("/point/{user}/{op}");
    let response = exchange(addr, "PATCH", &path, &headers, &amount.to_string())?;
    let (status, head, body) = split(&response)?;
    Some(Answer {
        status,
        replayed: head
            .lines()
            .any(|line| line.eq_ignore_ascii_case("idempotent-replayed: true")),
        body: body.to_owned(),
    })
}

/// The sum of user's history, and its length.
fn history(addr: &str, user: u64) -> (u64, usize) {
    let rows = get_json(addr, &format!("/point/{user}/histories"));
    let rows = rows.as_array().unwrap();
    let sum = rows.iter().map(|r| r["amount"].as_u64().unwrap()).sum();
    (sum, rows.len())
}

/// Keyed charges (key `k{amount}`, unique amounts) from a few threads until
/// the server dies: every acknowledged one, by key.
fn keyed_load_until_killed(server: Server, kill_after: usize) -> BTreeMap<String, Answer> {
    let next = Arc::new(AtomicU64::new(1));
    let (acks_tx, acks) = mpsc::channel();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let addr = server.addr.clone();
            let next = Arc::clone(&next);
            let acks_tx = acks_tx.clone();
            std::thread::spawn(move || loop {
                let amount = next.fetch_add(1, Ordering::SeqCst);
                let key = format!("k{amount}");
                match keyed(&addr, "charge", 1 + amount % 3, &key, amount) {
                    Some(answer) if answer.status == 200 => {
                        if acks_tx.send((key, answer)).is_err() {
                            return;
                        }
                    }
                    Some(other) => panic!("unexpected answer {other:?}"),
                    None => return, // killed
                }
            })
        })
        .collect();
    drop(acks_tx);
    let mut acked = BTreeMap::new();
    while acked.len() < kill_after {
        let (key, answer) = acks.recv().expect("the load threads stopped early");
        acked.insert(key, answer);
    }
    server.kill9();
    for thread in threads {
        thread.join().unwrap();
    }
    acked.extend(acks.try_iter());
    acked
}

fn big_balance(mut cmd: Command) -> Command {
    cmd.args(["--max-balance", "9000000000000000000"]);
    cmd
}

/// A clean restart, then kill -9 mid-load, on the store `start` opens.
fn survives_restart_and_kill_9(start: impl Fn() -> Command) {
    // A clean restart.
    let server = Server::start(start());
    let first = keyed(&server.addr, "charge", 1, "before-restart", 100_000).unwrap();
    assert_eq!(first.status, 200, "{first:?}");
    server.stop();
    let server = Server::start(start());
    let again = keyed(&server.addr, "charge", 1, "before-restart", 100_000).unwrap();
    assert!(again.replayed, "{again:?}");
    assert_eq!(again.body, first.body, "byte for byte across a restart");
    let reused = keyed(&server.addr, "use", 1, "before-restart", 100_000).unwrap();
    assert_eq!(reused.status, 422, "{reused:?}");
    server.stop();

    // kill -9 mid-load, then every key retried.
    let server = Server::start(start());
    let acked = keyed_load_until_killed(server, 150);
    let sent = acked
        .keys()
        .map(|k| k[1..].parse::<u64>().unwrap())
        .max()
        .unwrap()
        + 8; // and whatever was in flight beyond the last ack
    let server = Server::start(start());
    // The charge of "before-restart" (100_000, user 1) is in user 1's history
    // too, once.
    let with_first: Vec<u64> = {
        let rows = get_json(&server.addr, "/point/1/histories");
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| r["amount"].as_u64().unwrap())
            .filter(|a| *a == 100_000)
            .collect()
    };
    assert_eq!(with_first, vec![100_000], "applied once before the kill");
    retry_all_and_check_except(&server.addr, &acked, sent, 100_000);
    // Retrying again changes nothing.
    let before: Vec<_> = (1..=3).map(|u| history(&server.addr, u)).collect();
    retry_all_and_check_except(&server.addr, &acked, sent, 100_000);
    let after: Vec<_> = (1..=3).map(|u| history(&server.addr, u)).collect();
    assert_eq!(before, after);
    server.stop();
}

/// Retry every key sent so far (acknowledged or in flight at the kill, up to
/// `sent`): acknowledged ones must replay byte for byte; every key must end up
/// applied exactly once (each amount once in its user's history, ignoring the
/// rows of amount `other`, another step's).
fn retry_all_and_check_except(addr: &str, acked: &BTreeMap<String, Answer>, sent: u64, other: u64) {
    assert!(sent < other);
    for amount in 1..=sent {
        let key = format!("k{amount}");
        let user = 1 + amount % 3;
        let answer = keyed(addr, "charge", user, &key, amount).expect("server answers");
        assert_eq!(answer.status, 200, "{answer:?}");
        if let Some(first) = acked.get(&key) {
            assert!(
                answer.replayed,
                "{key}: acknowledged, so recorded: {answer:?}"
            );
            assert_eq!(
                answer.body, first.body,
                "{key}: the first answer, byte for byte"
            );
        }
    }
    for user in 1..=3 {
        let rows = get_json(addr, &format!("/point/{user}/histories"));
        let mut amounts: Vec<u64> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["amount"].as_u64().unwrap())
            .filter(|a| *a != other)
            .collect();
        amounts.sort_unstable();
        let expected: Vec<u64> = (1..=sent).filter(|a| 1 + a % 3 == user).collect();
        assert_eq!(
            amounts, expected,
            "user {user}: every key applied exactly once"
        );
    }
}

#[test]
fn sqlite_records_survive_a_restart_and_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    survives_restart_and_kill_9(|| {
        let mut cmd = big_balance(command(dir.path()));
        cmd.args(["--store", &format!("sqlite:{}", path.display())]);
        cmd
    });
}

#[test]
fn postgres_records_survive_a_restart_and_kill_9() {
    if cluster_url().is_none() {
        return;
    }
    let db = TestDatabase::create_blocking();
    let dir = tempfile::tempdir().unwrap();
    survives_restart_and_kill_9(|| {
        let mut cmd = big_balance(command(dir.path()));
        cmd.args(["--store", db.url()]);
        cmd
    });
    drop(db);
}

#[test]
fn negative_control_the_memory_store_forgets_keys_on_restart() {
    // What "survive" rules out: the memory store loses its records with the
    // process, so the retry applies the charge again.
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let mut cmd = command(dir.path());
        cmd.args(["--store", "memory"]);
        cmd
    };
    let server = Server::start(start());
    assert_eq!(
        keyed(&server.addr, "charge", 1, "k", 10).unwrap().status,
        200
    );
    server.stop();
    let server = Server::start(start());
    let again = keyed(&server.addr, "charge", 1, "k", 10).unwrap();
    assert!(!again.replayed, "{again:?}");
    server.stop();
}

/// Poll `check` every 20 ms until it holds; panic after `limit`.
fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn records_expire_after_the_ttl_and_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let mut cmd = command(dir.path());
    // 0.0002 h = 720 ms; a sweep every 100 ms.
    cmd.args([
        "--store",
        &format!("sqlite:{}", path.display()),
        "--idempotency-ttl-hours",
        "0.0002",
        "--idempotency-sweep-interval-ms",
        "100",
    ]);
    let server = Server::start(cmd);
    let sent = Instant::now();
    let first = keyed(&server.addr, "charge", 1, "k", 10).unwrap();
    let made = Instant::now();
    assert_eq!(first.status, 200);
    let again = keyed(&server.addr, "charge", 1, "k", 10).unwrap();
    if made.elapsed() < Duration::from_millis(700) {
        assert!(again.replayed, "within the TTL: {again:?}");
    }
    // The sweep empties the table once the record has expired (read straight
    // from the file: WAL lets a reader in beside the server).
    let records = || -> i64 {
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        conn.query_row("SELECT count(*) FROM idempotency", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(records(), 1);
    eventually(
        Duration::from_secs(20),
        "the sweep removes the expired record",
        || records() == 0,
    );
    assert!(
        sent.elapsed() >= Duration::from_millis(720),
        "not before the TTL"
    );
    // Expired: the key is free again; this applies.
    let fresh = keyed(&server.addr, "use", 1, "k", 5).unwrap();
    assert_eq!((fresh.status, fresh.replayed), (200, false), "{fresh:?}");
    assert_eq!(history(&server.addr, 1), (15, 2));
    server.stop();
}

#[test]
fn a_bad_ttl_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["0", "-1", "abc", "NaN", "100000"] {
        let out = command(dir.path())
            .args([
                "--store",
                "memory",
                &format!("--idempotency-ttl-hours={bad}"),
            ])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("idempotency-ttl-hours"), "{bad}: {stderr}");
    }
}
