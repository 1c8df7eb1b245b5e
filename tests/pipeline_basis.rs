//! What a request placed behind a failing one is decided on: on the SQLite
//! writer a change computed on a failed one fails too (its test is in the
//! store's `sqlite/pipeline_tests.rs`); the PostgreSQL store decides each
//! request at its place, so one placed behind a failed request is decided on
//! the state that request left, unchanged.
//!
//! Balance 101 durable; then, placed while another connection holds the
//! user's row: a charge that fails (its balance does not fit a `bigint`), a use
//! of the same huge amount, and a charge of 20. The failed charge changes
//! nothing; the use is refused for the balance at its place (101); the charge
//! of 20 applies on 101.

mod support;

use std::sync::Arc;

use pointlock::core::{
    Applied, ManualClock, PointError, PointService, Policy, TransactionType, UserId,
};
use pointlock::store::{PostgresOptions, PostgresStore};

type Service = PointService<Arc<PostgresStore>>;

fn user() -> UserId {
    UserId::new(1).unwrap()
}

/// A change of user 1 (see [`support::service::spawn_apply`]).
async fn spawn_apply(
    svc: &Arc<Service>,
    kind: TransactionType,
    amount: u64,
) -> tokio::task::JoinHandle<Result<Applied, PointError>> {
    support::service::spawn_apply(svc, 1, kind, amount).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_placed_behind_a_failed_one_is_decided_on_the_state_it_left() {
    if support::pg::cluster_url().is_none() {
        return;
    }
    let db = support::pg::TestDatabase::create().await;
    let options = PostgresOptions {
        pipeline: true,
        ..PostgresOptions::default()
    };
    let store = Arc::new(PostgresStore::connect(db.url(), options).await.unwrap());
    // No maximum: a charge may leave a balance above what the column holds.
    let svc = Arc::new(PointService::new(
        Arc::clone(&store),
        Policy::new(u64::MAX),
        Arc::new(ManualClock::new(0)),
    ));
    let opening = spawn_apply(&svc, TransactionType::Charge, 100).await;
    assert_eq!(opening.await.unwrap().unwrap().point.point, 100);

    // Hold the user's row: the store's next batch waits for it.
    let mut holder = support::pg::connect(db.url()).await;
    let row = holder.transaction().await.unwrap();
    row.execute("SELECT point FROM user_point WHERE id = 1 FOR UPDATE", &[])
        .await
        .unwrap();
    let waiting = spawn_apply(&svc, TransactionType::Charge, 1).await;
    support::pg::until_a_session_waits_for_a_lock(db.url()).await;
    // Placed behind it.
    let huge = u64::try_from(i64::MAX).unwrap();
    let failing = spawn_apply(&svc, TransactionType::Charge, huge).await;
    let use_on_it = spawn_apply(&svc, TransactionType::Use, huge).await;
    let charge_on_101 = spawn_apply(&svc, TransactionType::Charge, 20).await;
    row.commit().await.unwrap();

    assert_eq!(waiting.await.unwrap().unwrap().point.point, 101);
    assert_eq!(failing.await.unwrap().unwrap_err().code(), "STORE_ERROR");
    let used = use_on_it.await.unwrap().unwrap_err();
    assert_eq!(
        used,
        PointError::InsufficientBalance {
            balance: 101,
            amount: huge
        }
    );
    assert_eq!(charge_on_101.await.unwrap().unwrap().point.point, 121);
    assert_eq!(svc.point(user()).await.unwrap().point, 121);
    assert_eq!(svc.histories(user()).await.unwrap().len(), 3);
    let next = spawn_apply(&svc, TransactionType::Charge, 7).await;
    assert_eq!(next.await.unwrap().unwrap().point.point, 128);
}
