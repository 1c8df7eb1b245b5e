//! The bounded queue on its own: per-user order across batches, one
//! transaction per user at a time, the batch bounds and their order, the
//! refusals past a bound, closing, and the writers' wake-ups.
//!
//! A batch that must be ready now is taken with [`now`] (one poll, like
//! `now_or_never`): a test that expects one never waits for it.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use pointlock_core::{
    Amount, KeyedLock, Policy, Request, StoreError, StoreErrorKind, TransactionType, UserId,
};
use tokio::sync::oneshot;

use super::{Bounds, Item, Queue, Taken};

fn id(raw: u64) -> UserId {
    UserId::new(raw).unwrap()
}

fn bounded(total: usize, per_user: usize, batch_users: usize, batch_per_user: usize) -> Queue {
    Queue::new(Bounds {
        total,
        per_user,
        batch_users,
        batch_per_user,
    })
}

/// A request of `user` whose amount `n` names it. Its guard is of a lock that
/// excludes nothing, so one user may have several.
fn item(user: u64, n: u64) -> Item {
    let held = Arc::new(KeyedLock::unsynchronized().try_lock(id(user)).unwrap());
    let request = Request::for_tests(
        held,
        TransactionType::Charge,
        Amount::new(n).unwrap(),
        0,
        Policy::default(),
    );
    Item::Request(request, oneshot::channel().0)
}

/// Place `n`s of `user`, each accepted.
fn place(queue: &Queue, user: u64, ns: impl IntoIterator<Item = u64>) {
    for n in ns {
        queue.place(id(user), item(user, n)).unwrap();
    }
}

/// `future`'s output if it is ready at its first poll.
fn now<F: Future>(future: F) -> Option<F::Output> {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// The next batch, which must be ready now.
fn take_now(queue: &Queue) -> Vec<Taken> {
    now(queue.take())
        .expect("a batch is ready now")
        .expect("the queue is open or not drained")
}

/// A batch as `(user, the items' names in order)`.
fn names(batch: &[Taken]) -> Vec<(u64, Vec<u64>)> {
    batch
        .iter()
        .map(|taken| {
            let ns = taken.items.iter().map(|item| match item {
                Item::Request(request, _) => request.amount().get(),
                _ => panic!("only requests are placed here"),
            });
            (taken.user.get(), ns.collect())
        })
        .collect()
}

fn overloaded(error: StoreError) {
    assert_eq!(error.kind(), StoreErrorKind::Overloaded, "{error}");
    assert_eq!(error.code(), "STORE_OVERLOADED");
}

/// Items come out in placement order, whatever the batches cut them into,
/// including items placed while earlier ones are in a transaction.
#[test]
fn one_users_items_come_out_in_placement_order_across_batches() {
    let queue = bounded(100, 100, 10, 2);
    place(&queue, 1, 1..=5);
    assert_eq!(names(&take_now(&queue)), [(1, vec![1, 2])]);
    place(&queue, 1, [6]);
    queue.finish(id(1), 2);
    assert_eq!(names(&take_now(&queue)), [(1, vec![3, 4])]);
    queue.finish(id(1), 2);
    assert_eq!(names(&take_now(&queue)), [(1, vec![5, 6])]);
    queue.finish(id(1), 2);
    assert_eq!(queue.placed(), 0);
    assert!(queue.is_idle(id(1)));
}

/// A user with items in a transaction is not in the next batch, even with
/// more work queued; once finished it is ready again, with that work.
#[test]
fn a_user_in_a_transaction_waits_for_finish() {
    let queue = bounded(100, 100, 10, 10);
    place(&queue, 1, [1]);
    assert_eq!(names(&take_now(&queue)), [(1, vec![1])]);
    place(&queue, 1, [2, 3]);
    place(&queue, 2, [4]);
    // Only user 2 is ready: user 1's later items wait behind its transaction.
    assert_eq!(names(&take_now(&queue)), [(2, vec![4])]);
    assert!(
        now(queue.take()).is_none(),
        "user 1 is still in a transaction"
    );
    queue.finish(id(1), 1);
    assert_eq!(names(&take_now(&queue)), [(1, vec![2, 3])]);
    queue.finish(id(2), 1);
    queue.finish(id(1), 2);
    assert_eq!(queue.placed(), 0);
}

/// A batch holds at most `batch_users` users, each with at most
/// `batch_per_user` items, and is sorted by user id whatever order the users
/// became ready in.
#[test]
fn take_sorts_by_user_and_respects_the_batch_bounds() {
    let queue = bounded(100, 100, 2, 2);
    place(&queue, 5, [51, 52, 53]);
    place(&queue, 3, [31, 32, 33]);
    place(&queue, 9, [91, 92, 93]);
    assert_eq!(
        names(&take_now(&queue)),
        [(3, vec![31, 32]), (5, vec![51, 52])]
    );
    assert_eq!(names(&take_now(&queue)), [(9, vec![91, 92])]);
    assert!(
        now(queue.take()).is_none(),
        "every user is in a transaction"
    );
    // Ready again in the order they finish (5, then 3), taken sorted.
    queue.finish(id(5), 2);
    queue.finish(id(3), 2);
    assert_eq!(names(&take_now(&queue)), [(3, vec![33]), (5, vec![53])]);
}

/// Past the total bound a place is refused, STORE_OVERLOADED, and nothing is
/// placed; items in a transaction still count; room comes back at `finish`.
#[test]
fn the_total_bound_refuses_and_places_nothing() {
    let queue = bounded(3, 10, 10, 10);
    place(&queue, 1, [1, 2]);
    place(&queue, 2, [3]);
    overloaded(queue.place(id(3), item(3, 4)).unwrap_err());
    overloaded(queue.place(id(1), item(1, 5)).unwrap_err());
    assert_eq!(queue.placed(), 3);
    assert!(queue.is_idle(id(3)), "the refused user has nothing placed");
    assert_eq!(names(&take_now(&queue)), [(1, vec![1, 2]), (2, vec![3])]);
    overloaded(queue.place(id(3), item(3, 6)).unwrap_err());
    queue.finish(id(2), 1);
    place(&queue, 3, [7]);
    assert_eq!(queue.placed(), 3);
    // The refused items never come out.
    assert_eq!(names(&take_now(&queue)), [(3, vec![7])]);
}

/// Past the per-user bound that user is refused, STORE_OVERLOADED, nothing
/// placed, while other users are not; its items in a transaction still count.
#[test]
fn the_per_user_bound_refuses_and_places_nothing() {
    let queue = bounded(10, 2, 10, 10);
    place(&queue, 1, [1, 2]);
    overloaded(queue.place(id(1), item(1, 3)).unwrap_err());
    assert_eq!(queue.placed(), 2);
    place(&queue, 2, [4]);
    assert_eq!(names(&take_now(&queue)), [(1, vec![1, 2]), (2, vec![4])]);
    overloaded(queue.place(id(1), item(1, 5)).unwrap_err());
    assert_eq!(queue.placed(), 3);
    queue.finish(id(1), 2);
    place(&queue, 1, [6, 7]);
    assert_eq!(names(&take_now(&queue)), [(1, vec![6, 7])]);
}

/// A user is idle only with nothing placed and unanswered: not while its
/// items are queued, nor in a transaction, nor with more behind them.
#[test]
fn a_user_is_idle_only_once_every_item_is_finished() {
    let queue = bounded(10, 10, 10, 1);
    assert!(queue.is_idle(id(1)));
    place(&queue, 1, [1, 2]);
    assert!(!queue.is_idle(id(1)));
    take_now(&queue);
    queue.finish(id(1), 1);
    assert!(!queue.is_idle(id(1)), "its second item is queued");
    take_now(&queue);
    assert!(!queue.is_idle(id(1)), "its second item is in a transaction");
    queue.finish(id(1), 1);
    assert!(queue.is_idle(id(1)));
    assert!(queue.is_idle(id(2)));
}

/// Once closed: new items are refused Unavailable (nothing placed), the
/// placed ones still come out, and `take` ends only once they are finished.
#[test]
fn close_refuses_new_items_and_take_ends_once_drained() {
    let queue = bounded(10, 10, 10, 1);
    place(&queue, 1, [1, 2]);
    queue.close();
    let error = queue.place(id(2), item(2, 3)).unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Unavailable);
    assert_eq!(error.code(), "STORE_UNAVAILABLE");
    assert_eq!(queue.placed(), 2);
    assert_eq!(names(&take_now(&queue)), [(1, vec![1])]);
    assert!(now(queue.take()).is_none(), "item 2 waits behind item 1");
    queue.finish(id(1), 1);
    assert_eq!(names(&take_now(&queue)), [(1, vec![2])]);
    assert!(now(queue.take()).is_none(), "item 2 is not answered yet");
    queue.finish(id(1), 1);
    assert!(now(queue.take()).expect("ready now").is_none());
    assert!(now(queue.take()).expect("ready now").is_none());
}

/// Spawns a writer's `take` and lets it run until it waits.
async fn waiting_take(queue: &Arc<Queue>) -> tokio::task::JoinHandle<Option<Vec<Taken>>> {
    let taking = Arc::clone(queue);
    let writer = tokio::spawn(async move { taking.take().await });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!writer.is_finished(), "nothing to take yet");
    writer
}

/// Awaits a writer that must have been woken: with the clock paused, a
/// writer nobody wakes fails at once instead of hanging.
async fn woken(writer: tokio::task::JoinHandle<Option<Vec<Taken>>>) -> Option<Vec<Taken>> {
    tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the waiting take was woken")
        .unwrap()
}

/// A writer waiting in `take` on an empty queue wakes when an item is placed.
#[tokio::test(start_paused = true)]
async fn a_waiting_take_wakes_when_an_item_is_placed() {
    let queue = Arc::new(bounded(10, 10, 10, 10));
    let writer = waiting_take(&queue).await;
    place(&queue, 4, [1]);
    assert_eq!(names(&woken(writer).await.unwrap()), [(4, vec![1])]);
}

/// A writer waiting while the only user is in a transaction wakes when that
/// user is finished with more work queued.
#[tokio::test(start_paused = true)]
async fn a_waiting_take_wakes_when_a_busy_user_is_finished() {
    let queue = Arc::new(bounded(10, 10, 10, 10));
    place(&queue, 1, [1]);
    take_now(&queue);
    place(&queue, 1, [2]);
    let writer = waiting_take(&queue).await;
    queue.finish(id(1), 1);
    assert_eq!(names(&woken(writer).await.unwrap()), [(1, vec![2])]);
}

/// Every writer waiting on a drained queue ends when it is closed; one
/// waiting on a closed queue with work in flight ends when that is finished.
#[tokio::test(start_paused = true)]
async fn close_and_the_last_finish_wake_the_waiting_takes() {
    let queue = Arc::new(bounded(10, 10, 10, 10));
    let writers = [waiting_take(&queue).await, waiting_take(&queue).await];
    queue.close();
    for writer in writers {
        assert!(woken(writer).await.is_none());
    }

    let queue = Arc::new(bounded(10, 10, 10, 10));
    place(&queue, 1, [1]);
    take_now(&queue);
    queue.close();
    let writers = [waiting_take(&queue).await, waiting_take(&queue).await];
    queue.finish(id(1), 1);
    for writer in writers {
        assert!(woken(writer).await.is_none());
    }
}
