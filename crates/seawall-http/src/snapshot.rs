//! The runtime snapshot: a validated configuration plus the live state built from it (upstream
//! groups with their servers, rate limiters, route metrics). One `Arc<Snapshot>` is swapped atomically on reload;
//! state whose name survives the reload (a server at the same address in the same upstream, a route
//! with the same name, a rate limiter with the same name and size) keeps its history.

use std::sync::Arc;

use seawall_config::Config;

use crate::cache::Cache;
use crate::metrics::{Registry, RouteMetrics};
use crate::overload::Overload;
use crate::ratelimit::Limiter;
use crate::switches::Switches;
use crate::upstream::UpstreamGroup;

/// The metrics label used for requests that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Configuration and live state, as one unit that requests load.
pub struct Snapshot {
    pub config: Config,
    /// Indexed like `config.upstreams`.
    pub upstreams: Vec<UpstreamGroup>,
    /// Indexed like `config.routes`.
    pub route_metrics: Vec<Arc<RouteMetrics>>,
    pub unmatched_metrics: Arc<RouteMetrics>,
    /// Indexed like `config.rate_limits`.
    pub limiters: Vec<Arc<Limiter>>,
    /// Read-only mode and disabled routes: the same object from snapshot to snapshot.
    pub switches: Arc<Switches>,
    /// The overload level and crisis mode: the same object from snapshot to snapshot.
    pub overload: Arc<Overload>,
    /// The response cache: the same object from snapshot to snapshot (resized to
    /// `cache.memory`).
    pub cache: Arc<Cache>,
    /// Indexed like `config.egress`: each group's quota state, carried over by name.
    pub egress: Vec<Arc<crate::egress::EgressGroup>>,
}

impl Snapshot {
    /// Builds a snapshot, carrying state over from `previous`.
    pub fn build(config: Config, previous: Option<&Snapshot>, registry: &Registry) -> Snapshot {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let old =
                    previous.and_then(|p| p.upstreams.iter().find(|o| o.config.name == u.name));
                UpstreamGroup::new(u.clone(), &config.overload, old, registry.shards())
            })
            .collect();
        let route_metrics = config.routes.iter().map(|r| registry.route(&r.name)).collect();
        let limiters = config
            .rate_limits
            .iter()
            .map(|l| {
                let old =
                    previous.and_then(|p| p.limiters.iter().find(|o| o.config.name == l.name));
                Arc::new(Limiter::new(l.clone(), old.map(Arc::as_ref), registry.shards()))
            })
            .collect();
        let cache = match previous {
            Some(p) => {
                p.cache.set_capacity(config.cache.memory);
                Arc::clone(&p.cache)
            }
            None => {
                let largest = config.routes.iter().filter_map(|r| r.cache.as_ref());
                let largest = largest.map(|c| c.max_object_size).max().unwrap_or(1 << 20);
                Cache::new(config.cache.memory, largest)
            }
        };
        let mut keys = crate::egress::Keys::of(previous.map_or(&[][..], |p| &p.egress[..]));
        let egress = config
            .egress
            .iter()
            .map(|e| {
                let old = previous.and_then(|p| p.egress.iter().find(|o| o.config.name == e.name));
                match old {
                    // Unchanged (a reload of other parts, a DNS change): the same group, its
                    // line included.
                    Some(old) if old.config == *e => Arc::clone(old),
                    _ => {
                        let old = old.map(Arc::as_ref);
                        Arc::new(crate::egress::EgressGroup::new(e.clone(), old, &mut keys))
                    }
                }
            })
            .collect();
        Snapshot {
            cache,
            egress,
            upstreams,
            limiters,
            switches: previous.map_or_else(Arc::default, |p| Arc::clone(&p.switches)),
            overload: previous.map_or_else(
                || Arc::new(Overload::new(registry.shards())),
                |p| Arc::clone(&p.overload),
            ),
            route_metrics,
            unmatched_metrics: registry.route(UNMATCHED_ROUTE),
            config,
        }
    }
}
