//! Command line and environment (`POINTLOCK_*`).

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;

use crate::app::AppOptions;

/// Where balances and histories are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    /// In memory: lost on exit. For tests and demos.
    Memory,
}

impl FromStr for StoreSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "memory" => Ok(Self::Memory),
            other if other.starts_with("sqlite:") => Err(
                "the SQLite store is not available in this build yet; use --store memory".into(),
            ),
            other => Err(format!("unknown store {other:?}; expected \"memory\"")),
        }
    }
}

/// pointlock: a per-user point wallet over HTTP whose requests for one user run one
/// at a time, in arrival order, while different users never wait for each other.
#[derive(Debug, Parser)]
#[command(name = "pointlock", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on (use a loopback address unless you mean to expose it).
    #[arg(long, env = "POINTLOCK_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// Store: "memory" (lost on exit).
    #[arg(long, env = "POINTLOCK_STORE", default_value = "memory")]
    pub store: StoreSpec,

    /// Largest balance a user may hold (inclusive).
    #[arg(long, env = "POINTLOCK_MAX_BALANCE", default_value_t = 10_000)]
    pub max_balance: u64,

    /// How long a request may wait for its user's lock before a 503 LOCK_TIMEOUT.
    #[arg(long, env = "POINTLOCK_LOCK_TIMEOUT_MS", default_value_t = 3_000)]
    pub lock_timeout_ms: u64,

    /// Memory store only: make every store call wait a random 0..=N ms, like the
    /// course template's tables, to expose races. 0 disables it.
    #[arg(long, env = "POINTLOCK_SIMULATE_LATENCY_MS", default_value_t = 0)]
    pub simulate_latency_ms: u64,

    /// How long a whole request may take before a 408 (must exceed the lock timeout).
    #[arg(long, env = "POINTLOCK_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// How long a request holding its user's lock may take to deliver its body
    /// before a 408 BODY_TIMEOUT (bounds how long a slow client holds a user).
    #[arg(long, env = "POINTLOCK_BODY_TIMEOUT_MS", default_value_t = 2_000)]
    pub body_timeout_ms: u64,

    /// Largest accepted request body, in bytes; larger bodies get a 413.
    #[arg(long, env = "POINTLOCK_BODY_LIMIT_BYTES", default_value_t = 4_096)]
    pub body_limit_bytes: usize,
}

impl Config {
    /// The middleware options these flags describe.
    pub fn app_options(&self) -> AppOptions {
        AppOptions {
            lock_timeout: Duration::from_millis(self.lock_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            body_limit_bytes: self.body_limit_bytes,
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            lock_layer: true,
        }
    }

    /// Reject settings that cannot work together.
    pub fn validate(&self) -> Result<(), String> {
        if self.lock_timeout_ms == 0 {
            return Err("--lock-timeout-ms must be at least 1".into());
        }
        if self.request_timeout_ms <= self.lock_timeout_ms {
            return Err(format!(
                "--request-timeout-ms ({}) must be longer than --lock-timeout-ms ({})",
                self.request_timeout_ms, self.lock_timeout_ms
            ));
        }
        if self.body_timeout_ms == 0 || self.body_timeout_ms >= self.request_timeout_ms {
            return Err(format!(
                "--body-timeout-ms ({}) must be at least 1 and shorter than --request-timeout-ms ({})",
                self.body_timeout_ms, self.request_timeout_ms
            ));
        }
        if self.body_limit_bytes < 64 {
            return Err("--body-limit-bytes must be at least 64".into());
        }
        Ok(())
    }
}
