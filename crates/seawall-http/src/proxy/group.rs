//! One upstream group's part of a proxied request: retries (with their budget, backoff and body
//! replay) and each attempt through the group's circuit breaker and gate (adaptive limit and
//! bulkhead). The chain around it — the fallback groups, or an egress route's providers — is the
//! caller's ([`super::resilience`], [`super::egress`]). One attempt on one server is
//! [`super::forward_to_server`].

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use super::{forward_to_server, BodyError, Downstream, Forward, Forwarded, Gone};
use crate::overload::ShedCause;
use crate::problem::Reason;
use crate::request::BodyFraming;
use crate::timer::LazyTimer;
use crate::upstream::bulkhead::{Gate, Slot};

/// The request through one upstream group, with its retries (see [`super::forward`]).
pub(super) async fn forward_group<D: Downstream>(
    f: &mut Forward<'_>,
    down: &mut D,
    timer: &mut LazyTimer,
) -> Forwarded {
    let snapshot = f.snapshot;
    let group = &snapshot.upstreams[f.upstream];
    let retry = &group.config.retry;
    if let Some(total) = group.config.total_timeout {
        let deadline = f.start + total;
        f.deadline = Some(f.deadline.map_or(deadline, |d| d.min(deadline)));
    }
    if retry.attempts > 1 {
        // The budget weighs retries against requests: only a group that retries counts them.
        let start_ms = seawall_core::clock::ms_at(f.start.into_std());
        group.state.budget.record_request(start_ms);
    }
    let mut avoid: Vec<usize> = Vec::new();
    let mut attempt = 1;
    loop {
        let forwarded = through_breaker(f, &avoid, down, timer).await;
        if attempt >= retry.attempts {
            return forwarded;
        }
        let Some(why) = retryable(f, retry, &forwarded) else { return forwarded };
        let body_fits = match f.framing {
            BodyFraming::Length(n) => n <= retry.max_body,
            BodyFraming::None | BodyFraming::Streamed => true,
        };
        if !body_fits || !down.rewind() {
            return forwarded;
        }
        let backoff = {
            let mut rng = f.worker.rng.borrow_mut();
            let base = seawall_core::clock::duration_ms(retry.backoff);
            let cap = seawall_core::clock::duration_ms(retry.max_backoff);
            Duration::from_millis(seawall_core::backoff::full_jitter(base, cap, attempt, &mut rng))
        };
        let wait = match why {
            Retryable::Status { retry_after: Some(asked) } => asked.max(backoff),
            _ => backoff,
        };
        let now = Instant::now();
        if f.deadline.is_some_and(|deadline| now + wait >= deadline) {
            return forwarded;
        }
        let state = &group.state;
        let now_ms = seawall_core::clock::ms_at(now.into_std());
        if !state.budget.try_retry(now_ms, retry.budget, retry.min_retries_per_second) {
            state.retries.over_budget.add(1);
            return forwarded;
        }
        match why {
            Retryable::Connect => state.retries.connect.add(1),
            Retryable::Reset => state.retries.reset.add(1),
            Retryable::Status { .. } => state.retries.status.add(1),
        }
        let server = match &forwarded {
            Forwarded::Response(response) => response.server(),
            Forwarded::Refused(_, at) | Forwarded::Client(_, at) => *at,
            Forwarded::Cached(_) => None,
        };
        avoid.extend(server.map(|(_, index)| index));
        // A discarded answer closes its connection; its outcome is recorded as it goes.
        drop(forwarded);
        if !wait.is_zero() {
            // Boxed: retries are rare, and a timer would otherwise grow every request's future.
            Box::pin(tokio::time::sleep(wait)).await;
        }
        attempt += 1;
    }
}

/// Why a failed attempt may be made again.
#[derive(Debug, Clone, Copy)]
enum Retryable {
    /// No connection could be made: nothing was sent.
    Connect,
    /// The connection broke (or the answer was not HTTP) before any answer.
    Reset,
    /// The answer's status is one the upstream's `retry.on_status` lists; it asked to wait this
    /// long (`Retry-After` in seconds).
    Status { retry_after: Option<Duration> },
}

/// Whether `forwarded` may be tried again (the budget and the body aside).
fn retryable(
    f: &Forward<'_>,
    retry: &seawall_config::Retry,
    forwarded: &Forwarded,
) -> Option<Retryable> {
    match forwarded {
        Forwarded::Refused(refusal, _) => match refusal.reason {
            Reason::UpstreamConnectFailed | Reason::UpstreamTlsFailed => Some(Retryable::Connect),
            Reason::UpstreamError if f.idempotent => Some(Retryable::Reset),
            _ => None,
        },
        Forwarded::Response(response) if f.idempotent => {
            let status = response.head.status;
            if !retry.on_status.contains(&status) {
                return None;
            }
            let asked = match response.view().first("retry-after") {
                None => None,
                // Seconds; anything else (an HTTP date) counts as longer than allowed.
                Some(value) => match crate::headers::delta_seconds(value) {
                    Some(seconds) => Some(Duration::from_secs(seconds)),
                    None => return None,
                },
            };
            // Asked to wait longer than allowed: the answer goes to the client as it is.
            if asked.is_some_and(|a| a > retry.max_retry_after) {
                return None;
            }
            Some(Retryable::Status { retry_after: asked })
        }
        _ => None,
    }
}

/// One attempt through the upstream's circuit breaker and gate (adaptive limit and bulkhead),
/// when it has them: an open breaker refuses at once, a gate at its limit makes the request wait
/// for a slot (by priority) or refuses it, and the attempt's outcome (a 5xx or no answer is a failure) is reported to the
/// breaker. An answer keeps its bulkhead slot until its body is done.
async fn through_breaker<D: Downstream>(
    f: &mut Forward<'_>,
    avoid: &[usize],
    down: &mut D,
    timer: &mut LazyTimer,
) -> Forwarded {
    let group = &f.snapshot.upstreams[f.upstream];
    let mut ticket = match group.breaker.as_ref().map(|b| b.admit(std::time::Instant::now())) {
        None => None,
        Some(Ok(ticket)) => Some(ticket),
        Some(Err(refusal)) => return Forwarded::Refused(refusal, None),
    };
    let slot = match &group.gate {
        None => None,
        Some(gate) => match wait_for_slot(f, gate, down).await {
            Ok(slot) => Some(slot),
            Err(forwarded) => return forwarded,
        },
    };
    if let Some(ticket) = ticket.as_mut() {
        // A wait for a slot is not the upstream being slow.
        ticket.restart(std::time::Instant::now());
    }
    let sent = slot.as_ref().map(|_| Instant::now());
    let mut forwarded = forward_to_server(f, avoid, down, timer).await;
    if let (Some(slot), Some(sent), Forwarded::Response(response)) = (&slot, sent, &forwarded) {
        // What the adaptive limit learns from: the time to a real answer. A quick 5xx (the
        // origin's own shedding) is not its latency, and a timeout says only "slower than that".
        if response.head.status < 500 {
            slot.gate().record_answer(sent.elapsed());
        }
    }
    if let (Some(slot), Forwarded::Response(response)) = (slot, &mut forwarded) {
        response.hold(slot);
    }
    let Some(ticket) = ticket else { return forwarded };
    let failed = match &forwarded {
        Forwarded::Response(response) => response.head.status >= 500,
        // The client's deadline ran out: nothing is known of the upstream (no report).
        Forwarded::Refused(refusal, _) if refusal.reason == Reason::DeadlineExceeded => {
            return forwarded
        }
        Forwarded::Refused(..) => true,
        // The client's side failed: nothing is known of the upstream (the ticket is dropped).
        Forwarded::Client(..) | Forwarded::Cached(_) => return forwarded,
    };
    ticket.finish(failed, std::time::Instant::now());
    forwarded
}

/// Runs `wait` unless the client leaves first (`None`): a reset always counts, a half-close only
/// for an idempotent request (another may still read its answer).
pub(super) async fn unless_client_leaves<F, D>(
    wait: F,
    down: &mut D,
    idempotent: bool,
) -> Option<F::Output>
where
    F: Future,
    D: Downstream,
{
    let mut wait = std::pin::pin!(wait);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = wait.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        match down.poll_gone(cx) {
            Poll::Ready(Gone::Reset) => Poll::Ready(None),
            Poll::Ready(Gone::Closed) if idempotent => Poll::Ready(None),
            _ => Poll::Pending,
        }
    })
    .await
}

/// Waits for a slot of the group's gate; a request whose client leaves meanwhile gives its place
/// up. A request shed by the gate is counted for its route and told when to come back.
async fn wait_for_slot<D: Downstream>(
    f: &Forward<'_>,
    gate: &std::sync::Arc<Gate>,
    down: &mut D,
) -> Result<Slot, Forwarded> {
    // Boxed: the wait is rare, and its state would otherwise grow every request's future.
    let acquire = Box::pin(gate.acquire(f.priority, f.deadline));
    let waited = unless_client_leaves(acquire, down, f.idempotent).await;
    match waited {
        Some(Ok(slot)) => Ok(slot),
        Some(Err(refusal)) if refusal.reason == Reason::Overloaded => {
            let snapshot = f.snapshot;
            if let Some(route) = f.route {
                snapshot.route_metrics[route].shed(f.priority, ShedCause::Queue);
            }
            let after = snapshot.config.overload.retry_after;
            Err(Forwarded::Refused(crate::overload::with_jitter(refusal, after), None))
        }
        // Refused before the upstream was tried: the breaker learns nothing.
        Some(Err(refusal)) => Err(Forwarded::Refused(refusal, None)),
        None => Err(Forwarded::Client(BodyError::Gone, None)),
    }
}
