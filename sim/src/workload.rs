//! The seeded workload: a [`Scenario`] drawn from one seed, with its
//! clients' scripts (charges, uses, reads, idempotent retries, disconnects)
//! and the faults each incarnation of the process plays.
//!
//! Every amount is unique per user and kind, so each row of a user's durable
//! history names the one logical operation it can belong to; the checker then
//! needs no guessing to match rows to requests.

use std::collections::HashSet;

use crate::faults::FaultRates;

/// The amount of the poison charge the SQLite writer panics on (a planted
/// writer death, [`SqliteOptions::panic_amount`](pointlock_store::SqliteOptions)).
pub const POISON_AMOUNT: u64 = 4_242;
/// The amount of the charge whose SQL statement fails (as on a full disk),
/// without stopping the store.
pub const FAILING_AMOUNT: u64 = 4_343;

/// Which store the simulated process runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// The memory store (plain; not durable, so never crashed).
    Memory,
    /// A SQLite file in a temp dir (pipelined group commit), crashed and
    /// reopened.
    Sqlite,
}

/// What one request of a client does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// `PATCH /point/{id}/charge`.
    Charge,
    /// `PATCH /point/{id}/use`.
    Use,
    /// `GET /point/{id}`.
    ReadPoint,
    /// `GET /point/{id}/histories`.
    ReadHistory,
}

/// One step of a client's script.
#[derive(Clone, Debug)]
pub struct ClientOp {
    /// The user the request is for.
    pub user: u64,
    /// What it does.
    pub kind: OpKind,
    /// The amount of a charge or a use (unique per user and kind).
    pub amount: u64,
    /// The `Idempotency-Key` of a mutation, if it sends one: retried with
    /// the same key after an answer that leaves the outcome unknown.
    pub key: Option<String>,
    /// Simulated milliseconds the client waits before sending.
    pub think_millis: u64,
    /// The client drops the request (a disconnect) after this many simulated
    /// milliseconds, if it has no answer by then.
    pub disconnect_after_millis: Option<u64>,
}

/// One incarnation of the process: its clients, and how it ends.
#[derive(Clone, Debug)]
pub struct Incarnation {
    /// Each client's script, run one request after another.
    pub clients: Vec<Vec<ClientOp>>,
    /// Crash (abrupt stop: every COMMIT from then on fails, in-flight
    /// requests are dropped) at this simulated millisecond; `None`: run
    /// every client to the end, then wait for quiescence.
    pub crash_at_millis: Option<u64>,
    /// A failed COMMIT at this simulated millisecond: the SQLite store fails
    /// stop until the next restart.
    pub fail_commits_at_millis: Option<u64>,
    /// Whether the SQLite writer panics on [`POISON_AMOUNT`] in this incarnation.
    pub poison: bool,
    /// Whether statements of [`FAILING_AMOUNT`] fail in this incarnation.
    pub failing_statement: bool,
}

/// Everything one seed decides.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The seed it was drawn from.
    pub seed: u64,
    /// The store.
    pub store: StoreKind,
    /// Users `1..=users`.
    pub users: u64,
    /// The maximum balance of the policy.
    pub max_balance: u64,
    /// The store faults (delays, errors) of the fault-injecting wrapper.
    pub rates: FaultRates,
    /// The process's lives, one after another.
    pub incarnations: Vec<Incarnation>,
}

/// The size of a scenario.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    /// Users.
    pub users: u64,
    /// Concurrent clients per incarnation.
    pub clients: usize,
    /// Requests per client script.
    pub ops_per_client: usize,
}

impl Size {
    /// The default size of a seed.
    pub const DEFAULT: Size = Size {
        users: 3,
        clients: 6,
        ops_per_client: 8,
    };
}

impl Scenario {
    /// The scenario of `seed` on `store`.
    pub fn generate(seed: u64, store: StoreKind, size: Size) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let max_balance = 10_000;
        let rates = FaultRates::draw(&mut rng);
        let lives = match store {
            StoreKind::Memory => 1,
            StoreKind::Sqlite => rng.usize(1..=3),
        };
        let mut amounts = Amounts::default();
        let mut keys = 0_u64;
        let incarnations = (0..lives)
            .map(|life| {
                let last = life + 1 == lives;
                let crash_at_millis = match store {
                    StoreKind::Sqlite if !last || rng.bool() => Some(rng.u64(20..400)),
                    _ => None,
                };
                let sqlite = store == StoreKind::Sqlite;
                let fail_commits_at_millis = (sqlite && rng.u8(..4) == 0).then(|| rng.u64(10..300));
                let poison = sqlite && rng.u8(..4) == 0;
                let failing_statement = sqlite && rng.u8(..4) == 0;
                let mut clients: Vec<Vec<ClientOp>> = (0..size.clients)
                    .map(|_| {
                        (0..size.ops_per_client)
                            .map(|_| client_op(&mut rng, size.users, &mut amounts, &mut keys))
                            .collect()
                    })
                    .collect();
                // The planted faults ride on charges of their own amounts.
                for (on, amount) in [(poison, POISON_AMOUNT), (failing_statement, FAILING_AMOUNT)] {
                    if on && !clients.is_empty() {
                        let client = rng.usize(..clients.len());
                        let user = rng.u64(1..=size.users);
                        if amounts.take(user, OpKind::Charge, amount) {
                            let at = rng.usize(..=clients[client].len());
                            clients[client].insert(
                                at,
                                ClientOp {
                                    user,
                                    kind: OpKind::Charge,
                                    amount,
                                    key: None,
                                    think_millis: rng.u64(0..20),
                                    disconnect_after_millis: None,
                                },
                            );
                        }
                    }
                }
                Incarnation {
                    clients,
                    crash_at_millis,
                    fail_commits_at_millis,
                    poison,
                    failing_statement,
                }
            })
            .collect();
        Self {
            seed,
            store,
            users: size.users,
            max_balance,
            rates,
            incarnations,
        }
    }
}

/// One random request.
fn client_op(
    rng: &mut fastrand::Rng,
    users: u64,
    amounts: &mut Amounts,
    keys: &mut u64,
) -> ClientOp {
    let user = rng.u64(1..=users);
    let kind = match rng.u8(..100) {
        0..=39 => OpKind::Charge,
        40..=69 => OpKind::Use,
        70..=87 => OpKind::ReadPoint,
        _ => OpKind::ReadHistory,
    };
    let amount = match kind {
        OpKind::Charge | OpKind::Use => amounts.fresh(rng, user, kind),
        OpKind::ReadPoint | OpKind::ReadHistory => 0,
    };
    let keyed = matches!(kind, OpKind::Charge | OpKind::Use) && rng.bool();
    let key = keyed.then(|| {
        *keys += 1;
        format!("k-{user}-{keys}")
    });
    ClientOp {
        user,
        kind,
        amount,
        key,
        think_millis: rng.u64(0..30),
        disconnect_after_millis: (rng.u8(..10) == 0).then(|| rng.u64(0..40)),
    }
}

/// The amounts used so far, per user and kind.
#[derive(Default)]
struct Amounts(HashSet<(u64, bool, u64)>);

impl Amounts {
    /// A charge of up to 3,000 or a use of up to 2,500 not used before by
    /// `user` (and not a planted fault's amount).
    fn fresh(&mut self, rng: &mut fastrand::Rng, user: u64, kind: OpKind) -> u64 {
        let top = if kind == OpKind::Charge { 3_000 } else { 2_500 };
        loop {
            let amount = rng.u64(1..=top);
            if amount != POISON_AMOUNT && amount != FAILING_AMOUNT && self.take(user, kind, amount)
            {
                return amount;
            }
        }
    }

    /// Mark `amount` used; `false` if it already was.
    fn take(&mut self, user: u64, kind: OpKind, amount: u64) -> bool {
        self.0.insert((user, kind == OpKind::Charge, amount))
    }
}
