//! Validation of the request-path protections: rate limiters and their tiers, and an upstream's
//! breaker, retries and bulkhead; a route's priority and degraded answer.

use std::time::Duration;

use seawall_core::clock::duration_ms;

use super::{defaults, valid_header_name, Ctx};
use crate::model::*;
use crate::raw::*;
use crate::units::parse_duration;

/// `[rate_limits.NAME]`
pub(super) fn rate_limit(cx: &mut Ctx<'_>, name: &str, raw: &RawRateLimit) -> RateLimit {
    let key = |k: &str| format!("rate_limits.{name}.{k}");
    let limit_key = match &raw.key {
        None => LimitKey::ClientIp,
        Some(v) => {
            let s = v.get_ref().as_str();
            if s == "ip" {
                LimitKey::ClientIp
            } else if let Some(h) = s.strip_prefix("header:").filter(|h| valid_header_name(h)) {
                LimitKey::Header(h.to_ascii_lowercase())
            } else if let Some(q) = s.strip_prefix("query:").filter(|q| !q.is_empty()) {
                LimitKey::Query(q.to_string())
            } else {
                cx.error(
                    v.span(),
                    &key("key"),
                    format!("expected \"ip\", \"header:NAME\" or \"query:NAME\", got {s:?}"),
                );
                LimitKey::ClientIp
            }
        }
    };
    let burst =
        raw.burst.as_ref().map(|b| cx.count(Some(b), &key("burst"), 1, 1, 1_000_000) as u32);
    let mut tiers = Vec::new();
    match (&raw.rate, &raw.tiers) {
        (Some(rate), None) => {
            let quota = quota(cx, rate.get_ref(), rate.span(), &key("rate"), burst);
            tiers.push(Tier { name: "default".into(), quota, priority_shift: 0 });
        }
        (None, Some(table)) if !table.is_empty() => {
            for (tier_name, tier) in table {
                let k = key(&format!("tiers.{tier_name}"));
                tiers.push(self::tier(cx, tier_name, tier, &k, burst));
            }
        }
        (Some(rate), Some(_)) => {
            cx.error(rate.span(), &key("rate"), "set rate or tiers, not both");
        }
        (None, _) => {
            let span = super::key_span(cx.source, &["rate_limits", name]).unwrap_or(0..0);
            cx.error(
                span,
                &key("rate"),
                "missing; a rate limit needs rate = \"100/min\" or tiers = { free = \"100/min\" }",
            );
        }
    }
    let tier_index = |cx: &mut Ctx<'_>, v: &Text, k: &str| -> usize {
        match tiers.iter().position(|t| t.name == *v.get_ref()) {
            Some(i) => i,
            None => {
                let known: Vec<&str> = tiers.iter().map(|t| t.name.as_str()).collect();
                let message = format!(
                    "no tier named {:?} (expected one of: {})",
                    v.get_ref(),
                    known.join(", ")
                );
                cx.error(v.span(), k, message);
                0
            }
        }
    };
    let default_tier = match &raw.default_tier {
        Some(v) => tier_index(cx, v, &key("default_tier")),
        None if tiers.len() > 1 => {
            let span =
                raw.tiers.as_ref().and_then(|t| t.values().next()).map_or(0..0, |t| t.span());
            cx.error(
                span,
                &key("default_tier"),
                "missing; with several tiers, name the default one",
            );
            0
        }
        None => 0,
    };
    let mut keys = Vec::new();
    for (client_key, tier) in raw.keys.iter().flatten() {
        keys.push((client_key.clone(), tier_index(cx, tier, &key(&format!("keys.{client_key}")))));
    }
    let tier_header = raw.tier_header.as_ref().map(|h| {
        if !valid_header_name(h.get_ref()) {
            cx.error(
                h.span(),
                &key("tier_header"),
                format!("{:?} is not a valid header name", h.get_ref()),
            );
        }
        h.get_ref().to_ascii_lowercase()
    });
    RateLimit {
        name: name.to_string(),
        key: limit_key,
        tiers,
        tier_header,
        default_tier,
        keys,
        max_keys: cx.count(
            raw.max_keys.as_ref(),
            &key("max_keys"),
            defaults::RATE_LIMIT_MAX_KEYS,
            1,
            100_000_000,
        ) as usize,
    }
}

fn tier(
    cx: &mut Ctx<'_>,
    name: &str,
    raw: &toml::Spanned<RawTier>,
    key: &str,
    burst: Option<u32>,
) -> Tier {
    let span = raw.span();
    let (rate, tier_burst, priority) = match raw.get_ref() {
        StrOrTable::Str(rate) => (Some(rate.as_str()), None, None),
        StrOrTable::Table(t) => (t.rate.as_deref(), t.burst, t.priority.as_deref()),
    };
    let tier_burst = tier_burst.and_then(|b| match u32::try_from(b) {
        Ok(b) if (1..=1_000_000).contains(&b) => Some(b),
        _ => {
            cx.error(
                span.clone(),
                &format!("{key}.burst"),
                format!("expected a whole number from 1 to 1000000, got {b}"),
            );
            None
        }
    });
    let quota = match rate {
        Some(rate) => self::quota(cx, rate, span.clone(), key, tier_burst.or(burst)),
        None => {
            cx.error(
                span.clone(),
                &format!("{key}.rate"),
                "missing; a tier needs a rate like \"100/min\"",
            );
            Quota { count: 1, period_ns: 1_000_000_000, burst: 1 }
        }
    };
    let priority_shift = match priority {
        None | Some("keep") => 0,
        Some("raise") => -1,
        Some("lower") => 1,
        Some(other) => {
            cx.error(
                span,
                &format!("{key}.priority"),
                format!("expected \"raise\", \"lower\" or \"keep\", got {other:?}"),
            );
            0
        }
    };
    Tier { name: name.to_string(), quota, priority_shift }
}

/// Parses a rate: `N/s`, `N/min`, `N/h`, `N/day` (or a duration: `N/10s`). The burst is the
/// count unless set.
pub(super) fn quota(
    cx: &mut Ctx<'_>,
    text: &str,
    span: std::ops::Range<usize>,
    key: &str,
    burst: Option<u32>,
) -> Quota {
    let expected =
        "expected a rate like \"100/min\", \"10/s\", \"5000/h\", \"100000/day\" or \"50/10s\"";
    let parsed = text.split_once('/').and_then(|(count, per)| {
        let count: u32 = count.trim().parse().ok().filter(|&c| c > 0)?;
        let period = match per.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            other => parse_duration(other).ok().filter(|d| !d.is_zero())?,
        };
        Some((count, period))
    });
    match parsed {
        Some((count, period)) => Quota {
            count,
            period_ns: u64::try_from(period.as_nanos()).unwrap_or(u64::MAX),
            burst: burst.unwrap_or(count),
        },
        None => {
            cx.error(span, key, format!("{expected}, got {text:?}"));
            Quota { count: 1, period_ns: 1_000_000_000, burst: 1 }
        }
    }
}

/// `breaker = { ... }`
pub(super) fn breaker(cx: &mut Ctx<'_>, raw: &RawBreaker, key: &str) -> BreakerPolicy {
    let field = |f: &str| format!("{key}.{f}");
    let failure_rate = match &raw.failure_rate {
        None => defaults::BREAKER_FAILURE_RATE,
        Some(r) if (0.0..=1.0).contains(r.get_ref()) => *r.get_ref(),
        Some(r) => {
            cx.error(
                r.span(),
                &field("failure_rate"),
                format!(
                    "expected a fraction from 0 to 1 (0 turns the rule off), got {}",
                    r.get_ref()
                ),
            );
            defaults::BREAKER_FAILURE_RATE
        }
    };
    let open = cx.duration(raw.open_for.as_ref(), &field("open_for"), defaults::BREAKER_OPEN_FOR);
    let max_open = cx.duration(
        raw.max_open_for.as_ref(),
        &field("max_open_for"),
        defaults::BREAKER_MAX_OPEN_FOR,
    );
    let max_open = if raw.max_open_for.is_none() { max_open.max(open) } else { max_open };
    if let Some(m) = raw.max_open_for.as_ref().filter(|_| max_open < open) {
        cx.error(m.span(), &field("max_open_for"), format!("must be at least open_for ({open:?})"));
    }
    let policy = BreakerPolicy {
        failure_rate,
        min_requests: cx.count(
            raw.min_requests.as_ref(),
            &field("min_requests"),
            defaults::BREAKER_MIN_REQUESTS,
            1,
            1_000_000,
        ) as u32,
        window_ms: duration_ms(cx.duration(
            raw.window.as_ref(),
            &field("window"),
            defaults::BREAKER_WINDOW,
        )),
        consecutive_failures: cx.count(
            raw.consecutive_failures.as_ref(),
            &field("consecutive_failures"),
            0,
            0,
            1_000_000,
        ) as u32,
        slow_call_ms: raw
            .slow_call
            .as_ref()
            .map_or(0, |s| duration_ms(cx.duration(Some(s), &field("slow_call"), "1s"))),
        open_ms: duration_ms(open),
        max_open_ms: duration_ms(max_open),
        half_open_probes: cx.count(
            raw.half_open_probes.as_ref(),
            &field("half_open_probes"),
            1,
            1,
            1000,
        ) as u32,
    };
    if policy.failure_rate == 0.0 && policy.consecutive_failures == 0 && policy.slow_call_ms == 0 {
        let span = raw.failure_rate.as_ref().map_or(0..0, |r| r.span());
        cx.error(span, &field("failure_rate"), "every rule is off: the breaker could never open");
    }
    policy
}

/// `retry = { ... }`, or the defaults without one.
pub(super) fn retry(cx: &mut Ctx<'_>, raw: Option<&RawRetry>, key: &str) -> Retry {
    let field = |f: &str| format!("{key}.{f}");
    let budget = match raw.and_then(|r| r.budget.as_ref()) {
        None => defaults::RETRY_BUDGET,
        Some(b) if (0.0..=10.0).contains(b.get_ref()) => *b.get_ref(),
        Some(b) => {
            cx.error(
                b.span(),
                &field("budget"),
                format!("expected a fraction of requests from 0 to 10, got {}", b.get_ref()),
            );
            defaults::RETRY_BUDGET
        }
    };
    let mut on_status = Vec::new();
    for s in raw.and_then(|r| r.on_status.as_ref()).into_iter().flatten() {
        match u16::try_from(*s.get_ref()) {
            Ok(code) if (400..=599).contains(&code) => on_status.push(code),
            _ => cx.error(
                s.span(),
                &field("on_status"),
                format!("expected an error status from 400 to 599, got {}", s.get_ref()),
            ),
        }
    }
    let backoff = cx.duration(
        raw.and_then(|r| r.backoff.as_ref()),
        &field("backoff"),
        defaults::RETRY_BACKOFF,
    );
    let max_backoff = cx.duration(
        raw.and_then(|r| r.max_backoff.as_ref()),
        &field("max_backoff"),
        defaults::RETRY_MAX_BACKOFF,
    );
    Retry {
        attempts: cx.count(
            raw.and_then(|r| r.attempts.as_ref()),
            &field("attempts"),
            defaults::RETRY_ATTEMPTS,
            1,
            10,
        ) as u32,
        backoff,
        max_backoff: max_backoff.max(backoff),
        budget,
        min_retries_per_second: cx.count(
            raw.and_then(|r| r.min_retries_per_second.as_ref()),
            &field("min_retries_per_second"),
            defaults::RETRY_MIN_PER_SECOND,
            0,
            1_000_000,
        ) as u32,
        on_status,
        max_retry_after: cx.duration(
            raw.and_then(|r| r.max_retry_after.as_ref()),
            &field("max_retry_after"),
            defaults::RETRY_MAX_RETRY_AFTER,
        ),
        max_body: cx.size(
            raw.and_then(|r| r.max_body.as_ref()),
            &field("max_body"),
            defaults::RETRY_MAX_BODY,
        ),
    }
}

/// `bulkhead = { ... }`
pub(super) fn bulkhead(cx: &mut Ctx<'_>, raw: &RawBulkhead, key: &str) -> Bulkhead {
    let field = |f: &str| format!("{key}.{f}");
    Bulkhead {
        max_concurrency: cx.count(
            raw.max_concurrency.as_ref(),
            &field("max_concurrency"),
            defaults::BULKHEAD_MAX_CONCURRENCY,
            1,
            1_000_000,
        ) as usize,
        max_queue: cx.count(
            raw.max_queue.as_ref(),
            &field("max_queue"),
            defaults::BULKHEAD_MAX_QUEUE,
            0,
            10_000,
        ) as usize,
        queue_timeout: cx.duration(
            raw.queue_timeout.as_ref(),
            &field("queue_timeout"),
            defaults::BULKHEAD_QUEUE_TIMEOUT,
        ),
    }
}

/// `degrade = { ... }`
pub(super) fn degrade(cx: &mut Ctx<'_>, raw: &RawDegrade, key: &str) -> Degrade {
    let status = cx.count(raw.status.as_ref(), &format!("{key}.status"), 200, 200, 599) as u16;
    if let Some(s) = raw.status.as_ref().filter(|_| status == 204 || status == 304) {
        cx.error(
            s.span(),
            &format!("{key}.status"),
            format!("a {status} answer carries no body; choose a status that does (200, 503...)"),
        );
    }
    let content_type = raw.content_type.as_ref().map_or_else(
        || "application/json".to_string(),
        |c| {
            if c.get_ref().bytes().any(|b| b < 0x20 || b == 0x7f) {
                cx.error(
                    c.span(),
                    &format!("{key}.content_type"),
                    "must not hold control characters",
                );
            }
            c.get_ref().clone()
        },
    );
    Degrade {
        status,
        body: raw.body.as_ref().map_or_else(String::new, |b| b.get_ref().clone()),
        content_type,
    }
}

/// A route's `priority`.
pub(super) fn priority(cx: &mut Ctx<'_>, raw: Option<&Text>, key: &str) -> Priority {
    let Some(v) = raw else { return Priority::default() };
    v.get_ref().parse().unwrap_or_else(|()| {
        cx.error(
            v.span(),
            key,
            format!("expected \"P0\", \"P1\" or \"P2\", got {:?}", v.get_ref()),
        );
        Priority::default()
    })
}
