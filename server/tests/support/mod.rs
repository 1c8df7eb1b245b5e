//! Running the `pointlock` binary: start it, learn its port from its log, talk
//! raw HTTP/1.1 to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test: `POINTLOCK_TEST_BIN` if set (e.g. `target/release/pointlock`),
/// else the one cargo built for this test run (the test profile: debug under
/// `cargo test`, release under `cargo test --release`).
pub fn bin() -> String {
    std::env::var("POINTLOCK_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_pointlock").into())
}

/// A `pointlock` command with a clean environment for its own settings.
pub fn command(dir: &Path) -> Command {
    command_of(&bin(), dir)
}

/// [`command`] for the binary at `bin` (a negative control's debug build).
pub fn command_of(bin: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.current_dir(dir)
        .env("RUST_LOG", "info")
        .env_remove("POINTLOCK_STORE")
        .env_remove("POINTLOCK_ADDR")
        .env_remove("POINTLOCK_LOG_FORMAT")
        .env_remove("POINTLOCK_METRICS");
    cmd
}

pub struct Server {
    pub child: Child,
    pub addr: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Start `cmd` (with `--addr 127.0.0.1:0` added) and wait until it logs its address.
    pub fn start(mut cmd: Command) -> Self {
        cmd.args(["--addr", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn pointlock");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!(
                    "the server exited before listening: {:?}",
                    log.lock().unwrap()
                );
            };
            log.lock().unwrap().push(line.clone());
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        // Keep draining so the child never blocks on a full pipe.
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, addr, log }
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(
            exit.success(),
            "exit {exit:?}: {:?}",
            self.log.lock().unwrap()
        );
    }
}

/// One request on its own connection: `Some((status, body))`, or `None` if the
/// connection failed (the server is gone).
pub fn request(addr: &str, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

pub fn get_json(addr: &str, path: &str) -> serde_json::Value {
    let (status, body) = request(addr, "GET", path, "").expect("server answers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Wait (bounded) for a child that should exit on its own; kill it if it does not.
pub fn exits_within(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("pointlock did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The test cluster's superuser URL (`POINTLOCK_TEST_PG_URL`, exported by
/// `./scripts/test.sh`), or `None` with a note on stderr when it is unset;
/// unset under `CI=true` is a failure (CI must run the PostgreSQL tests).
pub fn pg_cluster_url() -> Option<String> {
    let Ok(url) = std::env::var("POINTLOCK_TEST_PG_URL") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "POINTLOCK_TEST_PG_URL is unset under CI: ./scripts/test.sh starts the cluster"
        );
        eprintln!("skipped: POINTLOCK_TEST_PG_URL is unset (./scripts/test.sh starts a cluster)");
        return None;
    };
    Some(url)
}

/// A new, empty database `PREFIX_<random>` in the cluster at `admin_url`; its URL.
pub fn pg_fresh_database(admin_url: &str, prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let name = format!(
        "{prefix}_{:016x}",
        nanos ^ (u64::from(std::process::id()) << 40)
    );
    let admin = admin_url.to_owned();
    let create = format!("CREATE DATABASE {name}");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(async move {
            let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                .await
                .expect("connect to the test cluster");
            let driver = tokio::spawn(connection);
            client
                .batch_execute(&create)
                .await
                .expect("create a database");
            drop(client);
            let _ = driver.await;
        });
    match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("POINTLOCK_TEST_PG_URL has no database part"),
    }
}
