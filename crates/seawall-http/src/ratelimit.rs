//! Rate limits on the request path: which key a request counts against (client address, a header
//! or a query parameter), which tier's quota applies, the decision (GCRA in a bounded key table,
//! see [`seawall_core::ratelimit`]), the `RateLimit-Policy` / `RateLimit` fields that tell a
//! client where it stands, and the limiter's metrics.
//!
//! A limiter's key table outlives a reload that keeps its name and `max_keys`, so nobody gets a
//! fresh quota because the configuration changed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;

use seawall_config::{LimitKey, RateLimit};
use seawall_core::gcra::{ceil_secs, Gcra};
use seawall_core::priority::Priority;
use seawall_core::ratelimit::{Check, KeyTable};

use crate::headers::{itoa_u64, push_field};
use crate::metrics::{escape, family, Counter};
use crate::problem::{Reason, Refusal};
use crate::request::RequestView;

/// How requests fared, per tier.
struct TierCounters {
    allowed: Counter,
    limited: Counter,
}

/// One `[rate_limits.NAME]` with its live state.
pub struct Limiter {
    pub config: RateLimit,
    gcras: Vec<Gcra>,
    table: Arc<KeyTable>,
    /// Static key → tier.
    keys: HashMap<Vec<u8>, usize>,
    /// Per tier: the `RateLimit-Policy` value, and the start of the `RateLimit` value.
    policy_fields: Vec<(String, String)>,
    counters: Arc<Vec<TierCounters>>,
    table_full: Arc<Counter>,
    /// Two independently seeded hashers for keys longer than [`MAX_KEY_BYTES`].
    hashers: (RandomState, RandomState),
}

/// Keys up to this long are kept as sent; longer ones by a 128-bit keyed hash.
const MAX_KEY_BYTES: usize = 64;

/// What a request that passed its limit carries to its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed {
    /// The request's priority, moved by its tier.
    pub priority: Priority,
    /// `RateLimit-Policy` and `RateLimit` as HTTP/1 field lines, for the answer.
    pub fields: Vec<u8>,
}

impl Limiter {
    /// A limiter for `config`, keeping the key table and counters of `previous` when it had the
    /// same name, key table size and tiers.
    pub fn new(config: RateLimit, previous: Option<&Limiter>, shards: usize) -> Limiter {
        let gcras: Vec<Gcra> = config.tiers.iter().map(|t| Gcra::new(t.quota)).collect();
        let keeps = previous.filter(|p| {
            p.config.max_keys == config.max_keys
                && p.config.tiers.iter().map(|t| &t.name).eq(config.tiers.iter().map(|t| &t.name))
        });
        let table = keeps
            .map_or_else(|| Arc::new(KeyTable::new(config.max_keys)), |p| Arc::clone(&p.table));
        let counters = keeps.map_or_else(
            || {
                let tier = |_| TierCounters {
                    allowed: Counter::new(shards),
                    limited: Counter::new(shards),
                };
                Arc::new(config.tiers.iter().map(tier).collect())
            },
            |p| Arc::clone(&p.counters),
        );
        let table_full =
            keeps.map_or_else(|| Arc::new(Counter::new(shards)), |p| Arc::clone(&p.table_full));
        let single = config.tiers.len() == 1 && config.tier_header.is_none();
        let policy_fields = config
            .tiers
            .iter()
            .map(|t| {
                let name = if single { &config.name } else { &t.name };
                let window = (t.quota.period_ns / 1_000_000_000).max(1);
                let policy = format!("\"{}\";q={};w={window}", sf_string(name), t.quota.count);
                (policy, format!("\"{}\";r=", sf_string(name)))
            })
            .collect();
        let keys = config.keys.iter().map(|(k, tier)| (k.as_bytes().to_vec(), *tier)).collect();
        let hashers =
            keeps.map_or_else(|| (RandomState::new(), RandomState::new()), |p| p.hashers.clone());
        Limiter { gcras, table, keys, policy_fields, counters, table_full, hashers, config }
    }

    /// Decides `request` at `now_ns` for a route of `priority`.
    pub fn check(
        &self,
        request: &RequestView<'_>,
        priority: Priority,
        now_ns: u64,
    ) -> Result<Passed, Refusal> {
        let mut key = Vec::with_capacity(40);
        self.key_of(request, &mut key);
        let tier = self.tier_of(request, &key[1..]);
        let check = self.table.check(&key, &self.gcras[tier], now_ns);
        let counters = &self.counters[tier];
        let mut fields = Vec::with_capacity(96);
        let (policy, prefix) = &self.policy_fields[tier];
        push_field(&mut fields, b"ratelimit-policy", policy.as_bytes());
        let (remaining, reset_ns, refused) = match check {
            Check::Allow { remaining, reset_ns } => (remaining, reset_ns, None),
            Check::Deny { retry_after_ns, reset_ns } => (0, reset_ns, Some(retry_after_ns)),
            Check::TableFull { retry_after_ns } => {
                self.table_full.add(1);
                (0, retry_after_ns, Some(retry_after_ns))
            }
        };
        // `ratelimit: "<name>";r=<remaining>;t=<seconds>`, written in place.
        fields.extend_from_slice(b"ratelimit: ");
        fields.extend_from_slice(prefix.as_bytes());
        fields.extend_from_slice(itoa_u64(u64::from(remaining), &mut [0u8; 20]));
        fields.extend_from_slice(b";t=");
        fields.extend_from_slice(itoa_u64(ceil_secs(reset_ns), &mut [0u8; 20]));
        fields.extend_from_slice(b"\r\n");
        let Some(retry_after_ns) = refused else {
            counters.allowed.add(1);
            let shift = self.config.tiers[tier].priority_shift;
            return Ok(Passed { priority: priority.shifted(shift), fields });
        };
        counters.limited.add(1);
        let full = matches!(check, Check::TableFull { .. });
        let detail = if full {
            format!("rate limit {:?}: too many distinct clients right now", self.config.name)
        } else {
            format!("rate limit {:?} exceeded", self.config.name)
        };
        let mut refusal = Refusal::new(Reason::RateLimited, detail);
        let seconds = ceil_secs(retry_after_ns).max(1);
        refusal.retry_after = Some(u32::try_from(seconds).unwrap_or(u32::MAX));
        refusal.fields = fields;
        Err(refusal)
    }

    /// The key a request counts against: a byte saying what kind, then the value. A request
    /// without the header or parameter its limiter keys on counts against its address.
    fn key_of(&self, request: &RequestView<'_>, key: &mut Vec<u8>) {
        let value = match &self.config.key {
            LimitKey::ClientIp => None,
            LimitKey::Header(name) => request.headers.first(name),
            LimitKey::Query(name) => query_value(request.target, name.as_bytes()),
        };
        match value {
            // A long key is remembered by a keyed 128-bit hash: a client cannot make the table
            // hold its large keys.
            Some(v) if v.len() > MAX_KEY_BYTES => {
                key.push(b'h');
                key.extend_from_slice(&self.hashers.0.hash_one(v).to_le_bytes());
                key.extend_from_slice(&self.hashers.1.hash_one(v).to_le_bytes());
            }
            Some(v) => {
                key.push(b'k');
                key.extend_from_slice(v);
            }
            None => {
                key.push(b'i');
                match request.client.addr.ip().to_canonical() {
                    IpAddr::V4(ip) => key.extend_from_slice(&ip.octets()),
                    // One IPv6 client usually holds a whole /64: it counts as one.
                    IpAddr::V6(ip) => key.extend_from_slice(&ip.octets()[..8]),
                }
            }
        }
    }

    /// The tier of a request whose key is `key`: the static key table, then the tier header,
    /// then the default.
    fn tier_of(&self, request: &RequestView<'_>, key: &[u8]) -> usize {
        if let Some(&tier) = self.keys.get(key) {
            return tier;
        }
        let named = self.config.tier_header.as_deref().and_then(|h| request.headers.first(h));
        named
            .and_then(|name| self.config.tiers.iter().position(|t| t.name.as_bytes() == name))
            .unwrap_or(self.config.default_tier)
    }

    /// Forgets the keys that owe nothing (called about once a second).
    pub fn sweep(&self, now_ns: u64) -> usize {
        self.table.sweep(now_ns)
    }

    /// This limiter's samples for `/metrics`, under the families [`render_metrics`] opens.
    fn samples(&self, out: &mut String, family: Family) {
        let limit = escape(&self.config.name);
        match family {
            Family::Requests => {
                for (tier, counters) in self.config.tiers.iter().zip(self.counters.iter()) {
                    let tier = escape(&tier.name);
                    for (result, counter) in
                        [("allowed", &counters.allowed), ("limited", &counters.limited)]
                    {
                        let _ = writeln!(
                            out,
                            "seawall_rate_limit_requests_total{{limit=\"{limit}\",tier=\"{tier}\",result=\"{result}\"}} {}",
                            counter.get()
                        );
                    }
                }
            }
            Family::Keys => {
                let _ = writeln!(
                    out,
                    "seawall_rate_limit_keys{{limit=\"{limit}\"}} {}",
                    self.table.len()
                );
            }
            Family::TableFull => {
                let _ = writeln!(
                    out,
                    "seawall_rate_limit_table_full_total{{limit=\"{limit}\"}} {}",
                    self.table_full.get()
                );
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Family {
    Requests,
    Keys,
    TableFull,
}

/// Writes every limiter's metrics.
pub fn render_metrics(out: &mut String, limiters: &[Arc<Limiter>]) {
    let families = [
        (
            Family::Requests,
            "seawall_rate_limit_requests_total",
            "counter",
            "Requests checked by a rate limit, by tier and result (allowed, limited).",
        ),
        (
            Family::Keys,
            "seawall_rate_limit_keys",
            "gauge",
            "Client keys a rate limit remembers now (those still owing part of their quota).",
        ),
        (
            Family::TableFull,
            "seawall_rate_limit_table_full_total",
            "counter",
            "Requests from new keys refused because the key table was full of keys in debt.",
        ),
    ];
    for (which, name, kind, help) in families {
        family(out, name, kind, help);
        for limiter in limiters {
            limiter.samples(out, which);
        }
    }
}

/// The raw value of query parameter `name` in `target` (not percent-decoded: keys compare as
/// sent).
fn query_value<'a>(target: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let query = &target[target.iter().position(|&b| b == b'?')? + 1..];
    let query = query.split(|&b| b == b'#').next().unwrap_or_default();
    query.split(|&b| b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &b""[..]),
        };
        (k == name && !v.is_empty()).then_some(v)
    })
}

/// A name made safe for a structured-field string: only printable ASCII, no `"` or `\`.
fn sf_string(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .filter(|c| *c != '"' && *c != '\\')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_found_by_exact_name() {
        assert_eq!(query_value(b"/a?key=abc&x=1", b"key"), Some(&b"abc"[..]));
        assert_eq!(query_value(b"/a?x=1&key=abc", b"key"), Some(&b"abc"[..]));
        assert_eq!(query_value(b"/a?akey=abc", b"key"), None);
        assert_eq!(query_value(b"/a?key=", b"key"), None);
        assert_eq!(query_value(b"/a?key", b"key"), None);
        assert_eq!(query_value(b"/a", b"key"), None);
        assert_eq!(query_value(b"/a?key=v#frag", b"key"), Some(&b"v"[..]));
    }

    #[test]
    fn policy_names_are_safe_structured_field_strings() {
        assert_eq!(sf_string("free"), "free");
        assert_eq!(sf_string("a\"b\\c\u{e9}"), "abc");
    }
}
