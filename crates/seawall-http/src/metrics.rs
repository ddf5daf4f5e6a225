//! Metrics with no shared writes on the request path.
//!
//! Every counter is split into one shard per worker thread (plus one for the control thread), each
//! on its own cache line; a worker only ever writes its own shard, and `/metrics` sums the shards
//! when it is read. Route metrics live in a [`Registry`] keyed by route name so that their history
//! survives a configuration reload.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use seawall_core::overload::ShedCause;
use seawall_core::priority::Priority;

/// Pads a value to its own cache line so that two workers' shards never share one.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Marks the current thread as worker `index`; other threads write the last shard.
pub fn set_worker_shard(index: usize) {
    SHARD.with(|s| s.set(index));
}

/// The shard the current thread writes, given `shards` shards.
#[inline]
pub fn shard_index(shards: usize) -> usize {
    SHARD.with(|s| s.get()).min(shards - 1)
}

/// What the cache counts per route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheEvent {
    Hit,
    /// A hit found in the shared layer (Redis).
    HitL2,
    Miss,
    Stale,
    Revalidated,
    Bypass,
    /// A request waited for another fetching its key.
    Coalesced,
    Stored,
    /// The answer could not be stored (its status or `Cache-Control`).
    Uncacheable,
    /// The answer was larger than `max_object_size`.
    TooLarge,
}

impl CacheEvent {
    pub const ALL: [CacheEvent; 10] = [
        CacheEvent::Hit,
        CacheEvent::HitL2,
        CacheEvent::Miss,
        CacheEvent::Stale,
        CacheEvent::Revalidated,
        CacheEvent::Bypass,
        CacheEvent::Coalesced,
        CacheEvent::Stored,
        CacheEvent::Uncacheable,
        CacheEvent::TooLarge,
    ];

    /// The layer it happened in: the shared one for its hits, else the in-memory one.
    pub fn layer(self) -> &'static str {
        if self == CacheEvent::HitL2 {
            "l2"
        } else {
            "l1"
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CacheEvent::Hit | CacheEvent::HitL2 => "hit",
            CacheEvent::Miss => "miss",
            CacheEvent::Stale => "stale",
            CacheEvent::Revalidated => "revalidated",
            CacheEvent::Bypass => "bypass",
            CacheEvent::Coalesced => "coalesced",
            CacheEvent::Stored => "stored",
            CacheEvent::Uncacheable => "uncacheable",
            CacheEvent::TooLarge => "too_large",
        }
    }
}

/// Upper bounds of the latency histogram buckets, in microseconds.
pub const BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// HTTP status codes 100..=599 are counted exactly.
const CODES: usize = 500;

/// One worker's share of a route's metrics.
#[derive(Debug)]
pub struct RouteShard {
    codes: Box<[AtomicU64]>,
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
    inflight: AtomicI64,
    /// Requests shed by overload control, by priority and cause ([`ShedCause`]).
    shed: [[AtomicU64; ShedCause::ALL.len()]; 3],
    /// What the cache did, by [`CacheEvent`].
    cache: [AtomicU64; CacheEvent::ALL.len()],
}

impl Default for RouteShard {
    fn default() -> Self {
        RouteShard {
            codes: (0..CODES).map(|_| AtomicU64::new(0)).collect(),
            buckets: Default::default(),
            sum_us: AtomicU64::new(0),
            inflight: AtomicI64::new(0),
            shed: Default::default(),
            cache: Default::default(),
        }
    }
}

/// Per-route request counters, latency histogram and in-flight gauge.
#[derive(Debug)]
pub struct RouteMetrics {
    shards: Box<[Padded<RouteShard>]>,
}

impl RouteMetrics {
    fn new(shards: usize) -> Self {
        RouteMetrics { shards: (0..shards).map(|_| Padded::default()).collect() }
    }

    #[inline]
    fn shard(&self) -> &RouteShard {
        &self.shards[shard_index(self.shards.len())]
    }

    /// Counts a response with `status` that took `elapsed` until its head was sent.
    pub fn record(&self, status: u16, elapsed: Duration) {
        let shard = self.shard();
        let code = usize::from(status).saturating_sub(100).min(CODES - 1);
        shard.codes[code].fetch_add(1, Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(BUCKETS_US.len());
        shard.buckets[bucket].fetch_add(1, Relaxed);
        shard.sum_us.fetch_add(us, Relaxed);
    }

    /// A request of `priority` was shed for `cause`.
    pub fn shed(&self, priority: Priority, cause: ShedCause) {
        self.shard().shed[priority.index()][cause as usize].fetch_add(1, Relaxed);
    }

    /// Requests of `priority` shed for `cause` so far, over all workers.
    pub fn shed_count(&self, priority: Priority, cause: ShedCause) -> u64 {
        self.shards.iter().map(|s| s.shed[priority.index()][cause as usize].load(Relaxed)).sum()
    }

    /// The cache did `event` for a request of this route.
    pub fn cache(&self, event: CacheEvent) {
        self.shard().cache[event as usize].fetch_add(1, Relaxed);
    }

    /// How often the cache did `event` for this route, over all workers.
    pub fn cache_count(&self, event: CacheEvent) -> u64 {
        self.shards.iter().map(|s| s.cache[event as usize].load(Relaxed)).sum()
    }

    /// A request started (+1) or finished (-1).
    pub fn inflight_add(&self, delta: i64) {
        self.shard().inflight.fetch_add(delta, Relaxed);
    }

    /// Requests answered with `status` so far, over all workers.
    pub fn count(&self, status: u16) -> u64 {
        let code = usize::from(status).saturating_sub(100).min(CODES - 1);
        self.shards.iter().map(|s| s.codes[code].load(Relaxed)).sum()
    }
}

/// A counter sharded per worker.
#[derive(Debug)]
pub struct Counter {
    shards: Box<[Padded<AtomicU64>]>,
}

impl Counter {
    /// A counter with `shards` shards.
    pub fn new(shards: usize) -> Self {
        Counter { shards: (0..shards).map(|_| Padded::default()).collect() }
    }

    /// Adds `n` on the current thread's shard.
    #[inline]
    pub fn add(&self, n: u64) {
        self.shards[shard_index(self.shards.len())].fetch_add(n, Relaxed);
    }

    /// The sum over all shards.
    pub fn get(&self) -> u64 {
        self.shards.iter().map(|s| s.load(Relaxed)).sum()
    }
}

/// The lowest value seen since it was last taken, sharded per worker (each worker lowers its own
/// shard; no write when the value is not lower).
#[derive(Debug)]
pub struct Minimum {
    shards: Box<[Padded<AtomicU64>]>,
}

impl Minimum {
    pub fn new(shards: usize) -> Self {
        Minimum { shards: (0..shards).map(|_| Padded(AtomicU64::new(u64::MAX))).collect() }
    }

    /// Notes `value` on the current thread's shard.
    #[inline]
    pub fn observe(&self, value: u64) {
        let shard = &self.shards[shard_index(self.shards.len())];
        if value < shard.load(Relaxed) {
            shard.fetch_min(value, Relaxed);
        }
    }

    /// The lowest value since the last call (`None`: none seen), starting afresh.
    pub fn take(&self) -> Option<u64> {
        let min = self.shards.iter().map(|s| s.swap(u64::MAX, Relaxed)).min()?;
        (min != u64::MAX).then_some(min)
    }
}

/// A gauge sharded per worker (each worker adds and subtracts on its own shard).
#[derive(Debug)]
pub struct Gauge {
    shards: Box<[Padded<AtomicI64>]>,
}

impl Gauge {
    /// A gauge with `shards` shards.
    pub fn new(shards: usize) -> Self {
        Gauge { shards: (0..shards).map(|_| Padded::default()).collect() }
    }

    /// Adds `delta` on the current thread's shard.
    #[inline]
    pub fn add(&self, delta: i64) {
        self.shards[shard_index(self.shards.len())].fetch_add(delta, Relaxed);
    }

    /// Adds `delta` on shard `shard` (another thread's: for a value that worker will take back
    /// on its own shard).
    pub fn add_to(&self, shard: usize, delta: i64) {
        self.shards[shard.min(self.shards.len() - 1)].fetch_add(delta, Relaxed);
    }

    /// One shard's value.
    pub fn shard(&self, shard: usize) -> i64 {
        self.shards.get(shard).map_or(0, |s| s.load(Relaxed))
    }

    /// The sum over all shards.
    pub fn get(&self) -> i64 {
        self.shards.iter().map(|s| s.load(Relaxed)).sum()
    }
}

/// How an attempt to use an upstream server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// A response below 500 came back.
    Ok,
    /// A 5xx response came back.
    Http5xx,
    /// No connection could be made.
    ConnectFailure,
    /// The server did not answer within the upstream's timeout.
    Timeout,
    /// The connection broke or the response was not valid HTTP.
    Error,
    /// The attempt ended because the client left or its request body failed: nothing is known
    /// about the server (it feeds neither success nor ejection).
    Cancelled,
}

impl UpstreamOutcome {
    /// All outcomes, in metric order.
    pub const ALL: [UpstreamOutcome; 6] = [
        UpstreamOutcome::Ok,
        UpstreamOutcome::Http5xx,
        UpstreamOutcome::ConnectFailure,
        UpstreamOutcome::Timeout,
        UpstreamOutcome::Error,
        UpstreamOutcome::Cancelled,
    ];

    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            UpstreamOutcome::Ok => "ok",
            UpstreamOutcome::Http5xx => "http_5xx",
            UpstreamOutcome::ConnectFailure => "connect_failure",
            UpstreamOutcome::Timeout => "timeout",
            UpstreamOutcome::Error => "error",
            UpstreamOutcome::Cancelled => "cancelled",
        }
    }
}

/// One worker's share of a server's counters and gauges.
#[derive(Debug, Default)]
struct ServerShard {
    outcomes: [AtomicU64; UpstreamOutcome::ALL.len()],
    /// Connections opened.
    opened: AtomicU64,
    /// Connections open now (idle or carrying a request).
    open: AtomicI64,
    /// Connections idle in a pool now.
    idle: AtomicI64,
}

/// Per-server upstream outcome counters and connection gauges.
#[derive(Debug)]
pub struct ServerMetrics {
    shards: Box<[Padded<ServerShard>]>,
}

impl ServerMetrics {
    /// Counters with `shards` shards.
    pub fn new(shards: usize) -> Self {
        ServerMetrics { shards: (0..shards).map(|_| Padded::default()).collect() }
    }

    #[inline]
    fn shard(&self) -> &ServerShard {
        &self.shards[shard_index(self.shards.len())]
    }

    /// Counts one outcome.
    #[inline]
    pub fn record(&self, outcome: UpstreamOutcome) {
        self.shard().outcomes[outcome as usize].fetch_add(1, Relaxed);
    }

    /// Total of one outcome.
    pub fn get(&self, outcome: UpstreamOutcome) -> u64 {
        self.shards.iter().map(|s| s.outcomes[outcome as usize].load(Relaxed)).sum()
    }

    /// A connection to the server was opened (`1`) or closed (`-1`).
    pub fn connection(&self, delta: i64) {
        let shard = self.shard();
        if delta > 0 {
            shard.opened.fetch_add(delta.unsigned_abs(), Relaxed);
        }
        shard.open.fetch_add(delta, Relaxed);
    }

    /// `delta` connections became idle (or, negative, left the pool).
    #[inline]
    pub fn idle(&self, delta: i64) {
        self.shard().idle.fetch_add(delta, Relaxed);
    }

    /// Connections opened to the server since start.
    pub fn opened(&self) -> u64 {
        self.shards.iter().map(|s| s.opened.load(Relaxed)).sum()
    }

    /// Connections open now: (idle in a pool, carrying a request).
    pub fn connections(&self) -> (i64, i64) {
        let sum = |f: fn(&ServerShard) -> &AtomicI64| {
            self.shards.iter().map(|s| f(s).load(Relaxed)).sum::<i64>()
        };
        let (open, idle) = (sum(|s| &s.open), sum(|s| &s.idle));
        (idle.max(0), (open - idle).max(0))
    }
}

/// Process-wide metrics that are not tied to one route or server.
#[derive(Debug)]
pub struct Registry {
    shards: usize,
    routes: Mutex<BTreeMap<String, Arc<RouteMetrics>>>,
    /// Client connections open now, each on the shard of the worker that serves it (counted
    /// from the moment it is assigned to that worker).
    pub connections_open: Gauge,
    /// Connections a worker accepted and handed to a less loaded one.
    pub connections_handed_over: Counter,
    /// Open client connections that are parked (idle, waiting in a worker's parking lot).
    pub connections_parked: Gauge,
    /// Client connections accepted since start.
    pub connections_total: Counter,
    /// Connections closed because the client sent its request head too slowly (answered 408).
    pub header_timeouts: Counter,
    /// Connections closed because their PROXY protocol header was missing, malformed or not
    /// complete within the header timeout (`server.proxy_protocol`).
    pub proxy_protocol_refused: Counter,
    /// Resolutions of upstream host names that failed or found no address (the last good
    /// addresses stayed).
    pub dns_failures: Counter,
    /// Idle keep-alive connections closed by `keepalive_timeout`.
    pub idle_timeouts: Counter,
    /// Idle HTTP/1 connections whose session state was released while they wait.
    pub parks: Counter,
    /// Connections closed because a write to the client made no progress within `send_timeout`.
    pub client_send_timeouts: Counter,
    /// Requests refused because the client paused its body longer than `body_timeout`.
    pub client_body_timeouts: Counter,
    /// Answers of `redirect` routes.
    pub redirects: Counter,
    /// Requests refused because the route rewrites their path and it has a dot segment (400).
    pub rewrite_refusals: Counter,
    /// Requests whose client left before the answer was complete (499 when before its head).
    pub client_aborts: Counter,
    /// Upgraded connections (WebSocket tunnels) open now.
    pub tunnels_open: Gauge,
    /// Tunnels closed after `tunnel_idle_timeout` without a byte either way.
    pub tunnel_idle_timeouts: Counter,
    /// Access-log lines dropped because the writer thread fell behind (its queue was full).
    pub access_log_dropped: Counter,
    /// Reloads that took effect.
    pub config_reloads: Counter,
    /// Reloads refused because the new file was invalid.
    pub config_reload_failures: Counter,
}

impl Registry {
    /// A registry for `workers` worker threads (plus the control thread).
    pub fn new(workers: usize) -> Self {
        let shards = workers + 1;
        Registry {
            shards,
            routes: Mutex::new(BTreeMap::new()),
            connections_open: Gauge::new(shards),
            connections_parked: Gauge::new(shards),
            connections_total: Counter::new(shards),
            connections_handed_over: Counter::new(shards),
            header_timeouts: Counter::new(shards),
            proxy_protocol_refused: Counter::new(shards),
            dns_failures: Counter::new(shards),
            idle_timeouts: Counter::new(shards),
            parks: Counter::new(shards),
            client_send_timeouts: Counter::new(shards),
            client_body_timeouts: Counter::new(shards),
            redirects: Counter::new(shards),
            rewrite_refusals: Counter::new(shards),
            client_aborts: Counter::new(shards),
            tunnels_open: Gauge::new(shards),
            tunnel_idle_timeouts: Counter::new(shards),
            access_log_dropped: Counter::new(shards),
            config_reloads: Counter::new(shards),
            config_reload_failures: Counter::new(shards),
        }
    }

    /// Number of shards per metric.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The metrics of route `name`, created on first use and kept across reloads.
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(RouteMetrics::new(self.shards)))
            .clone()
    }

    /// Writes route metrics in Prometheus text format.
    pub fn render_routes(&self, out: &mut String) {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        out.push_str(
            "# HELP seawall_requests_total Requests answered, by route and status code.\n",
        );
        out.push_str("# TYPE seawall_requests_total counter\n");
        for (name, m) in &routes {
            for code in 0..CODES {
                let n: u64 = m.shards.iter().map(|s| s.codes[code].load(Relaxed)).sum();
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "seawall_requests_total{{route=\"{}\",code=\"{}\"}} {n}",
                        escape(name),
                        code + 100
                    );
                }
            }
        }
        out.push_str("# HELP seawall_request_duration_seconds Time from request head received to response head sent.\n");
        out.push_str("# TYPE seawall_request_duration_seconds histogram\n");
        for (name, m) in &routes {
            let name = escape(name);
            let mut cumulative = 0u64;
            for (i, bound) in BUCKETS_US.iter().enumerate() {
                cumulative += m.shards.iter().map(|s| s.buckets[i].load(Relaxed)).sum::<u64>();
                let _ = writeln!(out, "seawall_request_duration_seconds_bucket{{route=\"{name}\",le=\"{}\"}} {cumulative}", *bound as f64 / 1e6);
            }
            cumulative +=
                m.shards.iter().map(|s| s.buckets[BUCKETS_US.len()].load(Relaxed)).sum::<u64>();
            let sum: u64 = m.shards.iter().map(|s| s.sum_us.load(Relaxed)).sum();
            let _ = writeln!(out, "seawall_request_duration_seconds_bucket{{route=\"{name}\",le=\"+Inf\"}} {cumulative}");
            let _ = writeln!(
                out,
                "seawall_request_duration_seconds_sum{{route=\"{name}\"}} {}",
                sum as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "seawall_request_duration_seconds_count{{route=\"{name}\"}} {cumulative}"
            );
        }
        let name = "seawall_shed_total";
        family(out, name, "counter", "Requests shed by overload control (503 overloaded or the route's degraded answer), by route, priority and cause: cpu, memory, wait (requests waiting too long), queue (more waiting for the upstream than it serves within overload.max_wait).");
        for (route, m) in &routes {
            for priority in Priority::ALL {
                for cause in ShedCause::ALL {
                    let n = m.shed_count(priority, cause);
                    if n > 0 {
                        let (route, cause) = (escape(route), cause.as_str());
                        let _ = writeln!(out, "{name}{{route=\"{route}\",priority=\"{priority}\",reason=\"{cause}\"}} {n}");
                    }
                }
            }
        }
        let name = "seawall_cache_total";
        family(out, name, "counter", "What the cache did, by route and layer (l1 in memory; l2 Redis, for its hits): hit, miss, stale (a stale answer served: being refreshed, or standing in for a failed or shed request), revalidated, bypass (not looked up: no-store, Authorization), coalesced (waited for another request fetching the same key), stored, uncacheable (the answer could not be stored), too_large (over max_object_size).");
        for (route, m) in &routes {
            for event in CacheEvent::ALL {
                let n = m.cache_count(event);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "{name}{{route=\"{}\",layer=\"{}\",event=\"{}\"}} {n}",
                        escape(route),
                        event.layer(),
                        event.as_str()
                    );
                }
            }
        }
        out.push_str("# HELP seawall_inflight_requests Requests being answered now, by route.\n");
        out.push_str("# TYPE seawall_inflight_requests gauge\n");
        for (name, m) in &routes {
            let n: i64 = m.shards.iter().map(|s| s.inflight.load(Relaxed)).sum();
            let _ = writeln!(out, "seawall_inflight_requests{{route=\"{}\"}} {n}", escape(name));
        }
    }

    /// Writes the process-wide counters in Prometheus text format.
    pub fn render_process(&self, out: &mut String) {
        let gauges: [(&str, &str, i64); 3] = [
            (
                "seawall_connections_open",
                "Client connections open now.",
                self.connections_open.get(),
            ),
            (
                "seawall_connections_parked",
                "Open client connections parked while idle (no task, no buffers).",
                self.connections_parked.get(),
            ),
            (
                "seawall_tunnels_open",
                "Upgraded connections (WebSocket tunnels) open now (part of connections_open).",
                self.tunnels_open.get(),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let name = "seawall_worker_connections";
        let _ = writeln!(out, "# HELP {name} Client connections each worker serves now.");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for worker in 0..self.shards - 1 {
            let v = self.connections_open.shard(worker);
            let _ = writeln!(out, "{name}{{worker=\"{worker}\"}} {v}");
        }
        let counters: [(&str, &str, u64); 16] = [
            (
                "seawall_connections_total",
                "Client connections accepted.",
                self.connections_total.get(),
            ),
            (
                "seawall_connections_handed_over_total",
                "Connections a worker accepted and handed to a less loaded worker.",
                self.connections_handed_over.get(),
            ),
            (
                "seawall_client_header_timeouts_total",
                "Connections closed because no request head came in time (408 if one had started).",
                self.header_timeouts.get(),
            ),
            (
                "seawall_proxy_protocol_refused_total",
                "Connections closed because their PROXY protocol header was missing, malformed or late.",
                self.proxy_protocol_refused.get(),
            ),
            (
                "seawall_dns_failures_total",
                "Resolutions of upstream host names that failed or found nothing (the last good addresses stay).",
                self.dns_failures.get(),
            ),
            (
                "seawall_client_idle_timeouts_total",
                "Idle keep-alive connections closed.",
                self.idle_timeouts.get(),
            ),
            (
                "seawall_client_parks_total",
                "Idle keep-alive connections that released their buffers while waiting.",
                self.parks.get(),
            ),
            (
                "seawall_client_send_timeouts_total",
                "Connections closed because the client stopped reading (send_timeout).",
                self.client_send_timeouts.get(),
            ),
            (
                "seawall_client_body_timeouts_total",
                "Requests refused because the client paused its body past body_timeout (408).",
                self.client_body_timeouts.get(),
            ),
            (
                "seawall_redirects_total",
                "Answers of redirect routes.",
                self.redirects.get(),
            ),
            (
                "seawall_rewrite_refusals_total",
                "Requests refused 400 because their route rewrites the path and it has a dot segment.",
                self.rewrite_refusals.get(),
            ),
            (
                "seawall_client_aborts_total",
                "Requests whose client left before the answer was complete (499 before its head).",
                self.client_aborts.get(),
            ),
            (
                "seawall_tunnel_idle_timeouts_total",
                "Tunnels closed after tunnel_idle_timeout without traffic.",
                self.tunnel_idle_timeouts.get(),
            ),
            (
                "seawall_access_log_dropped_total",
                "Access-log lines dropped because the file writer fell behind (never waited for).",
                self.access_log_dropped.get(),
            ),
            (
                "seawall_config_reloads_total",
                "Configuration reloads that took effect.",
                self.config_reloads.get(),
            ),
            (
                "seawall_config_reload_failures_total",
                "Configuration reloads refused because the new file was invalid.",
                self.config_reload_failures.get(),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
    }
}

/// Writes the `# HELP` and `# TYPE` lines that open a metric family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a Prometheus label value.
pub fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_sum_and_histogram_is_cumulative() {
        let reg = Registry::new(2);
        let m = reg.route("api");
        set_worker_shard(0);
        m.record(200, Duration::from_micros(300));
        set_worker_shard(1);
        m.record(200, Duration::from_millis(30));
        m.record(503, Duration::from_secs(60));
        assert_eq!(m.count(200), 2);
        let mut out = String::new();
        reg.render_routes(&mut out);
        assert!(out.contains("seawall_requests_total{route=\"api\",code=\"200\"} 2"), "{out}");
        assert!(out.contains("seawall_requests_total{route=\"api\",code=\"503\"} 1"));
        assert!(out.contains("le=\"0.0005\"} 1"));
        assert!(out.contains("le=\"0.05\"} 2"));
        assert!(out.contains("le=\"+Inf\"} 3"));
        assert!(Arc::ptr_eq(&m, &reg.route("api")), "history survives lookups");
    }
}
