//! Upstream groups: their servers, shared health and ejection state, and server selection.
//!
//! A [`ServerState`] is shared by all workers and outlives configuration reloads for as long as its
//! upstream keeps a server at the same address, so health history is not lost. Connections and the
//! in-flight counts used by `least_request` are per worker (see [`pool`]): choosing a server and
//! getting a connection to it never touch another core's memory.

pub mod breaker;
pub mod bulkhead;
pub mod health;
pub mod pool;
pub mod stream;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use seawall_config::{Balance, HashKey, Overload, Upstream};
use seawall_core::adaptive::Settings;
use seawall_core::balance::{least_request, HashRing, RoundRobin};
use seawall_core::budget::RetryBudget;
use seawall_core::ejection::{EjectionGate, FailureOutcome, Outlier};
use seawall_core::hash::stable_hash;
use seawall_core::rng::FastRng;

use crate::headers::HeaderLookup;
use crate::metrics::{shard_index, Counter, Padded, ServerMetrics, UpstreamOutcome};
use crate::request::RequestView;
use breaker::GroupBreaker;
use bulkhead::Gate;

/// Hands out server slots: a slot is reused once the server that held it is gone, so per-worker
/// tables indexed by slot stay as large as the configuration, however many reloads happen.
struct Slots {
    free: Mutex<Vec<usize>>,
    next: AtomicUsize,
    /// Never reused: tells a slot's new server from the one before it.
    generation: AtomicU64,
}

static SLOTS: Slots = Slots {
    free: Mutex::new(Vec::new()),
    next: AtomicUsize::new(0),
    generation: AtomicU64::new(1),
};

impl Slots {
    fn take(&self) -> (usize, u64) {
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let slot = reused.unwrap_or_else(|| self.next.fetch_add(1, Relaxed));
        (slot, self.generation.fetch_add(1, Relaxed))
    }

    fn give_back(&self, slot: usize) {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).push(slot);
    }
}

/// One server of one upstream, shared by every worker.
#[derive(Debug)]
pub struct ServerState {
    /// Workers keep this server's connections and in-flight count at this index of their tables.
    pub slot: usize,
    /// Unique for the life of the process: a table entry whose key differs belongs to a server
    /// that held the slot before.
    pub key: u64,
    /// As written in the config.
    pub name: String,
    pub address: SocketAddr,
    /// Result of active health checks (true until a check says otherwise).
    pub healthy: AtomicBool,
    /// Taken out by an operator (`POST .../servers/{server}/drain`): no new requests; what is
    /// in flight, and its pooled connections, finish.
    pub draining: AtomicBool,
    /// Passive ejection state.
    pub outlier: Outlier,
    pub metrics: ServerMetrics,
    /// The `host:port` written in the file that this server stands for (its address when the
    /// file wrote one): the `Host` sent to it, and the name its TLS certificate is checked for.
    pub authority: String,
    /// How connections to it are encrypted (`tls` on the upstream), replaced at each reload.
    pub tls: arc_swap::ArcSwapOption<ServerTls>,
}

/// What a TLS connection to one server needs.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The upstream's client side and the name this server's certificate is verified against,
    /// or why there is none (every connection then fails with that reason).
    pub connect:
        Result<(crate::tls::client::Connector, rustls_pki_types::ServerName<'static>), String>,
}

/// The TLS side of server `name` with `connector` (or the reason it has none).
fn server_tls(connector: &Result<crate::tls::client::Connector, String>, name: &str) -> ServerTls {
    let connect = connector.clone().and_then(|c| c.name_for(name).map(|n| (c, n)));
    ServerTls { connect }
}

impl ServerState {
    pub(crate) fn new(name: &str, address: SocketAddr, shards: usize) -> Self {
        let (slot, key) = SLOTS.take();
        ServerState {
            slot,
            key,
            name: name.to_string(),
            address,
            healthy: AtomicBool::new(!address.ip().is_unspecified()),
            draining: AtomicBool::new(false),
            outlier: Outlier::default(),
            metrics: ServerMetrics::new(shards),
            authority: name.to_string(),
            tls: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// Whether the server has an address: a host name not resolved yet (see [`crate::resolve`])
    /// has the unspecified one, and is never picked nor probed (it would reach this machine).
    pub fn is_resolved(&self) -> bool {
        !self.address.ip().is_unspecified()
    }

    /// Whether requests may go to this server at `now_ms`.
    #[inline]
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.healthy.load(Relaxed)
            && !self.draining.load(Relaxed)
            && !self.outlier.is_ejected(now_ms)
    }
}

impl Drop for ServerState {
    fn drop(&mut self) {
        SLOTS.give_back(self.slot);
    }
}

enum Balancer {
    RoundRobin(RoundRobin),
    LeastRequest,
    ConsistentHash(HashRing, HashKey),
}

/// State of an upstream that outlives reloads with its name.
pub struct GroupState {
    /// Ejections of this upstream's servers are decided one at a time (the cap must hold).
    pub ejection: EjectionGate,
    /// Requests and retries of the last 10 s, for the retry budget.
    pub budget: RetryBudget,
    pub retries: RetryCounters,
    /// Requests sent to this group because another one's failed (it is that one's fallback).
    pub fallback_requests: Counter,
}

/// What became of failed attempts that could have been tried again.
pub struct RetryCounters {
    /// Attempts made again, by why: `connect` (no connection), `reset` (the connection broke
    /// before an answer), `status` (an answer in `retry.on_status`).
    pub connect: Counter,
    pub reset: Counter,
    pub status: Counter,
    /// Retries the budget refused.
    pub over_budget: Counter,
}

impl GroupState {
    fn new(shards: usize) -> GroupState {
        GroupState {
            ejection: EjectionGate::default(),
            budget: RetryBudget::new(RETRY_BUDGET_WINDOW_MS),
            retries: RetryCounters {
                connect: Counter::new(shards),
                reset: Counter::new(shards),
                status: Counter::new(shards),
                over_budget: Counter::new(shards),
            },
            fallback_requests: Counter::new(shards),
        }
    }
}

/// The window over which retries are weighed against requests.
const RETRY_BUDGET_WINDOW_MS: u64 = 10_000;

/// Where an adaptive limit starts: low enough not to flood an origin already at capacity before
/// anything is known of it; it doubles every sample window in which it held requests back while
/// the origin kept its latency (20 → 1,280 in 0.7 s).
const ADAPTIVE_INITIAL: usize = 20;

/// A configured upstream with its runtime state.
pub struct UpstreamGroup {
    pub config: Upstream,
    pub servers: Vec<Arc<ServerState>>,
    pub state: Arc<GroupState>,
    /// The group's circuit breaker, when it has one; its state outlives reloads.
    pub breaker: Option<Arc<GroupBreaker>>,
    /// The group's gate — its adaptive limit and bulkhead — when it has either (kept by a reload
    /// that keeps its limits).
    pub gate: Option<Arc<Gate>>,
    weights: Vec<u32>,
    balancer: Balancer,
    /// Round-robin position of each worker (each writes only its own).
    cursors: Box<[Padded<AtomicUsize>]>,
}

impl UpstreamGroup {
    /// Builds the group, reusing server state from `previous` for addresses that survive.
    pub fn new(
        config: Upstream,
        overload: &Overload,
        previous: Option<&UpstreamGroup>,
        shards: usize,
    ) -> Self {
        // Servers keep their state across a reload, unless the way to reach them changed (their
        // pooled connections were made the old way). A server is the host written in the file at
        // one of its addresses.
        let old: HashMap<(&str, SocketAddr), &Arc<ServerState>> = previous
            .filter(|p| p.config.tls == config.tls)
            .map(|p| p.servers.iter().map(|s| ((s.authority.as_str(), s.address), s)).collect())
            .unwrap_or_default();
        let connector = config.tls.as_ref().map(|tls| {
            crate::tls::client::Connector::new(tls).map_err(|e| {
                tracing::error!(upstream = %config.name, error = %e, "cannot set up TLS to the upstream; its connections will fail");
                e
            })
        });
        let servers: Vec<Arc<ServerState>> = config
            .servers
            .iter()
            .map(|s| {
                // The host written in the file, not the address it resolved to.
                let authority = s.host.as_deref().unwrap_or(&s.name);
                let state = match old.get(&(authority, s.address)) {
                    Some(state) => Arc::clone(state),
                    None => {
                        let mut state = ServerState::new(&s.name, s.address, shards);
                        state.authority = authority.to_string();
                        Arc::new(state)
                    }
                };
                // Read anew at each build: a CA bundle or client certificate replaced in place
                // is used by the connections opened after a reload.
                state.tls.store(connector.as_ref().map(|c| Arc::new(server_tls(c, authority))));
                state
            })
            .collect();
        let weights: Vec<u32> = config.servers.iter().map(|s| s.weight).collect();
        let balancer = match &config.balance {
            Balance::RoundRobin => Balancer::RoundRobin(RoundRobin::new(&weights)),
            Balance::LeastRequest => Balancer::LeastRequest,
            Balance::ConsistentHash(key) => {
                let ids: Vec<&str> = config.servers.iter().map(|s| s.name.as_str()).collect();
                Balancer::ConsistentHash(HashRing::new(&ids, &weights), key.clone())
            }
        };
        let cursors = (0..shards).map(|_| Padded::default()).collect();
        let state =
            previous.map_or_else(|| Arc::new(GroupState::new(shards)), |p| Arc::clone(&p.state));
        let breaker = config.breaker.clone().map(|policy| {
            let old = previous.and_then(|p| p.breaker.as_deref());
            Arc::new(GroupBreaker::new(&config.name, policy, old, shards))
        });
        // With overload control off, only a bulkhead makes a gate.
        let limits = if overload.enabled { config.gate() } else { config.bulkhead.clone() };
        let gate = limits.map(|limits| {
            let old = previous.and_then(|p| p.gate.as_ref());
            let adaptive = (config.adaptive && overload.enabled).then(|| Settings {
                min: 1,
                max: limits.max_concurrency,
                initial: limits.max_concurrency.min(ADAPTIVE_INITIAL),
                tolerance: overload.latency_tolerance,
                slack_us: overload.latency_slack.as_micros() as u64,
                max_latency_us: config.max_latency.map_or(0, |d| d.as_micros() as u64),
                probe_every_ms: seawall_core::clock::duration_ms(overload.probe_every),
            });
            Gate::new(&config.name, limits, adaptive, old, shards)
        });
        UpstreamGroup { config, servers, state, breaker, gate, weights, balancer, cursors }
    }

    /// The balancing key of a request (0 unless the upstream hashes): computed once, before the
    /// request's head may be overwritten by its streaming body.
    pub fn request_key(&self, request: &RequestView<'_>) -> u64 {
        match &self.balancer {
            Balancer::ConsistentHash(_, key) => {
                hash_of(key, request.headers, request.client.addr.ip())
            }
            _ => 0,
        }
    }

    /// Chooses a server for a request with balancing key `key`, skipping unavailable servers and
    /// those in `exclude`. `load(server)` is the calling worker's in-flight count for a server.
    pub fn pick(
        &self,
        key: u64,
        now_ms: u64,
        rng: &mut FastRng,
        exclude: &[usize],
        load: impl Fn(&ServerState) -> u32,
    ) -> Option<usize> {
        let available = |i: usize| !exclude.contains(&i) && self.servers[i].is_available(now_ms);
        match &self.balancer {
            Balancer::RoundRobin(rr) => {
                let cursor = &self.cursors[shard_index(self.cursors.len())];
                let mut pos = cursor.load(Relaxed);
                let picked = rr.pick(&mut pos, available);
                cursor.store(pos, Relaxed);
                picked
            }
            Balancer::LeastRequest => {
                least_request(&self.weights, rng, |i| load(&self.servers[i]), available)
            }
            Balancer::ConsistentHash(ring, _) => ring.pick(key, available),
        }
    }

    /// Whether any server may take requests at `now_ms`.
    pub fn has_available(&self, now_ms: u64) -> bool {
        self.servers.iter().any(|s| s.is_available(now_ms))
    }

    /// Records how an attempt on server `index` ended, for metrics and passive ejection.
    pub fn record(&self, index: usize, outcome: UpstreamOutcome, now_ms: u64) {
        let server = &self.servers[index];
        server.metrics.record(outcome);
        let policy = &self.config.passive;
        match outcome {
            UpstreamOutcome::Ok => server.outlier.record_success(now_ms, policy),
            // The client left: nothing is known about the server.
            UpstreamOutcome::Cancelled => {}
            UpstreamOutcome::Http5xx
            | UpstreamOutcome::ConnectFailure
            | UpstreamOutcome::Timeout
            | UpstreamOutcome::Error => {
                let ejected =
                    || self.servers.iter().filter(|s| s.outlier.is_ejected(now_ms)).count();
                let decided = server.outlier.record_failure(
                    now_ms,
                    policy,
                    &self.state.ejection,
                    ejected,
                    self.servers.len(),
                );
                if let FailureOutcome::Ejected { until_ms } = decided {
                    tracing::warn!(
                        upstream = %self.config.name,
                        server = %server.name,
                        seconds = (until_ms.saturating_sub(now_ms)) / 1000,
                        "server ejected after consecutive failures"
                    );
                }
            }
        }
    }
}

/// The hash of a request's balancing key; a request without the key — or with an empty one —
/// falls back to its client's address, so such clients still spread over the servers.
fn hash_of(key: &HashKey, headers: &dyn HeaderLookup, client: IpAddr) -> u64 {
    let by_ip = || match client {
        IpAddr::V4(v4) => stable_hash(&v4.octets()),
        IpAddr::V6(v6) => stable_hash(&v6.octets()),
    };
    let present = |v: &[u8]| !v.trim_ascii().is_empty();
    match key {
        HashKey::ClientIp => by_ip(),
        HashKey::Header(name) => {
            headers.first(name.as_str()).filter(|v| present(v)).map_or_else(by_ip, stable_hash)
        }
        HashKey::Cookie(name) => cookie(headers, name).unwrap_or_else(by_ip),
    }
}

/// The hash of cookie `name`'s value in the request's Cookie fields, if it has a value.
fn cookie(headers: &dyn HeaderLookup, name: &str) -> Option<u64> {
    let mut hash = None;
    headers.for_each_value("cookie", &mut |v| {
        hash = v
            .split(|&b| b == b';')
            .find_map(|pair| {
                pair.trim_ascii_start().strip_prefix(name.as_bytes())?.strip_prefix(b"=")
            })
            .filter(|value| !value.trim_ascii().is_empty())
            .map(stable_hash);
        hash.is_some()
    });
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_lookup() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::COOKIE, "a=1; session=abc; sessionx=2; empty=".parse().unwrap());
        assert_eq!(cookie(&h, "session"), Some(stable_hash(b"abc")));
        assert_eq!(cookie(&h, "nope"), None);
        assert_eq!(cookie(&h, "empty"), None);
    }

    #[test]
    fn an_empty_key_falls_back_to_the_client_address() {
        let client: IpAddr = "10.1.2.3".parse().unwrap();
        let key = HashKey::Header("x-user".into());
        let by_ip = hash_of(&key, &http::HeaderMap::new(), client);
        for empty in ["", "  "] {
            let mut h = http::HeaderMap::new();
            h.insert("x-user", empty.parse().unwrap());
            assert_eq!(hash_of(&key, &h, client), by_ip, "{empty:?}");
        }
        let mut h = http::HeaderMap::new();
        h.insert("x-user", "alice".parse().unwrap());
        assert_eq!(hash_of(&key, &h, client), stable_hash(b"alice"));
    }

    #[test]
    fn slots_are_reused_once_their_server_is_gone() {
        // A thousand reloads' worth of servers come and go; the slot table does not grow with
        // them (other tests may hold a few slots at the same time).
        let highest = (0..1000)
            .map(|i| ServerState::new("s", SocketAddr::from(([127, 0, 0, 1], i)), 1).slot)
            .max()
            .unwrap();
        assert!(highest < 100, "slot {highest}");
        let a = ServerState::new("a", "127.0.0.1:1".parse().unwrap(), 1);
        let b = ServerState::new("b", "127.0.0.1:2".parse().unwrap(), 1);
        assert_ne!(a.key, b.key);
    }
}
