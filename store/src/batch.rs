//! Batch, then each alone: the commit plan the SQLite writer follows when it
//! writes several changes in one transaction.
//!
//! All the changes are written in one transaction first. A statement that
//! fails rolls the whole transaction back (the writer rolls it back), so
//! nothing of it counts, and each change is then
//! written again alone, in order: one bad change does not fail the innocent
//! ones. A COMMIT that fails ends the plan: the changes it carried get its
//! error, and the changes not written yet get the error the store gives after
//! a failed COMMIT.
//!
//! [`BatchPlan`] is the decision logic without the I/O, testable alone:
//!
//! ```text
//! let mut plan = BatchPlan::new(changes.len());
//! while let Some(next) = plan.next() {
//!     let written = write(&changes[next]);
//!     plan.written(written);
//!     // answer plan.decided() now, or all at the end with plan.finish()
//! }
//! ```

use std::ops::Range;

use pointlock_core::StoreError;

/// What writing some changes in one transaction came to.
#[derive(Debug)]
pub(crate) enum Written<T> {
    /// One outcome per change, in order: applied, refused by its condition,
    /// or failed on its own (nothing to retry).
    Answered(Vec<Result<T, StoreError>>),
    /// A statement failed and the transaction was rolled back: nothing of it
    /// counts. Several changes are written again each alone; a change alone
    /// is answered with this error.
    RolledBack(StoreError),
    /// The COMMIT failed: the changes it carried get `carried`, those not
    /// written yet get `rest`, and nothing more is written.
    CommitFailed {
        /// The error of each change of the failed COMMIT.
        carried: StoreError,
        /// The error of each change not written yet.
        rest: StoreError,
    },
}

/// The plan of a batch of `len` changes (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct BatchPlan<T> {
    len: usize,
    /// Outcomes decided and not yet taken by [`decided`](Self::decided).
    outcomes: Vec<Result<T, StoreError>>,
    /// Changes decided so far (taken or not).
    done: usize,
    /// A statement failed in the whole batch: each change alone from now on.
    alone: bool,
    /// A COMMIT failed: the error of every change not written yet.
    stopped: Option<StoreError>,
}

impl<T> BatchPlan<T> {
    /// The plan of `len` changes: all in one transaction first.
    pub(crate) fn new(len: usize) -> Self {
        Self {
            len,
            outcomes: Vec::with_capacity(len),
            done: 0,
            alone: false,
            stopped: None,
        }
    }

    /// The changes to write next, in one transaction: all of them first; after
    /// a statement failed, each alone in order; `None` once every change is
    /// decided or a COMMIT failed.
    pub(crate) fn next(&self) -> Option<Range<usize>> {
        if self.done == self.len || self.stopped.is_some() {
            None
        } else if self.alone {
            Some(self.done..self.done + 1)
        } else {
            Some(self.done..self.len)
        }
    }

    /// Whether the changes will now be written each alone after a statement
    /// failed in the whole batch (each retried alone).
    pub(crate) fn retrying_alone(&self) -> bool {
        self.alone
    }

    /// What writing [`next`](Self::next) came to. Returns the statement's
    /// error when it rolled back the whole batch, whose changes will now be
    /// written each alone.
    pub(crate) fn written(&mut self, written: Written<T>) -> Option<StoreError> {
        let range = self.next()?;
        match written {
            Written::Answered(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for _ in range.clone() {
                    self.outcomes.push(outcomes.next().unwrap_or_else(|| {
                        Err(StoreError::new("the store lost the outcome of a change"))
                    }));
                }
                self.done = range.end;
                None
            }
            Written::RolledBack(error) if range.len() == 1 => {
                self.outcomes.push(Err(error));
                self.done = range.end;
                None
            }
            Written::RolledBack(error) => {
                self.alone = true;
                Some(error)
            }
            Written::CommitFailed { carried, rest } => {
                self.outcomes
                    .extend(range.clone().map(|_| Err(carried.clone())));
                self.done = range.end;
                self.stopped = Some(rest);
                None
            }
        }
    }

    /// The outcomes decided since the last call, in the changes' order.
    pub(crate) fn decided(&mut self) -> std::vec::Drain<'_, Result<T, StoreError>> {
        self.outcomes.drain(..)
    }

    /// Every outcome not taken yet, in order: those decided, then, after a
    /// failed COMMIT, the error of each change never written.
    pub(crate) fn finish(mut self) -> Vec<Result<T, StoreError>> {
        if let Some(rest) = self.stopped.take() {
            let never_written = self.len - self.done;
            self.outcomes
                .extend((0..never_written).map(|_| Err(rest.clone())));
        }
        self.outcomes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(message: &str) -> StoreError {
        StoreError::new(message)
    }

    /// The writes a plan asked for, as `(start, end)`, and its outcomes.
    type Run = (Vec<(usize, usize)>, Vec<Result<u32, String>>);

    /// Run a plan of `len` changes whose writes answer with `writes`, in turn.
    fn run(len: usize, writes: Vec<Written<u32>>) -> Run {
        let mut plan = BatchPlan::new(len);
        let mut writes = writes.into_iter();
        let mut asked = Vec::new();
        while let Some(next) = plan.next() {
            asked.push((next.start, next.end));
            plan.written(writes.next().expect("a write the plan did not ask for"));
        }
        assert!(writes.next().is_none(), "writes left over");
        let outcomes = plan
            .finish()
            .into_iter()
            .map(|o| o.map_err(|e| e.message().to_owned()))
            .collect();
        (asked, outcomes)
    }

    #[test]
    fn a_batch_that_commits_is_written_once() {
        let (asked, outcomes) = run(
            3,
            vec![Written::Answered(vec![Ok(1), Err(error("refused")), Ok(3)])],
        );
        assert_eq!(asked, [(0, 3)]);
        assert_eq!(outcomes, [Ok(1), Err("refused".into()), Ok(3)]);
    }

    #[test]
    fn a_failed_statement_rolls_back_and_each_change_is_written_alone() {
        let (asked, outcomes) = run(
            3,
            vec![
                Written::RolledBack(error("bad statement")),
                Written::Answered(vec![Ok(1)]),
                Written::RolledBack(error("bad change")),
                Written::Answered(vec![Ok(3)]),
            ],
        );
        assert_eq!(asked, [(0, 3), (0, 1), (1, 2), (2, 3)]);
        assert_eq!(outcomes, [Ok(1), Err("bad change".into()), Ok(3)]);
    }

    #[test]
    fn a_change_alone_is_answered_with_its_statement_error() {
        let (asked, outcomes) = run(1, vec![Written::RolledBack(error("bad"))]);
        assert_eq!(asked, [(0, 1)]);
        assert_eq!(outcomes, [Err("bad".into())]);
    }

    #[test]
    fn a_failed_commit_ends_the_plan_carried_and_rest_get_their_errors() {
        let failed = || Written::CommitFailed {
            carried: error("unknown"),
            rest: error("stopped"),
        };
        let (asked, outcomes) = run(2, vec![failed()]);
        assert_eq!(asked, [(0, 2)]);
        assert_eq!(outcomes, [Err("unknown".into()), Err("unknown".into())]);

        // While each change is written alone: the earlier ones keep their
        // outcomes, the one in the failed COMMIT is unknown, the rest stopped.
        let (asked, outcomes) = run(
            3,
            vec![
                Written::RolledBack(error("bad statement")),
                Written::Answered(vec![Ok(1)]),
                failed(),
            ],
        );
        assert_eq!(asked, [(0, 3), (0, 1), (1, 2)]);
        assert_eq!(
            outcomes,
            [Ok(1), Err("unknown".into()), Err("stopped".into())]
        );
    }

    #[test]
    fn outcomes_are_taken_as_they_are_decided() {
        let mut plan = BatchPlan::<u32>::new(2);
        let rolled_back = plan.written(Written::RolledBack(error("bad")));
        assert_eq!(
            rolled_back.map(|e| e.message().to_owned()),
            Some("bad".into())
        );
        assert!(plan.retrying_alone());
        assert_eq!(plan.decided().count(), 0);
        plan.written(Written::Answered(vec![Ok(1)]));
        assert_eq!(plan.decided().collect::<Vec<_>>(), [Ok(1)]);
        plan.written(Written::Answered(vec![Ok(2)]));
        assert_eq!(plan.next(), None);
        assert_eq!(plan.finish(), [Ok(2)]);
    }

    #[test]
    fn a_missing_outcome_is_an_error_not_a_shift() {
        let (_, outcomes) = run(2, vec![Written::Answered(vec![Ok(1)])]);
        assert_eq!(outcomes[0], Ok(1));
        assert!(outcomes[1].is_err());
    }
}
