//! One egress call, from the head the engine wrote to the answer the caller gets: wait for quota,
//! write the head for the chosen provider and key, send it through the provider's upstream group
//! (breaker, gate, pool, TLS), and act on what comes back — a 429 parks the key and the call moves
//! to another, a 401/403 disables the key, a failure moves to the next provider and, when every
//! provider failed, tries again after a backoff within `retries` and the retry budget.

use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use super::{acquire, Acquired, EgressGroup};
use crate::problem::{Reason, Refusal};
use crate::proxy::{forward_group, BodyError, Downstream, Forward, Forwarded, Gone};
use crate::timer::LazyTimer;
use seawall_config::{KeyPlacement, PathMatch, Provider};

/// A call moves to another key (after a 429) at most this many times.
const MAX_KEY_MOVES: u32 = 16;

/// Fields of the caller's head that never reach a provider: its own `Host`, and the addresses of
/// the application's network.
const DROPPED: [&[u8]; 5] =
    [b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"];

/// Sends the request through egress group `index` (see the module docs); the answer, or why
/// there is none.
pub(crate) async fn call<D: Downstream>(
    f: &mut Forward<'_>,
    index: usize,
    down: &mut D,
    timer: &mut LazyTimer,
) -> Forwarded {
    let snapshot = std::rc::Rc::clone(f.snapshot);
    let group = &snapshot.egress[index];
    let config = &group.config;
    let prefix_len = f.route.map_or(0, |r| match &snapshot.config.routes[r].matcher.path {
        PathMatch::Prefix(p) | PathMatch::Exact(p) => p.len(),
    });
    let Some(caller) = CallerHead::parse(&f.head[..f.head_len], prefix_len) else {
        let detail = "the request's target cannot be mapped onto the provider's URL";
        return Forwarded::Refused(Refusal::new(Reason::BadRequest, detail), None);
    };
    let start = Instant::now();
    let mut wait_until = start + config.max_wait;
    if let Some(deadline) = f.deadline {
        wait_until = wait_until.min(deadline);
    }
    if let Some(first) = config.providers.first() {
        let now_ms = seawall_core::clock::ms_at(start.into_std());
        snapshot.upstreams[first.upstream].state.budget.record_request(now_ms);
    }
    let mut avoid: Vec<usize> = Vec::new();
    let mut last: Option<Forwarded> = None;
    let (mut rounds, mut moves, mut refused_keys) = (0u32, 0u32, 0u32);
    loop {
        let acquired = watching(acquire(group, f.priority, wait_until, &avoid), down, f.idempotent);
        let grant = match acquired.await {
            None => return Forwarded::Client(BodyError::Gone, None),
            Some(Acquired::Grant(grant)) => grant,
            Some(Acquired::Quota { retry_after }) => {
                if let Some(last) = last {
                    return last;
                }
                group.count_refusal(Reason::EgressQuota);
                return Forwarded::Refused(quota_refusal(group, retry_after), None);
            }
            Some(Acquired::NoKey) => {
                if let Some(last) = last {
                    return last;
                }
                group.count_refusal(Reason::EgressNoKey);
                let detail = format!(
                    "every API key of egress group {:?} was refused by its provider (401/403); \
                     see /api/v1/state",
                    config.name
                );
                return Forwarded::Refused(Refusal::new(Reason::EgressNoKey, detail), None);
            }
            Some(Acquired::AllAvoided) => {
                // Every provider failed this call: once more from the first, after a backoff.
                let Some(failed) = last.take() else { return unavailable(group) };
                if rounds >= config.retries || !down.rewind() || !retry_allowed(f, group, rounds) {
                    return failed;
                }
                drop(failed);
                rounds += 1;
                let cap = config.backoff * 8;
                let wait = {
                    let mut rng = f.worker.rng.borrow_mut();
                    let (base, cap) = (ms(config.backoff), ms(cap));
                    Duration::from_millis(seawall_core::backoff::full_jitter(
                        base, cap, rounds, &mut rng,
                    ))
                };
                if f.deadline.is_some_and(|d| Instant::now() + wait >= d) {
                    return unavailable(group);
                }
                Box::pin(tokio::time::sleep(wait)).await;
                avoid.clear();
                continue;
            }
        };
        let provider = &config.providers[grant.provider];
        if !avoid.is_empty() {
            group.fell_back(grant.provider);
        }
        let key = provider.keys.get(grant.key);
        caller.write(f.head, provider, key.map(|k| k.value.as_str()));
        f.head_len = f.head.len();
        f.upstream = provider.upstream;
        f.host_is_server = false;
        let forwarded = forward_group(f, down, timer).await;
        match outcome(&forwarded) {
            Outcome::Done => return forwarded,
            Outcome::NotSent => {
                group.give_back(grant);
                group.failed(grant.provider);
                avoid.push(grant.provider);
                last = Some(forwarded);
            }
            Outcome::Failed => {
                group.failed(grant.provider);
                avoid.push(grant.provider);
                // It may have acted: only a method idempotent by definition goes again.
                if !f.method.is_idempotent() || !down.rewind() {
                    return forwarded;
                }
                last = Some(forwarded);
            }
            Outcome::Throttled(asked) => {
                let park = asked.unwrap_or(config.park_for).min(Duration::from_secs(86_400));
                let now_ms = seawall_core::clock::now_ms();
                group.park(grant, now_ms.saturating_add(ms(park)));
                drop(forwarded);
                moves += 1;
                if moves > MAX_KEY_MOVES || !down.rewind() {
                    group.count_refusal(Reason::EgressQuota);
                    return Forwarded::Refused(quota_refusal(group, park), None);
                }
            }
            Outcome::KeyRefused(status) => {
                // One call disables at most one key: a second refusal says more about the
                // request than about the keys.
                if refused_keys > 0 {
                    return forwarded;
                }
                let Some((env, fingerprint)) = group.disable(grant, status) else {
                    return forwarded;
                };
                tracing::warn!(
                    group = %config.name,
                    provider = %provider.name,
                    key_env = %env,
                    key = %fingerprint,
                    status,
                    "egress key refused by the provider: disabled until a reload brings a new value"
                );
                refused_keys += 1;
                if !down.rewind() {
                    return forwarded;
                }
                drop(forwarded);
            }
        }
    }
}

/// What an attempt's result means for the call.
enum Outcome {
    /// The caller gets it.
    Done,
    /// Nothing reached the provider (breaker open, no connection, TLS refused, gate full): its
    /// quota is given back, the next provider is tried.
    NotSent,
    /// The provider failed after it may have had the request (5xx, timeout, broken answer).
    Failed,
    /// 429, with the `Retry-After` asked for (seconds).
    Throttled(Option<Duration>),
    /// 401 or 403: the key was refused.
    KeyRefused(u16),
}

fn outcome(forwarded: &Forwarded) -> Outcome {
    match forwarded {
        Forwarded::Refused(refusal, _) => match refusal.reason {
            Reason::CircuitOpen
            | Reason::UpstreamUnavailable
            | Reason::UpstreamConnectFailed
            | Reason::UpstreamTlsFailed
            | Reason::BulkheadFull
            | Reason::Overloaded => Outcome::NotSent,
            Reason::UpstreamError | Reason::UpstreamTimeout => Outcome::Failed,
            _ => Outcome::Done,
        },
        Forwarded::Response(response) => match response.head.status {
            429 => Outcome::Throttled(retry_after(response.view().first("retry-after"))),
            status @ (401 | 403) => Outcome::KeyRefused(status),
            status if status >= 500 => Outcome::Failed,
            _ => Outcome::Done,
        },
        Forwarded::Client(..) | Forwarded::Cached(_) => Outcome::Done,
    }
}

/// `Retry-After` in seconds (an HTTP date, or nothing usable: `None`, and `park_for` applies).
fn retry_after(value: Option<&[u8]>) -> Option<Duration> {
    let text = std::str::from_utf8(value?).ok()?.trim();
    text.parse::<u64>().ok().map(Duration::from_secs)
}

/// Whether the retry budget of the first provider's group allows one more round.
fn retry_allowed(f: &Forward<'_>, group: &EgressGroup, rounds: u32) -> bool {
    let Some(first) = group.config.providers.first() else { return false };
    let upstream = &f.snapshot.upstreams[first.upstream];
    let retry = &upstream.config.retry;
    let now_ms = seawall_core::clock::now_ms();
    let allowed =
        upstream.state.budget.try_retry(now_ms, retry.budget, retry.min_retries_per_second);
    if !allowed {
        upstream.state.retries.over_budget.add(1);
    } else if rounds < u32::MAX {
        upstream.state.retries.status.add(1);
    }
    allowed
}

/// 429 `egress_quota`, with the time until quota comes back.
fn quota_refusal(group: &EgressGroup, retry_after: Duration) -> Refusal {
    let seconds = retry_after.as_millis().div_ceil(1000).clamp(1, u128::from(u32::MAX)) as u32;
    let detail = format!(
        "no provider of egress group {:?} has quota left within max_wait ({:?}); quota comes back \
         in about {seconds} s",
        group.config.name, group.config.max_wait
    );
    let mut refusal = Refusal::new(Reason::EgressQuota, detail);
    refusal.retry_after = Some(seconds);
    refusal
}

/// 503 when every provider was avoided without an answer to show (not expected: each avoided
/// provider left its failure).
fn unavailable(group: &EgressGroup) -> Forwarded {
    let detail = format!("no provider of egress group {:?} could take the call", group.config.name);
    Forwarded::Refused(Refusal::new(Reason::UpstreamUnavailable, detail), None)
}

fn ms(d: Duration) -> u64 {
    seawall_core::clock::duration_ms(d)
}

/// Runs `wait` unless the client leaves first (`None`): a reset always counts, a half-close
/// only for an idempotent request (the other may still read its answer).
async fn watching<F, D>(wait: F, down: &mut D, idempotent: bool) -> Option<F::Output>
where
    F: std::future::Future,
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

/// The caller's head, taken apart once: what the provider's head is written from.
struct CallerHead {
    method: Vec<u8>,
    /// The part of the target after the route's prefix (path rest and query).
    rest: Vec<u8>,
    /// The field lines, each with its CRLF, without those that never reach a provider.
    fields: Vec<u8>,
}

impl CallerHead {
    /// `head` is `METHOD target HTTP/1.1\r\n` and field lines; `prefix_len` is the length of
    /// the route's path (prefix) the target starts with.
    fn parse(head: &[u8], prefix_len: usize) -> Option<CallerHead> {
        let line_end = head.windows(2).position(|w| w == b"\r\n")?;
        let line = &head[..line_end];
        let first_space = line.iter().position(|&b| b == b' ')?;
        let last_space = line.iter().rposition(|&b| b == b' ')?;
        let target = line.get(first_space + 1..last_space)?;
        if !target.starts_with(b"/") || target.len() < prefix_len {
            return None;
        }
        let mut fields = Vec::with_capacity(head.len() - line_end);
        let mut at = line_end + 2;
        while let Some(len) = head[at..].windows(2).position(|w| w == b"\r\n") {
            let field = &head[at..at + len + 2];
            let name = field.split(|&b| b == b':').next().unwrap_or_default();
            if !DROPPED.iter().any(|d| crate::headers::eq_lower(name, d)) {
                fields.extend_from_slice(field);
            }
            at += len + 2;
        }
        Some(CallerHead {
            method: line[..first_space].to_vec(),
            rest: target[prefix_len..].to_vec(),
            fields,
        })
    }

    /// Writes into `out` the head for `provider` with `key`: the provider's base path and the
    /// rest of the caller's target, the key in its place (the caller's own value for that header
    /// or parameter dropped), the provider's `Host`.
    fn write(&self, out: &mut Vec<u8>, provider: &Provider, key: Option<&str>) {
        out.clear();
        out.extend_from_slice(&self.method);
        out.push(b' ');
        let (path, query) = match self.rest.iter().position(|&b| b == b'?') {
            Some(q) => (&self.rest[..q], Some(&self.rest[q + 1..])),
            None => (&self.rest[..], None),
        };
        let base = provider.base_path.as_bytes();
        out.extend_from_slice(base);
        match path.first() {
            Some(b'/') => out.extend_from_slice(path),
            Some(_) => {
                out.push(b'/');
                out.extend_from_slice(path);
            }
            None if base.is_empty() => out.push(b'/'),
            None => {}
        }
        let key_param = match (&provider.key_in, key) {
            (KeyPlacement::Query(name), Some(value)) => Some((name.as_bytes(), value)),
            _ => None,
        };
        let mut sep = b'?';
        for param in query.into_iter().flat_map(|q| q.split(|&b| b == b'&')) {
            let name = param.split(|&b| b == b'=').next().unwrap_or_default();
            if param.is_empty() || key_param.is_some_and(|(k, _)| name == k) {
                continue;
            }
            out.push(sep);
            out.extend_from_slice(param);
            sep = b'&';
        }
        if let Some((name, value)) = key_param {
            out.push(sep);
            out.extend_from_slice(name);
            out.push(b'=');
            percent_encode(value.as_bytes(), out);
        }
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let header = match &provider.key_in {
            KeyPlacement::Header(name) => Some(name.as_bytes()),
            _ => None,
        };
        let mut at = 0;
        while let Some(len) = self.fields[at..].windows(2).position(|w| w == b"\r\n") {
            let field = &self.fields[at..at + len + 2];
            let name = field.split(|&b| b == b':').next().unwrap_or_default();
            if !header.is_some_and(|h| crate::headers::eq_lower(name, h)) {
                out.extend_from_slice(field);
            }
            at += len + 2;
        }
        crate::headers::push_field(out, b"host", provider.authority.as_bytes());
        if let (Some(name), Some(value)) = (header, key) {
            crate::headers::push_field(out, name, value.as_bytes());
        }
    }
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn percent_encode(value: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(base: &str, key_in: KeyPlacement) -> Provider {
        Provider {
            name: "p".into(),
            upstream: 0,
            url: format!("https://api.example.com{base}"),
            authority: "api.example.com".into(),
            base_path: base.into(),
            rate: None,
            daily_quota: None,
            keys: Vec::new(),
            key_in,
        }
    }

    fn written(head: &str, prefix: usize, p: &Provider, key: Option<&str>) -> String {
        let caller = CallerHead::parse(head.as_bytes(), prefix).unwrap();
        let mut out = Vec::new();
        caller.write(&mut out, p, key);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_rest_of_the_path_goes_after_the_base_url() {
        let head = "GET /maps/geocode?q=paris HTTP/1.1\r\naccept: */*\r\nhost: 127.0.0.1:8081\r\nx-forwarded-for: 10.0.0.1\r\n";
        let p = provider("/v1", KeyPlacement::Header("x-api-key".into()));
        assert_eq!(
            written(head, "/maps/".len(), &p, Some("s3cret")),
            "GET /v1/geocode?q=paris HTTP/1.1\r\naccept: */*\r\nhost: api.example.com\r\nx-api-key: s3cret\r\n"
        );
        // A prefix without its slash, an empty rest, a root base URL.
        assert!(written(head, "/maps".len(), &p, None).starts_with("GET /v1/geocode?q=paris "));
        let root = provider("", KeyPlacement::None);
        assert!(written("GET /maps HTTP/1.1\r\n", 5, &root, None).starts_with("GET / HTTP/1.1"));
        assert!(written("GET /maps?x=1 HTTP/1.1\r\n", 5, &p, None).starts_with("GET /v1?x=1 "));
    }

    #[test]
    fn the_key_replaces_the_callers_own() {
        let p = provider("/v1", KeyPlacement::Query("key".into()));
        let head = "GET /maps/a?key=mine&q=1 HTTP/1.1\r\n";
        assert!(written(head, 6, &p, Some("a b&c")).starts_with("GET /v1/a?q=1&key=a%20b%26c "));
        let h = provider("/v1", KeyPlacement::Header("x-api-key".into()));
        let head = "GET /maps/a HTTP/1.1\r\nX-Api-Key: mine\r\n";
        let out = written(head, 6, &h, Some("k"));
        assert!(!out.contains("mine") && out.contains("x-api-key: k\r\n"), "{out}");
    }
}
