//! One seed, start to end: each incarnation of the process gets its own
//! current-thread tokio runtime with paused time, the real store (the same
//! SQLite file each time) behind the fault wrapper, the service and the
//! stack; its clients run until they are done (then the run waits for
//! quiescence and checks it) or until the scenario crashes the process. The
//! checkers run after every answer and at every quiescence; after the last
//! incarnation the durable state is reopened and checked once more.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use pointlock_core::{KeyedLock, MemoryStore, PointService, PointStore, Policy};
use pointlock_server::routes::SharedService;
use pointlock_store::{NegativeControl, SqliteOptions, SqliteStore};

use crate::clock::SimClock;
use crate::faults::FaultStore;
use crate::life::{read_durable, Life, SQLITE_QUEUE_MAX};
use crate::model::{check_user, Answer, Log};
use crate::plant::Plant;
use crate::stack::{self, StackOptions};
use crate::workload::{Incarnation, Scenario, Size, StoreKind, FAILING_AMOUNT, POISON_AMOUNT};

/// How to run seeds.
#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    /// The store.
    pub store: StoreKind,
    /// The scenario's size.
    pub size: Size,
    /// A bug planted on purpose (negative controls), or none.
    pub plant: Option<Plant>,
    /// The stack's limits.
    pub stack: StackOptions,
    /// SQLite only: run the store in lockstep with the runtime (each change
    /// committed alone, the runtime's thread waiting while the store's
    /// threads work; see [`FaultStore::in_lockstep`]) instead of
    /// free-running (group commit on its own OS thread).
    pub lockstep: bool,
}

impl RunOptions {
    /// The default run on `store`.
    pub fn new(store: StoreKind) -> Self {
        Self {
            store,
            size: Size::DEFAULT,
            plant: None,
            stack: StackOptions::default(),
            lockstep: false,
        }
    }
}

/// What one passing seed did.
#[derive(Clone, Debug, Default)]
pub struct SeedReport {
    /// Requests sent (retries included).
    pub requests: usize,
    /// Incarnations that ended in a crash.
    pub crashes: usize,
    /// Incarnations in which the SQLite store failed stop (a failed COMMIT
    /// or a writer panic) before they ended.
    pub fail_stops: usize,
    /// How many answers of each kind the clients got (`200`, `dropped`,
    /// `in flight at a crash`, or the error code).
    pub answers: BTreeMap<String, usize>,
    /// Faults the wrapper injected: delays, errors before the store, durable
    /// changes answered "outcome unknown".
    pub injected: [usize; 3],
    /// A digest of every request and answer, in arrival order: two runs of a
    /// seed that behave alike have the same digest.
    pub digest: u64,
}

/// A seed a checker failed, with everything needed to replay it.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// The store it ran on.
    pub store: StoreKind,
    /// The plant it ran with.
    pub plant: Option<Plant>,
    /// Whether SQLite ran in lockstep.
    pub lockstep: bool,
    /// What the checker found.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let store = match self.store {
            StoreKind::Memory => "memory",
            StoreKind::Sqlite => "sqlite",
        };
        let mut plant = self
            .plant
            .map(|plant| format!(" --plant {}", plant.name()))
            .unwrap_or_default();
        if self.lockstep {
            plant.push_str(" --lockstep");
        }
        write!(
            f,
            "seed {} failed on {store}{plant}: {}\n  replay: cargo run -p pointlock-sim --features test-util -- --store {store} --seed {}{plant}",
            self.seed, self.message, self.seed
        )
    }
}

/// Run seed `seed`; `Err` if a checker failed (or the run could not be set up).
pub fn run_seed(seed: u64, options: &RunOptions) -> Result<SeedReport, Failure> {
    let failure = |message: String| Failure {
        seed,
        store: options.store,
        plant: options.plant,
        lockstep: options.lockstep,
        message,
    };
    quiet_planted_writer_panics();
    let scenario = Scenario::generate(seed, options.store, options.size);
    let log = Arc::new(Mutex::new(Log::default()));
    let dir = tempfile::tempdir().map_err(|e| failure(format!("temp dir: {e}")))?;
    let path = dir.path().join("sim.db");
    let memory = Arc::new(MemoryStore::new());
    let mut report = SeedReport::default();
    let mut wall = 1_700_000_000_000_i64;
    for (index, incarnation) in scenario.incarnations.iter().enumerate() {
        let runtime = runtime().map_err(|e| failure(format!("runtime: {e}")))?;
        let fail_commits = Arc::new(AtomicBool::new(false));
        let (store, sqlite): (Arc<dyn PointStore>, Option<Arc<SqliteStore>>) = match options.store {
            StoreKind::Memory => (Arc::clone(&memory) as Arc<dyn PointStore>, None),
            StoreKind::Sqlite => {
                let sqlite = runtime
                    .block_on(async {
                        SqliteStore::open(
                            &path,
                            sqlite_options(incarnation, options, &fail_commits),
                        )
                    })
                    .map_err(|e| failure(format!("opening SQLite (life {index}): {e}")))?;
                let sqlite = Arc::new(sqlite);
                (Arc::clone(&sqlite) as Arc<dyn PointStore>, Some(sqlite))
            }
        };
        let weak: Option<Weak<SqliteStore>> = sqlite.as_ref().map(Arc::downgrade);
        let setup = Setup {
            seed,
            index,
            log: Arc::clone(&log),
            memory: (options.store == StoreKind::Memory).then(|| Arc::clone(&memory)),
            sqlite,
            store,
            wall,
            fail_commits: Arc::clone(&fail_commits),
        };
        let outcome = runtime.block_on(live(&scenario, incarnation, options, setup));
        // A crash: nothing queued is committed any more (every COMMIT from now
        // on fails), and dropping the runtime drops every request in flight.
        fail_commits.store(true, Ordering::SeqCst);
        drop(runtime);
        if weak.is_some_and(|weak| weak.strong_count() > 0) {
            return Err(failure(format!(
                "life {index}: the SQLite store outlived its process"
            )));
        }
        let ended = outcome.map_err(failure)?;
        report.crashes += usize::from(ended.crashed);
        report.fail_stops += usize::from(ended.stopped);
        for (total, count) in report.injected.iter_mut().zip(ended.injected) {
            *total += count;
        }
        wall += ended.elapsed_millis + 1_000;
    }
    summarize(
        &log.lock().unwrap_or_else(PoisonError::into_inner),
        &mut report,
    );
    let runtime = runtime().map_err(|e| failure(format!("runtime: {e}")))?;
    // The durable state after the last life, reopened: every acknowledged
    // change and every value shown must still be explained by it.
    let store: Arc<dyn PointStore> = match options.store {
        StoreKind::Memory => memory,
        StoreKind::Sqlite => Arc::new(
            runtime
                .block_on(async { SqliteStore::open(&path, SqliteOptions::default()) })
                .map_err(|e| failure(format!("reopening SQLite: {e}")))?,
        ),
    };
    let durable = runtime
        .block_on(read_durable(&store, scenario.users))
        .map_err(failure)?;
    drop(store);
    drop(runtime);
    let log = log.lock().unwrap_or_else(PoisonError::into_inner);
    for (user, state) in (1..=scenario.users).zip(&durable) {
        check_user(
            &log,
            user,
            state,
            scenario.max_balance,
            true,
            options.store == StoreKind::Sqlite,
        )
        .map_err(|message| failure(format!("after the last restart: {message}")))?;
    }
    Ok(report)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
}

fn sqlite_options(
    incarnation: &Incarnation,
    options: &RunOptions,
    fail_commits: &Arc<AtomicBool>,
) -> SqliteOptions {
    let plant = options.plant;
    let base = if options.lockstep {
        // One change at a time reaches the writer: nothing to wait for.
        SqliteOptions::default().without_group_commit()
    } else {
        SqliteOptions::default()
    };
    SqliteOptions {
        queue_ops_max: SQLITE_QUEUE_MAX,
        readers: 2,
        quick_check: false,
        negative_control: match plant {
            Some(Plant::AnswerBeforeDurable) => Some(NegativeControl::AnswerAtSequencing),
            Some(Plant::ReadSequencedState) => Some(NegativeControl::DirtyReads),
            _ => None,
        },
        fail_commits: Some(Arc::clone(fail_commits)),
        panic_amount: incarnation.poison.then_some(POISON_AMOUNT),
        fail_amount: incarnation
            .failing_statement
            .then(|| Arc::new(AtomicU64::new(FAILING_AMOUNT))),
        ..base
    }
}

/// How an incarnation ended.
struct Ended {
    crashed: bool,
    /// The SQLite store had failed stop (a failed COMMIT or a writer panic)
    /// before the life ended.
    stopped: bool,
    elapsed_millis: i64,
    injected: [usize; 3],
}

/// The answers' counts and the digest of `log`.
fn summarize(log: &Log, report: &mut SeedReport) {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for entry in &log.entries {
        let kind = match &entry.answer {
            Answer::Pending => "in flight at a crash".to_owned(),
            Answer::Dropped => "dropped (disconnect)".to_owned(),
            Answer::Applied { replayed: true, .. } => "200 replayed".to_owned(),
            Answer::Applied { .. } | Answer::Point(_) | Answer::History(_) => "200".to_owned(),
            Answer::Error { status, code } => format!("{status} {code}"),
        };
        *report.answers.entry(kind).or_default() += 1;
        format!("{entry:?}").hash(&mut hasher);
    }
    report.requests = log.entries.len();
    report.digest = hasher.finish();
}

/// What one incarnation starts from.
struct Setup {
    seed: u64,
    index: usize,
    log: Arc<Mutex<Log>>,
    memory: Option<Arc<MemoryStore>>,
    sqlite: Option<Arc<SqliteStore>>,
    store: Arc<dyn PointStore>,
    wall: i64,
    fail_commits: Arc<AtomicBool>,
}

/// One incarnation, inside its runtime.
async fn live(
    scenario: &Scenario,
    incarnation: &Incarnation,
    options: &RunOptions,
    setup: Setup,
) -> Result<Ended, String> {
    let Setup {
        seed,
        index,
        log,
        memory,
        sqlite,
        store,
        wall,
        fail_commits,
    } = setup;
    let clock = Arc::new(SimClock::new(wall));
    let life_seed = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut faulty = FaultStore::new(Arc::clone(&store), scenario.rates, life_seed);
    if let (true, Some(sqlite)) = (options.lockstep, &sqlite) {
        faulty = faulty.in_lockstep(Arc::clone(sqlite));
    }
    let faulty = Arc::new(faulty);
    let in_flight = faulty.in_flight();
    let lock = if options.plant == Some(Plant::LostUpdate) {
        KeyedLock::unsynchronized()
    } else {
        KeyedLock::with_clock(Arc::clone(&clock))
    };
    let life = Arc::new(Life {
        index,
        log,
        scenario_users: scenario.users,
        max_balance: scenario.max_balance,
        lock: lock.clone(),
        lock_queue_max: options.stack.lock_queue_max,
        memory,
        sqlite,
        lockstep: options.lockstep,
        violation: Mutex::new(None),
    });
    let mut service = PointService::with_lock(
        Arc::clone(&faulty) as Arc<dyn PointStore>,
        Policy::new(scenario.max_balance),
        Arc::clone(&clock) as Arc<dyn pointlock_core::Clock>,
        lock,
    );
    if options.plant == Some(Plant::LostUpdate) {
        service = service.without_commit_condition();
    }
    let service: SharedService = Arc::new(service);
    let stack = stack::build(
        Arc::clone(&service),
        options.stack,
        options.plant,
        life_seed,
    );
    // Keep simulated time still while the SQLite writer thread works.
    let pump = life.sqlite.clone().map(|sqlite| {
        let in_flight = Arc::clone(&in_flight);
        tokio::spawn(pump(sqlite, in_flight, options.lockstep))
    });
    if let Some(at) = incarnation.fail_commits_at_millis {
        let fail_commits = Arc::clone(&fail_commits);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(at)).await;
            fail_commits.store(true, Ordering::SeqCst);
        });
    }
    let clients: Vec<_> = incarnation
        .clients
        .iter()
        .enumerate()
        .map(|(n, script)| {
            let client_seed = life_seed ^ (n as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
            tokio::spawn(crate::client::run(
                Arc::clone(&life),
                script.clone(),
                stack.clone(),
                client_seed,
            ))
        })
        .collect();
    let all_done = async {
        for client in clients {
            if client.await.is_err() {
                return Err("a client panicked".to_owned());
            }
        }
        Ok(())
    };
    let crashed = match incarnation.crash_at_millis {
        None => {
            all_done.await?;
            false
        }
        Some(at) => {
            tokio::select! {
                biased;
                done = all_done => { done?; false }
                () = tokio::time::sleep(Duration::from_millis(at)) => true,
            }
        }
    };
    let elapsed_millis = clock.elapsed_millis();
    let stopped = life
        .sqlite
        .as_ref()
        .is_some_and(|sqlite| sqlite.is_stopped());
    let injected = [
        faulty.injected.delays.load(Ordering::Relaxed),
        faulty.injected.errors_before.load(Ordering::Relaxed),
        faulty.injected.unknown_after.load(Ordering::Relaxed),
    ];
    if let Some(message) = life
        .violation
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        return Err(message);
    }
    if crashed {
        if let Some(pump) = pump {
            pump.abort();
        }
        return Ok(Ended {
            crashed,
            stopped,
            elapsed_millis,
            injected,
        });
    }
    // Quiescence: every timeout has passed, every dropped request finished.
    tokio::time::sleep(options.stack.request_timeout * 4).await;
    if !life.lock.is_empty() {
        return Err(format!(
            "life {}: at quiescence the lock table still holds {} key(s) (a leaked guard)",
            life.index,
            life.lock.len()
        ));
    }
    if let Some(sqlite) = &life.sqlite {
        if sqlite.sequenced_users() != 0 {
            return Err(format!(
                "life {}: at quiescence {} user(s) remain in the sequenced state (store stopped: {}, changes queued: {})",
                life.index,
                sqlite.sequenced_users(),
                sqlite.is_stopped(),
                sqlite.queued_ops()
            ));
        }
    }
    life.check_durable(&store, true)
        .await
        .map_err(|message| format!("life {} at quiescence: {message}", life.index))?;
    if let Some(pump) = pump {
        pump.abort();
    }
    drop((stack, service, faulty));
    Ok(Ended {
        crashed,
        stopped,
        elapsed_millis,
        injected,
    })
}

/// While the SQLite store has work under way (a call through the fault
/// wrapper, or changes queued for its writer thread), keep the runtime busy
/// so that tokio's paused clock does not jump ahead while an OS thread
/// works; otherwise look again after a simulated millisecond.
///
/// In lockstep the wrapper already waits for every change it hands over;
/// what remains (a settling barrier a marked read sends to the writer by
/// itself) is waited for with the runtime's thread blocked.
async fn pump(sqlite: Arc<SqliteStore>, in_flight: Arc<AtomicUsize>, lockstep: bool) {
    loop {
        if lockstep {
            while sqlite.queued_ops() > 0 {
                std::thread::yield_now();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        } else if in_flight.load(Ordering::SeqCst) > 0 || sqlite.queued_ops() > 0 {
            std::thread::yield_now();
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The SQLite writer's planted panic (a seeded fault) is expected: keep its
/// message and backtrace out of the output; every other panic is reported
/// as before.
fn quiet_planted_writer_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let planted = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|message| message.contains("(a planted fault)"));
            if !planted {
                previous(info);
            }
        }));
    });
}
