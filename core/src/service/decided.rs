//! How the service reaches a [`DecidingStore`]: each mutation handed over as a
//! [`Request`] under the user's lock, decided by the store at its place.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::domain::{Amount, TransactionType, UserId};
use crate::error::PointError;
use crate::idempotency::IdempotencyKey;
use crate::lock::KeyGuard;
use crate::store::{Decided, DecidingStore, PointStore, Request};

use super::{answer_from, Applied, PointService};

impl<S: PointStore> PointService<S> {
    /// [`apply`](Self::apply) over a deciding store: the request is placed in
    /// the user's order under `held`, the user released, and the answer is
    /// the store's decision at that place, durable.
    pub(super) async fn apply_decided(
        &self,
        store: &dyn DecidingStore,
        held: Arc<KeyGuard<UserId>>,
        kind: TransactionType,
        amount: Amount,
        key: Option<&IdempotencyKey>,
    ) -> Result<Applied, PointError> {
        let id = *held.key();
        let expired_before = key.map_or(i64::MIN, |_| self.key_expired_before());
        let mut request = Request::new(
            Arc::clone(&held),
            kind,
            amount,
            self.clock.now_millis(),
            self.policy,
        );
        if let Some(key) = key {
            request = request.with_key(key.clone(), self.key_condition(expired_before));
        }
        #[cfg(any(test, feature = "test-util"))]
        if self.unconditional {
            // The negative control: decided on a balance read before the
            // request's turn, as a process without the store's decision would.
            let read = self.store.user_point(id).await?;
            request = request.with_stale_basis(read.map_or(0, |p| p.point));
        }
        let decision = store.submit(request).await?;
        // Placed: the order is fixed, the user's next request may be placed
        // behind it (the store keeps or drops the request's own clone).
        drop(held);
        match decision.await? {
            Decided::Applied(committed) => {
                debug_assert_eq!(committed.history.user_id, id);
                Ok(Applied {
                    point: committed.user_point,
                    replayed: false,
                })
            }
            Decided::Refused(refused) => Err(refused),
            Decided::Recorded(record) => {
                // Live: the store decided so at the request's place.
                let answer = answer_from(record, id, kind, amount);
                if matches!(answer, Ok(Applied { replayed: true, .. })) {
                    self.replays.fetch_add(1, Ordering::Relaxed);
                }
                answer
            }
        }
    }
}
