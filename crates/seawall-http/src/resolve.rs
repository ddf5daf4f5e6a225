//! Upstreams that move: every `host:port` in an upstream's `servers` is resolved (with
//! `hickory-resolver`, against `[dns] servers` or the system's configuration) before the gateway
//! starts and again at its records' TTL (bounded by `dns.min_ttl` and `dns.max_ttl`) or every
//! `dns.resolve_interval`, on the control runtime. Every address becomes a server of its own
//! (named by its address, with the host it came from); when the set changes, the snapshot is
//! rebuilt exactly as on a reload ([`Shared::apply_resolved`]), so a server whose address stays
//! keeps its health, ejection and pool state, a new one is health-checked as a new server is,
//! and one that vanished drains out.
//!
//! A failed resolution (or an empty answer) keeps the last good set, is counted in
//! `seawall_dns_failures_total` and logged: a DNS blink never empties an upstream.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use seawall_config::{Config, Dns, UpstreamServer};

use crate::metrics::Registry;
use crate::state::Shared;

/// The last good addresses of each `host:port`, shared by reloads and the resolver task.
#[derive(Default)]
pub struct Names {
    map: Mutex<HashMap<String, Vec<SocketAddr>>>,
    /// Wakes the resolver at once: a reload named a host it has not resolved yet.
    unknown: tokio::sync::Notify,
}

impl Names {
    /// Wakes the resolver when `config` names a host it has no addresses for.
    pub fn follow(&self, config: &Config) {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if hosts(config).iter().any(|h| !map.contains_key(h)) {
            self.unknown.notify_one();
        }
    }

    /// A copy of the table (taken once per rebuild).
    pub fn table(&self) -> HashMap<String, Vec<SocketAddr>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records `addrs` (sorted) for `host`; whether they differ from what it had.
    fn set(&self, host: &str, addrs: Vec<SocketAddr>) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(host) == Some(&addrs) {
            return false;
        }
        map.insert(host.to_string(), addrs);
        true
    }
}

/// `config` with each server resolved from a host name replaced by one server per address
/// the name has in `names` (its weight copied). A name not in `names` keeps the servers it has.
/// Idempotent: it also re-expands a configuration it expanded before.
pub fn expand(mut config: Config, names: &HashMap<String, Vec<SocketAddr>>) -> Config {
    for upstream in &mut config.upstreams {
        let mut servers: Vec<UpstreamServer> = Vec::with_capacity(upstream.servers.len());
        let mut expanded: Vec<String> = Vec::new();
        for server in std::mem::take(&mut upstream.servers) {
            let resolved = server.host.as_ref().and_then(|h| Some((h, names.get(h)?)));
            let Some((host, addrs)) = resolved.filter(|(_, a)| !a.is_empty()) else {
                push_unique(&mut servers, server);
                continue;
            };
            if expanded.contains(host) {
                continue;
            }
            expanded.push(host.clone());
            for &address in addrs {
                let name = address.to_string();
                let host = Some(host.clone());
                push_unique(&mut servers, UpstreamServer { name, address, host, ..server });
            }
        }
        upstream.servers = servers;
    }
    config
}

/// Adds `server` unless a server with its address (or name) is there: two names resolving to
/// one address are one server.
fn push_unique(servers: &mut Vec<UpstreamServer>, server: UpstreamServer) {
    let resolved = !server.address.ip().is_unspecified();
    let same =
        |s: &UpstreamServer| s.name == server.name || (resolved && s.address == server.address);
    if !servers.iter().any(same) {
        servers.push(server);
    }
}

/// Every `host:port` named in `config`'s upstreams.
fn hosts(config: &Config) -> BTreeSet<String> {
    let servers = config.upstreams.iter().flat_map(|u| &u.servers);
    servers.filter_map(|s| s.host.clone()).collect()
}

/// A resolver for `dns`: its nameservers, else the system's configuration.
fn resolver(dns: &Dns) -> Option<TokioResolver> {
    let mut builder = if dns.servers.is_empty() {
        match TokioResolver::builder_tokio() {
            Ok(builder) => builder,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the system's DNS configuration");
                return None;
            }
        }
    } else {
        let mut servers = Vec::new();
        for &addr in &dns.servers {
            servers.push(NameServerConfig::new(addr, Protocol::Udp));
            servers.push(NameServerConfig::new(addr, Protocol::Tcp));
        }
        let config = ResolverConfig::from_parts(None, vec![], servers);
        TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
    };
    let options = builder.options_mut();
    options.timeout = Duration::from_secs(2);
    options.attempts = 2;
    Some(builder.build())
}

/// The addresses of `host` ("name:port") and how long they are good for.
async fn lookup(
    resolver: &TokioResolver,
    host: &str,
) -> Result<(Vec<SocketAddr>, Duration), String> {
    let (name, port) = host.rsplit_once(':').ok_or("no port")?;
    let port: u16 = port.parse().map_err(|_| "bad port")?;
    let found = resolver.lookup_ip(name).await.map_err(|e| e.to_string())?;
    let ttl = found.valid_until().saturating_duration_since(std::time::Instant::now());
    let mut addrs: Vec<SocketAddr> = found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
    addrs.sort_unstable();
    addrs.dedup();
    if addrs.is_empty() {
        return Err("no address".into());
    }
    Ok((addrs, ttl))
}

/// Resolves every host of `config` once into `names`; when the next round is due.
pub async fn resolve_all(config: &Config, names: &Names, registry: &Registry) -> (bool, Duration) {
    let dns = &config.dns;
    let hosts = hosts(config);
    if hosts.is_empty() {
        // A reload that names a host wakes the resolver (see `Names::follow`).
        return (false, dns.max_ttl);
    }
    let Some(resolver) = resolver(dns) else {
        registry.dns_failures.add(1);
        return (false, dns.min_ttl);
    };
    let mut changed = false;
    let mut next = dns.max_ttl;
    for host in &hosts {
        match lookup(&resolver, host).await {
            Ok((addrs, ttl)) => {
                next = next.min(ttl);
                if names.set(host, addrs) {
                    tracing::info!(%host, "upstream addresses changed");
                    changed = true;
                }
            }
            Err(error) => {
                registry.dns_failures.add(1);
                tracing::warn!(%host, %error, "cannot resolve; the last good addresses stay");
                next = next.min(dns.min_ttl);
            }
        }
    }
    let next = dns.resolve_interval.unwrap_or(next.clamp(dns.min_ttl, dns.max_ttl));
    (changed, next)
}

/// Resolves the current configuration's hosts again and again, rebuilding the snapshot when an
/// address set changes. Runs on the control runtime until aborted.
pub async fn run(shared: Arc<Shared>, mut wait: Duration) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.names.unknown.notified() => {}
        }
        let snapshot = shared.snapshot.load_full();
        let (changed, next) = resolve_all(&snapshot.config, &shared.names, &shared.registry).await;
        drop(snapshot);
        if changed {
            shared.apply_resolved();
        }
        wait = next;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config() -> Config {
        let src = "[upstreams.app]\nservers = [\"127.0.0.9:80\", { address = \"app.test:80\", weight = 3 }]\n[dns]\nservers = [\"127.0.0.1:53\"]\n";
        seawall_config::parse(src, "t.toml").unwrap()
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn every_address_becomes_a_server_and_expansion_is_repeatable() {
        let names =
            HashMap::from([("app.test:80".to_string(), addrs(&["10.0.0.1:80", "10.0.0.2:80"]))]);
        let once = expand(config(), &names);
        let servers = &once.upstreams[0].servers;
        let listed: Vec<(&str, u32, Option<&str>)> =
            servers.iter().map(|s| (s.name.as_str(), s.weight, s.host.as_deref())).collect();
        assert_eq!(
            listed,
            [
                ("127.0.0.9:80", 1, None),
                ("10.0.0.1:80", 3, Some("app.test:80")),
                ("10.0.0.2:80", 3, Some("app.test:80"))
            ]
        );
        assert_eq!(expand(once.clone(), &names), once);
        let moved = HashMap::from([("app.test:80".to_string(), addrs(&["10.0.0.3:80"]))]);
        let again = expand(once.clone(), &moved);
        assert_eq!(again.upstreams[0].servers.len(), 2);
        assert_eq!(again.upstreams[0].servers[1].name, "10.0.0.3:80");
        // Nothing known (or an empty set): what is there stays.
        assert_eq!(expand(once.clone(), &HashMap::new()), once);
        let empty = HashMap::from([("app.test:80".to_string(), Vec::new())]);
        assert_eq!(expand(once.clone(), &empty), once);
        // An address already listed is one server.
        let overlap = HashMap::from([("app.test:80".to_string(), addrs(&["127.0.0.9:80"]))]);
        assert_eq!(expand(config(), &overlap).upstreams[0].servers.len(), 1);
    }
}
