//! Driving a `PointService` directly, as the HTTP layer would: a request's
//! guard taken in arrival order and handed over to the service.

use std::sync::Arc;

use pointlock::core::{
    Amount, Applied, PointError, PointService, PointStore, TransactionType, UserId,
};

/// `kind` of `amount` for user `id` in a task of its own, the user's guard
/// (taken now, in FIFO order) handed over; returns once the user's lock is
/// free again: the service placed or sequenced the request, or answered it.
pub async fn spawn_apply<S: PointStore + Send + Sync + 'static>(
    svc: &Arc<PointService<S>>,
    id: u64,
    kind: TransactionType,
    amount: u64,
) -> tokio::task::JoinHandle<Result<Applied, PointError>> {
    let user = UserId::new(id).unwrap();
    let held = Arc::new(svc.lock().lock(user).await);
    let task = {
        let svc = Arc::clone(svc);
        tokio::spawn(async move {
            svc.apply(held, kind, Amount::new(amount).unwrap(), None)
                .await
        })
    };
    drop(svc.lock().lock(user).await);
    task
}
