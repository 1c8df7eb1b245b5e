//! Model-based property test of `PointService`, sequential, on every store.
//!
//! proptest draws a sequence of 1 to 60 operations over 1 to 3 users: charges
//! and uses (unkeyed, or with an idempotency key from a pool of three per
//! user, so keys repeat: replays and 422 reuses happen; a `Resend` repeats the
//! last request made with a key exactly), reads of the balance and the
//! history, clock ticks (one of them to exactly the TTL, past which a key's
//! record has expired) and sweeps of expired records. Amounts are drawn to hit
//! the policy's edges: small ones, the maximum balance (10,000) and one past
//! it, huge ones up to 2^63 - 1, and amounts relative to the user's balance at
//! that moment (exactly to the maximum and one past it, exactly the balance
//! and one more than it).
//!
//! Each operation runs through `PointService` (a mutation under the user's
//! guard from `service.lock()`) with a `ManualClock`, and a reference model,
//! a plain struct of balances, history rows and key records written from the
//! README's rules and not from the code, predicts every answer exactly: the
//! `Applied { point, replayed }` (balance and `updateMillis`), every error with
//! its fields (`INSUFFICIENT_BALANCE`, `MAX_BALANCE_EXCEEDED`,
//! `IDEMPOTENCY_KEY_REUSED`), the history rows (user, kind, amount, time, in
//! order), how many records a sweep removes. Which expired records a bounded
//! sweep removes is the store's choice (and matters: a key whose expired
//! record survived is replaced when used again, one swept is simply written),
//! so after a sweep the test reads every key record from the store: live ones
//! must be there as modelled, and exactly as many expired ones gone as the
//! sweep said; the model then forgets those. History ids are checked for what
//! each store promises: increasing in commit order across users (and, on the
//! memory store, gapless); not their exact values. Every case ends by reading
//! every user's balance, history and key records.
//!
//! A failure is shrunk to a smallest sequence and printed. The budget is
//! `support::model::CASES_DEFAULT` cases per store (`PROPTEST_CASES` to change
//! it). One store serves all the cases of a run (a fresh database on
//! PostgreSQL: one per case would cost more than the cases), so each case has
//! users of its own and starts 2 TTLs after the previous one, with every
//! earlier record swept.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pointlock::core::domain::VALUE_MAX;
use pointlock::core::policy::MAX_BALANCE_DEFAULT;
use pointlock::core::{
    Amount, Applied, Clock, IdempotencyKey, ManualClock, PointError, PointService, PointStore,
    Policy, TransactionType, UserId, UserPoint,
};
use proptest::collection::vec;
use proptest::prelude::*;
use support::{Backend, ProbeStore};

/// The service's maximum balance (the default policy), as the model knows it.
const MAX_BALANCE: u64 = MAX_BALANCE_DEFAULT;
/// The service's idempotency TTL in these tests.
const TTL_MILLIS: i64 = 1_000;
const USERS_MAX: usize = 3;
const OPS_MAX: usize = 60;
/// Each user's pool of keys (keys are per user: every user has the same names).
const KEYS: [&str; 3] = ["k0", "k1", "k2"];

/// How an operation's amount is chosen. The relative ones are resolved against
/// the model's balance when the operation runs (and kept within 1..=2^63-1,
/// since the service takes only valid `Amount`s).
#[derive(Clone, Copy, Debug)]
enum Amt {
    Fixed(u64),
    /// `MAX_BALANCE - balance + delta`: a charge to exactly the maximum, or one past it.
    ToMax(i8),
    /// `balance + delta`: a use of exactly the balance, or one more.
    OfBalance(i8),
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Change {
        user: usize,
        kind: TransactionType,
        amount: Amt,
        /// An index into `KEYS`.
        key: Option<usize>,
    },
    /// Send again the last request made with this key (kind and amount), or a
    /// charge of 1 with it if there was none.
    Resend {
        user: usize,
        key: usize,
    },
    Point {
        user: usize,
    },
    Histories {
        user: usize,
    },
    Tick {
        millis: i64,
    },
    Sweep {
        limit: usize,
    },
}

impl Op {
    /// The same operation for a case of `users` users.
    fn for_users(self, users: usize) -> Self {
        match self {
            Op::Change {
                user,
                kind,
                amount,
                key,
            } => Op::Change {
                user: user % users,
                kind,
                amount,
                key,
            },
            Op::Resend { user, key } => Op::Resend {
                user: user % users,
                key,
            },
            Op::Point { user } => Op::Point { user: user % users },
            Op::Histories { user } => Op::Histories { user: user % users },
            Op::Tick { .. } | Op::Sweep { .. } => self,
        }
    }
}

#[derive(Clone, Debug)]
struct Scenario {
    users: usize,
    ops: Vec<Op>,
}

fn amount() -> impl Strategy<Value = Amt> {
    prop_oneof![
        3 => (1..=200_u64).prop_map(Amt::Fixed),
        2 => (1..=MAX_BALANCE).prop_map(Amt::Fixed),
        1 => prop_oneof![
            Just(MAX_BALANCE),
            Just(MAX_BALANCE + 1),
            (MAX_BALANCE + 1..=VALUE_MAX),
            Just(VALUE_MAX),
        ]
        .prop_map(Amt::Fixed),
        2 => (-1..=1_i8).prop_map(Amt::ToMax),
        2 => (-1..=1_i8).prop_map(Amt::OfBalance),
    ]
}

fn kind() -> impl Strategy<Value = TransactionType> {
    prop_oneof![Just(TransactionType::Charge), Just(TransactionType::Use)]
}

fn op() -> impl Strategy<Value = Op> {
    let user = 0..USERS_MAX;
    let key = 0..KEYS.len();
    prop_oneof![
        4 => (user.clone(), kind(), amount()).prop_map(|(user, kind, amount)| Op::Change {
            user,
            kind,
            amount,
            key: None,
        }),
        4 => (user.clone(), kind(), amount(), key.clone()).prop_map(
            |(user, kind, amount, key)| Op::Change {
                user,
                kind,
                amount,
                key: Some(key),
            }
        ),
        3 => (user.clone(), key).prop_map(|(user, key)| Op::Resend { user, key }),
        1 => user.clone().prop_map(|user| Op::Point { user }),
        1 => user.prop_map(|user| Op::Histories { user }),
        // 1 ms, half the TTL, to 1 ms short of it, and exactly to it: a record
        // made at t has expired from t + TTL on.
        1 => prop_oneof![
            Just(1),
            Just(TTL_MILLIS / 2),
            Just(TTL_MILLIS - 1),
            Just(TTL_MILLIS),
        ]
        .prop_map(|millis| Op::Tick { millis }),
        1 => (1..=3_usize).prop_map(|limit| Op::Sweep { limit }),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (1..=USERS_MAX, vec(op(), 1..=OPS_MAX)).prop_map(|(users, ops)| Scenario {
        users,
        ops: ops.into_iter().map(|op| op.for_users(users)).collect(),
    })
}

// ---------------------------------------------------------------------------
// The reference model: the README's rules, and nothing from the code.

#[derive(Clone, Copy, Debug)]
struct Row {
    /// Commit order within the case, across users.
    seq: u64,
    kind: TransactionType,
    amount: u64,
    time: i64,
}

#[derive(Clone, Copy, Debug)]
struct Record {
    kind: TransactionType,
    amount: u64,
    point: u64,
    time: i64,
}

#[derive(Default)]
struct UserModel {
    point: u64,
    /// When the balance last changed; `None`: never (reads stamp "now").
    changed: Option<i64>,
    rows: Vec<Row>,
    records: [Option<Record>; KEYS.len()],
    /// The last request made with each key.
    sent: [Option<(TransactionType, u64)>; KEYS.len()],
}

struct Model {
    now: i64,
    users: Vec<UserModel>,
    rows: u64,
}

impl Model {
    fn new(now: i64, users: usize) -> Self {
        Self {
            now,
            users: (0..users).map(|_| UserModel::default()).collect(),
            rows: 0,
        }
    }

    /// Whether a record made at `time` is still live now.
    fn live(&self, time: i64) -> bool {
        time > self.now - TTL_MILLIS
    }

    fn resolve(&self, user: usize, amount: Amt) -> u64 {
        let balance = i128::from(self.users[user].point);
        let raw = match amount {
            Amt::Fixed(raw) => i128::from(raw),
            Amt::ToMax(delta) => i128::from(MAX_BALANCE) - balance + i128::from(delta),
            Amt::OfBalance(delta) => balance + i128::from(delta),
        };
        u64::try_from(raw.clamp(1, i128::from(VALUE_MAX))).unwrap()
    }

    fn apply(
        &mut self,
        user: usize,
        id: UserId,
        kind: TransactionType,
        amount: u64,
        key: Option<usize>,
    ) -> Result<Applied, PointError> {
        let now = self.now;
        let live = key
            .and_then(|k| self.users[user].records[k])
            .filter(|record| self.live(record.time));
        let account = &mut self.users[user];
        if let Some(k) = key {
            account.sent[k] = Some((kind, amount));
        }
        if let Some(record) = live {
            if (record.kind, record.amount) != (kind, amount) {
                return Err(PointError::IdempotencyKeyReused {
                    kind: match record.kind {
                        TransactionType::Charge => "CHARGE",
                        TransactionType::Use => "USE",
                    },
                    amount: record.amount,
                });
            }
            return Ok(Applied {
                point: UserPoint {
                    id,
                    point: record.point,
                    update_millis: record.time,
                },
                replayed: true,
            });
        }
        let balance = account.point;
        let point = match kind {
            TransactionType::Charge => match balance.checked_add(amount) {
                Some(point) if point <= MAX_BALANCE => point,
                _ => {
                    return Err(PointError::MaxBalanceExceeded {
                        balance,
                        amount,
                        max_balance: MAX_BALANCE,
                    })
                }
            },
            TransactionType::Use => balance
                .checked_sub(amount)
                .ok_or(PointError::InsufficientBalance { balance, amount })?,
        };
        account.point = point;
        account.changed = Some(now);
        account.rows.push(Row {
            seq: self.rows,
            kind,
            amount,
            time: now,
        });
        self.rows += 1;
        if let Some(k) = key {
            account.records[k] = Some(Record {
                kind,
                amount,
                point,
                time: now,
            });
        }
        Ok(Applied {
            point: UserPoint {
                id,
                point,
                update_millis: now,
            },
            replayed: false,
        })
    }

    fn point(&self, user: usize, id: UserId) -> UserPoint {
        let account = &self.users[user];
        UserPoint {
            id,
            point: account.point,
            update_millis: account.changed.unwrap_or(self.now),
        }
    }

    /// How many records have expired (and are still kept).
    fn expired(&self) -> usize {
        self.users
            .iter()
            .flat_map(|account| &account.records)
            .filter(|slot| slot.is_some_and(|r| !self.live(r.time)))
            .count()
    }
}

// ---------------------------------------------------------------------------
// The system under test.

/// What the service is configured with (the model always assumes the real
/// settings: a service set otherwise must be caught).
#[derive(Clone, Copy)]
struct Settings {
    max_balance: u64,
    ttl_millis: i64,
}

const REAL: Settings = Settings {
    max_balance: MAX_BALANCE,
    ttl_millis: TTL_MILLIS,
};

/// One store for all the cases of a run, one clock moving forward across them.
struct World {
    backend: Backend,
    store: Arc<ProbeStore>,
    clock: Arc<ManualClock>,
    users_taken: AtomicU64,
}

/// The history ids seen so far in a case, by commit order.
struct Ids {
    backend: Backend,
    by_seq: BTreeMap<u64, u64>,
}

impl Ids {
    fn observe(&mut self, seq: u64, id: u64) -> Result<(), String> {
        if let Some(seen) = self.by_seq.insert(seq, id) {
            if seen != id {
                return Err(format!("row {seq} had id {seen}, now {id}"));
            }
        }
        let ids: Vec<(u64, u64)> = self.by_seq.iter().map(|(s, i)| (*s, *i)).collect();
        for pair in ids.windows(2) {
            let ((s0, i0), (s1, i1)) = (pair[0], pair[1]);
            if i1 <= i0 {
                return Err(format!(
                    "history ids not increasing in commit order: row {s0} has id {i0}, row {s1} id {i1}"
                ));
            }
            // The memory store's ids are gapless (the course template's tables).
            if matches!(self.backend, Backend::Memory) && i1 - i0 != s1 - s0 {
                return Err(format!(
                    "memory store ids not gapless: row {s0} has id {i0}, row {s1} id {i1}"
                ));
            }
        }
        Ok(())
    }
}

impl World {
    async fn new(backend: Backend) -> Self {
        Self {
            backend,
            store: Arc::new(ProbeStore::on(backend, 0).await),
            clock: Arc::new(ManualClock::new(1_700_000_000_000)),
            users_taken: AtomicU64::new(0),
        }
    }

    /// Run one case against a fresh service over the shared store; the first
    /// answer the model did not predict is the error.
    async fn run(&self, scenario: &Scenario, settings: Settings) -> Result<(), String> {
        // Every record of earlier cases expires, and is swept: the store holds
        // only this case's records, so sweep counts are predictable.
        self.clock
            .advance_millis(2 * TTL_MILLIS.max(settings.ttl_millis));
        let service = PointService::new(
            Arc::clone(&self.store),
            Policy::new(settings.max_balance),
            self.clock.clone(),
        )
        .with_idempotency_ttl(Duration::from_millis(
            u64::try_from(settings.ttl_millis).unwrap(),
        ));
        service
            .sweep_idempotency(usize::MAX)
            .await
            .map_err(|e| format!("sweep before the case: {e}"))?;
        let base = self
            .users_taken
            .fetch_add(USERS_MAX as u64, Ordering::Relaxed);
        let ids: Vec<UserId> = (1..=scenario.users as u64)
            .map(|n| UserId::new(base + n).unwrap())
            .collect();
        let mut model = Model::new(self.clock.now_millis(), scenario.users);
        let mut seen = Ids {
            backend: self.backend,
            by_seq: BTreeMap::new(),
        };
        for (step, op) in scenario.ops.iter().enumerate() {
            self.step(&service, &mut model, &mut seen, &ids, *op)
                .await
                .map_err(|e| format!("step {step} ({op:?}): {e}"))?;
        }
        // The final state of every user.
        for user in 0..scenario.users {
            self.step(&service, &mut model, &mut seen, &ids, Op::Point { user })
                .await
                .map_err(|e| format!("final read of user slot {user}: {e}"))?;
            self.step(
                &service,
                &mut model,
                &mut seen,
                &ids,
                Op::Histories { user },
            )
            .await
            .map_err(|e| format!("final history of user slot {user}: {e}"))?;
        }
        self.records_agree(&mut model, &ids, false)
            .await
            .map_err(|e| format!("final records: {e}"))?;
        Ok(())
    }

    async fn step(
        &self,
        service: &PointService<Arc<ProbeStore>>,
        model: &mut Model,
        seen: &mut Ids,
        ids: &[UserId],
        op: Op,
    ) -> Result<(), String> {
        match op {
            Op::Change {
                user,
                kind,
                amount,
                key,
            } => {
                let amount = model.resolve(user, amount);
                change(service, model, ids, user, kind, amount, key).await
            }
            Op::Resend { user, key } => {
                let (kind, amount) =
                    model.users[user].sent[key].unwrap_or((TransactionType::Charge, 1));
                change(service, model, ids, user, kind, amount, Some(key)).await
            }
            Op::Point { user } => {
                let got = service.point(ids[user]).await;
                let want = model.point(user, ids[user]);
                if got != Ok(want) {
                    return Err(format!("point: expected {want:?}, got {got:?}"));
                }
                Ok(())
            }
            Op::Histories { user } => {
                let id = ids[user];
                let got = service
                    .histories(id)
                    .await
                    .map_err(|e| format!("histories failed: {e}"))?;
                let rows = &model.users[user].rows;
                let summary: Vec<_> = got
                    .iter()
                    .map(|h| (h.user_id, h.kind, h.amount.get(), h.time_millis))
                    .collect();
                let want: Vec<_> = rows
                    .iter()
                    .map(|r| (id, r.kind, r.amount, r.time))
                    .collect();
                if summary != want {
                    return Err(format!(
                        "history (user, kind, amount, time): expected {want:?}, got {summary:?}"
                    ));
                }
                for (row, stored) in rows.iter().zip(&got) {
                    seen.observe(row.seq, stored.id)?;
                }
                Ok(())
            }
            Op::Tick { millis } => {
                self.clock.advance_millis(millis);
                model.now += millis;
                Ok(())
            }
            Op::Sweep { limit } => {
                let got = service.sweep_idempotency(limit).await;
                let want = limit.min(model.expired());
                if got != Ok(want) {
                    return Err(format!(
                        "sweep of at most {limit}: expected {want} removed, got {got:?}"
                    ));
                }
                // Which expired records went is the store's choice: read them.
                let gone = self.records_agree(model, ids, true).await?;
                if gone != want {
                    return Err(format!("the sweep removed {want}, but {gone} are gone"));
                }
                Ok(())
            }
        }
    }

    /// Every key record of the case's users, read from the store, is the
    /// model's; with `sweep_after`, an expired one may be gone (the model
    /// forgets it too). Answers how many were gone.
    async fn records_agree(
        &self,
        model: &mut Model,
        ids: &[UserId],
        sweep_after: bool,
    ) -> Result<usize, String> {
        let mut gone = 0;
        for (user, id) in ids.iter().enumerate() {
            for (k, name) in KEYS.iter().enumerate() {
                let key = IdempotencyKey::new(name).unwrap();
                let found = self
                    .store
                    .idempotency_record(*id, &key)
                    .await
                    .map_err(|e| format!("reading a record: {e}"))?;
                let modelled = model.users[user].records[k];
                match (modelled, found) {
                    (None, None) => {}
                    (Some(m), None) if sweep_after && !model.live(m.time) => {
                        model.users[user].records[k] = None;
                        gone += 1;
                    }
                    (Some(m), Some(r))
                        if (r.kind, r.amount.get(), r.point, r.time_millis)
                            == (m.kind, m.amount, m.point, m.time)
                            && r.key == key => {}
                    (modelled, found) => {
                        return Err(format!(
                            "user {id}'s record of {name}: expected {modelled:?}, found {found:?}"
                        ))
                    }
                }
            }
        }
        Ok(gone)
    }
}

/// A charge or use under the user's guard, compared with the model's answer.
async fn change(
    service: &PointService<Arc<ProbeStore>>,
    model: &mut Model,
    ids: &[UserId],
    user: usize,
    kind: TransactionType,
    amount: u64,
    key: Option<usize>,
) -> Result<(), String> {
    let id = ids[user];
    let held = Arc::new(service.lock().lock(id).await);
    let idempotency_key = key.map(|k| IdempotencyKey::new(KEYS[k]).unwrap());
    let got = service
        .apply(
            held,
            kind,
            Amount::new(amount).unwrap(),
            idempotency_key.as_ref(),
        )
        .await;
    let want = model.apply(user, id, kind, amount, key);
    if got != want {
        let key = key.map(|k| KEYS[k]);
        return Err(format!(
            "{kind:?} {amount} with key {key:?}: expected {want:?}, got {got:?}"
        ));
    }
    Ok(())
}

/// The property on `backend`: `cases()` random sequences, each shrunk on failure.
async fn the_service_answers_as_the_model_predicts_on(backend: Backend) {
    let world = World::new(backend).await;
    // proptest's runner is synchronous: each case blocks on this runtime from
    // a thread that tokio lets block.
    tokio::task::block_in_place(|| {
        let runtime = tokio::runtime::Handle::current();
        support::model::check(scenario(), |scenario| {
            runtime.block_on(world.run(&scenario, REAL))
        });
    });
}

on_every_store! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    the_service_answers_as_the_model_predicts
        / sqlite_the_service_answers_as_the_model_predicts
        / pg_the_service_answers_as_the_model_predicts
        => the_service_answers_as_the_model_predicts_on;
}

/// The model is not vacuous: a service whose settings differ from the model's
/// by one (a maximum of 9,999, or a TTL 1 ms short) is caught, and the failing
/// sequence shrinks to the few operations that show the difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_a_service_off_by_one_is_caught_and_shrunk() {
    let world = World::new(Backend::Memory).await;
    let off_by_one = [
        Settings {
            max_balance: MAX_BALANCE - 1,
            ..REAL
        },
        Settings {
            ttl_millis: TTL_MILLIS - 1,
            ..REAL
        },
    ];
    for settings in off_by_one {
        let found = tokio::task::block_in_place(|| {
            let runtime = tokio::runtime::Handle::current();
            support::model::find_failure(
                support::model::Config {
                    cases: 256,
                    ..support::model::config()
                },
                scenario(),
                |scenario| runtime.block_on(world.run(&scenario, settings)),
            )
        });
        let (reason, shrunk) = found.expect("a service that disagrees must fail a case");
        eprintln!("caught: {reason}\nshrunk to {shrunk:?}");
        // A maximum off by one shows with one charge to the maximum; a TTL off
        // by one needs a keyed change, a tick to the TTL and its resend.
        assert!(
            shrunk.ops.len() <= 4,
            "shrunk to {} operations: {shrunk:#?}\n{reason}",
            shrunk.ops.len()
        );
    }
}
