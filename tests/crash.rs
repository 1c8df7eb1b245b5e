//! kill -9 mid-load loses no acknowledged change.
//!
//! Each round drives concurrent charges from several threads over many users,
//! records every 2xx, SIGKILLs the server after a number of acknowledgements
//! (while the threads keep sending), restarts it on the same file and checks:
//! every acknowledged charge is in its user's history, every user's balance
//! equals the sum of its history (so it is at least the acknowledged sum), and
//! history ids keep increasing across restarts. Unacknowledged charges that were
//! in flight at the kill may or may not be there; either way all or nothing.
//!
//! The binary is the one cargo builds for the test profile (`cargo test`: debug,
//! `cargo test --release`: release); `POINTLOCK_TEST_BIN` overrides it.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use support::binary::{command, Server};
use support::http::{get_history, get_json, request};

const THREADS: u64 = 8;
const USERS: u64 = 40;
const ROUNDS: u64 = 4;
/// Kill after this many acknowledged charges in a round.
const ACKS_BEFORE_KILL: usize = 300;

/// One acknowledged charge: user and (unique) amount.
type Ack = (u64, u64);

/// Drive charges until the server dies; kill it after `ACKS_BEFORE_KILL` acks.
fn load_and_kill(server: Server, round: u64) -> Vec<Ack> {
    let next_amount = Arc::new(AtomicU64::new(round * 1_000_000 + 1));
    let (acks_tx, acks) = mpsc::channel::<Ack>();
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let addr = server.addr.clone();
            let next_amount = Arc::clone(&next_amount);
            let acks_tx = acks_tx.clone();
            std::thread::spawn(move || {
                for i in 0.. {
                    let user = 1 + (thread * 7 + i) % USERS;
                    let amount = next_amount.fetch_add(1, Ordering::Relaxed);
                    let body = format!("{{\"amount\":{amount}}}");
                    match request(&addr, "PATCH", &format!("/point/{user}/charge"), &body) {
                        Some((200, _)) => {
                            if acks_tx.send((user, amount)).is_err() {
                                return;
                            }
                        }
                        Some((status, body)) => panic!("unexpected {status}: {body}"),
                        None => return, // killed
                    }
                }
            })
        })
        .collect();
    drop(acks_tx);
    let mut acked = Vec::new();
    for ack in acks.iter() {
        acked.push(ack);
        if acked.len() == ACKS_BEFORE_KILL {
            // Mid-load: the threads are still sending.
            break;
        }
    }
    server.kill9();
    // Acks that arrived before the kill landed count too.
    for ack in acks.iter() {
        acked.push(ack);
    }
    for thread in threads {
        thread.join().expect("a load thread failed");
    }
    assert!(acked.len() >= ACKS_BEFORE_KILL, "the load never got going");
    acked
}

/// Check every user against the acknowledged charges; returns the largest history id.
fn verify(addr: &str, acked: &[Ack], id_floor: u64) -> u64 {
    let mut expected: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for &(user, amount) in acked {
        expected.entry(user).or_default().insert(amount);
    }
    let mut id_max = id_floor;
    for user in 1..=USERS {
        let history = get_history(addr, user);
        let rows = history.as_array().unwrap();
        let mut sum = 0_u64;
        let mut amounts = BTreeSet::new();
        let mut last_id = 0;
        for row in rows {
            assert_eq!(row["type"], "CHARGE");
            let amount = row["amount"].as_u64().unwrap();
            sum += amount;
            amounts.insert(amount);
            let id = row["id"].as_u64().unwrap();
            assert!(id > last_id, "user {user}: history ids increase");
            last_id = id;
            id_max = id_max.max(id);
        }
        let want = expected.remove(&user).unwrap_or_default();
        let missing: Vec<_> = want.difference(&amounts).collect();
        assert!(
            missing.is_empty(),
            "user {user}: acknowledged charges lost after kill -9: {missing:?}"
        );
        let balance = get_json(addr, &format!("/point/{user}"))["point"]
            .as_u64()
            .unwrap();
        assert_eq!(balance, sum, "user {user}: balance != sum(history)");
        assert!(balance >= want.iter().sum::<u64>());
    }
    id_max
}

/// Rounds of load, kill -9, restart, verify on one file started by `start`.
fn rounds(start: impl Fn() -> Command, rounds: u64) {
    let mut acked_all = Vec::new();
    let mut id_max = 0;
    let mut server = Server::start(start());
    for round in 1..=rounds {
        acked_all.extend(load_and_kill(server, round));
        server = Server::start(start());
        let new_max = verify(&server.addr, &acked_all, id_max);
        assert!(
            new_max > id_max,
            "round {round}: new rows have new, larger ids"
        );
        id_max = new_max;
    }
    // History ids stay above every id seen before the restart.
    let (status, body) = request(&server.addr, "PATCH", "/point/1/charge", "1").unwrap();
    assert_eq!(status, 200, "{body}");
    let last = get_history(&server.addr, 1);
    let last_id = last.as_array().unwrap().last().unwrap()["id"]
        .as_u64()
        .unwrap();
    assert!(last_id > id_max, "{last_id} <= {id_max}");
    server.stop();
}

fn big_balance(mut cmd: Command) -> Command {
    cmd.args(["--max-balance", "9223372036854775807"]);
    cmd
}

#[test]
fn kill_9_mid_load_loses_no_acknowledged_charge() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.db");
    let spec = format!("sqlite:{}", file.display());
    rounds(
        || {
            let mut cmd = big_balance(command(dir.path()));
            cmd.args(["--store", &spec]);
            cmd
        },
        ROUNDS,
    );
    assert!(file.exists());
}

#[test]
fn the_default_store_with_no_flag_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    rounds(|| big_balance(command(dir.path())), 1);
    assert!(
        dir.path().join("pointlock.db").exists(),
        "the default store is pointlock.db in the working directory"
    );
}

#[test]
fn negative_control_the_memory_store_fails_the_check() {
    // The same round against a store that is not durable: the check must notice.
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let mut cmd = big_balance(command(dir.path()));
        cmd.args(["--store", "memory"]);
        cmd
    };
    let acked = load_and_kill(Server::start(start()), 1);
    let server = Server::start(start());
    let addr = server.addr.clone();
    let caught = std::panic::catch_unwind(|| verify(&addr, &acked, 0));
    server.stop();
    assert!(caught.is_err(), "losing every charge must fail the check");
}
