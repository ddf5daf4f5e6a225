//! The validated configuration the gateway runs on. Every value here has been checked; defaults
//! are filled in (see `examples/seawall.toml` for each key and its default).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use seawall_core::breaker::BreakerPolicy;
pub use seawall_core::ejection::EjectionPolicy;
pub use seawall_core::gcra::Quota;
pub use seawall_core::priority::Priority;

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: Server,
    pub log: Log,
    /// Upstream groups in name order; routes refer to them by index.
    pub upstreams: Vec<Upstream>,
    /// Routes in file order: the first match wins.
    pub routes: Vec<Route>,
    /// Rate limiters in name order; routes refer to them by index.
    pub rate_limits: Vec<RateLimit>,
    pub overload: Overload,
    pub cache: Cache,
    pub dns: Dns,
    /// The durable queue, when `[queue]` is written or a route queues requests.
    pub queue: Option<Queue>,
    /// Egress groups (`[egress.NAME]`) in name order; routes refer to them by index. Each
    /// provider is also an upstream group of its own (named `egress/GROUP/PROVIDER`).
    pub egress: Vec<Egress>,
    /// What is valid but probably not meant (a timeout chain that cannot hold, a key this
    /// version accepts but does not enforce yet); `seawall check` prints them, the gateway logs
    /// them.
    pub warnings: Vec<crate::ConfigError>,
}

/// `[queue]`: where queued requests are kept, their bounds, and how each topic is delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    pub backend: QueueBackend,
    /// Where `GET {jobs_path}ID` answers a job's status (ends with `/`).
    pub jobs_path: String,
    /// The rate limiter `GET {jobs_path}ID` passes (index into [`Config::rate_limits`]).
    pub jobs_rate_limit: Option<usize>,
    /// Bounds over every topic: jobs waiting (not yet delivered or dead) and their bytes.
    pub max_jobs: u64,
    pub max_bytes: u64,
    /// The largest request body a job keeps (a larger one is refused 413).
    pub max_body: u64,
    /// The request fields a job keeps (lower-case); the others are dropped.
    pub headers: Vec<String>,
    /// How long a delivered or dead job's status stays answerable.
    pub keep_finished: Duration,
    /// How long a job being delivered is held by the instance delivering it before another may
    /// take it (a fleet's instance that died; the embedded store re-delivers at start).
    pub lease: Duration,
    /// `Retry-After` on `queue_full`.
    pub retry_after: Duration,
    /// How long the writer waits for more jobs to share one durable commit (0: it does not wait;
    /// jobs that arrive during a commit share the next one anyway).
    pub commit_delay: Duration,
    /// Topics in name order; routes refer to them by index.
    pub topics: Vec<Topic>,
}

/// `[egress.NAME]`: one third-party API reached through ordered providers, each within its
/// quota, with its API keys added by Seawall.
#[derive(Debug, Clone, PartialEq)]
pub struct Egress {
    pub name: String,
    /// In order of preference: a call goes to the first with quota left (spill-over), and to the
    /// next when one fails (fallback).
    pub providers: Vec<Provider>,
    /// The longest a call waits for quota (in priority order) before 429 `egress_quota`.
    pub max_wait: Duration,
    /// A key answered 429 without a usable `Retry-After` is parked this long.
    pub park_for: Duration,
    /// Further attempts after a failed one (5xx, no connection), across providers, within the
    /// retry budget; a key's 429 or 401/403 moves to another key without counting.
    pub retries: u32,
    /// The first retry's backoff bound, doubled each attempt (full jitter).
    pub backoff: Duration,
    /// The answers' cache (`cache_ttl`, `cache_key_headers`), given to every egress route of
    /// the group that has no `cache` of its own.
    pub cache: Option<std::sync::Arc<RouteCache>>,
}

/// One provider of an egress group.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    pub name: String,
    /// The upstream group made for it (index into [`Config::upstreams`]): its server, TLS,
    /// timeouts, pool and breaker.
    pub upstream: usize,
    /// The base URL as written (no credentials in it), for the state API.
    pub url: String,
    /// `Host` sent: the URL's authority (its port only when not the scheme's default).
    pub authority: String,
    /// The URL's path without its trailing `/` (empty for the root); the route's remaining path
    /// is appended to it.
    pub base_path: String,
    /// Each key's (or, without keys, the provider's) limit: never more than `count` calls in
    /// any `period`, and at most `burst` at once (paced at `period / count` beyond).
    pub rate: Option<Quota>,
    /// Calls per key per UTC day.
    pub daily_quota: Option<u64>,
    /// The API keys, in file order (none: calls go without one).
    pub keys: Vec<ApiKey>,
    /// Where a key goes in each call.
    pub key_in: KeyPlacement,
    /// Written before the key in its header (`"Bearer "`); empty by default.
    pub key_prefix: String,
}

/// One API key: its value, read from the environment when the file is read.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The environment variable it came from (shown in metrics and the state API).
    pub env: String,
    /// The secret itself: only ever written into calls to the provider.
    pub value: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey").field("env", &self.env).field("value", &"<redacted>").finish()
    }
}

/// Where a provider wants its API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPlacement {
    /// A request header (lower-case name).
    Header(String),
    /// A query parameter (the name as written).
    Query(String),
    /// The provider takes no key.
    None,
}

impl Config {
    /// The egress group named `name`.
    pub fn egress_group(&self, name: &str) -> Option<usize> {
        self.egress.iter().position(|e| e.name == name)
    }
}

/// Where the queue's jobs are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueBackend {
    /// An embedded store in this folder (one Seawall per folder).
    Embedded { data_dir: std::path::PathBuf },
    /// Redis Streams shared by a fleet: `redis://` URL and the prefix of every key.
    Redis { url: String, prefix: String },
}

/// One topic: the jobs of one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Topic {
    pub name: String,
    /// The upstream group jobs are delivered to (index into [`Config::upstreams`]); for a topic
    /// of an egress route, its group's first provider.
    pub deliver_to: usize,
    /// Jobs of an egress route's `on_failure = "queue"` are delivered through that route (its
    /// group's quota, keys and providers): its name.
    pub via_route: Option<String>,
    /// The topic's own bounds (within the queue's).
    pub max_jobs: u64,
    pub max_bytes: u64,
    /// Deliveries in flight at once.
    pub concurrency: u32,
    /// Deliveries started per period (`None`: as fast as `concurrency` allows).
    pub rate: Option<Quota>,
    /// Attempts before a job is dead.
    pub max_attempts: u32,
    /// The first retry's backoff bound, doubled each attempt up to `max_backoff` (full jitter).
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// The topic starts paused (it still accepts jobs).
    pub paused: bool,
}

impl Queue {
    /// The topic named `name`.
    pub fn topic(&self, name: &str) -> Option<usize> {
        self.topics.iter().position(|t| t.name == name)
    }
}

/// `[dns]`: how host names in upstreams' `servers` are resolved, and how often again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// Nameservers to ask (UDP, then TCP); empty = the system's (`/etc/resolv.conf`, and
    /// `/etc/hosts` first).
    pub servers: Vec<SocketAddr>,
    /// Resolve every name again this often, whatever its records' TTL; `None` = at the TTL.
    pub resolve_interval: Option<Duration>,
    /// A TTL is raised to at least this (a name with TTL 0 is not asked for every request)...
    pub min_ttl: Duration,
    /// ...and lowered to at most this (a name with a day's TTL still follows a move).
    pub max_ttl: Duration,
}

/// `[server]`: listeners, workers and client-facing limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// Bearer token required by mutating admin endpoints; required for a non-loopback admin address.
    pub admin_token: Option<String>,
    /// The read endpoints (`/api/v1/state`, `/metrics`) need the token too; the health probes
    /// (`/healthz`, `/readyz`) stay open.
    pub admin_token_for_reads: bool,
    /// Worker threads, each with its own listener and upstream pools (0 in the file = one per CPU).
    pub workers: usize,
    pub max_connections: usize,
    /// A client must send a complete request head within this time (408 otherwise).
    pub header_timeout: Duration,
    /// An idle keep-alive connection is closed after this time.
    pub keepalive_timeout: Duration,
    pub max_header_size: usize,
    pub max_headers: usize,
    /// Largest request body accepted (413 beyond); `None` = unlimited.
    pub max_body_size: Option<u64>,
    pub drain_timeout: Duration,
    /// The longest a client may pause while it sends a request body (408 `body_timeout` beyond).
    pub body_timeout: Duration,
    /// The longest a write to a client may make no progress (the connection closes beyond).
    pub send_timeout: Duration,
    /// The longest an upgraded connection (WebSocket) may carry no bytes either way.
    pub tunnel_idle_timeout: Duration,
    /// Accept HTTP/2 with prior knowledge (h2c) on the plain listener.
    pub http2: bool,
    /// The request header in which a client says how long it will wait (lower-case); the time
    /// left is forwarded upstream in the same header.
    pub deadline_header: String,
    /// Who the client is: the PROXY protocol, trusted proxies and `X-Forwarded-For`.
    pub clients: ClientAddress,
    /// On SIGTERM, `/readyz` answers 503 at once and the listeners keep serving this long before
    /// the drain starts, so that load balancers stop sending first (zero: drain at once).
    pub drain_delay: Duration,
    /// Every request carries an id (`request_id_header`): sent upstream, returned to the client,
    /// in the access log and in every refusal.
    pub request_id: bool,
    /// The request id's header name (lower-case).
    pub request_id_header: String,
    /// A client's own id is kept when it is a sane token (1 to 128 visible ASCII bytes); else,
    /// or when this is off, Seawall's replaces it.
    pub trust_request_id: bool,
    /// How a route's `path_prefix` matches when the route does not say (`prefix_match`).
    pub prefix_match: PrefixMatch,
    /// TLS termination on `listen` (`None`: plain HTTP).
    pub tls: Option<ServerTls>,
    /// A second, plain listener whose every request is redirected to `https://` (needs `tls`).
    pub http_redirect: Option<SocketAddr>,
    /// The plain listener that serves the egress routes, and only them (set whenever an egress
    /// group exists; a loopback or private address).
    pub egress_listen: Option<SocketAddr>,
}

/// `server.tls`: the certificates served, chosen by the name the client asks for (SNI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// The first one is served to clients that name no host, or one no certificate has.
    pub certificates: Vec<CertificateFiles>,
    pub min_version: TlsVersion,
    /// A client must complete its handshake within this time.
    pub handshake_timeout: Duration,
    /// Stateless resumption tickets (TLS 1.2 and 1.3).
    pub session_tickets: bool,
    /// Sessions kept for resumption by id (TLS 1.2); 0 turns the cache off.
    pub session_cache: usize,
}

/// A certificate chain and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Names to serve it for instead of those in the certificate.
    pub names: Vec<String>,
}

/// The oldest TLS version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// `tls = { ... }` on an upstream: connections to its servers use TLS, always verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The name sent (SNI) and verified; default: each server's host as written in `servers`
    /// (an IP address is verified against the certificate's IP addresses).
    pub server_name: Option<String>,
    /// The CAs trusted instead of the built-in web roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key presented to the servers.
    pub client_certificate: Option<CertificateFiles>,
}

/// `[server]`'s `proxy_protocol`, `trusted_proxies` and `forwarded_for`: where the client's
/// address comes from, for balancing keys, rate limits, logs and `X-Forwarded-For`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientAddress {
    /// Every new connection starts with a PROXY protocol header (v1 or v2) whose source
    /// address replaces the TCP peer's; a connection without one is closed.
    pub proxy_protocol: bool,
    /// Peers whose `X-Forwarded-For` is believed: the client is the right-most entry that is
    /// not itself one of them.
    pub trusted_proxies: Vec<Cidr>,
    /// What becomes of a client-sent `X-Forwarded-For` from a peer that is not trusted.
    pub forwarded_for: ForwardedFor,
}

impl ClientAddress {
    /// Whether `ip` is one of the trusted proxies.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }
}

/// What Seawall does with an `X-Forwarded-For` sent by a peer it does not trust.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardedFor {
    /// Drop it: the upstream sees only the address Seawall saw (the default, so that no
    /// upstream mistakes a client's claim for something Seawall vouched for).
    #[default]
    Replace,
    /// Keep it and append the peer's address (the upstream must know it is unverified).
    Append,
}

/// An IP network written `address/prefix` (a bare address is a `/32` or `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1/128` or a bare address. Host bits below the prefix are an
    /// error (`10.0.0.1/8` is probably a typo for a host or a network).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let net: std::net::IpAddr =
            addr.trim().parse().map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("prefix {p:?} is not a number from 0 to {max}")),
            },
        };
        let cidr = Cidr { net, prefix };
        if cidr.masked(net) != Some(bits(net)) {
            return Err(format!("{text:?} has bits set past the /{prefix} prefix"));
        }
        Ok(cidr)
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.masked(ip.to_canonical()).is_some_and(|bits| Some(bits) == self.masked(self.net))
    }

    /// `ip`'s bits under this network's mask; `None` for the other family.
    fn masked(&self, ip: std::net::IpAddr) -> Option<u128> {
        let width = if ip.is_ipv4() { 32 } else { 128 };
        if ip.is_ipv4() != self.net.is_ipv4() {
            return None;
        }
        let keep = u32::from(width - self.prefix);
        let mask = if keep >= 128 { 0 } else { u128::MAX << keep };
        Some(bits(ip) & mask)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

fn bits(ip: std::net::IpAddr) -> u128 {
    match ip {
        std::net::IpAddr::V4(v4) => u128::from(u32::from(v4)),
        std::net::IpAddr::V6(v6) => u128::from(v6),
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    pub level: String,
    pub format: LogFormat,
    pub access_log: bool,
    /// Where access-log lines go: a file (reopened on SIGUSR1), or `None` for the `tracing`
    /// output (target `seawall::access`).
    pub access_log_file: Option<std::path::PathBuf>,
    /// Whether the access log carries the query string (it may hold tokens: off by default).
    pub access_log_query: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[upstreams.NAME]`: a group of servers answering the same requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub name: String,
    pub servers: Vec<UpstreamServer>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    /// Time allowed for the upstream to start answering (response head) once the whole request,
    /// body included, has been sent.
    pub timeout: Duration,
    /// The longest the upstream may stay silent while its response body streams.
    pub read_timeout: Duration,
    /// The longest the upstream may take to accept more of a request body.
    pub send_timeout: Duration,
    pub pool: Pool,
    pub health: Option<HealthCheck>,
    pub passive: EjectionPolicy,
    /// The longest a request may take here, every attempt and backoff included; `None`: bounded
    /// only by each attempt's timeouts.
    pub total_timeout: Option<Duration>,
    pub breaker: Option<BreakerPolicy>,
    pub retry: Retry,
    pub bulkhead: Option<Bulkhead>,
    /// Whether the requests in flight to this group follow an adaptive limit (`adaptive_concurrency`).
    pub adaptive: bool,
    /// A latency past which the adaptive limit falls whatever its baseline (`max_latency`).
    pub max_latency: Option<Duration>,
    /// Upstream groups tried in order when this one cannot answer (indices into
    /// [`Config::upstreams`]).
    pub fallback: Vec<usize>,
    /// Connections to the servers use TLS.
    pub tls: Option<UpstreamTls>,
}

/// When and how a failed attempt is tried again.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// Attempts in all, the first included (1 = no retries).
    pub attempts: u32,
    /// The first backoff's ceiling; each later one doubles, with full jitter.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Retries may add at most this fraction to the requests of the last 10 s...
    pub budget: f64,
    /// ...and at least this many a second.
    pub min_retries_per_second: u32,
    /// Answers retried like a failed connection (for example 502, 503, 504).
    pub on_status: Vec<u16>,
    /// An upstream's `Retry-After` on 429/503 longer than this is not waited for.
    pub max_retry_after: Duration,
    /// Request bodies up to this size are kept to be sent again; larger ones are not retried.
    pub max_body: u64,
}

/// At most `max_concurrency` requests at once to an upstream group; others wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bulkhead {
    pub max_concurrency: usize,
    /// Requests waiting at most (0 = none wait).
    pub max_queue: usize,
    pub queue_timeout: Duration,
}

/// One server of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamServer {
    /// As written in the file (used in metrics and the state API); for a server found by
    /// resolving a host name, its address.
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
    /// The `host:port` this server's address was resolved from, when the file named a host:
    /// such an entry is resolved again at its TTL, and every address becomes a server.
    pub host: Option<String>,
}

/// How an upstream spreads requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastRequest,
    ConsistentHash(HashKey),
}

/// What `consistent_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header (lower-case name); requests without it fall back to the client IP.
    Header(String),
    /// A cookie; requests without it fall back to the client IP.
    Cookie(String),
    ClientIp,
}

/// Keep-alive connections to each server, per worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// A fixed cap on idle connections per server and worker; `None`: as many as recent demand
    /// needs.
    pub max_idle: Option<usize>,
    pub idle_timeout: Duration,
}

/// Active HTTP health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub host: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

/// `[[routes]]`: which requests go where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    /// Send the client's Host header upstream (otherwise the server's address).
    pub preserve_host: bool,
    /// Overrides `server.max_body_size` for this route.
    pub max_body_size: Option<Option<u64>>,
    /// The rate limiter applied (index into [`Config::rate_limits`]).
    pub rate_limit: Option<usize>,
    pub priority: Priority,
    /// Every request of this route changes data (refused in read-only mode whatever its method).
    pub writes: bool,
    /// GET and HEAD go to this upstream group, falling back to the route's own when it has no
    /// server up.
    pub read_upstream: Option<usize>,
    /// What to answer instead of an error when the route is disabled, shed or failed.
    pub degrade: Option<std::sync::Arc<Degrade>>,
    /// In crisis mode the route answers its degraded answer (or 503 `feature_disabled`).
    pub disable_in_crisis: bool,
    /// How answers to the route's GET and HEAD requests are cached (`None`: they are not).
    pub cache: Option<std::sync::Arc<RouteCache>>,
    /// How the path is changed before it goes upstream (or into a redirect's `Location`).
    pub rewrite: Option<std::sync::Arc<PathRewrite>>,
    /// Fields changed in the request sent upstream.
    pub request_headers: Option<std::sync::Arc<HeaderActions>>,
    /// Fields changed in the answers from the upstream (proxied or served from the cache).
    pub response_headers: Option<std::sync::Arc<HeaderActions>>,
    /// Overrides the upstream's `timeout` (the wait for the answer's head) for this route.
    pub timeout: Option<Duration>,
    /// `on_failure = "queue"`: a write the upstream cannot take (breaker open, no server up, a
    /// connect failure, or shed by overload control) is queued in this topic and answered 202.
    pub queue_on_failure: Option<usize>,
}

/// How a `path_prefix` matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixMatch {
    /// Byte for byte: `/api` matches `/apiary` (the default, as before).
    String,
    /// Whole segments: `/api` matches `/api`, `/api/` and `/api/x`, not `/apiary`.
    Segment,
}

/// `strip_prefix` / `prefix_rewrite`: the path's leading `strip` is replaced by `replace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRewrite {
    /// What every matched path starts with (the route's prefix, or a start of it).
    pub strip: String,
    /// What takes its place (empty: stripped only).
    pub replace: String,
}

/// Field changes: `set` replaces every field of the name, `add` appends one, `remove` drops all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderActions {
    /// Lower-case names and values.
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    /// Lower-case names.
    pub remove: Vec<String>,
    /// `set` and `add` as HTTP/1 field lines (`name: value\r\n`), written as they are.
    pub lines: Vec<u8>,
}

impl HeaderActions {
    /// Whether a field of this name from the message is dropped (removed, or replaced by `set`).
    pub fn drops(&self, name: &[u8]) -> bool {
        let same = |n: &String| n.as_bytes().eq_ignore_ascii_case(name);
        self.remove.iter().any(same) || self.set.iter().any(|(n, _)| same(n))
    }
}

/// `redirect = { ... }`: Seawall answers with a redirect instead of proxying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
    /// The `Location` (without a trailing `/` when `keep_path`).
    pub location: String,
    /// Append the request's path (rewritten, when the route rewrites) and query.
    pub keep_path: bool,
}

/// `[cache]`: the cache every route with `cache = { ... }` shares.
#[derive(Debug, Clone, PartialEq)]
pub struct Cache {
    /// The bytes the in-memory cache (L1) holds at most: bodies, heads and keys.
    pub memory: u64,
    /// The Redis server of the shared layer (L2), as a `redis://` URL; none: no L2.
    pub redis: Option<String>,
    /// The longest a lookup in L2 may hold a request up.
    pub l2_timeout: Duration,
    /// What every L2 key starts with.
    pub l2_prefix: String,
}

/// `cache = { ... }` on a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCache {
    /// Freshness when the origin gives none (`Cache-Control: max-age`, `s-maxage`, `Expires`),
    /// or always with `override_origin`.
    pub ttl: Duration,
    /// Freshness in crisis mode.
    pub crisis_ttl: Option<Duration>,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// What tells entries apart.
    pub key: Vec<CacheKeyPart>,
    /// Larger answers pass through without being stored.
    pub max_object_size: u64,
    /// The route's `ttl` wins over the origin's `Cache-Control` and `Expires` (`no-store` still
    /// holds).
    pub override_origin: bool,
    /// Answers to requests with `Authorization` are shared.
    pub share_authorized: bool,
    /// Answers with `Set-Cookie` are shared.
    pub share_cookies: bool,
    /// How long a request waits for the one already fetching its key before fetching itself.
    pub coalesce_wait: Duration,
}

/// A part of a cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheKeyPart {
    Host,
    Path,
    Query,
    /// A request header's value (lower-case name).
    Header(String),
}

/// A stand-in answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Degrade {
    pub status: u16,
    pub body: String,
    pub content_type: String,
}

/// `[rate_limits.NAME]`: quotas per client key, by tier.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub name: String,
    pub key: LimitKey,
    /// Tiers in name order.
    pub tiers: Vec<Tier>,
    /// The request header naming a tier (lower-case).
    pub tier_header: Option<String>,
    /// The tier of a key the header and the key table do not place.
    pub default_tier: usize,
    /// Static key → tier (index into `tiers`); wins over the header.
    pub keys: Vec<(String, usize)>,
    /// Keys remembered at most.
    pub max_keys: usize,
}

/// What identifies a client to a rate limiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    ClientIp,
    /// A request header (lower-case name); requests without it are keyed by client IP.
    Header(String),
    /// A query parameter; requests without it are keyed by client IP.
    Query(String),
}

/// One tier of a rate limiter.
#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    pub name: String,
    pub quota: Quota,
    /// Moves the request's priority this many classes (-1: one class more important).
    pub priority_shift: i8,
}

/// The conditions a request must meet, all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub host: Option<HostMatch>,
    pub path: PathMatch,
    /// Upper-case method names; empty = any method.
    pub methods: Vec<String>,
    pub header: Option<HeaderMatch>,
    /// How a [`PathMatch::Prefix`] matches.
    pub prefix: PrefixMatch,
}

/// Host condition, compared case-insensitively without the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com`: stored as `.example.com`; matches `a.example.com`, not `example.com`.
    Suffix(String),
}

/// Path condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
}

/// Header condition: present, or equal to a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    pub name: String,
    pub value: Option<String>,
}

/// What a matched route does. Proxying and redirects exist today; queueing and others join here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction {
    /// Forward to the upstream at this index of [`Config::upstreams`].
    Proxy { upstream: usize },
    /// Seawall answers with a redirect.
    Redirect(std::sync::Arc<Redirect>),
    /// The request is stored in the queue's topic at this index and answered 202.
    Queue { topic: usize },
    /// A call to a third-party API through the egress group at this index of
    /// [`Config::egress`] (served only on `server.egress_listen`).
    Egress { group: usize },
}

impl RouteAction {
    /// The upstream group a proxy route forwards to.
    pub fn upstream(&self) -> Option<usize> {
        match self {
            RouteAction::Proxy { upstream } => Some(*upstream),
            RouteAction::Redirect(_) | RouteAction::Queue { .. } | RouteAction::Egress { .. } => {
                None
            }
        }
    }
}

impl Upstream {
    /// The bounds of the group's gate: its bulkhead's; or, for a group with only an adaptive
    /// limit, a limit of at most 10,000 in flight and as many waiting for up to 1 s. `None`: the
    /// group has no gate.
    pub fn gate(&self) -> Option<Bulkhead> {
        self.bulkhead.clone().or_else(|| {
            self.adaptive.then(|| Bulkhead {
                max_concurrency: 10_000,
                max_queue: 10_000,
                queue_timeout: Duration::from_secs(1),
            })
        })
    }
}

/// `[overload]`: what the overload controller samples and when it sheds.
#[derive(Debug, Clone, PartialEq)]
pub struct Overload {
    pub enabled: bool,
    pub sample_interval: Duration,
    /// Which CPU figure drives the levels.
    pub cpu: CpuSignal,
    /// CPU share (0–1) at which levels 1, 2 and 3 start (`p2_at`, `p1_at`, `p0_at`).
    pub cpu_at: [f64; 3],
    /// The memory Seawall may use (its RSS): `memory_budget`, else the cgroup's `memory.max`.
    pub memory_budget: Option<u64>,
    /// Shares of the budget at which levels 1 (`memory_soft`) and 2 (`memory_hard`) start.
    pub memory_at: [f64; 2],
    /// About the longest a request waits in Seawall's queues.
    pub max_wait: Duration,
    /// The fraction under a threshold a signal must fall for its level to end.
    pub hysteresis: f64,
    /// The least time a level holds before it is lowered.
    pub min_dwell: Duration,
    /// The `Retry-After` of a shed request (answered with jitter: from half to one and a half).
    pub retry_after: Duration,
    /// Adaptive concurrency: how many times its no-load latency an upstream may take...
    pub latency_tolerance: f64,
    /// ... plus this much.
    pub latency_slack: Duration,
    /// Adaptive concurrency: how often the no-load latency is measured again.
    pub probe_every: Duration,
}

/// Which CPU figure drives the overload levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuSignal {
    /// Seawall's own use of the CPUs it may run on.
    Process,
    /// The whole host's (or the cgroup's, under a `cpu.max` quota).
    Host,
    /// The higher of the two.
    Max,
    /// CPU does not drive the levels.
    Off,
}
