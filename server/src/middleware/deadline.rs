//! Deadlines that cost nothing when the work is already done.
//!
//! `tokio::time::timeout` makes its timer up front (a clock read, a handle to the
//! runtime, and on drop the timer's teardown) even when the work finishes in its
//! first poll; tower-http's `Timeout` also polls the timer first, which registers
//! it in the runtime's timer wheel. Most requests of this server finish in their
//! first poll (the lock is free, the body came with the headers, the store
//! answers at once), so [`within`] polls the work once before it makes a timer.
//! Measured with `benches/instructions.sh`: about 1,300 instructions per charge
//! for the two deadlines of a request (see docs/performance.md).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::task::{unconstrained, Unconstrained};
use tokio::time::{Instant, Sleep};

/// `future`'s output, or `on_elapsed()` if `deadline` passes first.
///
/// Like [`tokio::time::timeout_at`] (the work is polled first, then the timer),
/// but the timer is only made, and boxed, once a poll of `future` is pending. The
/// wrapper adds 32 bytes to `future` instead of a 112-byte `Sleep`: the request
/// deadline's future is moved through every layer of the stack, and its whole
/// size is copied each time.
pub fn within<F, G>(deadline: Instant, future: F, on_elapsed: G) -> Within<F, G>
where
    F: Future,
    G: FnOnce() -> F::Output,
{
    Within {
        future,
        deadline,
        sleep: None,
        on_elapsed: Some(on_elapsed),
    }
}

pin_project! {
    /// The future of [`within`].
    pub struct Within<F, G> {
        #[pin]
        future: F,
        deadline: Instant,
        sleep: Option<Pin<Box<Unconstrained<Sleep>>>>,
        on_elapsed: Option<G>,
    }
}

impl<F, G> Future for Within<F, G>
where
    F: Future,
    G: FnOnce() -> F::Output,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(output);
        }
        let deadline = *this.deadline;
        // Unconstrained, like `tokio::time::timeout`'s own timer: work that spends
        // the task's cooperative budget must not keep a passed deadline from firing.
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(unconstrained(tokio::time::sleep_until(deadline))));
        ready!(sleep.as_mut().poll(cx));
        let on_elapsed = this.on_elapsed.take().expect("polled after completion");
        Poll::Ready(on_elapsed())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn late() -> &'static str {
        "late"
    }

    #[tokio::test(start_paused = true)]
    async fn ready_work_is_answered_even_past_the_deadline() {
        let past = Instant::now() - Duration::from_secs(1);
        assert_eq!(within(past, async { "done" }, late).await, "done");
    }

    #[tokio::test(start_paused = true)]
    async fn pending_work_gives_way_at_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(250);
        let work = async {
            std::future::pending::<()>().await;
            "done"
        };
        assert_eq!(within(deadline, work, late).await, "late");
        assert_eq!(
            Instant::now(),
            deadline,
            "the paused clock auto-advanced to it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_waits_but_finishes_in_time_is_answered() {
        let deadline = Instant::now() + Duration::from_secs(1);
        let work = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            "done"
        };
        assert_eq!(within(deadline, work, late).await, "done");
    }
}
