//! The idempotency sweep: expired Idempotency-Key records removed in bounded
//! steps, on a timer, for the life of the server.

use std::time::Duration;

use crate::routes::SharedService;

/// Records removed per step of the idempotency sweep (one statement, one
/// transaction), and the most steps per sweep: a sweep never holds the
/// store's writer long, and never runs unbounded.
pub const SWEEP_STEP: usize = 1_000;
/// See [`SWEEP_STEP`].
pub const SWEEP_STEPS_MAX: usize = 100;

/// Remove expired idempotency records every `every`, in bounded steps, until
/// the task is aborted (the server aborts it at shutdown). Failures are logged
/// and retried at the next tick.
pub fn spawn_idempotency_sweeper(
    service: SharedService,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let mut removed = 0;
            for _ in 0..SWEEP_STEPS_MAX {
                match service.sweep_idempotency(SWEEP_STEP).await {
                    Ok(step) => {
                        removed += step;
                        if step < SWEEP_STEP {
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "sweeping expired idempotency records failed; retrying at the next sweep");
                        break;
                    }
                }
            }
            if removed > 0 {
                tracing::debug!(removed, "expired idempotency records swept");
            }
        }
    })
}
