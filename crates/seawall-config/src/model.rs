//! The validated configuration the gateway runs on. Every value here has been checked; defaults
//! are filled in (see `examples/seawall.toml` for each key and its default).

use std::net::SocketAddr;
use std::time::Duration;

pub use seawall_core::ejection::EjectionPolicy;

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: Server,
    pub log: Log,
    /// Upstream groups in name order; routes refer to them by index.
    pub upstreams: Vec<Upstream>,
    /// Routes in file order: the first match wins.
    pub routes: Vec<Route>,
}

/// `[server]`: listeners, workers and client-facing limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// Bearer token required by mutating admin endpoints; required for a non-loopback admin address.
    pub admin_token: Option<String>,
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
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    pub level: String,
    pub format: LogFormat,
    pub access_log: bool,
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
}

/// One server of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamServer {
    /// As written in the file (used in metrics and the state API).
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
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
}

/// The conditions a request must meet, all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub host: Option<HostMatch>,
    pub path: PathMatch,
    /// Upper-case method names; empty = any method.
    pub methods: Vec<String>,
    pub header: Option<HeaderMatch>,
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

/// What a matched route does. Only proxying exists today; queueing and others join here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction {
    /// Forward to the upstream at this index of [`Config::upstreams`].
    Proxy { upstream: usize },
}
