//! One egress call — the proxy's chain for an egress route, where another route has its upstream
//! group and fallbacks — from the head the engine wrote to the answer the caller gets: wait for
//! quota (the group's state and line are [`crate::egress`]'s), write the head for the chosen
//! provider and key, send it through the provider's upstream group (breaker, gate, pool, TLS), and
//! act on what comes back — a 429 parks the key and the call moves to another, a 401/403 makes the
//! key a suspect and moves to another (disabled if that one is accepted), a failure moves to the
//! next provider and, when every provider failed, tries again after a backoff within `retries`
//! and the retry budget.

use std::time::Duration;

use tokio::time::Instant;

use super::group::{forward_group, unless_client_leaves};
use super::{BodyError, Downstream, Forward, Forwarded};
use crate::egress::keys::Suspect;
use crate::egress::{acquire, route_path, Acquired, Avoid, EgressGroup};
use crate::problem::{Reason, Refusal};
use crate::timer::LazyTimer;
use seawall_config::{KeyPlacement, Provider};

/// A call moves to another key (after a 429) at most this many times.
const MAX_KEY_MOVES: u32 = 16;

/// The shortest rest of a key answered 429 (a `Retry-After: 0` must not bring it straight back).
const MIN_PARK: Duration = Duration::from_secs(1);

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
    let server = &snapshot.config.server;
    let prefix = f.route.map_or("", |r| route_path(&snapshot.config.routes[r]));
    let own = [server.request_id_header.as_bytes(), server.deadline_header.as_bytes()];
    let Some(caller) = CallerHead::parse(&f.head[..f.head_len], prefix.as_bytes(), &own) else {
        let detail = "the request's target cannot be mapped onto the provider's URL (it is not \
                      under the route's path, or a dot segment after it would climb out)";
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
    let mut avoid = Avoid::default();
    let mut last: Option<Forwarded> = None;
    let (mut rounds, mut moves) = (0u32, 0u32);
    // A key refused (401/403) for this request: disabled once another key is accepted for it.
    let mut suspect: Option<(Suspect, Refused)> = None;
    loop {
        // Nothing was sent yet: a client that closes (even only its sending side) leaves.
        let waited =
            unless_client_leaves(acquire(group, f.priority, wait_until, &avoid), down, true);
        let grant = match waited.await {
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
                     see /api/v1/state, then POST /api/v1/egress/{}/enable",
                    config.name, config.name
                );
                return Forwarded::Refused(Refusal::new(Reason::EgressNoKey, detail), None);
            }
            Some(Acquired::AllAvoided) => {
                // Every provider failed this call: once more from the first, after a backoff
                // (not after a refused key: the answer stands).
                let Some(failed) = last.take() else { return unavailable(group) };
                if suspect.is_some() {
                    return failed;
                }
                let wait = backoff(f, config, rounds + 1);
                let late = f.deadline.is_some_and(|d| Instant::now() + wait >= d);
                if rounds >= config.retries || late || !down.rewind() {
                    return failed;
                }
                if !retry_allowed(f, group) {
                    return failed;
                }
                drop(failed);
                rounds += 1;
                Box::pin(tokio::time::sleep(wait)).await;
                avoid.providers.clear();
                continue;
            }
        };
        let provider = &config.providers[grant.provider];
        if !avoid.providers.is_empty() {
            group.fell_back(grant.provider);
        }
        let key = provider.keys.get(grant.key);
        caller.write(f.head, provider, key.map(|k| k.value.as_str()));
        f.head_len = f.head.len();
        f.upstream = provider.upstream;
        f.host_is_server = false;
        let forwarded = forward_group(f, down, timer).await;
        if let Forwarded::Client(_, None) = &forwarded {
            // The client left (or its body failed) before anything reached the provider.
            group.give_back(grant);
            return forwarded;
        }
        match outcome(&forwarded) {
            Outcome::Done => {
                // A refused key is to blame only when another key of its provider is accepted
                // for the same request (an answer, not a failure or a departure).
                let accepted = matches!(&forwarded, Forwarded::Response(r) if r.head.status < 500);
                if let Some((suspect, refused)) = suspect.take() {
                    if accepted && refused.provider_index == grant.provider {
                        suspect.confirm();
                        log_disabled(group, &refused, provider);
                    }
                }
                grant.sent();
                return forwarded;
            }
            Outcome::NotSent => {
                let p = grant.provider;
                group.give_back(grant);
                group.failed(p);
                avoid.providers.push(p);
                if !down.rewind() {
                    return forwarded;
                }
                last = Some(forwarded);
            }
            Outcome::Failed => {
                let p = grant.provider;
                grant.sent();
                group.failed(p);
                avoid.providers.push(p);
                // It may have acted: only a method idempotent by definition goes again.
                if !f.method.is_idempotent() || !down.rewind() {
                    return forwarded;
                }
                last = Some(forwarded);
            }
            Outcome::Throttled(asked) => {
                let park =
                    asked.unwrap_or(config.park_for).clamp(MIN_PARK, Duration::from_secs(86_400));
                let now_ms = seawall_core::clock::now_ms();
                grant.park(now_ms.saturating_add(seawall_core::clock::duration_ms(park)));
                grant.sent();
                drop(forwarded);
                // A failure kept from an earlier provider is no longer the answer: quota is.
                last = None;
                moves += 1;
                if moves > MAX_KEY_MOVES || !down.rewind() {
                    group.count_refusal(Reason::EgressQuota);
                    return Forwarded::Refused(quota_refusal(group, park), None);
                }
            }
            Outcome::KeyRefused(status) => {
                let names = group.key_names(&grant);
                let suspected = grant.refused(status);
                let refused_key = (grant.provider, grant.key);
                let grant_provider = grant.provider;
                grant.sent();
                // A second refusal for the same request says more about the request than about
                // the keys: it goes to the caller, and nothing is disabled.
                let Some((env, fingerprint)) = names.filter(|_| suspect.is_none()) else {
                    return forwarded;
                };
                if !down.rewind() {
                    return forwarded;
                }
                let refused = Refused {
                    provider_index: grant_provider,
                    provider: provider.name.clone(),
                    env,
                    fingerprint,
                    status,
                };
                suspect = Some((suspected, refused));
                avoid.keys.push(refused_key);
                // The answer if no other key can be tried.
                last = Some(forwarded);
            }
        }
    }
}

/// A key refused for this request, named for the log.
struct Refused {
    provider_index: usize,
    provider: String,
    env: String,
    fingerprint: String,
    status: u16,
}

/// Logs a key disabled by its provider: its variable and fingerprint, never its value.
fn log_disabled(group: &EgressGroup, refused: &Refused, accepted_by: &Provider) {
    tracing::warn!(
        group = %group.config.name,
        provider = %refused.provider,
        key_env = %refused.env,
        key = %refused.fingerprint,
        status = refused.status,
        accepted_by = %accepted_by.name,
        "egress key refused by its provider while another was accepted for the same request: \
         disabled (POST /api/v1/egress/GROUP/enable brings it back)"
    );
}

/// What an attempt's result means for the call.
enum Outcome {
    /// The caller gets it.
    Done,
    /// Nothing reached the provider (breaker open, no connection, TLS refused, gate full, the
    /// deadline passed first): its quota is given back, the next provider is tried.
    NotSent,
    /// The provider failed after it may have had the request (5xx, timeout, broken answer).
    Failed,
    /// 429, with the `Retry-After` asked for (seconds).
    Throttled(Option<Duration>),
    /// 401 or 403: the key (or the request) was refused.
    KeyRefused(u16),
}

fn outcome(forwarded: &Forwarded) -> Outcome {
    match forwarded {
        Forwarded::Refused(refusal, at) => match refusal.reason {
            Reason::CircuitOpen
            | Reason::UpstreamUnavailable
            | Reason::UpstreamConnectFailed
            | Reason::UpstreamTlsFailed
            | Reason::BulkheadFull
            | Reason::Overloaded => Outcome::NotSent,
            Reason::DeadlineExceeded if at.is_none() => Outcome::NotSent,
            Reason::UpstreamError | Reason::UpstreamTimeout => Outcome::Failed,
            _ => Outcome::Done,
        },
        Forwarded::Response(response) => match response.head.status {
            429 => {
                let asked = response.view().first("retry-after");
                Outcome::Throttled(
                    asked.and_then(crate::headers::delta_seconds).map(Duration::from_secs),
                )
            }
            status @ (401 | 403) => Outcome::KeyRefused(status),
            status if status >= 500 => Outcome::Failed,
            _ => Outcome::Done,
        },
        Forwarded::Client(..) | Forwarded::Cached(_) => Outcome::Done,
    }
}

/// The wait before round `round` over the providers: full jitter under `backoff × 2^round`.
fn backoff(f: &Forward<'_>, config: &seawall_config::Egress, round: u32) -> Duration {
    let mut rng = f.worker.rng.borrow_mut();
    let base = seawall_core::clock::duration_ms(config.backoff);
    let cap = seawall_core::clock::duration_ms(config.backoff * 8);
    Duration::from_millis(seawall_core::backoff::full_jitter(base, cap, round, &mut rng))
}

/// Whether the retry budget of the first provider's group allows one more round.
fn retry_allowed(f: &Forward<'_>, group: &EgressGroup) -> bool {
    let Some(first) = group.config.providers.first() else { return false };
    let upstream = &f.snapshot.upstreams[first.upstream];
    let retry = &upstream.config.retry;
    let now_ms = seawall_core::clock::now_ms();
    let allowed =
        upstream.state.budget.try_retry(now_ms, retry.budget, retry.min_retries_per_second);
    let counter =
        if allowed { &upstream.state.retries.status } else { &upstream.state.retries.over_budget };
    counter.add(1);
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

/// 503 when every provider was avoided and no failure was kept (a group without providers).
fn unavailable(group: &EgressGroup) -> Forwarded {
    let detail = format!("no provider of egress group {:?} could take the call", group.config.name);
    Forwarded::Refused(Refusal::new(Reason::UpstreamUnavailable, detail), None)
}

/// Fields of the caller's head that never reach a provider: its own `Host`, and what describes
/// the application's network (its addresses, Seawall's `Via`).
const DROPPED: [&[u8]; 6] =
    [b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"via"];

/// The caller's head, taken apart once: what the provider's head is written from.
struct CallerHead {
    method: Vec<u8>,
    /// The part of the target after the route's prefix (path rest and query).
    rest: Vec<u8>,
    /// The field lines, each with its CRLF, without those that never reach a provider.
    fields: Vec<u8>,
}

impl CallerHead {
    /// `head` is `METHOD target HTTP/1.1\r\n` and field lines; `prefix` is the route's path
    /// (prefix), which the target must start with (a queued job's route may have changed); `own` names Seawall's own fields (the
    /// request id, the deadline), which stay inside the application's network.
    fn parse(head: &[u8], prefix: &[u8], own: &[&[u8]]) -> Option<CallerHead> {
        let prefix_len = prefix.len();
        let line_end = head.windows(2).position(|w| w == b"\r\n")?;
        let line = &head[..line_end];
        let first_space = line.iter().position(|&b| b == b' ')?;
        let last_space = line.iter().rposition(|&b| b == b' ')?;
        let target = line.get(first_space + 1..last_space)?;
        if !target.starts_with(b"/") || !target.starts_with(prefix) {
            return None;
        }
        // What follows the prefix becomes path segments under the base path: none may climb
        // out of it (`/maps../x` under the prefix `/maps` is `/v1/../x`).
        let rest = &target[prefix_len..];
        let rest_path = &rest[..rest.iter().position(|&b| b == b'?').unwrap_or(rest.len())];
        let mut joined = Vec::with_capacity(rest_path.len() + 1);
        joined.push(b'/');
        joined.extend_from_slice(rest_path);
        if crate::edge::has_dot_segment(&joined) {
            return None;
        }
        let mut fields = Vec::with_capacity(head.len() - line_end);
        let mut at = line_end + 2;
        while let Some(len) = head[at..].windows(2).position(|w| w == b"\r\n") {
            let field = &head[at..at + len + 2];
            let name = field.split(|&b| b == b':').next().unwrap_or_default();
            let dropped = DROPPED.iter().chain(own).any(|d| crate::headers::eq_lower(name, d));
            if !dropped {
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
            let theirs = key_param.is_some_and(|(k, _)| same_param(name, k));
            if param.is_empty() || theirs {
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
            crate::edge::percent_encode(value.as_bytes(), out);
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
            if !header.is_some_and(|h| same_field(name, h)) {
                out.extend_from_slice(field);
            }
            at += len + 2;
        }
        crate::headers::push_field(out, b"host", provider.authority.as_bytes());
        if let (Some(name), Some(value)) = (header, key) {
            let mut line = provider.key_prefix.clone().into_bytes();
            line.extend_from_slice(value.as_bytes());
            crate::headers::push_field(out, name, &line);
        }
    }
}

/// Whether the field `name` is `lower` — `_` standing for `-` too: many servers (CGI, WSGI,
/// Rack) read `x_api_key` as `x-api-key`.
fn same_field(name: &[u8], lower: &[u8]) -> bool {
    name.len() == lower.len()
        && name.iter().zip(lower).all(|(&a, &b)| {
            let a = if a == b'_' { b'-' } else { a.to_ascii_lowercase() };
            a == b
        })
}

/// Whether the query parameter `name` (as the caller wrote it, perhaps percent-encoded) is
/// `key` (ASCII letters compared without case: a provider may not tell them apart either).
fn same_param(name: &[u8], key: &[u8]) -> bool {
    crate::edge::percent_decode(name).eq_ignore_ascii_case(key)
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
            key_prefix: String::new(),
        }
    }

    fn written(head: &str, prefix: &str, p: &Provider, key: Option<&str>) -> String {
        let caller =
            CallerHead::parse(head.as_bytes(), prefix.as_bytes(), &[b"x-request-id"]).unwrap();
        let mut out = Vec::new();
        caller.write(&mut out, p, key);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_rest_of_the_path_goes_after_the_base_url() {
        let head = "GET /maps/geocode?q=paris HTTP/1.1\r\naccept: */*\r\nhost: 127.0.0.1:8081\r\nx-forwarded-for: 10.0.0.1\r\nvia: 1.1 seawall\r\nx-request-id: abc\r\n";
        let p = provider("/v1", KeyPlacement::Header("x-api-key".into()));
        assert_eq!(
            written(head, "/maps/", &p, Some("s3cret")),
            "GET /v1/geocode?q=paris HTTP/1.1\r\naccept: */*\r\nhost: api.example.com\r\nx-api-key: s3cret\r\n"
        );
        // A prefix without its slash, an empty rest, a root base URL.
        assert!(written(head, "/maps", &p, None).starts_with("GET /v1/geocode?q=paris "));
        let root = provider("", KeyPlacement::None);
        assert!(
            written("GET /maps HTTP/1.1\r\n", "/maps", &root, None).starts_with("GET / HTTP/1.1")
        );
        assert!(
            written("GET /maps?x=1 HTTP/1.1\r\n", "/maps", &p, None).starts_with("GET /v1?x=1 ")
        );
    }

    #[test]
    fn the_key_replaces_the_callers_own() {
        let p = provider("/v1", KeyPlacement::Query("key".into()));
        let head = "GET /maps/a?key=mine&q=1&%6Bey=x&KEY=y HTTP/1.1\r\n";
        assert!(
            written(head, "/maps/", &p, Some("a b&c")).starts_with("GET /v1/a?q=1&key=a%20b%26c ")
        );
        let h = provider("/v1", KeyPlacement::Header("x-api-key".into()));
        let head = "GET /maps/a HTTP/1.1\r\nX-Api-Key: mine\r\n";
        let out = written(head, "/maps/", &h, Some("k"));
        assert!(!out.contains("mine") && out.contains("x-api-key: k\r\n"), "{out}");
    }
}
