//! Stage two: raw model → validated [`Config`]. Collects every problem instead of stopping at the
//! first, so `seawall check` can list them all.

use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use crate::error::{ConfigError, ConfigErrors};
use crate::model::*;
use crate::raw::*;
use crate::recover::key_span;
use crate::units::{parse_duration, parse_size};

/// Defaults, in one place so docs and code agree.
pub mod defaults {
    pub const LISTEN: &str = "127.0.0.1:8080";
    pub const ADMIN: &str = "127.0.0.1:9901";
    pub const MAX_CONNECTIONS: usize = 10_000;
    pub const HEADER_TIMEOUT: &str = "10s";
    pub const KEEPALIVE_TIMEOUT: &str = "60s";
    pub const MAX_HEADER_SIZE: usize = 16 * 1024;
    pub const MAX_HEADERS: usize = 100;
    pub const MAX_BODY_SIZE: u64 = 100 << 20;
    pub const DRAIN_TIMEOUT: &str = "30s";
    pub const BODY_TIMEOUT: &str = "60s";
    pub const SEND_TIMEOUT: &str = "60s";
    pub const TUNNEL_IDLE_TIMEOUT: &str = "1h";
    pub const READ_TIMEOUT: &str = "60s";
    pub const UPSTREAM_SEND_TIMEOUT: &str = "60s";
    pub const CONNECT_TIMEOUT: &str = "1s";
    pub const TIMEOUT: &str = "30s";
    pub const POOL_IDLE_TIMEOUT: &str = "60s";
    pub const HEALTH_INTERVAL: &str = "5s";
    pub const HEALTH_TIMEOUT: &str = "1s";
    pub const HEALTH_AFTER: u32 = 2;
    pub const PASSIVE_FAILURES: u32 = 5;
    pub const PASSIVE_BASE: &str = "10s";
    pub const PASSIVE_MAX: &str = "300s";
    pub const PASSIVE_PERCENT: u32 = 50;
    pub const DEADLINE_HEADER: &str = "x-request-timeout";
    pub const REQUEST_ID_HEADER: &str = "x-request-id";
    pub const RATE_LIMIT_MAX_KEYS: u64 = 100_000;
    pub const BREAKER_FAILURE_RATE: f64 = 0.5;
    pub const BREAKER_MIN_REQUESTS: u64 = 20;
    pub const BREAKER_WINDOW: &str = "10s";
    pub const BREAKER_OPEN_FOR: &str = "30s";
    pub const BREAKER_MAX_OPEN_FOR: &str = "5m";
    pub const RETRY_ATTEMPTS: u64 = 1;
    pub const RETRY_BACKOFF: &str = "25ms";
    pub const RETRY_MAX_BACKOFF: &str = "1s";
    pub const RETRY_BUDGET: f64 = 0.2;
    pub const RETRY_MIN_PER_SECOND: u64 = 3;
    pub const RETRY_MAX_RETRY_AFTER: &str = "2s";
    pub const RETRY_MAX_BODY: u64 = 64 * 1024;
    pub const BULKHEAD_MAX_CONCURRENCY: u64 = 100;
    pub const BULKHEAD_MAX_QUEUE: u64 = 100;
    pub const BULKHEAD_QUEUE_TIMEOUT: &str = "1s";
    pub const OVERLOAD_SAMPLE_INTERVAL: &str = "100ms";
    pub const OVERLOAD_P2_AT: f64 = 0.80;
    pub const OVERLOAD_P1_AT: f64 = 0.90;
    pub const OVERLOAD_P0_AT: f64 = 0.95;
    pub const OVERLOAD_MEMORY_SOFT: f64 = 0.80;
    pub const OVERLOAD_MEMORY_HARD: f64 = 0.95;
    pub const OVERLOAD_MAX_WAIT: &str = "100ms";
    pub const OVERLOAD_MIN_DWELL: &str = "2s";
    pub const OVERLOAD_RETRY_AFTER: &str = "5s";
    pub const OVERLOAD_LATENCY_TOLERANCE: f64 = 2.0;
    pub const OVERLOAD_LATENCY_SLACK: &str = "5ms";
    pub const OVERLOAD_PROBE_EVERY: &str = "30s";
    pub const CACHE_MEMORY: u64 = 64 << 20;
    pub const CACHE_TTL: &str = "60s";
    pub const CACHE_MAX_OBJECT: u64 = 1 << 20;
    pub const CACHE_COALESCE_WAIT: &str = "5s";
    pub const CACHE_L2_TIMEOUT: &str = "50ms";
    pub const CACHE_L2_PREFIX: &str = "seawall:cache:";
    pub const TLS_HANDSHAKE_TIMEOUT: &str = "10s";
    pub const TLS_SESSION_CACHE: u64 = 20_000;
    pub const DNS_MIN_TTL: &str = "1s";
    pub const DNS_MAX_TTL: &str = "5m";
    pub const QUEUE_DATA_DIR: &str = "./seawall-data";
    pub const QUEUE_REDIS_PREFIX: &str = "seawall:queue:";
    pub const QUEUE_MAX_JOBS: u64 = 1_000_000;
    pub const QUEUE_MAX_BYTES: u64 = 1 << 30;
    pub const QUEUE_MAX_BODY: u64 = 1 << 20;
    pub const QUEUE_KEEP_FINISHED: &str = "24h";
    pub const QUEUE_LEASE: &str = "60s";
    pub const QUEUE_RETRY_AFTER: &str = "5s";
    pub const QUEUE_CONCURRENCY: u64 = 32;
    pub const QUEUE_MAX_ATTEMPTS: u64 = 10;
    pub const QUEUE_BACKOFF: &str = "1s";
    pub const QUEUE_MAX_BACKOFF: &str = "5m";
    pub const EGRESS_LISTEN: &str = "127.0.0.1:8081";
    pub const EGRESS_MAX_WAIT: &str = "2s";
    pub const EGRESS_PARK_FOR: &str = "60s";
    pub const EGRESS_RETRIES: u64 = 2;
    pub const EGRESS_BACKOFF: &str = "100ms";
    pub const EGRESS_TIMEOUT: &str = "10s";
    pub const EGRESS_CONNECT_TIMEOUT: &str = "2s";
    pub const EGRESS_POOL_IDLE: &str = "30s";
    /// A rate's calls are remembered one by one (a sliding window): at most this many.
    pub const EGRESS_MAX_RATE_COUNT: u32 = 100_000;
}

mod cache;
mod client;
mod dns;
mod edge;
mod egress;
mod overload;
mod protections;
mod queue;
mod tls;

struct Ctx<'a> {
    file: &'a str,
    source: &'a str,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

impl Ctx<'_> {
    fn error(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError::at(self.file, self.source, span.start, key, message.into()));
    }

    /// Something that runs but probably not as meant.
    fn warn(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let warning = ConfigError::at(self.file, self.source, span.start, key, message.into());
        self.warnings.push(warning);
    }

    fn duration(&mut self, value: Option<&Text>, key: &str, default: &str) -> Duration {
        let fallback = parse_duration(default).unwrap_or(Duration::from_secs(1));
        let Some(v) = value else { return fallback };
        match parse_duration(v.get_ref()) {
            Ok(d) if d.is_zero() => {
                self.error(v.span(), key, "must be greater than zero");
                fallback
            }
            Ok(d) => d,
            Err(e) => {
                self.error(v.span(), key, e);
                fallback
            }
        }
    }

    /// A duration that may be zero (absent: zero).
    fn duration_or_zero(&mut self, value: Option<&Text>, key: &str) -> Duration {
        let Some(v) = value else { return Duration::ZERO };
        parse_duration(v.get_ref()).unwrap_or_else(|e| {
            self.error(v.span(), key, e);
            Duration::ZERO
        })
    }

    fn count(
        &mut self,
        value: Option<&Spanned<i64>>,
        key: &str,
        default: u64,
        min: i64,
        max: i64,
    ) -> u64 {
        let Some(v) = value else { return default };
        let n = *v.get_ref();
        if n < min || n > max {
            self.error(
                v.span(),
                key,
                format!("expected a whole number from {min} to {max}, got {n}"),
            );
            return default;
        }
        n as u64
    }

    fn size(&mut self, value: Option<&Spanned<RawSize>>, key: &str, default: u64) -> u64 {
        let Some(v) = value else { return default };
        let parsed = match v.get_ref() {
            RawSize::Bytes(n) if *n >= 0 => Ok(*n as u64),
            RawSize::Bytes(n) => Err(format!("expected a size of 0 or more bytes, got {n}")),
            RawSize::Text(s) => parse_size(s),
        };
        parsed.unwrap_or_else(|e| {
            self.error(v.span(), key, e);
            default
        })
    }

    fn address(&mut self, value: &str, span: Range<usize>, key: &str) -> Option<SocketAddr> {
        if let Ok(addr) = value.parse() {
            return Some(addr);
        }
        match value.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => Some(addr),
            _ => {
                self.error(span, key, format!("expected an address like \"127.0.0.1:9000\" or \"host:port\", got {value:?}"));
                None
            }
        }
    }
}

/// Validates the raw model.
pub fn validate(raw: RawConfig, source: &str, file: &str) -> Result<Config, ConfigErrors> {
    let mut cx = Ctx { file, source, errors: Vec::new(), warnings: Vec::new() };
    let mut server = server(&mut cx, &raw.server);
    let dns = dns::dns(&mut cx, &raw.dns);
    let log = log(&mut cx, &raw.log);
    let mut upstreams = Vec::new();
    let upstream_names: Vec<String> = raw.upstreams.keys().cloned().collect();
    for (name, up) in &raw.upstreams {
        upstreams.push(upstream(&mut cx, name, up, &upstream_names, &dns));
    }
    let (egress, provider_upstreams) =
        egress::egress(&mut cx, &raw, upstreams.len(), &upstream_names);
    upstreams.extend(provider_upstreams);
    let wants_egress = !egress.is_empty();
    server.egress_listen = egress::egress_listen(&mut cx, &raw.server, &server, wants_egress);

    let rate_limits: Vec<RateLimit> = raw
        .rate_limits
        .iter()
        .map(|(name, limit)| protections::rate_limit(&mut cx, name, limit))
        .collect();
    let queue = queue::queue(&mut cx, &raw, &upstream_names, &rate_limits, &egress);
    if let Some(q) = &queue {
        queue::lease_warnings(&mut cx, q, &upstreams, &egress);
    }
    let topics: Vec<String> =
        queue.iter().flat_map(|q| q.topics.iter().map(|t| t.name.clone())).collect();
    let names = Names {
        upstreams: &upstream_names,
        rate_limits: &rate_limits,
        server: &server,
        topics: &topics,
        egress: &egress,
    };
    let mut routes: Vec<Route> = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        if let Some(route) = route(&mut cx, i, r, &names) {
            edge::timeout_within_total(&mut cx, i, r.get_ref(), &route, &upstreams);
            if routes.iter().any(|other| other.name == route.name) {
                cx.error(
                    r.span(),
                    &format!("routes[{i}].name"),
                    format!("route name {:?} is used twice", route.name),
                );
            }
            routes.push(route);
        }
    }
    let overload = overload::overload(&mut cx, &raw.overload);
    let cache = cache::cache(&mut cx, &raw.cache);
    if cx.errors.is_empty() {
        let warnings = cx.warnings;
        Ok(Config {
            server,
            log,
            upstreams,
            routes,
            rate_limits,
            overload,
            cache,
            dns,
            queue,
            egress,
            warnings,
        })
    } else {
        Err(ConfigErrors(cx.errors))
    }
}

fn server(cx: &mut Ctx<'_>, raw: &RawServer) -> Server {
    let listen = spanned_address(cx, raw.listen.as_ref(), "server.listen", defaults::LISTEN);
    let tls = raw.tls.as_ref().map(|t| tls::server_tls(cx, t));
    let admin = spanned_address(cx, raw.admin.as_ref(), "server.admin", defaults::ADMIN);
    let admin_token =
        raw.admin_token.as_ref().map(|t| t.get_ref().clone()).filter(|t| !t.is_empty());
    if !admin.ip().is_loopback() && admin_token.is_none() {
        let span = raw.admin.as_ref().map_or(0..0, |a| a.span());
        cx.error(
            span,
            "server.admin",
            "a non-loopback admin address needs server.admin_token to be set",
        );
    }
    let workers = cx.count(raw.workers.as_ref(), "server.workers", 0, 0, 1024) as usize;
    let workers = if workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        workers
    };
    let max_header_size = cx.size(
        raw.max_header_size.as_ref(),
        "server.max_header_size",
        defaults::MAX_HEADER_SIZE as u64,
    );
    if !(8192..=1 << 20).contains(&max_header_size) {
        let span = raw.max_header_size.as_ref().map_or(0..0, |s| s.span());
        cx.error(span, "server.max_header_size", "must be between 8KiB and 1MiB");
    }
    let max_body =
        cx.size(raw.max_body_size.as_ref(), "server.max_body_size", defaults::MAX_BODY_SIZE);
    let admin_token_for_reads = raw.admin_token_for_reads.unwrap_or(false);
    if admin_token_for_reads && admin_token.is_none() {
        let span = key_span(cx.source, &["server", "admin_token_for_reads"]).unwrap_or(0..0);
        let message = "needs server.admin_token to be set (the token the read endpoints require)";
        cx.error(span, "server.admin_token_for_reads", message);
    }
    let clients = client::client_address(cx, raw);
    Server {
        clients,
        listen,
        admin,
        admin_token,
        admin_token_for_reads,
        workers,
        max_connections: cx.count(
            raw.max_connections.as_ref(),
            "server.max_connections",
            defaults::MAX_CONNECTIONS as u64,
            1,
            10_000_000,
        ) as usize,
        header_timeout: cx.duration(
            raw.header_timeout.as_ref(),
            "server.header_timeout",
            defaults::HEADER_TIMEOUT,
        ),
        keepalive_timeout: cx.duration(
            raw.keepalive_timeout.as_ref(),
            "server.keepalive_timeout",
            defaults::KEEPALIVE_TIMEOUT,
        ),
        max_header_size: max_header_size.clamp(8192, 1 << 20) as usize,
        max_headers: cx.count(
            raw.max_headers.as_ref(),
            "server.max_headers",
            defaults::MAX_HEADERS as u64,
            1,
            10_000,
        ) as usize,
        max_body_size: (max_body > 0).then_some(max_body),
        drain_timeout: cx.duration(
            raw.drain_timeout.as_ref(),
            "server.drain_timeout",
            defaults::DRAIN_TIMEOUT,
        ),
        body_timeout: cx.duration(
            raw.body_timeout.as_ref(),
            "server.body_timeout",
            defaults::BODY_TIMEOUT,
        ),
        send_timeout: cx.duration(
            raw.send_timeout.as_ref(),
            "server.send_timeout",
            defaults::SEND_TIMEOUT,
        ),
        tunnel_idle_timeout: cx.duration(
            raw.tunnel_idle_timeout.as_ref(),
            "server.tunnel_idle_timeout",
            defaults::TUNNEL_IDLE_TIMEOUT,
        ),
        http2: raw.http2.unwrap_or(true),
        // Seawall rewrites this field in every request it forwards: never one that frames or
        // routes the request.
        deadline_header: header_name(
            cx,
            raw.deadline_header.as_ref(),
            "server.deadline_header",
            defaults::DEADLINE_HEADER,
        ),
        drain_delay: cx.duration_or_zero(raw.drain_delay.as_ref(), "server.drain_delay"),
        request_id: raw.request_id.unwrap_or(true),
        request_id_header: header_name(
            cx,
            raw.request_id_header.as_ref(),
            "server.request_id_header",
            defaults::REQUEST_ID_HEADER,
        ),
        trust_request_id: raw.trust_request_id.unwrap_or(true),
        prefix_match: edge::prefix_match(
            cx,
            raw.prefix_match.as_ref(),
            "server.prefix_match",
            PrefixMatch::String,
        ),
        http_redirect: tls::http_redirect(cx, raw.http_redirect.as_ref(), listen, tls.is_some()),
        // Set once the egress groups are known.
        egress_listen: None,
        tls,
    }
}

/// A header name Seawall writes into requests or answers: valid, and not one of the protocol's.
fn header_name(cx: &mut Ctx<'_>, value: Option<&Text>, key: &str, default: &str) -> String {
    let Some(h) = value else { return default.to_string() };
    if is_protocol_field(h.get_ref()) {
        let message = format!(
            "{:?} is a field of the HTTP protocol itself; choose another name, like {default:?}",
            h.get_ref()
        );
        cx.error(h.span(), key, message);
        default.to_string()
    } else if !valid_header_name(h.get_ref()) {
        cx.error(h.span(), key, format!("{:?} is not a valid header name", h.get_ref()));
        default.to_string()
    } else {
        h.get_ref().to_ascii_lowercase()
    }
}

fn spanned_address(cx: &mut Ctx<'_>, value: Option<&Text>, key: &str, default: &str) -> SocketAddr {
    let fallback: SocketAddr =
        default.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    match value {
        Some(v) => cx.address(v.get_ref(), v.span(), key).unwrap_or(fallback),
        None => fallback,
    }
}

fn log(cx: &mut Ctx<'_>, raw: &RawLog) -> Log {
    let format = match raw.format.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
        None | Some(("text", _)) => LogFormat::Text,
        Some(("json", _)) => LogFormat::Json,
        Some((other, span)) => {
            cx.error(span, "log.format", format!("expected \"text\" or \"json\", got {other:?}"));
            LogFormat::Text
        }
    };
    let level = raw.log_level_or_default();
    if let Some(l) = &raw.level {
        if !["error", "warn", "info", "debug", "trace"].contains(&l.get_ref().as_str()) {
            cx.error(
                l.span(),
                "log.level",
                format!("expected one of error, warn, info, debug, trace; got {:?}", l.get_ref()),
            );
        }
    }
    let access_log_file = match &raw.access_log_file {
        Some(f) if f.get_ref().is_empty() => {
            cx.error(f.span(), "log.access_log_file", "expected a file path, got an empty string");
            None
        }
        Some(f) => Some(std::path::PathBuf::from(f.get_ref())),
        None => None,
    };
    Log {
        level,
        format,
        access_log: raw.access_log.unwrap_or(false),
        access_log_file,
        access_log_query: raw.access_log_query.unwrap_or(false),
    }
}

impl RawLog {
    fn log_level_or_default(&self) -> String {
        self.level.as_ref().map_or_else(|| "info".to_string(), |l| l.get_ref().clone())
    }
}

/// What routes may name.
struct Names<'a> {
    upstreams: &'a [String],
    rate_limits: &'a [RateLimit],
    server: &'a Server,
    /// The queue's topics, in name order.
    topics: &'a [String],
    /// The egress groups, in name order.
    egress: &'a [Egress],
}

/// The index of the upstream `v` names, or an error listing those that exist.
fn upstream_index(cx: &mut Ctx<'_>, v: &Text, key: &str, upstreams: &[String]) -> Option<usize> {
    let found = upstreams.iter().position(|u| u == v.get_ref());
    if found.is_none() {
        let known = if upstreams.is_empty() {
            "none is defined".to_string()
        } else {
            format!("expected one of: {}", upstreams.join(", "))
        };
        cx.error(v.span(), key, format!("no upstream named {:?} ({known})", v.get_ref()));
    }
    found
}

fn upstream(
    cx: &mut Ctx<'_>,
    name: &str,
    raw: &RawUpstream,
    names: &[String],
    dns: &Dns,
) -> Upstream {
    let key = |k: &str| format!("upstreams.{name}.{k}");
    let mut servers = Vec::new();
    let entries = match &raw.servers {
        Some(list) if list.get_ref().is_empty() => {
            cx.error(list.span(), &key("servers"), "an upstream needs at least one server");
            &[][..]
        }
        Some(list) => list.get_ref().as_slice(),
        None => {
            // The raw model has no span for a table (one written with dotted keys has none), so
            // the error points at the upstream's name as the file spells it.
            let span = key_span(cx.source, &["upstreams", name]).unwrap_or(0..0);
            cx.error(
                span,
                &key("servers"),
                "missing; an upstream needs at least one server: servers = [\"host:port\"]",
            );
            &[][..]
        }
    };
    for (i, entry) in entries.iter().enumerate() {
        let k = format!("{}[{i}]", key("servers"));
        let (addr, weight) = match entry.get_ref() {
            StrOrTable::Str(a) => (a.clone(), 1),
            StrOrTable::Table(w) => (w.address.clone(), w.weight.unwrap_or(1)),
        };
        if !(1..=1000).contains(&weight) {
            cx.error(entry.span(), &k, format!("weight must be from 1 to 1000, got {weight}"));
        }
        let literal = addr.parse::<SocketAddr>().ok();
        let address = match literal {
            Some(address) => Some(address),
            // A host name asked of configured nameservers need not be known to the system's:
            // the gateway resolves it before it starts.
            None if !dns.servers.is_empty() => dns::host_port(cx, &addr, entry.span(), &k),
            None => cx.address(&addr, entry.span(), &k),
        };
        if let Some(address) = address {
            if servers.iter().any(|s: &UpstreamServer| s.name == addr) {
                cx.error(entry.span(), &k, format!("server {addr:?} is listed twice"));
            }
            servers.push(UpstreamServer {
                host: literal.is_none().then(|| addr.clone()),
                name: addr,
                address,
                weight: weight.clamp(1, 1000) as u32,
            });
        }
    }
    let balance_name = raw.balance.as_ref().map_or("round_robin", |b| b.get_ref().as_str());
    let balance = match balance_name {
        "round_robin" => Balance::RoundRobin,
        "least_request" => Balance::LeastRequest,
        "consistent_hash" => {
            Balance::ConsistentHash(hash_key(cx, raw.hash_on.as_ref(), &key("hash_on")))
        }
        other => {
            let span = raw.balance.as_ref().map_or(0..0, |b| b.span());
            cx.error(
                span,
                &key("balance"),
                format!("expected round_robin, least_request or consistent_hash, got {other:?}"),
            );
            Balance::RoundRobin
        }
    };
    if let (Some(h), false) = (&raw.hash_on, matches!(balance, Balance::ConsistentHash(_))) {
        cx.error(
            h.span(),
            &key("hash_on"),
            "hash_on only applies to balance = \"consistent_hash\"",
        );
    }
    let pool = Pool {
        // No cap unless one is set: the pools are sized by demand.
        max_idle: raw.pool.as_ref().and_then(|p| p.max_idle.as_ref()).map(|max_idle| {
            cx.count(Some(max_idle), &key("pool.max_idle"), 0, 0, 100_000) as usize
        }),
        idle_timeout: cx.duration(
            raw.pool.as_ref().and_then(|p| p.idle_timeout.as_ref()),
            &key("pool.idle_timeout"),
            defaults::POOL_IDLE_TIMEOUT,
        ),
    };
    let health = raw.health.as_ref().map(|h| health(cx, h, &key("health")));
    let passive = passive(cx, raw.passive.as_ref(), &key("passive"));
    let mut fallback = Vec::new();
    for (i, f) in raw.fallback.iter().flatten().enumerate() {
        let k = format!("{}[{i}]", key("fallback"));
        if f.get_ref() == name {
            cx.error(f.span(), &k, "an upstream cannot be its own fallback");
        } else if let Some(index) = upstream_index(cx, f, &k, names) {
            fallback.push(index);
        }
    }
    let total_timeout = raw
        .total_timeout
        .as_ref()
        .map(|t| cx.duration(Some(t), &key("total_timeout"), defaults::TIMEOUT));
    let connect_timeout = cx.duration(
        raw.connect_timeout.as_ref(),
        &key("connect_timeout"),
        defaults::CONNECT_TIMEOUT,
    );
    let timeout = cx.duration(raw.timeout.as_ref(), &key("timeout"), defaults::TIMEOUT);
    let retry = protections::retry(cx, raw.retry.as_ref(), &key("retry"));
    if let (Some(total), Some(t)) = (total_timeout, raw.total_timeout.as_ref()) {
        let chain = (connect_timeout + timeout) * retry.attempts;
        if chain > total {
            let message = format!(
                "{} attempt(s) of connect_timeout ({connect_timeout:?}) + timeout ({timeout:?}) \
                 take up to {chain:?}, more than total_timeout ({total:?}): later attempts are cut short",
                retry.attempts
            );
            cx.warn(t.span(), &key("total_timeout"), message);
        }
    }
    Upstream {
        total_timeout,
        breaker: raw.breaker.as_ref().map(|b| protections::breaker(cx, b, &key("breaker"))),
        retry,
        bulkhead: raw.bulkhead.as_ref().map(|b| protections::bulkhead(cx, b, &key("bulkhead"))),
        adaptive: raw.adaptive_concurrency.unwrap_or(true),
        max_latency: raw
            .max_latency
            .as_ref()
            .map(|m| cx.duration(Some(m), &key("max_latency"), defaults::TIMEOUT)),
        fallback,
        tls: raw.tls.as_ref().map(|t| tls::upstream_tls(cx, t, &key("tls"))),
        name: name.to_string(),
        servers,
        balance,
        connect_timeout,
        timeout,
        read_timeout: cx.duration(
            raw.read_timeout.as_ref(),
            &key("read_timeout"),
            defaults::READ_TIMEOUT,
        ),
        send_timeout: cx.duration(
            raw.send_timeout.as_ref(),
            &key("send_timeout"),
            defaults::UPSTREAM_SEND_TIMEOUT,
        ),
        pool,
        health,
        passive,
    }
}

fn hash_key(cx: &mut Ctx<'_>, raw: Option<&Text>, key: &str) -> HashKey {
    let Some(v) = raw else { return HashKey::ClientIp };
    let s = v.get_ref().as_str();
    if s == "client_ip" {
        return HashKey::ClientIp;
    }
    if let Some(h) = s.strip_prefix("header:").filter(|h| valid_header_name(h)) {
        return HashKey::Header(h.to_ascii_lowercase());
    }
    if let Some(c) = s.strip_prefix("cookie:").filter(|c| !c.is_empty()) {
        return HashKey::Cookie(c.to_string());
    }
    cx.error(
        v.span(),
        key,
        format!("expected \"client_ip\", \"header:NAME\" or \"cookie:NAME\", got {s:?}"),
    );
    HashKey::ClientIp
}

/// Fields that frame, route or manage an HTTP message (and Seawall's own forwarding fields).
fn is_protocol_field(name: &str) -> bool {
    const FIELDS: [&str; 14] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "proxy-connection",
        "via",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    ];
    FIELDS.iter().any(|f| f.eq_ignore_ascii_case(name))
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn health(cx: &mut Ctx<'_>, h: &RawHealth, key: &str) -> HealthCheck {
    let path = h.path.as_ref().map_or_else(|| "/healthz".to_string(), |p| p.get_ref().clone());
    if let Some(p) = h.path.as_ref().filter(|_| !path.starts_with('/')) {
        cx.error(
            p.span(),
            &format!("{key}.path"),
            format!("expected a path starting with '/', got {path:?}"),
        );
    }
    let interval =
        cx.duration(h.interval.as_ref(), &format!("{key}.interval"), defaults::HEALTH_INTERVAL);
    let timeout =
        cx.duration(h.timeout.as_ref(), &format!("{key}.timeout"), defaults::HEALTH_TIMEOUT);
    // Without a timeout of its own, a check's timeout follows a shorter interval.
    let timeout = if h.timeout.is_none() { timeout.min(interval) } else { timeout };
    if let Some(t) = h.timeout.as_ref().filter(|_| timeout > interval) {
        cx.error(
            t.span(),
            &format!("{key}.timeout"),
            format!("must not exceed {key}.interval ({interval:?})"),
        );
    }
    HealthCheck {
        path,
        host: h.host.as_ref().map(|v| v.get_ref().clone()),
        interval,
        timeout,
        unhealthy_after: cx.count(
            h.unhealthy_after.as_ref(),
            &format!("{key}.unhealthy_after"),
            defaults::HEALTH_AFTER.into(),
            1,
            1000,
        ) as u32,
        healthy_after: cx.count(
            h.healthy_after.as_ref(),
            &format!("{key}.healthy_after"),
            defaults::HEALTH_AFTER.into(),
            1,
            1000,
        ) as u32,
    }
}

fn passive(cx: &mut Ctx<'_>, raw: Option<&RawPassive>, key: &str) -> EjectionPolicy {
    let field = |f: &str| format!("{key}.{f}");
    let base = cx.duration(
        raw.and_then(|p| p.base_ejection.as_ref()),
        &field("base_ejection"),
        defaults::PASSIVE_BASE,
    );
    let max = cx.duration(
        raw.and_then(|p| p.max_ejection.as_ref()),
        &field("max_ejection"),
        defaults::PASSIVE_MAX,
    );
    if max < base {
        let span = raw.and_then(|p| p.max_ejection.as_ref()).map_or(0..0, |m| m.span());
        cx.error(
            span,
            &field("max_ejection"),
            format!("must be at least base_ejection ({base:?})"),
        );
    }
    EjectionPolicy {
        consecutive_failures: cx.count(
            raw.and_then(|p| p.consecutive_failures.as_ref()),
            &field("consecutive_failures"),
            defaults::PASSIVE_FAILURES.into(),
            0,
            1_000_000,
        ) as u32,
        base_ms: seawall_core::clock::duration_ms(base),
        max_ms: seawall_core::clock::duration_ms(max),
        max_ejected_percent: cx.count(
            raw.and_then(|p| p.max_ejected_percent.as_ref()),
            &field("max_ejected_percent"),
            defaults::PASSIVE_PERCENT.into(),
            0,
            100,
        ) as u32,
    }
}

fn route(cx: &mut Ctx<'_>, i: usize, raw: &Spanned<RawRoute>, names: &Names<'_>) -> Option<Route> {
    let r = raw.get_ref();
    let key = |k: &str| format!("routes[{i}].{k}");
    let name = r.name.as_ref().map_or_else(|| format!("route{i}"), |n| n.get_ref().clone());
    let host = r.host.as_ref().and_then(|h| {
        let s = h.get_ref().to_ascii_lowercase();
        if let Some(suffix) = s.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                cx.error(h.span(), &key("host"), format!("expected \"*.example.com\", got {s:?}"));
                return None;
            }
            return Some(HostMatch::Suffix(format!(".{suffix}")));
        }
        if s.is_empty() || s.contains('*') {
            cx.error(
                h.span(),
                &key("host"),
                format!("expected a host name or \"*.example.com\", got {s:?}"),
            );
            return None;
        }
        Some(HostMatch::Exact(s))
    });
    let path = match (&r.path_prefix, &r.path) {
        (Some(_), Some(p)) => {
            cx.error(p.span(), &key("path"), "set path_prefix or path, not both");
            PathMatch::Prefix("/".into())
        }
        (Some(p), None) => PathMatch::Prefix(checked_path(cx, p, &key("path_prefix"))),
        (None, Some(p)) => PathMatch::Exact(checked_path(cx, p, &key("path"))),
        (None, None) => PathMatch::Prefix("/".into()),
    };
    let mut methods = Vec::new();
    for m in r.methods.iter().flatten() {
        let upper = m.get_ref().to_ascii_uppercase();
        if upper.is_empty() || !upper.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
            cx.error(
                m.span(),
                &key("methods"),
                format!("expected an HTTP method like \"GET\", got {:?}", m.get_ref()),
            );
        }
        methods.push(upper);
    }
    let header = r.header.as_ref().map(|h| {
        if !valid_header_name(h.name.get_ref()) {
            cx.error(
                h.name.span(),
                &key("header.name"),
                format!("{:?} is not a valid header name", h.name.get_ref()),
            );
        }
        HeaderMatch {
            name: h.name.get_ref().to_ascii_lowercase(),
            value: h.value.as_ref().map(|v| v.get_ref().clone()),
        }
    });
    let max_body_size = r.max_body_size.as_ref().map(|_| {
        let size = cx.size(r.max_body_size.as_ref(), &key("max_body_size"), 0);
        (size > 0).then_some(size)
    });
    let queueing = queue::route_queue(cx, i, r);
    let topic_index = |topic: &str| names.topics.iter().position(|t| t == topic);
    let queue_on_failure = match &queueing {
        queue::RouteQueue::OnFailure { topic } => topic_index(topic),
        _ => None,
    };
    let action = match (&r.upstream, &r.redirect, &queueing) {
        _ if r.egress.is_some() => egress::route_action(cx, r, &key, names.egress)?,
        (_, Some(redirect), queue::RouteQueue::Action { .. }) => {
            cx.error(redirect.span(), &key("redirect"), "set queue or redirect, not both");
            return None;
        }
        (Some(_), Some(redirect), _) => {
            cx.error(redirect.span(), &key("redirect"), "set upstream or redirect, not both");
            return None;
        }
        (None, None, queue::RouteQueue::Action { topic, .. }) => {
            // The topic is missing only when it had an error of its own.
            let topic = topic_index(topic)?;
            proxy_only(cx, r, raw, &key, "a queue");
            RouteAction::Queue { topic }
        }
        (None, None, _) => {
            let message =
                "a route needs an upstream to send requests to (or a redirect, or a queue)";
            cx.error(raw.span(), &key("upstream"), message);
            return None;
        }
        (Some(up), None, _) => RouteAction::Proxy {
            upstream: upstream_index(cx, up, &key("upstream"), names.upstreams)?,
        },
        (None, Some(redirect), _) => {
            let redirect = edge::redirect(cx, redirect, &key("redirect"));
            proxy_only(cx, r, raw, &key, "a redirect");
            RouteAction::Redirect(std::sync::Arc::new(redirect))
        }
    };
    let read_upstream = r
        .read_upstream
        .as_ref()
        .and_then(|u| upstream_index(cx, u, &key("read_upstream"), names.upstreams));
    let rate_limit = r.rate_limit.as_ref().and_then(|l| {
        let found = names.rate_limits.iter().position(|x| x.name == *l.get_ref());
        if found.is_none() {
            let known: Vec<&str> = names.rate_limits.iter().map(|x| x.name.as_str()).collect();
            let known = if known.is_empty() {
                "none is defined under [rate_limits]".to_string()
            } else {
                format!("expected one of: {}", known.join(", "))
            };
            cx.error(
                l.span(),
                &key("rate_limit"),
                format!("no rate limit named {:?} ({known})", l.get_ref()),
            );
        }
        found
    });
    let priority = protections::priority(cx, r.priority.as_ref(), &key("priority"));
    let degrade = r
        .degrade
        .as_ref()
        .map(|d| std::sync::Arc::new(protections::degrade(cx, d, &key("degrade"))));
    let cache = match (&r.cache, &action) {
        (Some(c), _) => Some(std::sync::Arc::new(cache::route_cache(cx, c, &key("cache")))),
        // An egress route keeps its group's answers unless it says otherwise.
        (None, RouteAction::Egress { group }) => names.egress[*group].cache.clone(),
        (None, _) => None,
    };
    let prefix = edge::prefix_match(
        cx,
        r.prefix_match.as_ref(),
        &key("prefix_match"),
        names.server.prefix_match,
    );
    if let (Some(p), PathMatch::Exact(_)) = (&r.prefix_match, &path) {
        cx.error(
            p.span(),
            &key("prefix_match"),
            "prefix_match applies to path_prefix, not to path",
        );
    }
    let rewrite = edge::rewrite(cx, r, &path, &key).map(std::sync::Arc::new);
    let server = names.server;
    // The fields Seawall writes itself: the time left, and the request id when ids are on.
    let own = (
        server.deadline_header.as_str(),
        server.request_id.then_some(server.request_id_header.as_str()),
    );
    let request_headers = r.request_headers.as_ref().map(|h| {
        let side = edge::Side::Request;
        std::sync::Arc::new(edge::header_actions(cx, h, &key("request_headers"), side, own))
    });
    let response_headers = r.response_headers.as_ref().map(|h| {
        let side = edge::Side::Response;
        std::sync::Arc::new(edge::header_actions(cx, h, &key("response_headers"), side, own))
    });
    let timeout =
        r.timeout.as_ref().map(|t| cx.duration(Some(t), &key("timeout"), defaults::TIMEOUT));
    Some(Route {
        name,
        matcher: RouteMatch { host, path, methods, header, prefix },
        action,
        preserve_host: r.preserve_host.unwrap_or(true),
        max_body_size,
        rate_limit,
        priority,
        writes: r.writes.unwrap_or(false),
        read_upstream,
        degrade,
        disable_in_crisis: r.disable_in_crisis.unwrap_or(false),
        cache,
        rewrite,
        request_headers,
        response_headers,
        timeout,
        queue_on_failure,
    })
}

/// Errors for the keys that only apply to a request that goes upstream, on a route whose action
/// is `what` (a redirect, a queue).
fn proxy_only(
    cx: &mut Ctx<'_>,
    r: &RawRoute,
    raw: &Spanned<RawRoute>,
    key: &dyn Fn(&str) -> String,
    what: &str,
) {
    let proxy_only = [
        ("read_upstream", r.read_upstream.as_ref().map(|v| v.span())),
        ("timeout", r.timeout.as_ref().map(|v| v.span())),
        ("cache", r.cache.as_ref().map(|v| v.span())),
        ("preserve_host", r.preserve_host.map(|_| raw.span())),
        ("request_headers", r.request_headers.as_ref().map(|_| raw.span())),
        ("response_headers", r.response_headers.as_ref().map(|_| raw.span())),
    ];
    for (field, span) in proxy_only {
        if let Some(span) = span {
            let message = format!("{field} applies to routes with an upstream, not to {what}");
            cx.error(span, &key(field), message);
        }
    }
}

fn checked_path(cx: &mut Ctx<'_>, p: &Text, key: &str) -> String {
    if !p.get_ref().starts_with('/') {
        cx.error(
            p.span(),
            key,
            format!("expected a path starting with '/', got {:?}", p.get_ref()),
        );
    }
    p.get_ref().clone()
}
