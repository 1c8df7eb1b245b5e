//! The `pointlock` binary under test: a command with a clean environment for
//! its own settings, started on a free port that its log names, stopped with
//! SIGTERM or killed with SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The binary under test: `POINTLOCK_TEST_BIN` if set (e.g. `target/release/pointlock`),
/// else the one cargo built for this test run (the test profile: debug under
/// `cargo test`, release under `cargo test --release`; with the `test-util`
/// feature either way, through the package's dev-dependency on itself).
pub fn bin() -> String {
    std::env::var("POINTLOCK_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_pointlock").into())
}

/// A `pointlock` command in `dir` with a clean environment for its own settings.
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

/// A running `pointlock`; dropped, it is killed (a failing test leaves no
/// process behind).
pub struct Server {
    pub addr: String,
    /// Every line it has logged so far (stderr).
    pub log: Arc<Mutex<Vec<String>>>,
    /// The index in `log` of the line that named its address.
    pub listening_line: usize,
    /// The process (`None` once handed over by [`into_child`](Self::into_child)).
    child: Option<Child>,
    /// The thread that keeps reading the log (the child never blocks on a full pipe).
    drain: Option<JoinHandle<()>>,
}

impl Server {
    /// Start `cmd` (with `--addr 127.0.0.1:0` added) and wait until it logs
    /// its address (`listening on http://ADDR`, the text log).
    pub fn start(cmd: Command) -> Self {
        Self::start_with(cmd, |line| {
            let rest = line.split("listening on http://").nth(1)?;
            Some(rest.split_whitespace().next().unwrap().to_owned())
        })
    }

    /// [`start`](Self::start), with `address` reading each log line until
    /// one names the address (it may also check the lines it reads).
    pub fn start_with(mut cmd: Command, mut address: impl FnMut(&str) -> Option<String>) -> Self {
        cmd.args(["--addr", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn pointlock");
        let stderr = child.stderr.take().unwrap();
        let mut server = Self {
            child: Some(child),
            addr: String::new(),
            log: Arc::default(),
            listening_line: 0,
            drain: None,
        };
        let mut lines = BufReader::new(stderr).lines();
        loop {
            let Some(Ok(line)) = lines.next() else {
                panic!(
                    "the server exited before listening: {:?}",
                    server.log.lock().unwrap()
                );
            };
            let found = address(&line);
            let mut log = server.log.lock().unwrap();
            log.push(line);
            if let Some(addr) = found {
                server.addr = addr;
                server.listening_line = log.len() - 1;
                break;
            }
        }
        let sink = Arc::clone(&server.log);
        server.drain = Some(std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        }));
        server
    }

    /// The process, for a test that kills it at a moment of its own choosing
    /// (it no longer dies with this value).
    pub fn into_child(mut self) -> Child {
        self.child.take().expect("the process")
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the process")
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill9(mut self) {
        self.child().kill().unwrap();
        self.child().wait().unwrap();
    }

    /// SIGTERM, and wait for a clean exit; every line it logged.
    pub fn stop(mut self) -> Vec<String> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child().id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child().wait().unwrap();
        // The log ends with the process: read it to its end.
        if let Some(drain) = self.drain.take() {
            drain.join().expect("the log reader");
        }
        let log = self.log.lock().unwrap().clone();
        assert!(exit.success(), "exit {exit:?}: {log:?}");
        log
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Wait (bounded) for a child that should exit on its own; kill it if it does not.
pub fn exits_within(child: &mut Child, limit: Duration) -> ExitStatus {
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
