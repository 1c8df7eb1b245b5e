//! CPU time from `/proc`: of the PostgreSQL cluster, of this process, of the
//! Redis server; and how busy the machine was before the run.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

/// CPU time read from `/proc`.
pub(crate) struct CpuProbe {
    postmaster_pid_file: Option<PathBuf>,
    redis_pid: Option<u32>,
    ticks_per_second: f64,
}

/// CPU seconds of a set of processes, two ways.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuTime {
    /// utime + stime from `/proc/PID/stat` (clock ticks, usually 10 ms), plus
    /// the postmaster's reaped children (cutime + cstime).
    pub ticks: f64,
    /// Time on a CPU from `/proc/PID/schedstat` (nanoseconds), plus the same
    /// reaped children's ticks.
    pub sched: f64,
}

impl std::ops::Sub for CpuTime {
    type Output = CpuTime;
    fn sub(self, before: CpuTime) -> CpuTime {
        CpuTime {
            ticks: self.ticks - before.ticks,
            sched: self.sched - before.sched,
        }
    }
}

/// Fields 4.. of `/proc/PID/stat`: `fields[i]` is field `i + 4` (ppid = 4,
/// utime = 14, stime = 15, cutime = 16, cstime = 17).
fn stat_fields(path: &str) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(path).ok()?;
    // After the command name (which may hold spaces) and the state.
    let rest = &text[text.rfind(')')? + 2..];
    Some(
        rest.split_whitespace()
            .skip(1)
            .map(|f| f.parse::<i64>().unwrap_or(0).max(0) as u64)
            .collect(),
    )
}

/// Nanoseconds on a CPU, from a `schedstat` file.
fn schedstat_ns(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

impl CpuProbe {
    pub fn new(pg_data: Option<PathBuf>, redis_pid: Option<u32>) -> Self {
        let ticks_per_second = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0);
        Self {
            postmaster_pid_file: pg_data.map(|d| d.join("postmaster.pid")),
            redis_pid,
            ticks_per_second,
        }
    }

    /// Every process of the cluster: the postmaster (its pid from
    /// `DATA/postmaster.pid`) and every process whose parent it is; plus the
    /// time of the children the postmaster has reaped, so that a backend that
    /// exits mid-cell keeps counting.
    pub fn postgres(&self) -> Option<CpuTime> {
        let text = std::fs::read_to_string(self.postmaster_pid_file.as_ref()?).ok()?;
        let postmaster = text.lines().next()?.trim().to_owned();
        let postmaster_pid: u64 = postmaster.parse().ok()?;
        let master = stat_fields(&format!("/proc/{postmaster}/stat"))?;
        let reaped = (master[12] + master[13]) as f64 / self.ticks_per_second;
        let mut ticks = master[10] + master[11];
        let mut ns = schedstat_ns(&format!("/proc/{postmaster}/schedstat"));
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str() else { continue };
            if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == postmaster {
                continue;
            }
            if let Some(fields) = stat_fields(&format!("/proc/{pid}/stat")) {
                if fields[0] == postmaster_pid {
                    ticks += fields[10] + fields[11];
                    ns += schedstat_ns(&format!("/proc/{pid}/schedstat"));
                }
            }
        }
        Some(CpuTime {
            ticks: ticks as f64 / self.ticks_per_second + reaped,
            sched: ns as f64 / 1e9 + reaped,
        })
    }

    /// This process (every thread).
    pub fn own(&self) -> CpuTime {
        self.process("self").unwrap_or_default()
    }

    /// The Redis server (every thread), if its pid was given and it runs.
    pub fn redis(&self) -> Option<CpuTime> {
        self.process(&self.redis_pid?.to_string())
    }

    /// One process, every thread: `pid` is a number or `self`.
    fn process(&self, pid: &str) -> Option<CpuTime> {
        let ticks = stat_fields(&format!("/proc/{pid}/stat"))
            .map(|f| (f[10] + f[11]) as f64 / self.ticks_per_second)?;
        let ns: u64 = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|dir| {
                dir.flatten()
                    .map(|t| schedstat_ns(&format!("{}/schedstat", t.path().display())))
                    .sum()
            })
            .unwrap_or(0);
        Some(CpuTime {
            ticks,
            sched: ns as f64 / 1e9,
        })
    }
}

/// The share of both CPUs busy (not idle, not waiting for I/O) over `window`,
/// from `/proc/stat`: how quiet the machine was before the run.
pub(crate) async fn cpu_busy_percent(window: Duration) -> Option<f64> {
    fn sample() -> Option<(u64, u64)> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = text
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let total: u64 = fields.iter().take(8).sum();
        let idle = fields.get(3)? + fields.get(4)?;
        Some((total, idle))
    }
    let (t0, i0) = sample()?;
    tokio::time::sleep(window).await;
    let (t1, i1) = sample()?;
    let total = t1.checked_sub(t0)?.max(1);
    Some(100.0 * (total - (i1 - i0)) as f64 / total as f64)
}

pub(crate) fn machine() -> Value {
    let read = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
    };
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "uptime": read("uptime", &[]),
        "kernel": read("uname", &["-r"]),
    })
}
