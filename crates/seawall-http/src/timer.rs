//! A timer whose deadline can move later for the price of a field write.
//!
//! Connections re-arm their timers on every request (header timeout, idle timeout, upstream
//! timeout). Re-registering a tokio timer each time costs a timer-wheel update; here a deadline
//! that moves later is only recorded, and the underlying sleep, when it fires early, is re-armed
//! once to the recorded deadline. Under steady traffic a connection touches the timer wheel about
//! once per timeout period instead of several times per request.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::time::{Instant, Sleep};

/// A lazily re-armed deadline.
pub struct LazyTimer {
    sleep: Pin<Box<Sleep>>,
    deadline: Instant,
}

impl LazyTimer {
    /// A timer that expires at `deadline`.
    pub fn new(deadline: Instant) -> Self {
        LazyTimer { sleep: Box::pin(tokio::time::sleep_until(deadline)), deadline }
    }

    /// Moves the deadline; only a deadline earlier than the armed one touches the timer wheel.
    pub fn set(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if deadline < self.sleep.deadline() {
            self.sleep.as_mut().reset(deadline);
        }
    }

    /// Ready once the current deadline has passed; otherwise registers the task's waker.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            if Instant::now() >= self.deadline {
                return Poll::Ready(());
            }
            self.sleep.as_mut().reset(self.deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn later_deadlines_are_honoured_and_earlier_ones_fire_early() {
        let start = Instant::now();
        let mut t = LazyTimer::new(start + Duration::from_secs(1));
        t.set(start + Duration::from_secs(3));
        std::future::poll_fn(|cx| t.poll_expired(cx)).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(3));

        let now = Instant::now();
        t.set(now + Duration::from_secs(10));
        t.set(now + Duration::from_secs(2));
        std::future::poll_fn(|cx| t.poll_expired(cx)).await;
        assert_eq!(Instant::now() - now, Duration::from_secs(2));
    }
}
