//! What the clients saw, and the checker that judges it against a
//! sequential model of each user's wallet.
//!
//! [`Log`] records every request at its arrival (the moment the stack's
//! `call` placed it, so the lock layer's FIFO place) and, later, its answer.
//! [`check_user`] then asks: is there **one** sequence of the user's
//! operations, in arrival order, that explains the user's durable history row
//! for row and every answer a client was given?
//!
//! - a 200 to a charge or use: the operation applied there, its row is the
//!   next durable row, and the balance shown is the model's after it (an
//!   idempotent replay shows the balance of the first application);
//! - a policy refusal: the model's balance at that place refuses it;
//! - a refusal that changes nothing (lock timeout or queue full, a store error
//!   before the change, a stopped store): nothing applied;
//! - an answer that leaves the outcome unknown (408, 500, `STORE_OUTCOME_UNKNOWN`,
//!   a disconnect, a request in flight or killed by a crash): either, at most
//!   once per idempotency key (the search branches);
//! - a 200 read: the model's balance (or history) at the read's place;
//! - every durable row is some operation's, in arrival order (FIFO, no lost
//!   or invented update), and the durable balance is the model's.
//!
//! Checked against the durable state after a crash and restart, this also
//! says that no acknowledged change and no value a client was shown is lost.

use std::collections::HashMap;

use crate::workload::OpKind;

/// What a client was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// No answer yet (in flight), or none ever (killed by a crash).
    Pending,
    /// The client dropped the request before its answer (a disconnect).
    Dropped,
    /// 200 to a charge or use: the balance shown, and whether it was an
    /// idempotent replay.
    Applied {
        /// The balance in the answer.
        point: u64,
        /// `Idempotent-Replayed: true`.
        replayed: bool,
    },
    /// 200 to `GET /point/{id}`.
    Point(u64),
    /// 200 to `GET /point/{id}/histories`: kind and amount of each row.
    History(Vec<(OpKind, u64)>),
    /// Any other answer: the status and the JSON error code.
    Error {
        /// The HTTP status.
        status: u16,
        /// The `code` of the JSON error body (empty if it had none).
        code: String,
    },
}

/// One request as the log keeps it.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Arrival order, over the whole run (every incarnation).
    pub arrival: u64,
    /// The incarnation it was sent in.
    pub life: usize,
    /// The user.
    pub user: u64,
    /// What it asked.
    pub kind: OpKind,
    /// The amount of a charge or use.
    pub amount: u64,
    /// Its idempotency key, if any.
    pub key: Option<String>,
    /// What it was answered.
    pub answer: Answer,
    /// When it arrived, on the log's clock (arrivals and answers, counted).
    pub arrived_at: u64,
    /// When it was answered, on the log's clock.
    pub answered_at: Option<u64>,
}

/// Every request of a run, in arrival order.
#[derive(Clone, Debug, Default)]
pub struct Log {
    /// The entries, indexed by arrival.
    pub entries: Vec<Entry>,
    /// The log's clock: one tick per arrival and per answer.
    pub ticks: u64,
}

impl Log {
    /// Record a request arriving now; answer its index.
    pub fn arrive(
        &mut self,
        life: usize,
        user: u64,
        kind: OpKind,
        amount: u64,
        key: Option<String>,
    ) -> usize {
        let index = self.entries.len();
        self.ticks += 1;
        self.entries.push(Entry {
            arrived_at: self.ticks,
            answered_at: None,
            arrival: index as u64,
            life,
            user,
            kind,
            amount,
            key,
            answer: Answer::Pending,
        });
        index
    }

    /// Record the answer of request `index`.
    pub fn answer(&mut self, index: usize, answer: Answer) {
        self.ticks += 1;
        if let Some(entry) = self.entries.get_mut(index) {
            entry.answer = answer;
            entry.answered_at = Some(self.ticks);
        }
    }
}

/// A user's durable state: balance and history rows, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Durable {
    /// The stored balance (0 for a user with no row).
    pub point: u64,
    /// Kind and amount of each history row.
    pub rows: Vec<(OpKind, u64)>,
}

/// How an answer bears on the model.
enum Verdict {
    /// Applied here (200, not a replay), showing this balance.
    Applied(u64),
    /// Answered from the record of an earlier application, showing this balance.
    Replayed(u64),
    /// Refused by the policy at this place, with this code.
    Policy(&'static str),
    /// Changed nothing.
    Nothing,
    /// May or may not have applied here.
    Unknown,
    /// An answer this workload must never get.
    Impossible,
}

fn verdict(answer: &Answer) -> Verdict {
    match answer {
        Answer::Pending | Answer::Dropped => Verdict::Unknown,
        Answer::Applied {
            point,
            replayed: false,
        } => Verdict::Applied(*point),
        Answer::Applied {
            point,
            replayed: true,
        } => Verdict::Replayed(*point),
        Answer::Point(_) | Answer::History(_) => Verdict::Impossible,
        Answer::Error { status, code } => match (status, code.as_str()) {
            (_, "INSUFFICIENT_BALANCE") => Verdict::Policy("INSUFFICIENT_BALANCE"),
            (_, "MAX_BALANCE_EXCEEDED") => Verdict::Policy("MAX_BALANCE_EXCEEDED"),
            (
                503,
                "LOCK_TIMEOUT" | "LOCK_QUEUE_FULL" | "STORE_UNAVAILABLE" | "STORE_OVERLOADED",
            )
            | (_, "WRITE_CONFLICT" | "STORE_ERROR") => Verdict::Nothing,
            (408, _) | (500, _) | (_, "STORE_OUTCOME_UNKNOWN") => Verdict::Unknown,
            _ => Verdict::Impossible,
        },
    }
}

/// The model's state at one place in a user's order.
#[derive(Clone)]
struct State {
    row: usize,
    balance: u64,
    /// Logical operations applied so far, with the balance after each.
    applied: HashMap<(OpKind, u64), u64>,
    /// Reads on a pipelined store whose answer is not the model's state at
    /// their place: each must be the state after some change that arrived
    /// before the read was answered.
    open: Vec<OpenRead>,
}

/// A read still to be matched by a later state.
#[derive(Clone, Copy, Debug)]
struct OpenRead {
    /// The read's index among the user's events.
    event: usize,
    /// Until when (log clock) a change may still explain it.
    until: u64,
    /// The balance shown, or the number of rows shown.
    shows: Shown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shown {
    Balance(u64),
    Rows(usize),
}

impl State {
    /// Drop the open reads the state now explains.
    fn close_reads(&mut self) {
        let (balance, row) = (self.balance, self.row);
        self.open.retain(|read| match read.shows {
            Shown::Balance(shown) => shown != balance,
            Shown::Rows(shown) => shown != row,
        });
    }
}

/// The search over the unknown outcomes of one user.
struct Search<'a> {
    events: Vec<&'a Entry>,
    durable: &'a Durable,
    max_balance: u64,
    complete: bool,
    reads_in_window: bool,
    steps: u64,
    /// The furthest event the search got to, and why it could go no further.
    deepest: (usize, String),
}

/// The most steps one user's search may take.
const SEARCH_STEPS_MAX: u64 = 2_000_000;

impl Search<'_> {
    fn fail(&mut self, at: usize, why: String) -> bool {
        if at >= self.deepest.0 {
            self.deepest = (at, why);
        }
        false
    }

    fn policy(&self, kind: OpKind, balance: u64, amount: u64) -> Result<u64, &'static str> {
        match kind {
            OpKind::Charge => match balance.checked_add(amount) {
                Some(next) if next <= self.max_balance => Ok(next),
                _ => Err("MAX_BALANCE_EXCEEDED"),
            },
            _ => balance.checked_sub(amount).ok_or("INSUFFICIENT_BALANCE"),
        }
    }

    /// Whether the events from `at` on can be explained from `state`.
    fn explain(&mut self, at: usize, mut state: State) -> bool {
        let mut at = at;
        loop {
            self.steps += 1;
            if self.steps > SEARCH_STEPS_MAX {
                return self.fail(at, "search budget exhausted".into());
            }
            let Some(event) = self.events.get(at).copied() else {
                return self.finish(at, &state);
            };
            if let Some(read) = state.open.iter().find(|read| read.until < event.arrived_at) {
                let read = *read;
                return self.unexplained_read(at, read);
            }
            let here = describe(event);
            match event.kind {
                OpKind::ReadPoint => {
                    if let Answer::Point(shown) = event.answer {
                        if shown != state.balance {
                            if !self.reads_in_window || shown > self.max_balance {
                                return self.fail(
                                    at,
                                    format!(
                                        "{here}: the model's balance there is {}",
                                        state.balance
                                    ),
                                );
                            }
                            state.open.push(OpenRead {
                                event: at,
                                until: event.answered_at.unwrap_or(u64::MAX),
                                shows: Shown::Balance(shown),
                            });
                        }
                    }
                }
                OpKind::ReadHistory => {
                    if let Answer::History(shown) = &event.answer {
                        let model = self.durable.rows.get(..state.row).unwrap_or_default();
                        if shown.as_slice() != model {
                            let prefix =
                                self.durable.rows.get(..shown.len()) == Some(shown.as_slice());
                            if !self.reads_in_window || !prefix || shown.len() < state.row {
                                return self.fail(
                                    at,
                                    format!("{here}: the model's history there is {model:?}"),
                                );
                            }
                            state.open.push(OpenRead {
                                event: at,
                                until: event.answered_at.unwrap_or(u64::MAX),
                                shows: Shown::Rows(shown.len()),
                            });
                        }
                    }
                }
                OpKind::Charge | OpKind::Use => {
                    let op = (event.kind, event.amount);
                    let done = state.applied.get(&op).copied();
                    let next_row = self.durable.rows.get(state.row) == Some(&op);
                    let allowed = self.policy(event.kind, state.balance, event.amount);
                    match verdict(&event.answer) {
                        Verdict::Applied(shown) => {
                            if done.is_some() {
                                return self.fail(at, format!("{here}: applied twice (its key was applied before)"));
                            }
                            if !next_row {
                                return self.fail(at, format!(
                                    "{here}: acknowledged, but the next durable row is {:?} (lost, or out of arrival order)",
                                    self.durable.rows.get(state.row)
                                ));
                            }
                            match allowed {
                                Ok(next) if next == shown => state = apply(state, op, next),
                                Ok(next) => return self.fail(at, format!("{here}: the model's balance after it is {next}")),
                                Err(code) => return self.fail(at, format!("{here}: the policy refuses it there ({code}, balance {})", state.balance)),
                            }
                        }
                        Verdict::Replayed(shown) => match done {
                            Some(first) if first == shown => {}
                            Some(first) => return self.fail(at, format!("{here}: replay shows {shown}, the first application left {first}")),
                            None => return self.fail(at, format!("{here}: a replay of a key never applied before it")),
                        },
                        Verdict::Policy(code) => {
                            if done.is_some() {
                                return self.fail(at, format!("{here}: refused, but its key was applied before (must replay)"));
                            }
                            if allowed != Err(code) {
                                return self.fail(at, format!("{here}: the policy at balance {} says {allowed:?}", state.balance));
                            }
                        }
                        Verdict::Nothing => {}
                        Verdict::Impossible => return self.fail(at, format!("{here}: an answer this workload never gets")),
                        Verdict::Unknown => {
                            if let (None, true, Ok(next)) = (done, next_row, allowed) {
                                // Branch: applied here, or not.
                                if self.explain(at + 1, apply(state.clone(), op, next)) {
                                    return true;
                                }
                            }
                        }
                    }
                }
            }
            at += 1;
        }
    }

    fn unexplained_read(&mut self, at: usize, read: OpenRead) -> bool {
        let here = self
            .events
            .get(read.event)
            .map(|e| describe(e))
            .unwrap_or_default();
        self.fail(
            at.max(read.event),
            format!(
                "{here}: no state between its place and its answer shows {:?}",
                read.shows
            ),
        )
    }

    fn finish(&mut self, at: usize, state: &State) -> bool {
        if let Some(read) = state.open.first() {
            let read = *read;
            return self.unexplained_read(at, read);
        }
        if state.row != self.durable.rows.len() {
            return self.fail(at, format!(
                "durable rows from {} on ({:?}) belong to no request in arrival order (an update from nowhere, or out of order)",
                state.row,
                self.durable.rows.get(state.row..).unwrap_or_default()
            ));
        }
        if self.complete && state.balance != self.durable.point {
            return self.fail(
                at,
                format!(
                    "the durable balance is {} but its history sums to {} (a lost update)",
                    self.durable.point, state.balance
                ),
            );
        }
        true
    }
}

fn apply(mut state: State, op: (OpKind, u64), next: u64) -> State {
    state.row += 1;
    state.balance = next;
    state.applied.insert(op, next);
    state.close_reads();
    state
}

fn describe(event: &Entry) -> String {
    format!(
        "request #{} (life {}, user {}, {:?} {}{}) answered {:?}",
        event.arrival,
        event.life,
        event.user,
        event.kind,
        event.amount,
        event
            .key
            .as_ref()
            .map(|k| format!(", key {k}"))
            .unwrap_or_default(),
        event.answer
    )
}

/// Check user `user`'s requests in `log` against its durable state. With
/// `complete`, also the durable balance against the model's (false while
/// changes may still be in flight to a store that writes balance and row at
/// different moments: never, for these stores, but a mid-run check stays
/// conservative). `Err` says why no sequence explains what was seen.
///
/// With `reads_in_window` (a pipelined store) a read may also show the state
/// after changes that arrived after it but before its answer (it waits for
/// earlier changes without the lock, and then reads durable state, see
/// `PointService::point_in_order`); otherwise it must show the state at its
/// place exactly.
pub fn check_user(
    log: &Log,
    user: u64,
    durable: &Durable,
    max_balance: u64,
    complete: bool,
    reads_in_window: bool,
) -> Result<(), String> {
    let events: Vec<&Entry> = log.entries.iter().filter(|e| e.user == user).collect();
    let mut search = Search {
        events,
        durable,
        max_balance,
        complete,
        reads_in_window,
        steps: 0,
        deepest: (0, String::new()),
    };
    let start = State {
        row: 0,
        balance: 0,
        applied: HashMap::new(),
        open: Vec::new(),
    };
    if search.explain(0, start) {
        Ok(())
    } else {
        let mut trace = String::new();
        for event in &search.events {
            trace.push_str("\n    ");
            trace.push_str(&describe(event));
        }
        Err(format!(
            "user {user}: no sequential history explains what clients saw; furthest: {}\n  the user's requests in arrival order:{trace}\n  durable: balance {}, rows {:?}",
            search.deepest.1, durable.point, durable.rows
        ))
    }
}
