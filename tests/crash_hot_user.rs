//! kill -9 mid-burst on one hot user, with concurrent reads: on the
//! pipelined store, every acknowledged balance and every balance a read
//! returned survive.
//!
//! Writers alternate charges and uses of unique amounts on one user (so each
//! history row names the request that made it); readers read the balance. The
//! server is SIGKILLed mid-burst and restarted on the same file; then every
//! acknowledged change must be in the history with the balance its answer
//! gave (the running balance at its row), and every balance a read returned
//! must be one of the history's running balances: a state that is durable. A
//! read of a sequenced state that was lost in the crash fails that.
//!
//! The negative controls run the same rounds against a debug binary that
//! breaks the pipeline's promise on purpose (`--test-negative-control`, a
//! hidden flag of `test-util` builds):
//! answering a change once it is sequenced, and answering reads from the
//! sequenced state. Each must be caught.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use support::binary::{command, Server};
use support::http::{get_history, get_json, request};
use support::pg::{cluster_url, TestDatabase};

const WRITERS: u64 = 8;
const READERS: u64 = 2;
const HOT: u64 = 7;
const ROUNDS: u64 = 3;
/// The most rounds a negative control gets to be caught in (each round is a
/// fraction of a second; the catch depends on where the kill lands, so a
/// loaded machine may need several).
#[cfg(debug_assertions)]
const CONTROL_ROUNDS_MAX: u64 = 50;
/// Kill after this many acknowledged changes in a round.
const ACKS_BEFORE_KILL: usize = 400;
/// The first charge: uses never run the balance out.
const SEED: u64 = 1_000_000_000_000;
/// Charges are at least this; uses below it (both unique).
const CHARGE_FLOOR: u64 = 10_000_000;

/// An acknowledged change: charge or use, its unique amount, the answered balance.
#[derive(Clone, Copy, Debug)]
struct Ack {
    charge: bool,
    amount: u64,
    balance: u64,
}

/// What a round saw before the kill.
#[derive(Default)]
struct Seen {
    acks: Vec<Ack>,
    reads: Vec<u64>,
}

fn point(body: &str) -> u64 {
    let value: serde_json::Value = serde_json::from_str(body).unwrap();
    value["point"].as_u64().unwrap()
}

/// Burst on the hot user until `ACKS_BEFORE_KILL` acks, then kill -9: from a
/// reader thread, right after a read was answered (the moment a read of a
/// state not yet durable would be lost, if reads could show one).
fn burst_and_kill(server: Server, round: u64) -> Seen {
    let addr = server.addr.clone();
    let child = server.into_child();
    let child = Arc::new(Mutex::new(child));
    let next = Arc::new(AtomicU64::new(round * 1_000_000));
    let armed = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(Mutex::new(Vec::new()));
    let (acks_tx, acks) = mpsc::channel::<Ack>();
    let mut threads = Vec::new();
    for _ in 0..WRITERS {
        let (addr, next, acks_tx) = (addr.clone(), Arc::clone(&next), acks_tx.clone());
        threads.push(std::thread::spawn(move || loop {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let charge = n % 2 == 0;
            let (path, amount) = if charge {
                ("charge", CHARGE_FLOOR + n)
            } else {
                ("use", n)
            };
            let url = format!("/point/{HOT}/{path}");
            match request(&addr, "PATCH", &url, &amount.to_string()) {
                Some((200, body)) => {
                    let ack = Ack {
                        charge,
                        amount,
                        balance: point(&body),
                    };
                    if acks_tx.send(ack).is_err() {
                        return;
                    }
                }
                Some((status, body)) => panic!("unexpected {status}: {body}"),
                None => return, // killed
            }
        }));
    }
    drop(acks_tx);
    for _ in 0..READERS {
        let (addr, armed, reads, child) = (
            addr.clone(),
            Arc::clone(&armed),
            Arc::clone(&reads),
            Arc::clone(&child),
        );
        threads.push(std::thread::spawn(move || loop {
            match request(&addr, "GET", &format!("/point/{HOT}"), "") {
                Some((200, body)) => {
                    reads.lock().unwrap().push(point(&body));
                    if armed.load(Ordering::SeqCst) {
                        // SIGKILL (a second one is harmless).
                        let _ = child.lock().unwrap().kill();
                        return;
                    }
                }
                Some((status, body)) => panic!("unexpected {status}: {body}"),
                None => return, // killed
            }
        }));
    }
    let mut seen = Seen::default();
    for ack in acks.iter() {
        seen.acks.push(ack);
        if seen.acks.len() == ACKS_BEFORE_KILL {
            break; // mid-burst: the threads are still sending
        }
    }
    armed.store(true, Ordering::SeqCst);
    seen.acks.extend(acks.iter()); // until every writer saw the server die
    for thread in threads {
        thread.join().expect("a load thread failed");
    }
    let mut child = child.lock().unwrap();
    let _ = child.kill();
    child.wait().unwrap();
    assert!(
        seen.acks.len() >= ACKS_BEFORE_KILL,
        "the burst never got going"
    );
    seen.reads = std::mem::take(&mut *reads.lock().unwrap());
    seen
}

/// Every acknowledged balance and every read balance against the durable history.
fn verify(addr: &str, seen: &Seen) {
    let history = get_history(addr, HOT);
    let mut running = 0_u64;
    let mut durable = BTreeSet::from([0_u64]);
    let mut at_row = HashMap::new();
    for row in history.as_array().unwrap() {
        let amount = row["amount"].as_u64().unwrap();
        let charge = row["type"] == "CHARGE";
        running = if charge {
            running + amount
        } else {
            running.checked_sub(amount).expect("a use below zero")
        };
        durable.insert(running);
        at_row.insert((charge, amount), running);
    }
    for ack in &seen.acks {
        let found = at_row.get(&(ack.charge, ack.amount));
        assert_eq!(
            found,
            Some(&ack.balance),
            "acknowledged change lost or answered with a balance it never had after kill -9: {ack:?}"
        );
    }
    let lost: Vec<_> = seen
        .reads
        .iter()
        .filter(|read| !durable.contains(read))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} reads returned a balance that is not durable (first: {:?})",
        lost.len(),
        seen.reads.len(),
        lost.first()
    );
    let balance = get_json(addr, &format!("/point/{HOT}"))["point"]
        .as_u64()
        .unwrap();
    assert_eq!(balance, running, "balance == history");
}

fn start(cmd: Command, file: &std::path::Path) -> Server {
    start_on(cmd, &format!("sqlite:{}", file.display()), &[])
}

fn start_on(mut cmd: Command, store: &str, extra: &[&str]) -> Server {
    cmd.args(["--max-balance", "9223372036854775807"]);
    cmd.args(["--store", store]).args(extra);
    Server::start(cmd)
}

fn seed(server: &Server) {
    let (status, body) = request(
        &server.addr,
        "PATCH",
        &format!("/point/{HOT}/charge"),
        &SEED.to_string(),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn kill_9_mid_burst_on_one_hot_user_loses_no_acknowledged_balance_and_no_read() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.db");
    let mut all = Seen::default();
    let mut server = start(command(dir.path()), &file);
    seed(&server);
    for round in 1..=ROUNDS {
        let seen = burst_and_kill(server, round);
        all.acks.extend(seen.acks);
        all.reads.extend(seen.reads);
        server = start(command(dir.path()), &file);
        verify(&server.addr, &all);
    }
    server.stop();
}

#[test]
fn postgres_pipelined_kill_9_mid_burst_loses_no_acknowledged_balance_and_no_read() {
    // The pointlock process dies (PostgreSQL does not): the changes it had
    // sequenced and not committed are lost; nothing it answered may be.
    if cluster_url().is_none() {
        return;
    }
    let url = TestDatabase::create_left();
    let dir = tempfile::tempdir().unwrap();
    let pipelined = ["--pg-pipeline", "on"];
    let mut all = Seen::default();
    let mut server = start_on(command(dir.path()), &url, &pipelined);
    seed(&server);
    for round in 1..=ROUNDS {
        let seen = burst_and_kill(server, round);
        all.acks.extend(seen.acks);
        all.reads.extend(seen.reads);
        server = start_on(command(dir.path()), &url, &pipelined);
        verify(&server.addr, &all);
    }
    server.stop();
}

/// Rounds against a debug binary with `control` set (restarted without it for
/// the check) until the check fails, at most `CONTROL_ROUNDS_MAX`; whether it
/// ever did.
#[cfg(debug_assertions)]
fn caught(control: &str) -> bool {
    let debug_bin = env!("CARGO_BIN_EXE_pointlock");
    // The hidden flag exists only in `test-util` builds of the binary (the
    // server's own dev-dependency turns the feature on for its tests).
    let probe = support::binary::command_of(debug_bin, std::path::Path::new("."))
        .args(["--test-negative-control", control, "--help"])
        .output()
        .expect("run pointlock");
    assert!(
        probe.status.success(),
        "this pointlock binary has no --test-negative-control (a build without test-util)"
    );
    for round in 1..=CONTROL_ROUNDS_MAX {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.db");
        let mut cmd = support::binary::command_of(debug_bin, dir.path());
        cmd.args(["--test-negative-control", control]);
        let server = start(cmd, &file);
        seed(&server);
        let seen = burst_and_kill(server, round);
        let cmd = support::binary::command_of(debug_bin, dir.path());
        let server = start(cmd, &file);
        let addr = server.addr.clone();
        let check = std::panic::catch_unwind(|| verify(&addr, &seen));
        server.stop();
        if check.is_err() {
            eprintln!("{control}: caught in round {round}");
            return true;
        }
    }
    false
}

#[cfg(debug_assertions)]
#[test]
fn negative_control_answering_at_sequencing_fails_the_check() {
    assert!(
        caught("answer-at-sequencing"),
        "acknowledging before durable must lose an acknowledged change in some round"
    );
}

#[cfg(debug_assertions)]
#[test]
fn negative_control_reading_the_sequenced_state_fails_the_check() {
    assert!(
        caught("dirty-reads"),
        "reads of sequenced state must return a lost balance in some round"
    );
}
