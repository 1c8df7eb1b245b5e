//! Paged history reads: a bounded piece of a user's history per call, and
//! where the next piece starts.

use std::sync::Arc;

use super::PointService;
use crate::domain::{PointHistory, UserId};
use crate::error::PointError;
use crate::lock::KeyGuard;
use crate::store::PointStore;

/// Which rows of a user's history to read: at most `limit`, oldest first,
/// those whose id is above `after` (0: from the first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryPage {
    /// Rows with an id above this one (history ids start at 1).
    pub after: u64,
    /// The most rows to answer (at least 1 is read).
    pub limit: usize,
}

impl HistoryPage {
    /// The first `limit` rows.
    pub fn first(limit: usize) -> Self {
        Self { after: 0, limit }
    }
}

/// One page of a user's history, and whether more follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoriesPage {
    /// The rows, oldest first: at most the page's limit.
    pub rows: Vec<PointHistory>,
    /// The `after` of the next page when the user has rows past this page
    /// (the last row's id), `None` when this page ends the history.
    pub next_after: Option<u64>,
}

impl<S: PointStore> PointService<S> {
    /// One page of the user's history, oldest first, read from durable state
    /// (see [`histories`](Self::histories)). Reads one row more than the page
    /// to tell whether another page follows.
    pub async fn histories_page(
        &self,
        id: UserId,
        page: HistoryPage,
    ) -> Result<HistoriesPage, PointError> {
        let limit = page.limit.max(1);
        let mut rows = self
            .store
            .histories_page(id, page.after, limit.saturating_add(1))
            .await?;
        let next_after = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|row| row.id)
        } else {
            None
        };
        Ok(HistoriesPage { rows, next_after })
    }

    /// One page of the user's history at this request's place in the user's
    /// order (see [`point_in_order`](Self::point_in_order)): every change
    /// sequenced before `held` was granted is in it. The guard is released
    /// before the answer is returned, so the caller builds and sends its
    /// body with the user free.
    pub async fn histories_page_in_order(
        &self,
        held: Arc<KeyGuard<UserId>>,
        page: HistoryPage,
    ) -> Result<HistoriesPage, PointError> {
        let id = *held.key();
        let held = self.after_earlier_changes(held).await?;
        let read = self.histories_page(id, page).await;
        drop(held);
        read
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::Amount;
    use crate::policy::Policy;
    use crate::store::memory::MemoryStore;

    fn ready<F: Future>(future: F) -> F::Output {
        match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(output) => output,
            Poll::Pending => panic!("the memory store answers at once"),
        }
    }

    fn service_with(user: UserId, rows: u64) -> PointService<MemoryStore> {
        let service = PointService::new(
            MemoryStore::new(),
            Policy::default(),
            Arc::new(ManualClock::new(0)),
        );
        for _ in 0..rows {
            let held = ready(service.lock().lock(user));
            let one = Amount::new(1).expect("amount");
            ready(service.charge(Arc::new(held), one)).expect("charged");
        }
        service
    }

    #[test]
    fn pages_walk_the_whole_history_once_in_order_and_say_when_it_ends() {
        let user = UserId::new(1).expect("id");
        let service = service_with(user, 10);
        let all = ready(service.histories(user)).expect("read");
        let mut walked = Vec::new();
        let mut page = HistoryPage::first(3);
        let mut pages = 0;
        loop {
            let read = ready(service.histories_page(user, page)).expect("page");
            assert!(read.rows.len() <= 3);
            pages += 1;
            walked.extend(read.rows);
            match read.next_after {
                Some(after) => page.after = after,
                None => break,
            }
        }
        assert_eq!(walked, all);
        assert_eq!(pages, 4, "3 + 3 + 3 + 1");
        // A page that ends exactly at the last row says so: no empty page after it.
        let exact = ready(service.histories_page(user, HistoryPage::first(10))).expect("page");
        assert_eq!((exact.rows.len(), exact.next_after), (10, None));
        let past = HistoryPage {
            after: all[9].id,
            limit: 5,
        };
        assert!(ready(service.histories_page(user, past))
            .expect("page")
            .rows
            .is_empty());
    }
}
