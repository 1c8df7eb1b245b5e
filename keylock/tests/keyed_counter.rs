//! Runs `examples/keyed_counter.rs` as a user would: the example's own binary on a
//! free loopback port, driven over raw HTTP/1.1 from many threads at once.
//!
//! `cargo test` builds the examples before it runs the tests; a run limited to this
//! test (`cargo test --test keyed_counter`) does not, so build it first with
//! `cargo build --example keyed_counter` (the test says so if the binary is missing
//! or older than its source).
//!
//! No assertion depends on timing. Where a scenario needs requests to overlap, the
//! example's hidden `--rendezvous N` flag holds every increment, after it has read
//! its counter, until N increments have reached that point (2 s at most, then a
//! 500): with it, "these increments ran side by side" is a fact the test can rely
//! on, and "these increments were kept apart" shows up as a failed rendezvous.
//! Every socket has a timeout, and every server process is killed by a drop guard.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// The longest any connect, write or read may block.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest the example may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The example's binary next to this test's: `target/<profile>/deps/<test>-<hash>`
/// → `target/<profile>/examples/keyed_counter`.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of this test binary");
    let mut dir = exe
        .parent()
        .expect("the test binary's directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let binary = dir
        .join("examples")
        .join(format!("keyed_counter{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "{} is missing: run `cargo build --example keyed_counter` (with the same profile \
         as the tests) before `cargo test --test keyed_counter`",
        binary.display()
    );
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/keyed_counter.rs");
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified());
    if let (Ok(built), Ok(edited)) = (modified(&binary), modified(&source)) {
        assert!(
            built >= edited,
            "{} is older than {}: run `cargo build --example keyed_counter`",
            binary.display(),
            source.display()
        );
    }
    binary
}

/// Kills the process when dropped (also when a test panics).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One running `keyed_counter` process.
struct Server {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _process: KillOnDrop,
}

impl Server {
    /// Start the example on a free loopback port with `args`; wait for its address.
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(example_binary())
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the keyed_counter example");
        let stderr = child.stderr.take().expect("the example's stderr");
        let process = KillOnDrop(child);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        {
            // Keep draining stderr (a full pipe would stall the server's logging).
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = line.strip_prefix("keyed_counter listening on http://") {
                        let _ = addr_tx.send(addr.trim().to_owned());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let addr = match addr_rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr.parse().expect("the logged address parses"),
            Err(error) => panic!(
                "keyed_counter {args:?} printed no address ({error}); its stderr:\n{}",
                log.lock().unwrap().join("\n")
            ),
        };
        Self {
            addr,
            log,
            _process: process,
        }
    }

    /// The server's last log lines, for failure messages.
    fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(20)..].join("\n")
    }

    fn request(&self, method: &str, path: &str) -> Reply {
        request(self.addr, method, path)
    }

    /// The counter's value as `GET /counter/{name}` answers it.
    fn value(&self, name: &str) -> u64 {
        let reply = self.request("GET", &format!("/counter/{name}"));
        assert_eq!(reply.status, 200, "{reply:?}\n{}", self.log_tail());
        assert_eq!(reply.json["name"], name);
        reply.json["value"].as_u64().expect("a numeric value")
    }

    /// `POST /counter/{name}/incr` once per entry of `names`, all sent at once (one
    /// thread each, released together); the replies in the order of `names`.
    fn concurrent_incrs(&self, names: &[String]) -> Vec<Reply> {
        let start = Barrier::new(names.len());
        std::thread::scope(|scope| {
            let threads: Vec<_> = names
                .iter()
                .map(|name| {
                    let start = &start;
                    scope.spawn(move || {
                        start.wait();
                        self.request("POST", &format!("/counter/{name}/incr"))
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|thread| thread.join().expect("a client thread panicked"))
                .collect()
        })
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    json: Value,
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), every step
/// under [`IO_TIMEOUT`]; the answer must be JSON.
fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let what = format!("{method} {path}");
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("{what}: connect to {addr}: {e}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("{what}: send: {e}"));
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{what}: no complete answer: {e}"));
    let text = String::from_utf8(raw).unwrap_or_else(|e| panic!("{what}: not UTF-8: {e}"));
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}: no end of headers in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no status in {head:?}"));
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\ncontent-type: application/json"),
        "{what}: not a JSON answer: {head:?}"
    );
    let json = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{what}: body {body:?} is not JSON: {e}"));
    Reply { status, json }
}

/// The values of `replies`, each checked to be a 200 for `name`.
fn values(server: &Server, name: &str, replies: &[Reply]) -> Vec<u64> {
    replies
        .iter()
        .map(|reply| {
            assert_eq!(reply.status, 200, "{reply:?}\n{}", server.log_tail());
            assert_eq!(reply.json["name"], name, "{reply:?}");
            reply.json["value"].as_u64().expect("a numeric value")
        })
        .collect()
}

#[test]
fn fifty_concurrent_increments_of_one_counter_are_serialized() {
    let server = Server::start(&["--latency-ms", "20"]);
    let replies = server.concurrent_incrs(&vec!["same".to_owned(); 50]);
    let mut seen = values(&server, "same", &replies);
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=50).collect::<Vec<u64>>(),
        "each increment saw the one before it: 50 distinct answers 1..=50"
    );
    assert_eq!(server.value("same"), 50, "no update was lost");
}

/// Ten counters, five increments each, all at once, behind `--rendezvous 10`: the
/// first increment of every counter must be inside the handler at the same time,
/// or the rendezvous fails with a 500. So the lock never makes one counter wait
/// for another (ten chains take the time of one), while each chain stays exact.
#[test]
fn increments_of_ten_counters_run_side_by_side() {
    let server = Server::start(&["--latency-ms", "20", "--rendezvous", "10"]);
    let names: Vec<String> = (0..5)
        .flat_map(|_| (0..10).map(|i| format!("counter-{i}")))
        .collect();
    let replies = server.concurrent_incrs(&names);
    let mut per_name: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (name, reply) in names.iter().zip(&replies) {
        let value = values(&server, name, std::slice::from_ref(reply))[0];
        per_name.entry(name).or_default().push(value);
    }
    assert_eq!(per_name.len(), 10);
    for (name, mut seen) in per_name {
        seen.sort_unstable();
        assert_eq!(seen, [1, 2, 3, 4, 5], "{name}'s increments were serialized");
        assert_eq!(server.value(name), 5, "{name}");
    }
}

/// The negative control: the same 50 increments with `--no-lock`. The rendezvous
/// of two makes the race certain rather than likely: the first two increments both
/// read the counter before either writes it, so at least one update is lost.
/// (With the lock, that rendezvous is never met: see the next test.)
#[test]
fn without_the_lock_concurrent_increments_lose_updates() {
    let server = Server::start(&["--no-lock", "--latency-ms", "20", "--rendezvous", "2"]);
    let replies = server.concurrent_incrs(&vec!["same".to_owned(); 50]);
    let mut seen = values(&server, "same", &replies);
    seen.sort_unstable();
    seen.dedup();
    assert!(
        seen.len() < 50,
        "some increments answered the same value: {seen:?}"
    );
    let value = server.value("same");
    assert!(value < 50, "updates were lost without the lock: {value}");
}

/// The positive twin of the negative control's rendezvous: with the lock, two
/// increments of one counter never overlap, so a rendezvous of two is never met
/// (both answer 500 RENDEZVOUS_TIMEOUT, one after the other, 2 s each, and write
/// nothing), where the ten-counter test's rendezvous of different counters is met.
#[test]
fn with_the_lock_one_counter_never_overlaps_itself() {
    let server = Server::start(&["--latency-ms", "0", "--rendezvous", "2"]);
    let replies = server.concurrent_incrs(&["same".to_owned(), "same".to_owned()]);
    for reply in &replies {
        assert_eq!(reply.status, 500, "{reply:?}\n{}", server.log_tail());
        assert_eq!(reply.json["code"], "RENDEZVOUS_TIMEOUT", "{reply:?}");
    }
    assert_eq!(
        server.value("same"),
        0,
        "a failed rendezvous writes nothing"
    );
}

/// Bad names are 400 `INVALID_NAME`, unknown routes 404, wrong methods 405, an
/// unknown counter reads 0; with and without the lock, the same bodies.
#[test]
fn invalid_names_unknown_routes_and_wrong_methods_answer_json_errors() {
    let long = "a".repeat(65);
    let longest = "b".repeat(64);
    let cases: Vec<(&str, String, u16, Value)> = vec![
        (
            "POST",
            "/counter/a%20b/incr".into(),
            400,
            json!("INVALID_NAME"),
        ),
        (
            "POST",
            format!("/counter/{long}/incr"),
            400,
            json!("INVALID_NAME"),
        ),
        ("POST", "/counter//incr".into(), 400, json!("INVALID_NAME")),
        (
            "POST",
            "/counter/a.b/incr".into(),
            400,
            json!("INVALID_NAME"),
        ),
        ("GET", "/counter/a%20b".into(), 400, json!("INVALID_NAME")),
        (
            "GET",
            format!("/counter/{long}"),
            400,
            json!("INVALID_NAME"),
        ),
        ("GET", "/nope".into(), 404, json!("NOT_FOUND")),
        ("POST", "/counter/x/decr".into(), 404, json!("NOT_FOUND")),
        (
            "GET",
            "/counter/x/incr".into(),
            405,
            json!("METHOD_NOT_ALLOWED"),
        ),
        (
            "POST",
            "/counter/x".into(),
            405,
            json!("METHOD_NOT_ALLOWED"),
        ),
    ];
    let locked = Server::start(&["--latency-ms", "20"]);
    let unlocked = Server::start(&["--no-lock", "--latency-ms", "20"]);
    for (method, path, status, code) in &cases {
        let reply = locked.request(method, path);
        assert_eq!(reply.status, *status, "{method} {path}: {reply:?}");
        assert_eq!(reply.json["code"], *code, "{method} {path}: {reply:?}");
        assert!(reply.json["message"].is_string(), "{reply:?}");
        let control = unlocked.request(method, path);
        assert_eq!(
            (control.status, &control.json),
            (reply.status, &reply.json),
            "{method} {path}: --no-lock answers the same"
        );
    }
    for server in [&locked, &unlocked] {
        assert_eq!(server.value("never-incremented"), 0);
        // The longest valid name works, and a rejected name left no counter behind.
        let reply = server.request("POST", &format!("/counter/{longest}/incr"));
        assert_eq!(values(server, &longest, &[reply]), [1]);
        assert_eq!(server.value(&longest), 1);
    }
}
