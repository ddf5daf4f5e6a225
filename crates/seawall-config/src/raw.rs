//! The raw configuration: a serde mirror of the TOML file. Unknown keys are errors; values that
//! validation interprets later keep their source span so errors can point at them.
//!
//! A key the gateway cannot run without (an upstream's `servers`) is optional here and required by
//! validation, so that a file missing it still has everything else checked.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// A string value with its position in the file.
pub type Text = Spanned<String>;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RawRateLimit>,
    #[serde(default)]
    pub overload: RawOverload,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub dns: RawDns,
    pub queue: Option<RawQueue>,
    #[serde(default)]
    pub egress: BTreeMap<String, RawEgress>,
}

/// `[egress.NAME]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawEgress {
    pub providers: Option<Vec<RawProvider>>,
    pub max_wait: Option<Text>,
    pub park_for: Option<Text>,
    pub retries: Option<Spanned<i64>>,
    pub backoff: Option<Text>,
    pub cache_ttl: Option<Text>,
    pub cache_key_headers: Option<Vec<Text>>,
}

/// One of `providers = [{ ... }]` in an egress group.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { name = \"primary\", url = \"https://api.example.com\" }"
)]
pub struct RawProvider {
    pub name: Option<Text>,
    pub url: Option<Text>,
    pub rate: Option<Text>,
    pub burst: Option<Spanned<i64>>,
    pub daily_quota: Option<Spanned<i64>>,
    pub keys_env: Option<Vec<Text>>,
    pub key_header: Option<Text>,
    pub key_query: Option<Text>,
    pub key_prefix: Option<Text>,
    pub timeout: Option<Text>,
    pub connect_timeout: Option<Text>,
    pub ca_file: Option<Text>,
    pub server_name: Option<Text>,
    pub breaker: Option<RawBreaker>,
    pub max_connections: Option<Spanned<i64>>,
}

/// `[queue]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawQueue {
    pub backend: Option<Text>,
    pub data_dir: Option<Text>,
    pub redis: Option<Text>,
    pub redis_prefix: Option<Text>,
    pub jobs_path: Option<Text>,
    pub jobs_rate_limit: Option<Text>,
    pub max_jobs: Option<Spanned<i64>>,
    pub max_bytes: Option<Spanned<RawSize>>,
    pub max_body: Option<Spanned<RawSize>>,
    pub headers: Option<Vec<Text>>,
    pub keep_finished: Option<Text>,
    pub lease: Option<Text>,
    pub retry_after: Option<Text>,
    pub commit_delay: Option<Text>,
    #[serde(default)]
    pub topics: BTreeMap<String, RawTopic>,
}

/// `[queue.topics.NAME]`: one topic's bounds and how it is delivered.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawTopic {
    pub deliver_to: Option<Text>,
    pub max_jobs: Option<Spanned<i64>>,
    pub max_bytes: Option<Spanned<RawSize>>,
    pub concurrency: Option<Spanned<i64>>,
    pub rate: Option<Text>,
    pub max_attempts: Option<Spanned<i64>>,
    pub backoff: Option<Text>,
    pub max_backoff: Option<Text>,
    pub paused: Option<bool>,
}

/// `queue = { topic = "emails", deliver_to = "mailer" }` on a route.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { topic = \"emails\", deliver_to = \"mailer\" }"
)]
pub struct RawRouteQueue {
    pub topic: Option<Text>,
    pub deliver_to: Option<Text>,
}

/// `[dns]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawDns {
    pub servers: Option<Vec<Text>>,
    pub resolve_interval: Option<Text>,
    pub min_ttl: Option<Text>,
    pub max_ttl: Option<Text>,
}

/// `[cache]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawCache {
    pub memory: Option<Spanned<RawSize>>,
    pub redis: Option<Text>,
    pub l2_timeout: Option<Text>,
    pub l2_prefix: Option<Text>,
}

/// `cache = { ... }` on a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawRouteCache {
    pub ttl: Option<Text>,
    pub crisis_ttl: Option<Text>,
    pub stale_while_revalidate: Option<Text>,
    pub stale_if_error: Option<Text>,
    pub key: Option<Vec<Text>>,
    pub max_object_size: Option<Spanned<RawSize>>,
    #[serde(rename = "override")]
    pub override_origin: Option<bool>,
    pub share_authorized: Option<bool>,
    pub share_cookies: Option<bool>,
    pub coalesce_wait: Option<Text>,
}

/// `[overload]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawOverload {
    pub enabled: Option<bool>,
    pub sample_interval: Option<Text>,
    pub cpu: Option<Text>,
    pub p2_at: Option<Spanned<f64>>,
    pub p1_at: Option<Spanned<f64>>,
    pub p0_at: Option<Spanned<f64>>,
    pub memory_budget: Option<Spanned<RawSize>>,
    pub memory_soft: Option<Spanned<f64>>,
    pub memory_hard: Option<Spanned<f64>>,
    pub max_wait: Option<Text>,
    pub hysteresis: Option<Spanned<f64>>,
    pub min_dwell: Option<Text>,
    pub retry_after: Option<Text>,
    pub latency_tolerance: Option<Spanned<f64>>,
    pub latency_slack: Option<Text>,
    pub probe_every: Option<Text>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawServer {
    pub listen: Option<Text>,
    pub admin: Option<Text>,
    pub admin_token: Option<Text>,
    pub admin_token_for_reads: Option<bool>,
    pub workers: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub header_timeout: Option<Text>,
    pub keepalive_timeout: Option<Text>,
    pub max_header_size: Option<Spanned<RawSize>>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_body_size: Option<Spanned<RawSize>>,
    pub drain_timeout: Option<Text>,
    pub body_timeout: Option<Text>,
    pub send_timeout: Option<Text>,
    pub tunnel_idle_timeout: Option<Text>,
    pub http2: Option<bool>,
    pub deadline_header: Option<Text>,
    pub proxy_protocol: Option<bool>,
    pub trusted_proxies: Option<Vec<Text>>,
    pub forwarded_for: Option<Text>,
    pub drain_delay: Option<Text>,
    pub request_id: Option<bool>,
    pub request_id_header: Option<Text>,
    pub trust_request_id: Option<bool>,
    pub prefix_match: Option<Text>,
    pub tls: Option<RawServerTls>,
    pub http_redirect: Option<Text>,
    pub egress_listen: Option<Text>,
    pub egress_private: Option<bool>,
}

/// `tls = { ... }` in `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawServerTls {
    pub certificates: Option<Spanned<Vec<Spanned<RawCertificate>>>>,
    pub min_version: Option<Text>,
    pub handshake_timeout: Option<Text>,
    pub session_tickets: Option<bool>,
    pub session_cache: Option<Spanned<i64>>,
}

/// One entry of `tls.certificates`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table: { cert = \"site.pem\", key = \"site.key\" }")]
pub struct RawCertificate {
    pub cert: Text,
    pub key: Text,
    pub names: Option<Vec<Text>>,
}

/// `tls = { ... }` on an upstream.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawUpstreamTls {
    pub server_name: Option<Text>,
    pub ca_file: Option<Text>,
    pub client_cert: Option<Text>,
    pub client_key: Option<Text>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawLog {
    pub level: Option<Text>,
    pub format: Option<Text>,
    pub access_log: Option<bool>,
    pub access_log_file: Option<Text>,
    pub access_log_query: Option<bool>,
}

/// A size written as a number of bytes or a string with a unit.
#[derive(Debug, Clone)]
pub enum RawSize {
    Bytes(i64),
    Text(String),
}

// By hand rather than `untagged`, whose error ("data did not match any variant") says neither what
// was found nor what is expected.
impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl<'de> Visitor<'de> for SizeVisitor {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: a number of bytes or a string like \"64KiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawSize, E> {
                i64::try_from(v)
                    .map(RawSize::Bytes)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// `[upstreams.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawUpstream {
    pub servers: Option<Spanned<Vec<Spanned<RawServerEntry>>>>,
    pub balance: Option<Text>,
    pub hash_on: Option<Text>,
    pub connect_timeout: Option<Text>,
    pub timeout: Option<Text>,
    pub read_timeout: Option<Text>,
    pub send_timeout: Option<Text>,
    pub pool: Option<RawPool>,
    /// Not `Spanned`: a table written with dotted keys (`health.interval = "1s"`) has no span, and
    /// toml refuses to read it into one.
    pub health: Option<RawHealth>,
    pub passive: Option<RawPassive>,
    pub total_timeout: Option<Text>,
    pub breaker: Option<RawBreaker>,
    pub retry: Option<RawRetry>,
    pub bulkhead: Option<RawBulkhead>,
    pub fallback: Option<Vec<Text>>,
    pub adaptive_concurrency: Option<bool>,
    pub max_latency: Option<Text>,
    pub tls: Option<RawUpstreamTls>,
}

/// A value written either as a string or as a table `T`: a server (`"host:port"` or
/// `{ address = "host:port", weight = 3 }`), a tier (`"100/min"` or `{ rate = "100/min", burst = 10 }`).
#[derive(Debug, Clone)]
pub enum StrOrTable<T> {
    Str(String),
    Table(T),
}

/// What a [`StrOrTable`] says it expected when it finds neither.
pub trait Expecting {
    const EXPECTING: &'static str;
}

// By hand rather than `untagged`: an untagged enum buffers the table and turns an unknown or
// mistyped key inside it into "data did not match any variant"; this way the table is read by
// `T` itself and its errors name the key.
impl<'de, T: Deserialize<'de> + Expecting> Deserialize<'de> for StrOrTable<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Expecting> Visitor<'de> for EntryVisitor<T> {
            type Value = StrOrTable<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(T::EXPECTING)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrOrTable<T>, E> {
                Ok(StrOrTable::Str(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StrOrTable<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(StrOrTable::Table)
            }
        }
        deserializer.deserialize_any(EntryVisitor(std::marker::PhantomData))
    }
}

/// One entry of `servers`.
pub type RawServerEntry = StrOrTable<RawWeightedServer>;

impl Expecting for RawWeightedServer {
    const EXPECTING: &'static str = "\"host:port\" or { address = \"host:port\", weight = N }";
}

/// `{ address = "...", weight = N }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawWeightedServer {
    pub address: String,
    pub weight: Option<i64>,
}

/// `pool = { ... }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawPool {
    pub max_idle: Option<Spanned<i64>>,
    pub idle_timeout: Option<Text>,
}

/// `health = { ... }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawHealth {
    pub path: Option<Text>,
    pub interval: Option<Text>,
    pub timeout: Option<Text>,
    pub unhealthy_after: Option<Spanned<i64>>,
    pub healthy_after: Option<Spanned<i64>>,
    pub host: Option<Text>,
}

/// `passive = { ... }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawPassive {
    pub consecutive_failures: Option<Spanned<i64>>,
    pub base_ejection: Option<Text>,
    pub max_ejection: Option<Text>,
    pub max_ejected_percent: Option<Spanned<i64>>,
}

/// `[[routes]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawRoute {
    pub name: Option<Text>,
    pub host: Option<Text>,
    pub path_prefix: Option<Text>,
    pub path: Option<Text>,
    pub methods: Option<Vec<Text>>,
    pub header: Option<RawHeaderMatch>,
    pub upstream: Option<Text>,
    pub preserve_host: Option<bool>,
    pub max_body_size: Option<Spanned<RawSize>>,
    pub rate_limit: Option<Text>,
    pub priority: Option<Text>,
    pub writes: Option<bool>,
    pub read_upstream: Option<Text>,
    pub degrade: Option<RawDegrade>,
    pub disable_in_crisis: Option<bool>,
    pub cache: Option<Spanned<RawRouteCache>>,
    pub prefix_match: Option<Text>,
    pub strip_prefix: Option<Spanned<RawStrip>>,
    pub prefix_rewrite: Option<Text>,
    pub request_headers: Option<RawHeaderActions>,
    pub response_headers: Option<RawHeaderActions>,
    pub redirect: Option<Spanned<RawRedirect>>,
    pub timeout: Option<Text>,
    pub queue: Option<Spanned<RawRouteQueue>>,
    pub on_failure: Option<Text>,
    pub egress: Option<Text>,
}

/// `strip_prefix = true` (the route's own prefix) or `strip_prefix = "/v1"`.
#[derive(Debug, Clone)]
pub enum RawStrip {
    Route(bool),
    Text(String),
}

// By hand rather than `untagged`, for an error that says what is expected.
impl<'de> Deserialize<'de> for RawStrip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StripVisitor;
        impl<'de> Visitor<'de> for StripVisitor {
            type Value = RawStrip;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or a path prefix like \"/v1\"")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawStrip, E> {
                Ok(RawStrip::Route(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawStrip, E> {
                Ok(RawStrip::Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(StripVisitor)
    }
}

/// `request_headers = { ... }` or `response_headers = { ... }` on a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawHeaderActions {
    pub set: Option<BTreeMap<String, Text>>,
    pub add: Option<BTreeMap<String, Text>>,
    pub remove: Option<Vec<Text>>,
}

/// `redirect = { ... }` on a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawRedirect {
    pub status: Option<Spanned<i64>>,
    pub location: Option<Text>,
    pub keep_path: Option<bool>,
}

/// `header = { name = "x-canary", value = "1" }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawHeaderMatch {
    pub name: Text,
    pub value: Option<Text>,
}

/// `breaker = { ... }` on an upstream.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawBreaker {
    pub failure_rate: Option<Spanned<f64>>,
    pub min_requests: Option<Spanned<i64>>,
    pub window: Option<Text>,
    pub consecutive_failures: Option<Spanned<i64>>,
    pub slow_call: Option<Text>,
    pub open_for: Option<Text>,
    pub max_open_for: Option<Text>,
    pub half_open_probes: Option<Spanned<i64>>,
}

/// `retry = { ... }` on an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawRetry {
    pub attempts: Option<Spanned<i64>>,
    pub backoff: Option<Text>,
    pub max_backoff: Option<Text>,
    pub budget: Option<Spanned<f64>>,
    pub min_retries_per_second: Option<Spanned<i64>>,
    pub on_status: Option<Vec<Spanned<i64>>>,
    pub max_retry_after: Option<Text>,
    pub max_body: Option<Spanned<RawSize>>,
}

/// `bulkhead = { ... }` on an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawBulkhead {
    pub max_concurrency: Option<Spanned<i64>>,
    pub max_queue: Option<Spanned<i64>>,
    pub queue_timeout: Option<Text>,
}

/// `degrade = { ... }` on a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawDegrade {
    pub status: Option<Spanned<i64>>,
    pub body: Option<Text>,
    pub content_type: Option<Text>,
}

/// `[rate_limits.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawRateLimit {
    pub key: Option<Text>,
    pub rate: Option<Text>,
    pub burst: Option<Spanned<i64>>,
    pub tiers: Option<BTreeMap<String, Spanned<RawTier>>>,
    pub tier_header: Option<Text>,
    pub default_tier: Option<Text>,
    pub keys: Option<BTreeMap<String, Text>>,
    pub max_keys: Option<Spanned<i64>>,
}

/// One tier: `"1000/min"` or `{ rate = "1000/min", burst = 50, priority = "raise" }`.
pub type RawTier = StrOrTable<RawTierTable>;

/// A tier written as a table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawTierTable {
    pub rate: Option<String>,
    pub burst: Option<i64>,
    pub priority: Option<String>,
}

impl Expecting for RawTierTable {
    const EXPECTING: &'static str =
        "a rate like \"100/min\" or { rate = \"100/min\", burst = N, priority = \"raise\" }";
}
