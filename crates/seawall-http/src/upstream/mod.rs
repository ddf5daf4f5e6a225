//! Upstream groups: their servers, shared health and ejection state, and server selection.
//!
//! A [`ServerState`] is shared by all workers and outlives configuration reloads for as long as its
//! upstream keeps a server at the same address, so health history is not lost. Connections and the
//! in-flight counts used by `least_request` are per worker (see [`pool`]): choosing a server and
//! getting a connection to it never touch another core's memory.

pub mod health;
pub mod pool;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use seawall_config::{Balance, HashKey, Upstream};
use seawall_core::balance::{least_request, HashRing, RoundRobin};
use seawall_core::ejection::{FailureOutcome, Outlier};
use seawall_core::hash::stable_hash;
use seawall_core::rng::FastRng;

use crate::headers::HeaderLookup;
use crate::metrics::{shard_index, Padded, ServerMetrics, UpstreamOutcome};

static NEXT_SERVER_ID: AtomicUsize = AtomicUsize::new(0);

/// One server of one upstream, shared by every worker.
#[derive(Debug)]
pub struct ServerState {
    /// Process-unique index; workers keep their connection pools in a vector at this index.
    pub id: usize,
    /// As written in the config.
    pub name: String,
    pub address: SocketAddr,
    /// Result of active health checks (true until a check says otherwise).
    pub healthy: AtomicBool,
    /// Passive ejection state.
    pub outlier: Outlier,
    pub metrics: ServerMetrics,
}

impl ServerState {
    fn new(name: &str, address: SocketAddr, shards: usize) -> Self {
        ServerState {
            id: NEXT_SERVER_ID.fetch_add(1, Relaxed),
            name: name.to_string(),
            address,
            healthy: AtomicBool::new(true),
            outlier: Outlier::default(),
            metrics: ServerMetrics::new(shards),
        }
    }

    /// Whether requests may go to this server at `now_ms`.
    #[inline]
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.healthy.load(Relaxed) && !self.outlier.is_ejected(now_ms)
    }
}

enum Balancer {
    RoundRobin(RoundRobin),
    LeastRequest,
    ConsistentHash(HashRing, HashKey),
}

/// A configured upstream with its runtime state.
pub struct UpstreamGroup {
    pub config: Upstream,
    pub servers: Vec<Arc<ServerState>>,
    weights: Vec<u32>,
    balancer: Balancer,
    /// Round-robin position of each worker (each writes only its own).
    cursors: Box<[Padded<AtomicUsize>]>,
}

/// What the balancer needs to know about one request.
pub struct PickContext<'a> {
    pub headers: &'a dyn HeaderLookup,
    pub client_ip: std::net::IpAddr,
    pub now_ms: u64,
}

impl UpstreamGroup {
    /// Builds the group, reusing server state from `previous` for addresses that survive.
    pub fn new(config: Upstream, previous: Option<&UpstreamGroup>, shards: usize) -> Self {
        let old: HashMap<(&str, SocketAddr), &Arc<ServerState>> = previous
            .map(|p| p.servers.iter().map(|s| ((s.name.as_str(), s.address), s)).collect())
            .unwrap_or_default();
        let servers: Vec<Arc<ServerState>> = config
            .servers
            .iter()
            .map(|s| match old.get(&(s.name.as_str(), s.address)) {
                Some(state) => Arc::clone(state),
                None => Arc::new(ServerState::new(&s.name, s.address, shards)),
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
        UpstreamGroup { config, servers, weights, balancer, cursors }
    }

    /// Chooses a server for a request, skipping unavailable servers and those in `exclude`.
    /// `load(server_id)` is the calling worker's in-flight count for a server.
    pub fn pick(
        &self,
        cx: &PickContext<'_>,
        rng: &mut FastRng,
        exclude: &[usize],
        load: impl Fn(usize) -> u32,
    ) -> Option<usize> {
        let available = |i: usize| !exclude.contains(&i) && self.servers[i].is_available(cx.now_ms);
        match &self.balancer {
            Balancer::RoundRobin(rr) => {
                let cursor = &self.cursors[shard_index(self.cursors.len())];
                let mut pos = cursor.load(Relaxed);
                let picked = rr.pick(&mut pos, available);
                cursor.store(pos, Relaxed);
                picked
            }
            Balancer::LeastRequest => {
                least_request(&self.weights, rng, |i| load(self.servers[i].id), available)
            }
            Balancer::ConsistentHash(ring, key) => ring.pick(hash_of(key, cx), available),
        }
    }

    /// Records how a request to server `index` ended, for metrics and passive ejection.
    pub fn record(&self, index: usize, outcome: UpstreamOutcome, now_ms: u64) {
        let server = &self.servers[index];
        server.metrics.record(outcome);
        let policy = &self.config.passive;
        if outcome == UpstreamOutcome::Ok {
            server.outlier.record_success(now_ms, policy);
            return;
        }
        let ejected = || self.servers.iter().filter(|s| s.outlier.is_ejected(now_ms)).count();
        if let FailureOutcome::Ejected { until_ms } =
            server.outlier.record_failure(now_ms, policy, ejected, self.servers.len())
        {
            tracing::warn!(
                upstream = %self.config.name,
                server = %server.name,
                seconds = (until_ms.saturating_sub(now_ms)) / 1000,
                "server ejected after consecutive failures"
            );
        }
    }
}

fn hash_of(key: &HashKey, cx: &PickContext<'_>) -> u64 {
    let by_ip = || match cx.client_ip {
        std::net::IpAddr::V4(v4) => stable_hash(&v4.octets()),
        std::net::IpAddr::V6(v6) => stable_hash(&v6.octets()),
    };
    match key {
        HashKey::ClientIp => by_ip(),
        HashKey::Header(name) => cx.headers.first(name.as_str()).map_or_else(by_ip, stable_hash),
        HashKey::Cookie(name) => cookie(cx.headers, name).unwrap_or_else(by_ip),
    }
}

/// The value of cookie `name` in the request's Cookie headers.
fn cookie(headers: &dyn HeaderLookup, name: &str) -> Option<u64> {
    let mut hash = None;
    headers.for_each_value("cookie", &mut |v| {
        hash = v
            .split(|&b| b == b';')
            .find_map(|pair| {
                pair.trim_ascii_start().strip_prefix(name.as_bytes())?.strip_prefix(b"=")
            })
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
        h.insert(http::header::COOKIE, "a=1; session=abc; sessionx=2".parse().unwrap());
        assert_eq!(cookie(&h, "session"), Some(stable_hash(b"abc")));
        assert_eq!(cookie(&h, "nope"), None);
    }
}
