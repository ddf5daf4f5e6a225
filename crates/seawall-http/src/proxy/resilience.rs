//! The protections around the one upstream call: deadlines (`total_timeout`, the client's own),
//! the cache's part (waiting for another fetch, the shared layer, storing, stale answers for
//! failures) and the chain of groups — the route's upstream then its fallback groups, each with
//! its retries, breaker and gate ([`super::group`]), or an egress route's providers
//! ([`super::egress`]).

use tokio::time::Instant;

use super::group::forward_group;
use super::{Downstream, Forward, Forwarded};
use crate::problem::{Reason, Refusal};
use crate::timer::LazyTimer;

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
        Some(group) => Box::pin(super::egress::call(&mut f, group, down, timer)).await,
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
