//! A topic's deliveries: one loop per topic, on a thread's local task set, that starts an attempt
//! whenever the topic is not paused or held, has room under its `concurrency`, its `rate`
//! allows one, and a job is due; and settles each attempt: delivered, tried again after a backoff
//! with full jitter (or the destination's `Retry-After`, which also holds the whole topic), or
//! dead after `max_attempts` or a refusal that will not change.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use seawall_config::Topic;
use seawall_core::gcra::{Gcra, Verdict};
use seawall_core::rng::FastRng;

use crate::job::{now_ms, JobId, Request, State};
use crate::{Leased, Queue, TopicState};

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The destination took the job (2xx).
    Delivered,
    /// Worth trying again: a 5xx, 408, 429, a connect failure or a timeout; with the
    /// destination's `Retry-After`, when it gave one.
    Retry { error: String, retry_after: Option<Duration> },
    /// Refused for good (another 4xx): the job is dead at once.
    Refused { error: String },
    /// Not sent: Seawall itself held it back (the destination's breaker is open, it has no server
    /// up, its gate is full, or the topic has no destination now). The job waits `wait` without
    /// an attempt counted, and so does the topic.
    NotSent { error: String, wait: Duration },
}

/// Sends a job to its topic's destination: the gateway's side of delivery.
pub trait Courier {
    fn deliver(&self, topic: &Topic, id: JobId, request: &Request)
        -> impl Future<Output = Attempt>;
}

/// How long a loop with nothing due waits before it looks again, at most (Redis jobs and
/// retries due are found by looking).
const IDLE_LOOK: Duration = Duration::from_millis(200);

/// Runs topic `name`'s deliveries until `stop` resolves or the topic leaves the configuration.
pub async fn run<C: Courier + 'static>(
    queue: Arc<Queue>,
    name: String,
    courier: Rc<C>,
    stop: impl Future<Output = ()>,
) {
    let Some(state) = queue.topic(&name) else { return };
    let in_flight = Rc::new(Cell::new(0u32));
    let settled = Rc::new(tokio::sync::Notify::new());
    let mut tat = 0u64;
    let mut rng = FastRng::new(seed(&name));
    tokio::pin!(stop);
    loop {
        let config = queue.config();
        let Some(topic) = config.topic(&name).map(|i| config.topics[i].clone()) else { return };
        let now = now_ms();
        let wait = if state.paused.load(Relaxed) {
            Some(Duration::from_secs(3600))
        } else if let Some(held) =
            state.hold_until_ms.load(Relaxed).checked_sub(now).filter(|&d| d > 0)
        {
            Some(Duration::from_millis(held))
        } else if in_flight.get() >= topic.concurrency {
            // Woken by a settled attempt.
            Some(Duration::from_secs(3600))
        } else {
            match rate_wait(topic.rate.map(Gcra::new), tat, now) {
                Some(wait) => Some(wait),
                None => match queue
                    .backend
                    .lease(&name, now, lease_size(&topic, in_flight.get()))
                    .await
                {
                    Ok(jobs) if !jobs.is_empty() => {
                        for leased in jobs {
                            if let Some(gcra) = topic.rate.map(Gcra::new) {
                                if let Verdict::Allow { tat: next, .. } = gcra.check(tat, ns(now)) {
                                    tat = next;
                                }
                            }
                            in_flight.set(in_flight.get() + 1);
                            let attempt = attempt(
                                Arc::clone(&queue),
                                Arc::clone(&state),
                                topic.clone(),
                                leased,
                                Rc::clone(&courier),
                                rng.next_u64(),
                            );
                            let (in_flight, settled) = (Rc::clone(&in_flight), Rc::clone(&settled));
                            tokio::task::spawn_local(async move {
                                attempt.await;
                                in_flight.set(in_flight.get() - 1);
                                settled.notify_one();
                            });
                        }
                        None
                    }
                    Ok(_) => {
                        let due = queue
                            .backend
                            .next_due(&name)
                            .map(|d| Duration::from_millis(d.saturating_sub(now)));
                        Some(due.map_or(IDLE_LOOK, |d| d.min(IDLE_LOOK)))
                    }
                    Err(e) => {
                        tracing::warn!(topic = %name, error = %e, "queue: cannot take jobs for delivery");
                        Some(Duration::from_secs(1))
                    }
                },
            }
        };
        if let Some(wait) = wait {
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(wait) => {}
                () = state.wake.notified() => {}
                () = settled.notified() => {}
            }
        }
    }
}

/// How many jobs to take at once: one when a rate spaces them, else as many as there is room for
/// (at most 32: one round trip to Redis for several jobs).
fn lease_size(topic: &Topic, in_flight: u32) -> usize {
    if topic.rate.is_some() {
        1
    } else {
        topic.concurrency.saturating_sub(in_flight).clamp(1, 32) as usize
    }
}

/// How long the topic's rate makes the next delivery wait (`None`: it may start now).
fn rate_wait(gcra: Option<Gcra>, tat: u64, now_ms: u64) -> Option<Duration> {
    match gcra?.check(tat, ns(now_ms)) {
        Verdict::Allow { .. } => None,
        Verdict::Deny { retry_after_ns, .. } => {
            Some(Duration::from_nanos(retry_after_ns).max(Duration::from_millis(1)))
        }
    }
}

fn ns(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

fn seed(name: &str) -> u64 {
    let salt = std::process::id() as u64 ^ now_ms();
    seawall_core::hash::stable_hash(name.as_bytes()) ^ salt
}

/// One attempt at `leased`, and what becomes of the job after it.
async fn attempt<C: Courier>(
    queue: Arc<Queue>,
    state: Arc<TopicState>,
    topic: Topic,
    mut leased: Leased,
    courier: Rc<C>,
    random: u64,
) {
    let outcome = courier.deliver(&topic, leased.id, &leased.record.request).await;
    let now = now_ms();
    let record = &mut leased.record;
    if let Attempt::NotSent { error, wait } = outcome {
        let until = now.saturating_add(wait.min(topic.max_backoff).as_millis() as u64);
        state.hold_until_ms.fetch_max(until, Relaxed);
        state.not_sent.fetch_add(1, Relaxed);
        record.last_error = error;
        record.next_attempt_ms = until;
        record.state = if record.attempts == 0 { State::Queued } else { State::Failed };
        if let Err(e) = queue.backend.settle(leased).await {
            state.settle_errors.fetch_add(1, Relaxed);
            tracing::warn!(topic = %topic.name, error = %e, "queue: a held-back job could not be put back; it will be tried again");
        }
        return;
    }
    record.attempts += 1;
    match outcome {
        Attempt::Delivered => {
            record.state = State::Delivered;
            record.finished_ms = now;
            record.last_error.clear();
            state.delivered.fetch_add(1, Relaxed);
            state.latency.observe(Duration::from_millis(now.saturating_sub(record.created_ms)));
        }
        Attempt::Retry { error, retry_after } => {
            record.last_error = error;
            if record.attempts >= topic.max_attempts {
                record.state = State::Dead;
                record.finished_ms = now;
                state.dead.fetch_add(1, Relaxed);
            } else {
                let backoff = backoff_ms(&topic, record.attempts, random);
                // Honoured up to `max_backoff`: a destination cannot park a topic for years.
                let asked = retry_after.map_or(0, |d| d.min(topic.max_backoff).as_millis() as u64);
                if asked > 0 {
                    // The destination said when: nothing goes to it before then.
                    state.hold_until_ms.fetch_max(now.saturating_add(asked), Relaxed);
                }
                record.state = State::Failed;
                record.next_attempt_ms = now.saturating_add(backoff.max(asked));
                state.retried.fetch_add(1, Relaxed);
            }
        }
        Attempt::Refused { error } | Attempt::NotSent { error, .. } => {
            record.last_error = error;
            record.state = State::Dead;
            record.finished_ms = now;
            state.dead.fetch_add(1, Relaxed);
        }
    }
    if let Err(e) = queue.backend.settle(leased).await {
        state.settle_errors.fetch_add(1, Relaxed);
        tracing::warn!(topic = %topic.name, error = %e, "queue: an attempt's outcome could not be stored; the job will be tried again");
    }
}

/// Full jitter: a random wait up to `backoff × 2^(attempts−1)`, capped at `max_backoff`.
fn backoff_ms(topic: &Topic, attempts: u32, random: u64) -> u64 {
    let (base, cap) = (topic.backoff.as_millis() as u64, topic.max_backoff.as_millis() as u64);
    seawall_core::backoff::full_jitter(base, cap, attempts, &mut FastRng::new(random))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_spaces_deliveries() {
        let gcra = Gcra::new(seawall_config::model::Quota {
            count: 10,
            period_ns: 1_000_000_000,
            burst: 1,
        });
        assert_eq!(rate_wait(Some(gcra), 0, 1000), None);
        let Verdict::Allow { tat, .. } = gcra.check(0, ns(1000)) else { panic!("allowed") };
        let wait = rate_wait(Some(gcra), tat, 1000).expect("a wait");
        assert_eq!(wait, Duration::from_millis(100));
        assert_eq!(rate_wait(None, tat, 1000), None);
    }
}
