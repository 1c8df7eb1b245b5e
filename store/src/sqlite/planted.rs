//! What tests plant in the SQLite store, through the test fields of
//! [`SqliteOptions`]: the pipeline's negative controls (what it must never do,
//! done on purpose, for the tests that must catch it) and injected faults.
//!
//! Compiled with the crate's `test-util` feature (and its own unit tests)
//! only: a build without it has none of these fields, types or checks.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use pointlock_core::{Change, StoreError};
use rusqlite::Connection;

use super::{OpenError, SqliteOptions};

/// A negative control of the pipelined store (see
/// [`SqliteOptions::negative_control`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NegativeControl {
    /// Answer a change as soon as it is sequenced, before it is durable.
    AnswerAtSequencing,
    /// Answer reads (`GET /point/{id}`) and settle marked answers from the
    /// sequenced state, without waiting for it to be durable.
    DirtyReads,
}

/// A gate the writer waits at before each batch while it is closed: a
/// deterministic "not durable yet" (see [`SqliteOptions::gate`]).
#[derive(Debug, Default)]
pub struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
    /// Batches that have waited at the gate.
    pub waited: AtomicU64,
}

impl Gate {
    /// Hold the writer before its next batch.
    pub fn close(&self) {
        *self.closed.lock().unwrap_or_else(PoisonError::into_inner) = true;
    }

    /// Let the writer go on.
    pub fn open(&self) {
        *self.closed.lock().unwrap_or_else(PoisonError::into_inner) = false;
        self.opened.notify_all();
    }

    /// The writer: wait while closed.
    fn pass(&self) {
        let mut closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
        if *closed {
            self.waited.fetch_add(1, Ordering::SeqCst);
        }
        while *closed {
            closed = self
                .opened
                .wait(closed)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The faults the writer thread plays, taken from the options.
pub(super) struct WriterFaults {
    gate: Option<Arc<Gate>>,
    fail_amount: Option<Arc<AtomicU64>>,
    panic_amount: Option<u64>,
    page_limit: Option<Arc<AtomicU64>>,
}

impl WriterFaults {
    pub(super) fn new(options: &SqliteOptions) -> Self {
        Self {
            gate: options.gate.clone(),
            fail_amount: options.fail_amount.clone(),
            panic_amount: options.panic_amount,
            page_limit: options.page_limit.clone(),
        }
    }

    /// Before each batch: wait at the gate, then set the page limit.
    pub(super) fn before_batch(&self, conn: &Connection) {
        if let Some(gate) = &self.gate {
            gate.pass();
        }
        if let Some(limit) = &self.page_limit {
            let pages = i64::try_from(limit.load(Ordering::SeqCst)).unwrap_or(i64::MAX);
            // The pragma answers with the new maximum: read it, or it is not run.
            let _ = conn.pragma_update_and_check(None, "max_page_count", pages, |_| Ok(()));
        }
    }

    /// The statement error of a write of `changes` that holds a change of
    /// the failing amount: it fails as a statement would, before anything is
    /// written.
    pub(super) fn failed_statement(&self, changes: &[&Change]) -> Option<StoreError> {
        if let Some(amount) = self.panic_amount {
            assert!(
                changes.iter().all(|change| change.amount().get() != amount),
                "the SQLite writer panics on a change of {amount} (a planted fault)"
            );
        }
        let amount = self.fail_amount.as_deref()?.load(Ordering::SeqCst);
        changes
            .iter()
            .any(|change| change.amount().get() == amount)
            .then(|| StoreError::new("SQLite write failed: injected fault (tests)"))
    }
}

/// While [`SqliteOptions::fail_commits`] is set, SQLite turns every COMMIT
/// of `conn` into a rollback and reports the COMMIT as failed.
pub(super) fn fail_commits(
    conn: &Connection,
    options: &SqliteOptions,
    path: &Path,
) -> Result<(), OpenError> {
    let Some(fail) = &options.fail_commits else {
        return Ok(());
    };
    let fail = Arc::clone(fail);
    conn.commit_hook(Some(move || fail.load(Ordering::SeqCst)))
        .map_err(|source| OpenError::Sqlite {
            path: path.to_path_buf(),
            step: "installing the test commit hook",
            source,
        })
}
