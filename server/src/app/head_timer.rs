//! [`ConnectionTimer`]: the timer behind hyper's HTTP/1 header timeout, one
//! tokio timer per connection instead of one per request.
//!
//! hyper arms its header timer each time it starts reading a request head
//! (the first one, and on a kept-alive connection every next one), and drops
//! it once the head is read. With hyper-util's `TokioTimer` every request
//! thus registers a tokio timer in the runtime's wheel and removes it again:
//! about 1,400 instructions a request, 6 % of a charge and 8 % of a GET
//! (measured with `benches/instructions.sh`; docs/performance.md).
//!
//! Here the sleeps hyper asks for share one tokio timer per connection, armed
//! lazily: a sleep whose deadline is later than the timer's leaves the timer
//! as it is and only registers its waker; when the timer fires for an earlier
//! head that was read in time, the sleep being polled re-arms it at its own
//! deadline. The timer is re-armed about once per header timeout of a
//! connection instead of twice per request, and every sleep still ends at
//! exactly its own deadline. A timer that fires while no head is being read
//! wakes the connection once for nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// hyper's timer for one HTTP/1 connection; see the [module docs](self).
/// Give each connection its own (`Clone` shares the timer).
#[derive(Clone, Debug, Default)]
pub struct ConnectionTimer {
    shared: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl Timer for ConnectionTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadSleep {
            deadline: deadline.into(),
            shared: Arc::clone(&self.shared),
        })
    }

    // tokio's clock, as hyper-util's `TokioTimer`: paused time applies.
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into()
    }
}

/// One of hyper's sleeps: done at `deadline`, woken by the connection's timer.
struct HeadSleep {
    deadline: tokio::time::Instant,
    shared: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let timer = shared.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // The connection's timer fires no later than this sleep's deadline.
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if timer.deadline() >= deadline {
                return Poll::Ready(());
            }
            // It fired for an earlier sleep: wait on for this one.
            timer.as_mut().reset(deadline);
        }
    }
}

impl Sleep for HeadSleep {}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(timer: &ConnectionTimer, after: Duration) -> Pin<Box<dyn Sleep>> {
        timer.sleep_until(timer.now() + after)
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_sleep_ends_at_its_own_deadline_not_at_the_armed_one() {
        let timer = ConnectionTimer::default();
        let start = tokio::time::Instant::now();
        // The first head arms the timer at 1 s, and is read in time.
        let mut first = at(&timer, Duration::from_secs(1));
        assert!(futures_poll(&mut first).is_pending());
        drop(first);
        // The next head's sleep, made at 0.5 s, ends at 1.5 s.
        tokio::time::sleep(Duration::from_millis(500)).await;
        at(&timer, Duration::from_secs(1)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(1_500));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_pulls_the_timer_in() {
        let timer = ConnectionTimer::default();
        let start = tokio::time::Instant::now();
        let mut long = at(&timer, Duration::from_secs(10));
        assert!(futures_poll(&mut long).is_pending());
        at(&timer, Duration::from_secs(2)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        // The long one still waits for its own deadline.
        assert!(futures_poll(&mut long).is_pending());
        long.await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn connections_do_not_share_a_timer() {
        let one = ConnectionTimer::default();
        let two = ConnectionTimer::default();
        let start = tokio::time::Instant::now();
        let mut late = at(&one, Duration::from_secs(5));
        assert!(futures_poll(&mut late).is_pending());
        at(&two, Duration::from_secs(1)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert!(futures_poll(&mut late).is_pending());
    }

    fn futures_poll(sleep: &mut Pin<Box<dyn Sleep>>) -> Poll<()> {
        let waker = std::task::Waker::noop();
        sleep.as_mut().poll(&mut Context::from_waker(waker))
    }
}
