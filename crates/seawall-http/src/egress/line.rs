//! The line a group's calls wait in when no provider has quota: P0 before P1 before P2, first
//! come first served within a priority. Only the call at the head asks for quota; each waiter has
//! its own wake-up, and leaving the line (a grant, a timeout, a client that left: the future is
//! dropped) wakes the new head only. A call that already failed at a provider (it avoids it) does
//! not stand in line: it would block the others while waiting for the providers it may still use.

use std::sync::Arc;
use std::time::Duration;

use seawall_core::priority::Priority;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{today, Avoid, Choice, EgressGroup, Grant};

/// What waiting for quota came to.
pub(crate) enum Acquired {
    Grant(Grant),
    /// None before the deadline; quota comes back after this long.
    Quota {
        retry_after: Duration,
    },
    /// Every key of every provider not avoided is disabled.
    NoKey,
    /// Every provider is avoided (each failed this call).
    AllAvoided,
}

/// Waits in `group`'s line (by `priority`) for quota until `deadline`; the grant, or why there
/// is none.
pub(crate) async fn acquire(
    group: &EgressGroup,
    priority: Priority,
    deadline: Instant,
    avoid: &Avoid,
) -> Acquired {
    let retrying = !avoid.is_empty();
    let mut place: Option<Place<'_>> = None;
    let mut aside: Option<Aside<'_>> = None;
    let mut waited = false;
    let acquired = loop {
        // A call outside the line is woken with the others there (quota given back, keys
        // enabled); it registers before it looks, so that no wake-up falls in between.
        let aside_wake = group.aside_wake.notified();
        let mut aside_wake = std::pin::pin!(aside_wake);
        if retrying {
            aside_wake.as_mut().enable();
        }
        let now = Instant::now();
        let now_ms = seawall_core::clock::ms_at(now.into_std());
        let (next, wake) = {
            let mut state = group.lock();
            let first = state.line.first_key_value().map(|(k, _)| *k);
            let ahead = retrying
                || match (first, &place) {
                    (None, _) => true,
                    (Some(first), Some(mine)) => first == mine.key,
                    // A newcomer goes first only when it outranks everyone in line.
                    (Some(first), None) => priority < first.0,
                };
            let next = if ahead {
                match group.choose(&mut state, now_ms, today(), avoid) {
                    Choice::Go(grant) => break Acquired::Grant(grant),
                    Choice::Wait(at) => Some(at),
                    Choice::NoKey => break Acquired::NoKey,
                    Choice::AllAvoided => break Acquired::AllAvoided,
                }
            } else {
                None
            };
            let past = next.is_some_and(|at| at.saturating_sub(now_ms) >= ms_until(now, deadline));
            if past || now >= deadline {
                drop(state);
                let until = next.unwrap_or_else(|| group.earliest(now_ms));
                break Acquired::Quota {
                    retry_after: Duration::from_millis(until - now_ms.min(until)),
                };
            }
            let wake = match &place {
                Some(p) => Some(Arc::clone(&p.wake)),
                None if retrying => {
                    if aside.is_none() {
                        state.aside += 1;
                        aside = Some(Aside(group));
                    }
                    None
                }
                None => {
                    state.arrivals += 1;
                    let key = (priority, state.arrivals);
                    let wake = Arc::new(Notify::new());
                    state.line.insert(key, Arc::clone(&wake));
                    place = Some(Place { group, key, wake: Arc::clone(&wake) });
                    Some(wake)
                }
            };
            (next, wake)
        };
        waited = true;
        let wake_at = next.map_or(deadline, |at| {
            deadline.min(now + Duration::from_millis(at.saturating_sub(now_ms)))
        });
        let woken = async {
            match &wake {
                Some(wake) => wake.notified().await,
                None => aside_wake.as_mut().await,
            }
        };
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep_until(wake_at) => {}
        }
    };
    drop(place);
    drop(aside);
    if waited {
        group.count_waited();
    }
    acquired
}

fn ms_until(now: Instant, deadline: Instant) -> u64 {
    seawall_core::clock::duration_ms(deadline.saturating_duration_since(now))
}

/// A call waiting outside the line, counted among the waiting.
struct Aside<'a>(&'a EgressGroup);

impl Drop for Aside<'_> {
    fn drop(&mut self) {
        self.0.lock().aside -= 1;
    }
}

/// A call's place in its group's line.
struct Place<'a> {
    group: &'a EgressGroup,
    key: (Priority, u64),
    wake: Arc<Notify>,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut state = self.group.lock();
        state.line.remove(&self.key);
        // The new head (if this was it) asks for quota at once.
        if let Some((_, head)) = state.line.first_key_value() {
            head.notify_one();
        }
    }
}
