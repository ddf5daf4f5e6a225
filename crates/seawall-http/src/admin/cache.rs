//! The cache on the admin side: `POST /api/v1/cache/purge` (token-protected) with
//! `{"key": "/products/1?color=red"}` — the entries for that path and query, every host and
//! variant — or `{"prefix": "/products"}`; its size in `/metrics` and `/api/v1/state`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::switches::{bad_request, read_json};
use super::text;
use crate::metrics::family;
use crate::snapshot::Snapshot;
use crate::state::Shared;

/// `POST /api/v1/cache/purge`.
pub async fn purge(shared: &Shared, req: Request<Incoming>) -> Response<Bytes> {
    let body = match read_json(req).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    const EXPECTED: &str = "expected {\"key\": \"/path?query\"} or {\"prefix\": \"/path\"}";
    let text_of = |name: &str| match body.get(name) {
        None => Ok(None),
        Some(Value::String(s)) if s.starts_with('/') => Ok(Some(s.clone())),
        Some(_) => Err(()),
    };
    let (Ok(key), Ok(prefix)) = (text_of("key"), text_of("prefix")) else {
        return bad_request(EXPECTED);
    };
    if key.is_none() == prefix.is_none() {
        return bad_request(EXPECTED);
    }
    let snapshot = shared.snapshot.load();
    let purged = snapshot.cache.purge(key.as_deref(), prefix.as_deref());
    tracing::warn!(
        key = key.as_deref(),
        prefix = prefix.as_deref(),
        purged,
        "cache purged by an operator"
    );
    let answer = json!({"key": key, "prefix": prefix, "purged": purged});
    text(StatusCode::OK, "application/json", answer.to_string())
}

/// The cache's size and evictions.
pub fn metrics(out: &mut String, snapshot: &Snapshot) {
    let (bytes, entries, evictions) = snapshot.cache.usage();
    let gauges = [
        (
            "seawall_cache_bytes",
            "gauge",
            "Bytes the cache holds now (bodies, fields and keys).",
            bytes,
        ),
        (
            "seawall_cache_capacity_bytes",
            "gauge",
            "Bytes the cache may hold now (cache.memory, less while the memory guard shrinks it).",
            snapshot.cache.capacity(),
        ),
        (
            "seawall_cache_entries",
            "gauge",
            "Entries the cache holds now (answers, and the variant lists of answers that vary).",
            entries as u64,
        ),
        (
            "seawall_cache_evictions_total",
            "counter",
            "Entries the cache evicted to make room.",
            evictions,
        ),
    ];
    for (name, kind, help, value) in gauges {
        family(out, name, kind, help);
        let _ = writeln!(out, "{name}{{layer=\"l1\"}} {value}");
    }
    let Some(l2) = snapshot.cache.l2() else { return };
    let name = "seawall_cache_l2_total";
    family(out, name, "counter", "The shared layer (Redis): lookups that found an answer (hit) or none (miss), stores sent, failures (error: a timeout past cache.l2_timeout, a refused or broken connection), and lookups and stores skipped while its breaker is open.");
    let c = &l2.counters;
    for (event, counter) in [
        ("hit", &c.hits),
        ("miss", &c.misses),
        ("store", &c.stores),
        ("error", &c.errors),
        ("skipped", &c.skipped),
    ] {
        let _ = writeln!(out, "{name}{{event=\"{event}\"}} {}", counter.load(Relaxed));
    }
    let name = "seawall_cache_l2_up";
    family(out, name, "gauge", "1 while the shared layer is used, 0 while its breaker skips it (after 3 failures in a row, for 5 s at a time).");
    let _ = writeln!(out, "{name} {}", u8::from(!l2.is_open()));
}

/// The `cache` object of `/api/v1/state`.
pub fn state(snapshot: &Snapshot) -> Value {
    let (bytes, entries, evictions) = snapshot.cache.usage();
    let l2 = snapshot.cache.l2().map(|l2| {
        let c = &l2.counters;
        json!({
            "up": !l2.is_open(),
            "hits": c.hits.load(Relaxed),
            "misses": c.misses.load(Relaxed),
            "stores": c.stores.load(Relaxed),
            "errors": c.errors.load(Relaxed),
            "skipped": c.skipped.load(Relaxed),
        })
    });
    json!({
        "l2": l2,
        "l1": {
            "bytes": bytes,
            "capacity_bytes": snapshot.cache.capacity(),
            "entries": entries,
            "evictions": evictions,
        }
    })
}
