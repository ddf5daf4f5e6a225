//! A one-shot signal for the tasks of one worker thread (the drain, for idle connections).
//!
//! A `tokio::sync::watch` receiver registers with a mutex-protected waiter list each time it is
//! awaited; an HTTP/1.1 connection waits for its next request after every response, so that
//! would be two lock round trips per request. Here a waiter takes a slot in a worker-local list,
//! with no atomics beyond the waker's own reference count.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Fires once; every current and later waiter then completes.
#[derive(Default)]
pub struct LocalSignal {
    fired: Cell<bool>,
    waiters: RefCell<Waiters>,
}

#[derive(Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl LocalSignal {
    /// Whether the signal has fired.
    pub fn fired(&self) -> bool {
        self.fired.get()
    }

    /// Fires the signal and wakes every waiter.
    pub fn fire(&self) {
        self.fired.set(true);
        let woken: Vec<Waker> =
            self.waiters.borrow_mut().slots.iter_mut().filter_map(Option::take).collect();
        woken.into_iter().for_each(Waker::wake);
    }

    /// Completes once the signal has fired.
    pub fn wait(&self) -> Wait<'_> {
        Wait { signal: self, slot: None }
    }
}

/// Waits for a [`LocalSignal`].
pub struct Wait<'a> {
    signal: &'a LocalSignal,
    slot: Option<usize>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.fired() {
            return Poll::Ready(());
        }
        let mut waiters = self.signal.waiters.borrow_mut();
        match self.slot {
            Some(slot) => match &mut waiters.slots[slot] {
                Some(waker) => waker.clone_from(cx.waker()),
                empty => *empty = Some(cx.waker().clone()),
            },
            None => {
                let waker = Some(cx.waker().clone());
                let slot = match waiters.free.pop() {
                    Some(slot) => {
                        waiters.slots[slot] = waker;
                        slot
                    }
                    None => {
                        waiters.slots.push(waker);
                        waiters.slots.len() - 1
                    }
                };
                drop(waiters);
                self.slot = Some(slot);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            let mut waiters = self.signal.waiters.borrow_mut();
            waiters.slots[slot] = None;
            waiters.free.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_before_and_after_the_fire_complete() {
        let signal = std::rc::Rc::new(LocalSignal::default());
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let waiting: Vec<_> = (0..3)
                    .map(|_| {
                        let s = signal.clone();
                        tokio::task::spawn_local(async move { s.wait().await })
                    })
                    .collect();
                // A waiter that gives up leaves its slot for the next one.
                let mut gone = std::pin::pin!(signal.wait());
                assert!(futures_poll_once(gone.as_mut()).is_pending());
                tokio::task::yield_now().await;
                assert!(!signal.fired());
                signal.fire();
                for w in waiting {
                    w.await.unwrap();
                }
                signal.wait().await;
            })
            .await;
    }

    fn futures_poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        let mut cx = Context::from_waker(Waker::noop());
        f.poll(&mut cx)
    }
}
