//! [`PostgresStore`]: the shared store. Several `pointlock` processes on one
//! database stay correct.
//!
//! # Why it is correct across processes
//!
//! Each instance's in-process FIFO lock orders its own requests and keeps
//! conflicts rare; across instances the database is the arbiter. Every change is
//! **one statement**: the conditional write of the balance and the insert of its
//! history row, in a data-modifying CTE, so PostgreSQL commits both or neither:
//!
//! ```sql
//! WITH changed AS (
//!   UPDATE user_point SET point = $new, update_millis = $t
//!   WHERE id = $user AND point = $expected RETURNING id)
//! INSERT INTO point_history (user_id, type, amount, time_millis)
//! SELECT id, $type, $amount, $t FROM changed RETURNING id
//! ```
//!
//! (from a balance of 0, the write is an `INSERT … ON CONFLICT DO UPDATE … WHERE
//! point = 0`). The `UPDATE` takes the row's lock; a second writer of the same
//! user waits for it and then re-evaluates its `WHERE` against the committed row
//! (READ COMMITTED's re-check), so a change computed from a balance that has
//! since changed updates no row, inserts no history, and is refused as a
//! conflict; the service re-reads and retries. Two first charges of a new user
//! race on the primary key the same way. No lost update, whatever the number of
//! instances; FIFO holds within each instance, and across instances only as far
//! as PostgreSQL's queue of waiters on the row lock gives it.
//!
//! One statement is also one round trip and no explicit transaction: nothing is
//! held open across the network. The policy stays in Rust (core's `Policy`): the
//! SQL only compares the balance the policy was applied to.
//!
//! # Cancel safety and the guard
//!
//! A commit runs in a task of its own that owns the [`Change`], and with it the
//! user's guard: a caller that stops waiting does not cancel a statement that
//! may already be on its way, and its user stays locked in this instance until
//! the database has answered.
//!
//! # Pipelining (opt-in: [`PostgresOptions::pipeline`], `--pg-pipeline on`)
//!
//! Off by default, a user stays locked in this instance until its statement
//! has committed, so one busy user is bound by the commit round trip and WAL
//! flush of each change. Pipelined, the store is a [`PipelinedStore`] as the
//! SQLite store is (the sequenced state is `sequenced.rs`): a change is checked against the user's sequenced state, put
//! on the user's **chain** and its guard dropped; the chain's task (one per
//! user with work, spawned when the chain starts, gone when it empties) takes
//! everything queued and commits it in **one transaction** (one WAL flush), each
//! change still its one conditional statement, in order. A failed statement
//! aborts a PostgreSQL transaction, so the chain then rolls back and runs each
//! change alone. Answers wait for the COMMIT; refusals and replays computed
//! from sequenced state wait behind a barrier on the chain.
//!
//! Why opt-in: the sequenced state is this instance's. When another instance
//! writes a user this one has pipelined changes for, those changes (computed
//! on a balance that is no longer the stored one) are refused by their
//! condition after the user was released, so they are answered 503
//! `WRITE_CONFLICT` (nothing changed, retry) instead of being retried under the
//! lock. Correct either way; pipelining suits one instance, or instances that
//! each own their users.
//!
//! # Failures
//!
//! - No connection within the pool's wait (the database is down, unreachable,
//!   or every connection is busy): [`StoreErrorKind::Unavailable`] (503 with
//!   `Retry-After`), nothing changed. The pool opens new connections as the
//!   database comes back; no restart of `pointlock` is needed.
//! - The statement failed in the database (an error answer: a constraint, the
//!   statement timeout, a shutdown in progress): it was rolled back, nothing
//!   changed. Operator intervention and connection classes (57, 08) are
//!   `Unavailable`, a serialization failure or deadlock a `Conflict` (retried),
//!   anything else `Failed`.
//! - The connection broke while the statement was in flight (no answer): the
//!   statement may or may not have committed: [`StoreErrorKind::OutcomeUnknown`].
//!
//! # Schema
//!
//! Versioned migrations embedded here, applied at start inside a session
//! advisory lock, so N instances starting together migrate once; a database
//! whose schema is newer than this build is refused.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use pointlock_core::{
    BoxFuture, Change, Committed, IdempotencyKey, IdempotencyRecord, Pending, PipelinedStore,
    PointHistory, PointStore, ReadMark, SequencedRead, StoreError, StoreErrorKind, Unsequenced,
    UserId, UserPoint,
};
use thiserror::Error;
use tokio::sync::oneshot;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use super::sequenced::{self, Dependents, Overlay, Sequencing};
use super::{corrupt_row, history_row, idempotency_row, to_i64};
use crate::histogram::{DurationHistogram, HistogramSnapshot};

/// The key of the session advisory lock held while migrating (any constant
/// unlikely to be used by another application on the same database: "PLK1").
const MIGRATION_LOCK_KEY: i64 = 0x504C_4B31;

/// The embedded migrations: `MIGRATIONS[i]` brings the schema to version `i + 1`.
/// Append only; never edit a step that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: balances, and the history with a store-wide id.
    "CREATE TABLE user_point (
        id            bigint PRIMARY KEY CHECK (id > 0),
        point         bigint NOT NULL CHECK (point >= 0),
        update_millis bigint NOT NULL
    );
    CREATE TABLE point_history (
        id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id     bigint NOT NULL CHECK (user_id > 0),
        type        text   NOT NULL CHECK (type IN ('CHARGE', 'USE')),
        amount      bigint NOT NULL CHECK (amount > 0),
        time_millis bigint NOT NULL
    );
    CREATE INDEX point_history_by_user ON point_history (user_id, id);",
    // 2: idempotency records, written by the statement of the change they
    // record; the index serves the sweep of expired records.
    "CREATE TABLE idempotency (
        user_id     bigint NOT NULL CHECK (user_id > 0),
        key         text   NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
        type        text   NOT NULL CHECK (type IN ('CHARGE', 'USE')),
        amount      bigint NOT NULL CHECK (amount > 0),
        point       bigint NOT NULL CHECK (point >= 0),
        time_millis bigint NOT NULL,
        PRIMARY KEY (user_id, key)
    );
    CREATE INDEX idempotency_by_time ON idempotency (time_millis);",
];

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The conditional balance write of a change computed from a positive balance:
/// only if the row still holds it.
macro_rules! update_if {
    () => {
        "UPDATE user_point SET point = $2, update_millis = $3
        WHERE id = $1 AND point = $4
        RETURNING id"
    };
}

/// The conditional balance write of a first balance, or of one computed from 0:
/// inserted, or updated only if the row still holds 0 (`$4` is the expected 0;
/// NULL only in negative controls).
macro_rules! upsert_if {
    () => {
        "INSERT INTO user_point (id, point, update_millis) VALUES ($1, $2, $3)
        ON CONFLICT (id) DO UPDATE
            SET point = EXCLUDED.point, update_millis = EXCLUDED.update_millis
            WHERE $4::bigint IS NULL OR user_point.point = $4::bigint
        RETURNING id"
    };
}

/// A change: the conditional write, then its history row if it applied.
macro_rules! change {
    ($write:expr) => {
        concat!(
            "WITH changed AS (",
            $write,
            ")
    INSERT INTO point_history (user_id, type, amount, time_millis)
    SELECT id, $5, $6, $3 FROM changed
    RETURNING id"
        )
    };
}

/// A change made with an idempotency key (`$7`), records made at or before
/// `$8` being expired: if the change applied, the user's expired record of the
/// key is deleted and the new one inserted. The insert reads `del` so that it
/// runs after the delete; a live record makes it fail on the primary key
/// (`idempotency_pkey`), which aborts the whole statement: nothing is written,
/// and the service, told of a conflict, finds the record.
macro_rules! keyed_change {
    ($write:expr) => {
        concat!(
            "WITH changed AS (",
            $write,
            "),
    del AS (
        DELETE FROM idempotency
        WHERE user_id = $1 AND key = $7 AND time_millis <= $8 AND EXISTS (SELECT 1 FROM changed)
        RETURNING 1),
    rec AS (
        INSERT INTO idempotency (user_id, key, type, amount, point, time_millis)
        SELECT id, $7, $5, $6, $2, $3 FROM changed WHERE (SELECT count(*) FROM del) >= 0
        RETURNING 1)
    INSERT INTO point_history (user_id, type, amount, time_millis)
    SELECT id, $5, $6, $3 FROM changed
    RETURNING id"
        )
    };
}

const UPDATE_IF: &str = change!(update_if!());
const UPSERT_IF: &str = change!(upsert_if!());
const UPDATE_IF_KEYED: &str = keyed_change!(update_if!());
const UPSERT_IF_KEYED: &str = keyed_change!(upsert_if!());
const SELECT_KEY: &str = "SELECT type, amount, point, time_millis FROM idempotency
    WHERE user_id = $1 AND key = $2";
/// One bounded step of the sweep (the outer condition again: a record replaced
/// meanwhile is not expired).
const SWEEP_KEYS: &str = "DELETE FROM idempotency WHERE time_millis <= $1 AND (user_id, key) IN (
        SELECT user_id, key FROM idempotency WHERE time_millis <= $1 LIMIT $2)";
/// The primary key whose violation means "this key has a live record".
const KEY_CONSTRAINT: &str = "idempotency_pkey";
const SELECT_POINT: &str = "SELECT point, update_millis FROM user_point WHERE id = $1";
const SELECT_HISTORIES: &str =
    "SELECT id, type, amount, time_millis FROM point_history WHERE user_id = $1 ORDER BY id";

/// Tuning of a [`PostgresStore`]. The defaults suit the server.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// The most connections this instance opens. A request waits for a free one
    /// up to [`connect_timeout`](Self::connect_timeout).
    pub pool_size: usize,
    /// The database cancels a statement running longer than this (nothing is
    /// changed): a stuck lock or an overloaded server cannot hold a request past
    /// its deadline.
    pub statement_timeout: Duration,
    /// The longest to wait for a connection, new or from the pool.
    pub connect_timeout: Duration,
    /// Pipelined commits (see the [module docs](self)): a user is released
    /// once its change is sequenced in this instance, and one user's
    /// consecutive changes commit in one transaction. Off by default: another
    /// instance writing the same user makes this instance's pipelined changes
    /// of that user fail (503 `WRITE_CONFLICT`) instead of being retried.
    pub pipeline: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            statement_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            pipeline: false,
        }
    }
}

/// Why the store could not be opened.
#[derive(Debug, Error)]
pub enum PgOpenError {
    /// The URL is not a PostgreSQL connection string.
    #[error(
        "invalid PostgreSQL URL ({0}); expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
    )]
    Url(String),
    /// The database could not be reached or refused the connection.
    #[error("cannot connect to PostgreSQL at {target}: {detail}")]
    Connect {
        /// Host, port and database (no password).
        target: String,
        /// What went wrong.
        detail: String,
    },
    /// A migration failed (nothing of it was applied).
    #[error("cannot migrate the PostgreSQL schema: {0}")]
    Migrate(String),
    /// The schema is newer than this build.
    #[error("the database has schema version {found}, newer than this build understands ({known}); run a newer pointlock")]
    NewerSchema {
        /// The database's version.
        found: i32,
        /// [`SCHEMA_VERSION`].
        known: i32,
    },
}

/// What the store has done so far, for `/stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PgStats {
    /// Changes committed.
    pub commits: u64,
    /// Changes refused by their condition (the balance had changed since it was
    /// read, typically by another instance).
    pub conflicts: u64,
    /// Commits and reads that failed (each answered with its error).
    pub errors: u64,
    /// Connections open now.
    pub pool_size: usize,
    /// Of those, idle now.
    pub pool_idle: usize,
    /// Requests waiting for a connection now.
    pub pool_waiting: usize,
    /// How long each commit statement took (the round trip; not the wait for a
    /// connection), whatever its outcome.
    pub commit_duration: HistogramSnapshot,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    conflicts: AtomicU64,
    errors: AtomicU64,
    commit_duration: DurationHistogram,
}

/// The PostgreSQL store. See the [module docs](self).
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    counters: Arc<Counters>,
    target: Arc<str>,
    /// The sequenced state and the per-user chains, when pipelined.
    pipeline: Option<Arc<Pipeline>>,
}

/// Pipelining: the sequenced state, and per user with sequenced work the
/// queue its chain task works through (present while the task runs).
struct Pipeline {
    overlay: Overlay,
    chains: Box<[Mutex<Chains>]>,
}

/// One shard of the chains: each user's queue of sequenced work.
type Chains = HashMap<UserId, VecDeque<Item>>;

/// Shards of the chains.
const CHAIN_SHARDS: usize = 64;
/// The most changes one chain transaction carries.
const CHAIN_OPS_MAX: usize = 64;

/// Sequenced work of one user, in order.
enum Item {
    Change(Change, oneshot::Sender<Result<Committed, StoreError>>),
    Barrier(ReadMark, oneshot::Sender<Result<(), StoreError>>),
}

impl Pipeline {
    fn chain(&self, id: UserId) -> std::sync::MutexGuard<'_, Chains> {
        // usize is at least 32 bits wide, so the remainder converts losslessly.
        let index = (id.get() % CHAIN_SHARDS as u64) as usize;
        self.chains[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connect to `url` (`postgres://` or `postgresql://`), check that the
    /// database answers, and migrate it to [`SCHEMA_VERSION`] (once, whatever the
    /// number of instances starting together). Fails fast with a clear error when
    /// the URL is wrong, the server is unreachable or the schema is newer.
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self, PgOpenError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| PgOpenError::Url(e.to_string()))?;
        let target = describe(&config);
        let statement_ms = options.statement_timeout.as_millis().max(1);
        config
            .connect_timeout(options.connect_timeout)
            .application_name("pointlock")
            .options(format!("-c statement_timeout={statement_ms}"));
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| PgOpenError::Connect {
                target: target.clone(),
                detail: e.to_string(),
            })?;
        let client = pool.get().await.map_err(|e| PgOpenError::Connect {
            target: target.clone(),
            detail: pool_error(&e),
        })?;
        migrate(&client).await?;
        drop(client);
        let pipeline = options.pipeline.then(|| {
            Arc::new(Pipeline {
                overlay: Overlay::new(),
                chains: (0..CHAIN_SHARDS).map(|_| Mutex::default()).collect(),
            })
        });
        Ok(Self {
            pool,
            counters: Arc::default(),
            target: target.into(),
            pipeline,
        })
    }

    /// Host, port and database of the store (no password).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// What the store has done so far, and the pool now.
    pub fn stats(&self) -> PgStats {
        let status = self.pool.status();
        PgStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            conflicts: self.counters.conflicts.load(Ordering::Relaxed),
            errors: self.counters.errors.load(Ordering::Relaxed),
            pool_size: status.size,
            pool_idle: status.available,
            pool_waiting: status.waiting,
            commit_duration: self.counters.commit_duration.snapshot(),
        }
    }

    /// Close the pool: later calls fail; connections close as they come back.
    pub fn close(&self) {
        self.pool.close();
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            StoreError::with_kind(
                StoreErrorKind::Unavailable,
                format!(
                    "PostgreSQL at {} is unavailable: {}; nothing was changed",
                    self.target,
                    pool_error(&e)
                ),
            )
        })
    }

    /// The error of a statement that failed (see the module docs for the kinds).
    fn failed(&self, error: &tokio_postgres::Error, writing: bool) -> StoreError {
        if let Some(db) = error.as_db_error() {
            if *db.code() == SqlState::UNIQUE_VIOLATION && db.constraint() == Some(KEY_CONSTRAINT) {
                // Not a failure: the key's record was committed meanwhile.
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                return StoreError::conflict(
                    "this idempotency key was used by a change committed meanwhile; nothing was changed",
                );
            }
        }
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        let Some(db) = error.as_db_error() else {
            // No answer from the database: the connection broke.
            let kind = if writing {
                StoreErrorKind::OutcomeUnknown
            } else {
                StoreErrorKind::Unavailable
            };
            let what = if writing {
                "whether the change was committed is unknown (read the history)"
            } else {
                "nothing was changed"
            };
            return StoreError::with_kind(
                kind,
                format!("the PostgreSQL connection broke ({error}); {what}"),
            );
        };
        let class = &db.code().code()[..2];
        let kind = if *db.code() == SqlState::T_R_SERIALIZATION_FAILURE
            || *db.code() == SqlState::T_R_DEADLOCK_DETECTED
        {
            StoreErrorKind::Conflict
        } else if class == "57" || class == "08" || class == "53" {
            // Operator intervention (a shutdown, the statement timeout),
            // connection trouble, insufficient resources: try again later.
            StoreErrorKind::Unavailable
        } else {
            StoreErrorKind::Failed
        };
        StoreError::with_kind(
            kind,
            format!(
                "PostgreSQL refused the statement ({}: {}); nothing was changed",
                db.code().code(),
                db.message()
            ),
        )
    }

    /// [`commit_now`](Self::commit_now) for a change of a chain, unless
    /// something it was computed on did not apply (then refused unwritten).
    async fn commit_after(
        &self,
        overlay: &Overlay,
        dependents: &mut Dependents,
        change: &Change,
    ) -> Result<Committed, StoreError> {
        if let Some(refused) = dependents.refusal(Some(overlay), change) {
            return Err(refused);
        }
        let outcome = self.commit_now(change).await;
        if outcome.is_err() {
            dependents.broke(change);
        }
        outcome
    }

    async fn commit_now(&self, change: &Change) -> Result<Committed, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(statement_sql(change))
            .await
            .map_err(|e| self.failed(&e, false))?;
        self.run_change(&**client, &statement, change).await?
    }

    /// The one statement of `change` (prepared as `statement`, from
    /// [`statement_sql`]) on `client`, a connection or a chain's transaction:
    /// `Err` when the statement failed (a transaction is then aborted), else
    /// committed or refused by the condition.
    async fn run_change<C: tokio_postgres::GenericClient + Sync>(
        &self,
        client: &C,
        statement: &tokio_postgres::Statement,
        change: &Change,
    ) -> Result<Result<Committed, StoreError>, StoreError> {
        let user = to_i64(change.user_id().get());
        let point = i64::try_from(change.point()).map_err(|_| {
            StoreError::new(format!(
                "balance {} does not fit the PostgreSQL store (at most 9223372036854775807)",
                change.point()
            ))
        })?;
        let expected = change.expected_point().map(to_i64);
        let key = change.idempotency_key();
        let amount = to_i64(change.amount().get());
        let time = change.time_millis();
        let kind = change.kind().as_str();
        let key_text = key.map(|key| key.as_str());
        let expired_before = change.key_expired_before();
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&user, &point, &time, &expected, &kind, &amount];
        if let Some(key_text) = &key_text {
            params.push(key_text);
            params.push(&expired_before);
        }
        let started = Instant::now();
        let rows = client.query(statement, &params).await;
        self.counters.commit_duration.observe(started.elapsed());
        let rows = rows.map_err(|e| self.failed(&e, true))?;
        Ok(match rows.first() {
            Some(row) => {
                let id: i64 = row.get(0);
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                u64::try_from(id)
                    .map(|id| change.committed(id))
                    .map_err(|_| StoreError::new("PostgreSQL assigned a negative history id"))
            }
            None => {
                // No extra query for the message: the service reads the balance
                // again anyway (one statement less per conflict, which matters on
                // a hot user shared by several instances).
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                Err(StoreError::conflict(format!(
                    "user {}: the balance is no longer the {} this change was computed from",
                    change.user_id(),
                    change.expected_point().unwrap_or(0)
                )))
            }
        })
    }

    /// Queue `item` on its user's chain; start the chain's task if none runs.
    fn enqueue(&self, pipeline: &Arc<Pipeline>, id: UserId, item: Item) {
        let mut chains = pipeline.chain(id);
        if let Some(queue) = chains.get_mut(&id) {
            queue.push_back(item);
            return;
        }
        chains.insert(id, VecDeque::from([item]));
        drop(chains);
        let store = self.clone();
        let pipeline = Arc::clone(pipeline);
        tokio::spawn(async move { store.run_chain(&pipeline, id).await });
    }

    /// A user's chain task: take what is queued, commit its changes in one
    /// transaction, answer everything in order; until the queue is empty.
    async fn run_chain(&self, pipeline: &Pipeline, id: UserId) {
        loop {
            let items: Vec<Item> = {
                let mut chains = pipeline.chain(id);
                let Some(queue) = chains.get_mut(&id) else {
                    return;
                };
                if queue.is_empty() {
                    chains.remove(&id);
                    return;
                }
                let take = queue.len().min(CHAIN_OPS_MAX);
                queue.drain(..take).collect()
            };
            let changes: Vec<&Change> = items
                .iter()
                .filter_map(|item| match item {
                    Item::Change(change, _) => Some(change),
                    Item::Barrier(..) => None,
                })
                .collect();
            let mut outcomes = self
                .commit_chain(&pipeline.overlay, &changes)
                .await
                .into_iter();
            for item in items {
                match item {
                    Item::Change(change, reply) => {
                        let outcome = outcomes.next().unwrap_or_else(|| {
                            Err(StoreError::new("the PostgreSQL chain lost an outcome"))
                        });
                        pipeline
                            .overlay
                            .answered(id, change.idempotency_key(), outcome.is_ok());
                        drop(change);
                        let _ = reply.send(outcome);
                    }
                    Item::Barrier(mark, reply) => {
                        let answer = if pipeline.overlay.barrier_holds(id, mark) {
                            Ok(())
                        } else {
                            Err(sequenced::failed_under())
                        };
                        let _ = reply.send(answer);
                    }
                }
            }
        }
    }

    /// One user's consecutive changes: one statement alone, or several in one
    /// transaction (one WAL flush). A statement error aborts a PostgreSQL
    /// transaction, so then each change runs again alone. A change computed on
    /// one that did not apply is refused unwritten (see `sequenced.rs`).
    async fn commit_chain(
        &self,
        overlay: &Overlay,
        changes: &[&Change],
    ) -> Vec<Result<Committed, StoreError>> {
        let mut dependents = Dependents::default();
        if let [change] = changes {
            return vec![self.commit_after(overlay, &mut dependents, change).await];
        }
        if changes.is_empty() {
            return Vec::new();
        }
        let mut client = match self.client().await {
            Ok(client) => client,
            Err(error) => return changes.iter().map(|_| Err(error.clone())).collect(),
        };
        let transaction = match client.transaction().await {
            Ok(transaction) => transaction,
            Err(e) => {
                let error = self.failed(&e, false);
                return changes.iter().map(|_| Err(error.clone())).collect();
            }
        };
        let mut outcomes = Vec::with_capacity(changes.len());
        let mut aborted = false;
        for change in changes {
            if let Some(refused) = dependents.refusal(Some(overlay), change) {
                outcomes.push(Err(refused));
                continue;
            }
            let ran = match transaction.prepare_cached(statement_sql(change)).await {
                Ok(statement) => self.run_change(&*transaction, &statement, change).await,
                Err(e) => Err(self.failed(&e, false)),
            };
            match ran {
                Ok(outcome) => {
                    if outcome.is_err() {
                        dependents.broke(change);
                    }
                    outcomes.push(outcome);
                }
                Err(_) => {
                    aborted = true;
                    break;
                }
            }
        }
        if aborted {
            // A failed statement aborts a PostgreSQL transaction: roll back
            // (nothing of it counts), then each change alone, in order.
            let counted = outcomes.iter().filter(|o| o.is_ok()).count() as u64;
            self.counters.commits.fetch_sub(counted, Ordering::Relaxed);
            drop(transaction);
            drop(client);
            let mut dependents = Dependents::default();
            let mut alone = Vec::with_capacity(changes.len());
            for change in changes {
                alone.push(self.commit_after(overlay, &mut dependents, change).await);
            }
            return alone;
        }
        match transaction.commit().await {
            Ok(()) => outcomes,
            Err(e) => {
                let error = self.failed(&e, true);
                // Nothing of the chain counts as committed.
                let committed = outcomes.iter().filter(|o| o.is_ok()).count() as u64;
                self.counters
                    .commits
                    .fetch_sub(committed, Ordering::Relaxed);
                changes.iter().map(|_| Err(error.clone())).collect()
            }
        }
    }
}

impl PointStore for PostgresStore {
    /// A connection within the connect timeout, and `SELECT 1` on it.
    fn ready(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| self.failed(&e, false))?;
            Ok(())
        })
    }

    fn user_point(&self, id: UserId) -> BoxFuture<'_, Result<Option<UserPoint>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(SELECT_POINT)
                .await
                .map_err(|e| self.failed(&e, false))?;
            let row = client
                .query_opt(&statement, &[&to_i64(id.get())])
                .await
                .map_err(|e| self.failed(&e, false))?;
            row.map(|row| {
                Ok(UserPoint {
                    id,
                    point: u64::try_from(row.get::<_, i64>(0))
                        .map_err(|_| corrupt_row(STORE, "negative balance", id))?,
                    update_millis: row.get(1),
                })
            })
            .transpose()
        })
    }

    fn histories(&self, id: UserId) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(SELECT_HISTORIES)
                .await
                .map_err(|e| self.failed(&e, false))?;
            let rows = client
                .query(&statement, &[&to_i64(id.get())])
                .await
                .map_err(|e| self.failed(&e, false))?;
            rows.iter()
                .map(|row| history_row(STORE, id, (row.get(0), row.get(1), row.get(2), row.get(3))))
                .collect()
        })
    }

    fn idempotency_record(
        &self,
        id: UserId,
        key: &IdempotencyKey,
    ) -> BoxFuture<'_, Result<Option<IdempotencyRecord>, StoreError>> {
        let key = key.clone();
        Box::pin(async move {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(SELECT_KEY)
                .await
                .map_err(|e| self.failed(&e, false))?;
            let row = client
                .query_opt(&statement, &[&to_i64(id.get()), &key.as_str()])
                .await
                .map_err(|e| self.failed(&e, false))?;
            row.map(|row| {
                let kind: &str = row.get(0);
                idempotency_row(STORE, id, &key, (kind, row.get(1), row.get(2), row.get(3)))
            })
            .transpose()
        })
    }

    fn sweep_idempotency(
        &self,
        expired_before: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let removed = client
                .execute(SWEEP_KEYS, &[&expired_before, &limit])
                .await
                .map_err(|e| self.failed(&e, true))?;
            Ok(usize::try_from(removed).unwrap_or(usize::MAX))
        })
    }

    fn commit(&self, change: Change) -> BoxFuture<'_, Result<Committed, StoreError>> {
        if let Some(pipeline) = &self.pipeline {
            // Through the sequenced state, its guard kept until answered.
            return Box::pin(async move { self.sequence_in(pipeline, change)?.await });
        }
        // The task owns the change (and the user's guard in it) until the database
        // has answered, whatever happens to the caller's future.
        let store = self.clone();
        let task = tokio::spawn(async move { store.commit_now(&change).await });
        Box::pin(async move {
            task.await.map_err(|e| {
                StoreError::with_kind(
                    StoreErrorKind::OutcomeUnknown,
                    format!("the PostgreSQL commit task failed: {e}"),
                )
            })?
        })
    }

    fn pipelined(&self) -> Option<&dyn PipelinedStore> {
        self.pipeline
            .is_some()
            .then_some(self as &dyn PipelinedStore)
    }
}

impl PipelinedStore for PostgresStore {
    fn sequence(&self, change: Unsequenced) -> BoxFuture<'_, Result<Pending<'_>, StoreError>> {
        Box::pin(async move {
            match &self.pipeline {
                Some(pipeline) => self.sequence_in(pipeline, change),
                None => Err(StoreError::new(
                    "this PostgreSQL store is not pipelined: commit the change instead",
                )),
            }
        })
    }

    fn sequenced_point(
        &self,
        id: UserId,
    ) -> BoxFuture<'_, Result<SequencedRead<'_, Option<UserPoint>>, StoreError>> {
        let overlay = self.pipeline.as_deref().map(|pipeline| &pipeline.overlay);
        Box::pin(sequenced::read(
            overlay,
            move |o| o.point(id),
            move || self.user_point(id),
            move |mark| self.settle(id, mark),
        ))
    }

    fn sequenced_idempotency_record<'a>(
        &'a self,
        id: UserId,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<SequencedRead<'a, Option<IdempotencyRecord>>, StoreError>> {
        let overlay = self.pipeline.as_deref().map(|pipeline| &pipeline.overlay);
        Box::pin(sequenced::read(
            overlay,
            move |o| o.key(id, key),
            move || self.idempotency_record(id, key),
            move |mark| self.settle(id, mark),
        ))
    }
}

impl PostgresStore {
    /// Check `change` against the sequenced state, queue it on the user's
    /// chain (whose task owns it from here, whatever happens to the caller)
    /// and make its result the sequenced state, all under the user's shard
    /// mutex of the sequenced state; the outcome, to await.
    fn sequence_in(
        &self,
        pipeline: &Arc<Pipeline>,
        change: impl Sequencing,
    ) -> Result<Pending<'_>, StoreError> {
        let id = change.change().user_id();
        let (reply, answer) = oneshot::channel();
        pipeline.overlay.sequence(change, |change| {
            self.enqueue(pipeline, id, Item::Change(change, reply));
            Ok(())
        })?;
        Ok(Box::pin(async move {
            answer.await.map_err(|_| {
                StoreError::with_kind(
                    StoreErrorKind::OutcomeUnknown,
                    "the PostgreSQL chain stopped before answering",
                )
            })?
        }))
    }

    /// Resolve once everything a read of user `id` marked `mark` showed is
    /// durable; fail if some of it failed (see `sequenced.rs`).
    fn settle(&self, id: UserId, mark: ReadMark) -> BoxFuture<'_, Result<(), StoreError>> {
        let overlay = self.pipeline.as_deref().map(|pipeline| &pipeline.overlay);
        Box::pin(sequenced::settle(overlay, id, mark, move || async move {
            let Some(pipeline) = &self.pipeline else {
                return Ok(());
            };
            let (reply, answer) = oneshot::channel();
            self.enqueue(pipeline, id, Item::Barrier(mark, reply));
            answer
                .await
                .map_err(|_| StoreError::new("the PostgreSQL chain stopped before answering"))?
        }))
    }
}

/// The statement of a change: from a positive balance or not, keyed or not.
fn statement_sql(change: &Change) -> &'static str {
    let from_positive = change.expected_point().is_some_and(|expected| expected > 0);
    match (from_positive, change.idempotency_key().is_some()) {
        (true, false) => UPDATE_IF,
        (false, false) => UPSERT_IF,
        (true, true) => UPDATE_IF_KEYED,
        (false, true) => UPSERT_IF_KEYED,
    }
}

/// Apply the migrations the database lacks, under the migration advisory lock.
async fn migrate(client: &deadpool_postgres::Object) -> Result<(), PgOpenError> {
    let failed = |e: tokio_postgres::Error| PgOpenError::Migrate(e.to_string());
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(failed)?;
    let result = migrate_locked(client).await;
    // Released on disconnect anyway; unlock now so the pooled connection is clean.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    result?;
    unlocked.map_err(failed)?;
    Ok(())
}

async fn migrate_locked(client: &deadpool_postgres::Object) -> Result<(), PgOpenError> {
    let failed = |e: tokio_postgres::Error| PgOpenError::Migrate(e.to_string());
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS pointlock_schema (
                version    integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(failed)?;
    let found: i32 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM pointlock_schema",
            &[],
        )
        .await
        .map_err(failed)?
        .get(0);
    if found > SCHEMA_VERSION {
        return Err(PgOpenError::NewerSchema {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (index, step) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let version = index as i32 + 1;
        client
            .batch_execute(&format!(
                "BEGIN; {step}; INSERT INTO pointlock_schema (version) VALUES ({version}); COMMIT;"
            ))
            .await
            .map_err(|e| PgOpenError::Migrate(format!("step {version}: {e} (rolled back)")))?;
        tracing::info!(version, "PostgreSQL schema migrated");
    }
    Ok(())
}

/// `host:port/dbname` of a configuration, never its password.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("(default database)");
    format!("{host}:{port}/{db}")
}

/// A pool error in words (a connection error's cause included).
fn pool_error(error: &PoolError) -> String {
    match error {
        PoolError::Timeout(_) => "no connection within the connect timeout".into(),
        PoolError::Backend(e) => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
        other => other.to_string(),
    }
}

/// The store's name in errors about corrupt rows.
const STORE: &str = "PostgreSQL";
