//! A bound on the requests the whole process works on at once.
//!
//! Every other bound is per piece: connections (`--max-connections`), HTTP/2
//! streams per connection, waiters per user (`--lock-queue-max`), the
//! PostgreSQL store's queue. Multiplied together they allow far more requests
//! in the stack than memory or any latency goal can take (10,000 connections
//! of 100 streams each, every one waiting up to the lock timeout).
//! [`InFlight`] caps them all together: a request that finds every slot taken
//! is answered at once with 503 `SERVER_OVERLOADED` and `Retry-After: 1`
//! ([`InFlight::admit`], called by the stack's front layer, `app::FrontLayer`),
//! before authentication, the body or any lock; nothing was queued or changed.
//! A slot is held from the moment the request is admitted until its response
//! head is ready (the responses are small and buffered; a streamed history
//! holds no lock and a bounded page).
//!
//! Exempt paths bypass the bound: the wallet
//! exempts `GET /health` and `GET /metrics`, which wait for nothing (no lock,
//! no store) and must keep answering while the process is overloaded, or a
//! liveness probe would restart a process that is only busy and the
//! operator would lose sight of it.
//!
//! A refusal costs one failed atomic compare-and-swap: no allocation, no
//! queue. A granted slot costs a semaphore permit (an atomic add and an `Arc`
//! clone) and its release.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// The default bound on requests in the stack at once: far above what 2 cores
/// serve in a lock timeout's worth of queueing for a few hot users, and a
/// cap on the memory they pin (a few KiB each).
pub const MAX_IN_FLIGHT_DEFAULT: usize = 16_384;

/// The shared count of requests in flight: its bound, the requests in the
/// stack now and the refusals so far. Cheap to clone; clones share it.
#[derive(Clone, Debug)]
pub struct InFlight {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    slots: Arc<Semaphore>,
    max: usize,
    refused: AtomicU64,
}

impl InFlight {
    /// At most `max` requests at once (at least one).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            inner: Arc::new(Shared {
                slots: Arc::new(Semaphore::new(max)),
                max,
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.inner.max
    }

    /// Requests in the stack now.
    pub fn current(&self) -> usize {
        self.inner.max - self.inner.slots.available_permits()
    }

    /// Requests refused so far because every slot was taken.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Admit a request for `path`: a slot (held until its answer is ready),
    /// no slot for an `exempt` path, or 503 `SERVER_OVERLOADED` when every slot
    /// is taken.
    pub fn admit(
        &self,
        path: &str,
        exempt: &[&str],
    ) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        if exempt.contains(&path) {
            return Ok(None);
        }
        match self.try_enter() {
            Some(permit) => Ok(Some(permit)),
            None => Err(ApiError::Overloaded {
                in_flight_max: self.max(),
            }),
        }
    }

    fn try_enter(&self) -> Option<OwnedSemaphorePermit> {
        let permit = Arc::clone(&self.inner.slots).try_acquire_owned().ok();
        if permit.is_none() {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
        }
        permit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_bound_refuses_beyond_it_and_frees_on_drop() {
        let in_flight = InFlight::new(2);
        let first = in_flight.admit("/point/1", &[]).expect("admitted");
        let second = in_flight.admit("/point/2", &[]).expect("admitted");
        assert!(first.is_some() && second.is_some());
        assert_eq!(in_flight.current(), 2);
        let refused = in_flight.admit("/point/3", &[]).expect_err("full");
        assert!(matches!(refused, ApiError::Overloaded { in_flight_max: 2 }));
        assert_eq!(in_flight.refused(), 1);
        drop(first);
        assert_eq!(in_flight.current(), 1);
        assert!(in_flight.admit("/point/3", &[]).is_ok());
    }

    #[test]
    fn an_exempt_path_takes_no_slot_even_when_full() {
        let in_flight = InFlight::new(1);
        let _holder = in_flight.admit("/point/1", &["/health"]).expect("admitted");
        let health = in_flight.admit("/health", &["/health"]).expect("exempt");
        assert!(health.is_none());
        assert_eq!(in_flight.current(), 1);
        assert!(in_flight.admit("/healthz", &["/health"]).is_err());
    }
}
