//! `[cache]` and a route's `cache = { ... }`: how much the in-memory cache holds, and how each
//! route's answers are kept, keyed and served stale.

use std::time::Duration;

use toml::Spanned;

use super::{defaults, valid_header_name, Ctx};
use crate::model::{Cache, CacheKeyPart, RouteCache};
use crate::raw::{RawCache, RawRouteCache, Text};
use crate::units::parse_duration;

/// `[cache]`, or its defaults.
pub(super) fn cache(cx: &mut Ctx<'_>, raw: &RawCache) -> Cache {
    let memory = cx.size(raw.memory.as_ref(), "cache.memory", defaults::CACHE_MEMORY);
    if let Some(m) = raw.memory.as_ref().filter(|_| memory < 1 << 20) {
        cx.error(m.span(), "cache.memory", "must be at least 1MiB");
    }
    let redis = raw.redis.as_ref().map(|url| {
        let text = url.get_ref().trim();
        let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|s| text.starts_with(s));
        if !scheme_ok {
            let message = format!("expected a URL like \"redis://127.0.0.1:6379\", got {text:?}");
            cx.error(url.span(), "cache.redis", message);
        }
        text.to_string()
    });
    let l2_timeout =
        cx.duration(raw.l2_timeout.as_ref(), "cache.l2_timeout", defaults::CACHE_L2_TIMEOUT);
    if let Some(t) = raw.l2_timeout.as_ref().filter(|_| l2_timeout > Duration::from_secs(5)) {
        cx.error(t.span(), "cache.l2_timeout", format!("expected at most 5s, got {l2_timeout:?}"));
    }
    let l2_prefix = raw
        .l2_prefix
        .as_ref()
        .map_or_else(|| defaults::CACHE_L2_PREFIX.to_string(), |p| p.get_ref().clone());
    Cache { memory, redis, l2_timeout, l2_prefix }
}

/// A route's `cache = { ... }`.
pub(super) fn route_cache(cx: &mut Ctx<'_>, raw: &Spanned<RawRouteCache>, key: &str) -> RouteCache {
    let r = raw.get_ref();
    let field = |f: &str| format!("{key}.{f}");
    let ttl = cx.duration(r.ttl.as_ref(), &field("ttl"), defaults::CACHE_TTL);
    let crisis_ttl = r.crisis_ttl.as_ref().map(|t| {
        let crisis = cx.duration(Some(t), &field("crisis_ttl"), defaults::CACHE_TTL);
        if crisis < ttl {
            let message = format!("must be at least ttl ({ttl:?}): crisis mode stretches TTLs");
            cx.error(t.span(), &field("crisis_ttl"), message);
        }
        crisis
    });
    let stale_while_revalidate =
        zero_or_more(cx, r.stale_while_revalidate.as_ref(), &field("stale_while_revalidate"));
    let stale_if_error = zero_or_more(cx, r.stale_if_error.as_ref(), &field("stale_if_error"));
    let parts = match &r.key {
        None => vec![CacheKeyPart::Host, CacheKeyPart::Path, CacheKeyPart::Query],
        Some(parts) => parts.iter().filter_map(|p| key_part(cx, p, &field("key"))).collect(),
    };
    if r.key.is_some() && !parts.contains(&CacheKeyPart::Path) {
        let span = r.key.as_ref().and_then(|k| k.first()).map_or(raw.span(), Spanned::span);
        cx.warn(span, &field("key"), "a key without \"path\" shares one entry between every path");
    }
    let max_object_size =
        cx.size(r.max_object_size.as_ref(), &field("max_object_size"), defaults::CACHE_MAX_OBJECT);
    let coalesce_wait = cx.duration(
        r.coalesce_wait.as_ref(),
        &field("coalesce_wait"),
        defaults::CACHE_COALESCE_WAIT,
    );
    RouteCache {
        ttl,
        crisis_ttl,
        stale_while_revalidate,
        stale_if_error,
        key: parts,
        max_object_size,
        override_origin: r.override_origin.unwrap_or(false),
        share_authorized: r.share_authorized.unwrap_or(false),
        share_cookies: r.share_cookies.unwrap_or(false),
        coalesce_wait,
    }
}

/// A duration that may be zero (off), zero when absent.
fn zero_or_more(cx: &mut Ctx<'_>, value: Option<&Text>, key: &str) -> Duration {
    let Some(v) = value else { return Duration::ZERO };
    parse_duration(v.get_ref()).unwrap_or_else(|e| {
        cx.error(v.span(), key, e);
        Duration::ZERO
    })
}

fn key_part(cx: &mut Ctx<'_>, part: &Text, key: &str) -> Option<CacheKeyPart> {
    let p = part.get_ref().as_str();
    match p {
        "host" => Some(CacheKeyPart::Host),
        "path" => Some(CacheKeyPart::Path),
        "query" => Some(CacheKeyPart::Query),
        _ => match p.strip_prefix("header:").filter(|h| valid_header_name(h)) {
            Some(h) => Some(CacheKeyPart::Header(h.to_ascii_lowercase())),
            None => {
                let message =
                    format!("expected \"host\", \"path\", \"query\" or \"header:NAME\", got {p:?}");
                cx.error(part.span(), key, message);
                None
            }
        },
    }
}
