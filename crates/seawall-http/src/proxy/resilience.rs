//! The protections around the one upstream call: the fallback chain, retries (with their
//! budget, backoff and body replay), deadlines (`total_timeout`, the client's own), and each
//! attempt through the group's circuit breaker and bulkhead. One attempt on one server is
//! [`super::forward_to_server`].

use std::future::Future;

use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use super::{forward_to_server, BodyError, Downstream, Forward, Forwarded, Gone};
use crate::overload::ShedCause;
use crate::problem::{Reason, Refusal};
use crate::request::BodyFraming;
use crate::timer::LazyTimer;
use crate::upstream::bulkhead::{Gate, Slot};

/// Sends the request to the upstream and waits for the head of its answer — then, if that
/// failed, to each of the upstream's `fallback` groups in turn while it is safe (see
/// [`falls_back`]), each group with its own breaker, bulkhead and retries. Within a group it
/// tries again when that is safe and worth it: after a failed connection (nothing was sent), after a connection
/// that broke before any answer or an answer in `retry.on_status` (idempotent requests only),
/// within `retry.attempts`, the retry budget, the body replay cap and `total_timeout`, after a
/// backoff with full jitter (or the upstream's own `Retry-After`, up to `max_retry_after`). A
/// retry prefers another server.
pub async fn forward<D: Downstream>(
    mut f: Forward<'_>,
    down: &mut D,
    timer: &mut LazyTimer,
) -> Forwarded {
    let snapshot = f.snapshot;
    f.client_deadline = f.deadline;
    let fallbacks = &snapshot.upstreams[f.upstream].config.fallback;
    let chain_total = std::iter::once(&f.upstream)
        .chain(fallbacks)
        .any(|&u| snapshot.upstreams[u].config.total_timeout.is_some());
    if f.deadline.is_some() || chain_total {
        // The upstream hears the time left from Seawall, not what the client first said.
        strip_field(f.head, snapshot.config.server.deadline_header.as_bytes());
    }
    if let Some(ticket) = f.cache.as_deref_mut() {
        ticket.add_validators(f.head);
    }
    f.head_len = f.head.len();
    if let Some(served) = wait_for_fetch(&mut f).await {
        return Forwarded::Cached(served);
    }
    if let Some(ticket) = f.cache.as_deref_mut() {
        let crisis = f.snapshot.overload.in_crisis();
        if let Some(served) = ticket.from_l2(crate::cache::now_secs(), crisis).await {
            return Forwarded::Cached(served);
        }
    }
    let egress = f.route.and_then(|r| match snapshot.config.routes[r].action {
        seawall_config::RouteAction::Egress { group } => Some(group),
        _ => None,
    });
    let mut forwarded = match egress {
        // Boxed: an egress call's state would otherwise grow every request's future.
        Some(group) => Box::pin(crate::egress::call(&mut f, group, down, timer)).await,
        None => forward_group(&mut f, down, timer).await,
    };
    let fallbacks = if egress.is_some() { &[][..] } else { fallbacks };
    for &next in fallbacks {
        if !falls_back(&f, &forwarded) || !down.rewind() {
            break;
        }
        snapshot.upstreams[next].state.fallback_requests.add(1);
        f.upstream = next;
        let attempt = forward_group(&mut f, down, timer).await;
        // An answer, even a 5xx, beats a fallback that could not answer at all. A discarded
        // answer closes its connection; its outcome is recorded as it goes.
        let earlier_answered = matches!(forwarded, Forwarded::Response(_));
        if !(earlier_answered && matches!(attempt, Forwarded::Refused(..))) {
            forwarded = attempt;
        }
    }
    if let (Some(ticket), Some(route)) = (f.cache.as_deref_mut(), f.route) {
        if let Some(served) = through_cache(ticket, &mut forwarded, f.snapshot, route) {
            // A 304 (a revalidation) leaves its connection clean for the pool; a failed answer
            // is dropped, its outcome recorded as it goes.
            if let Forwarded::Response(response) = forwarded {
                (*response).finish(seawall_core::clock::now_ms());
            }
            return Forwarded::Cached(served);
        }
    }
    match forwarded {
        Forwarded::Refused(refusal, at) if f.degrade.is_some() => {
            Forwarded::Refused(refusal.degraded(f.degrade), at)
        }
        forwarded => forwarded,
    }
}

/// Waits (up to the route's `coalesce_wait`, within the request's deadline) for another request
/// fetching the same key; the answer it stored, when there is one.
async fn wait_for_fetch(f: &mut Forward<'_>) -> Option<crate::cache::Served> {
    let ticket = f.cache.as_deref_mut()?;
    let wait = ticket.coalesce_wait();
    let crate::cache::Role::Wait(done) = &mut ticket.role else { return None };
    let mut until = Instant::now() + wait;
    if let Some(deadline) = f.deadline {
        until = until.min(deadline);
    }
    // The fetch ends when its sender is dropped: `changed` then fails.
    let _ = tokio::time::timeout_at(until, done.changed()).await;
    let crisis = f.snapshot.overload.in_crisis();
    let served = ticket.after_wait(crate::cache::now_secs(), crisis)?;
    if let Some(route) = f.route {
        f.snapshot.route_metrics[route].cache(crate::cache::CacheEvent::Hit);
    }
    Some(served)
}

/// The cache's part in what came back: an answer it may store gets a tap that stores its body
/// as it passes; a failure (no answer, or a 5xx) gets the stale answer when one may stand in.
fn through_cache(
    ticket: &mut crate::cache::Ticket,
    forwarded: &mut Forwarded,
    snapshot: &crate::worker::Pinned,
    route: usize,
) -> Option<crate::cache::Served> {
    let now = crate::cache::now_secs();
    if let Forwarded::Response(response) = forwarded {
        match ticket.revalidated(&response.view(), now) {
            crate::cache::Revalidation::NotOne => {}
            crate::cache::Revalidation::Served(served) => return Some(served),
            crate::cache::Revalidation::Unusable => {
                let detail = "the upstream's 304 named another version than the stored one";
                let at = response.server();
                *forwarded = Forwarded::Refused(Refusal::new(Reason::UpstreamError, detail), at);
                return None;
            }
        }
    }
    let failed = match forwarded {
        Forwarded::Response(response) if response.head.status < 500 => {
            match ticket.tap(&response.view(), now) {
                Ok(tap) => response.set_tap(tap),
                Err(_) => ticket.end_flight(),
            }
            false
        }
        Forwarded::Response(_) => true,
        Forwarded::Refused(refusal, _) => refusal.reason.is_upstream_failure(),
        Forwarded::Client(..) | Forwarded::Cached(_) => false,
    };
    if !failed {
        return None;
    }
    ticket.end_flight();
    let stored = ticket.stale_for_error(now, snapshot.overload.in_crisis())?;
    snapshot.route_metrics[route].cache(crate::cache::CacheEvent::Stale);
    Some(ticket.serve(&stored, crate::cache::CacheStatus::Stale))
}

/// The refusal for a request whose deadline has passed, before anything more is sent: the
/// client's own (`deadline_exceeded`, nobody's fault upstream) or `total_timeout`.
pub(super) fn deadline_passed(f: &Forward<'_>) -> Option<Refusal> {
    f.deadline?;
    let now = Instant::now();
    if f.client_deadline.is_some_and(|d| d <= now) {
        let detail = "the client's deadline passed before an answer";
        return Some(Refusal::new(Reason::DeadlineExceeded, detail));
    }
    if f.deadline.is_some_and(|d| d <= now) {
        let detail = "the request's total_timeout passed before another attempt could start";
        return Some(Refusal::new(Reason::UpstreamTimeout, detail));
    }
    None
}

/// Removes every `name:` line (name in lower case) from an upstream head.
fn strip_field(head: &mut Vec<u8>, name: &[u8]) {
    let mut at = 0;
    while let Some(len) = head[at..].windows(2).position(|w| w == b"\r\n") {
        let line = &head[at..at + len];
        let named = line.len() > name.len()
            && line[name.len()] == b':'
            && crate::headers::eq_lower(&line[..name.len()], name);
        if named {
            head.drain(at..at + len + 2);
        } else {
            at += len + 2;
        }
    }
}

/// Whether the primary's failure sends the request to its next fallback group: when its breaker
/// is open or no server of it is available or reachable (nothing was sent: any method), or when
/// it timed out, broke or answered 5xx (only methods idempotent by definition: it may have taken
/// effect).
fn falls_back(f: &Forward<'_>, forwarded: &Forwarded) -> bool {
    match forwarded {
        Forwarded::Refused(refusal, _) => match refusal.reason {
            Reason::CircuitOpen
            | Reason::UpstreamUnavailable
            | Reason::UpstreamConnectFailed
            | Reason::UpstreamTlsFailed => true,
            // An Idempotency-Key means nothing to another provider: only a method that is
            // idempotent by definition may be sent to one after the first may have acted.
            Reason::UpstreamError | Reason::UpstreamTimeout => f.method.is_idempotent(),
            _ => false,
        },
        Forwarded::Response(response) => response.head.status >= 500 && f.method.is_idempotent(),
        Forwarded::Client(..) | Forwarded::Cached(_) => false,
    }
}

/// The request through one upstream group, with its retries (see [`forward`]).
pub(crate) async fn forward_group<D: Downstream>(
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
pub(crate) async fn unless_client_leaves<F, D>(
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
