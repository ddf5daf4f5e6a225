//! The response cache, decided in the policy layer for both engines: a lookup at admission (a
//! fresh answer is served before any shedding — it costs nothing; a stale one stands in for a
//! request that would be shed), one fetch per key at a time (others wait for it, bounded, and are
//! served what it stored), the answer stored as it streams to its first client, and stale answers
//! served when the origin fails. RFC 9111's rules are [`seawall_core::cache`]'s.
//!
//! ```text
//! admit ─▶ lookup ─┬─ fresh ──────────────────────────────────▶ serve HIT (304 if the client's copy is current)
//!                  ├─ within stale-while-revalidate ───────────▶ serve STALE; refresh in the background
//!                  ├─ would be shed, a stale answer may stand in ▶ serve STALE
//!                  ├─ absent / stale ─▶ wait for the one fetching it ─▶ HIT
//!                  │                  or fetch: L2 (Redis) ▸ origin, with the stale entry's validators
//!                  │                     ├ 304 ─▶ REVALIDATED       ├ answer ─▶ MISS, stored as it streams
//!                  │                     └ fails, a stale answer may stand in ─▶ STALE
//!                  ├─ only-if-cached, nothing to give ─────────▶ 504 not_cached
//!                  └─ bypass (no-store, a body) ───────────────▶ origin, nothing stored
//! ```
//!
//! The in-memory layer (L1) is a `quick_cache` bounded by bytes (frequency-aware admission, scan
//! resistant); entries live past their freshness for as long as they may still be served stale.
//! The shared layer (L2, `l2.rs`) keeps answers in Redis for a fleet; the background refresh is an
//! upstream call, in `proxy/refresh.rs`.

mod codec;
mod key;
mod l2;
mod stored;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use seawall_config::RouteCache;
use seawall_core::cache::{self as rules, RequestFacts, RequestUse, RoutePolicy, Usable};
use tokio::sync::watch;

pub use key::Key;
pub use l2::L2;
pub use stored::{CacheStatus, Http1Form, Stored};

use crate::headers::HeaderLookup;
pub use crate::metrics::CacheEvent;
use crate::metrics::RouteMetrics;
use crate::request::RequestView;
use crate::response::BodyTap;
use crate::response::ResponseView;

/// An L1 entry: an answer, or the names a key's answers vary on (each variant is stored under
/// the key extended with the request's values for them).
#[derive(Clone)]
enum Entry {
    Answer(Arc<Stored>),
    Variants(Arc<[String]>),
}

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<Box<str>, Entry> for Weigh {
    fn weight(&self, key: &Box<str>, entry: &Entry) -> u64 {
        let own = match entry {
            Entry::Answer(stored) => stored.weight(),
            Entry::Variants(names) => names.iter().map(|n| n.len() as u64 + 24).sum::<u64>() + 64,
        };
        own + key.len() as u64
    }
}

/// Counts what L1 evicts to make room.
#[derive(Clone, Default)]
struct Evictions(Arc<AtomicU64>);

impl quick_cache::Lifecycle<Box<str>, Entry> for Evictions {
    type RequestState = ();

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, _state: &mut (), _key: Box<str>, _entry: Entry) {
        self.0.fetch_add(1, Relaxed);
    }
}

type L1 =
    quick_cache::sync::Cache<Box<str>, Entry, Weigh, quick_cache::DefaultHashBuilder, Evictions>;

/// The cache every route shares; kept from snapshot to snapshot.
pub struct Cache {
    l1: L1,
    /// The shared layer, when `[cache] redis` is set (attached by the control plane).
    l2: arc_swap::ArcSwapOption<L2>,
    evictions: Evictions,
    /// Keys being fetched now: a request for one waits for the fetch to end.
    flights: Mutex<HashMap<Box<str>, watch::Receiver<()>>>,
}

impl Cache {
    /// A cache holding at most `memory` bytes, in which an answer of `largest` bytes fits (L1 is
    /// split into shards, each holding its share: no more shards than leave room for one).
    pub fn new(memory: u64, largest: u64) -> Arc<Cache> {
        let evictions = Evictions::default();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let room = usize::try_from(memory / (largest.max(64 << 10) * 2)).unwrap_or(usize::MAX);
        // A power of two, as quick_cache rounds to one.
        let shards = (cores * 4).min(room).max(1);
        let shards = 1 << (usize::BITS - 1 - shards.leading_zeros());
        // quick_cache sizes its table from an estimate of the entries: a few KiB each.
        let estimate = usize::try_from(memory / 4096).unwrap_or(usize::MAX).max(64);
        let options = quick_cache::OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity(estimate)
            .weight_capacity(memory)
            .build();
        let l1 = match options {
            Ok(options) => quick_cache::sync::Cache::with_options(
                options,
                Weigh,
                quick_cache::DefaultHashBuilder::default(),
                evictions.clone(),
            ),
            Err(_) => quick_cache::sync::Cache::with(
                estimate,
                memory,
                Weigh,
                quick_cache::DefaultHashBuilder::default(),
                evictions.clone(),
            ),
        };
        Arc::new(Cache {
            l1,
            l2: arc_swap::ArcSwapOption::empty(),
            evictions,
            flights: Mutex::new(HashMap::new()),
        })
    }

    /// Follows `[cache] redis`: attaches L2 (on the control plane's runtime, which drives its
    /// connection), replaces it when its settings change, drops it when the key goes.
    pub fn follow_l2(self: &Arc<Self>, config: &seawall_config::Cache) {
        let current = self.l2.load();
        match (&config.redis, current.as_deref()) {
            (None, None) => {}
            (None, Some(_)) => self.l2.store(None),
            (Some(url), Some(l2)) if l2.is(url, &config.l2_prefix, config.l2_timeout) => {}
            (Some(url), _) => {
                let l2 = L2::new(url, &config.l2_prefix, config.l2_timeout);
                if let Some(l2) = &l2 {
                    tracing::info!(url = %url, "cache: shared layer (L2) in Redis");
                    let cache = Arc::downgrade(self);
                    l2.listen_for_purges(move |path, prefix| {
                        if let Some(cache) = cache.upgrade() {
                            let purged = cache.purge_l1(path, prefix);
                            tracing::info!(
                                path,
                                prefix,
                                purged,
                                "cache: purged by another instance"
                            );
                        }
                    });
                }
                self.l2.store(l2);
            }
        }
    }

    /// The shared layer, when there is one.
    pub fn l2(&self) -> Option<Arc<L2>> {
        self.l2.load_full()
    }

    /// The bytes it may hold now.
    pub fn capacity(&self) -> u64 {
        self.l1.capacity()
    }

    /// Holds at most `memory` bytes from now on, evicting what no longer fits.
    pub fn set_capacity(&self, memory: u64) {
        if memory != self.l1.capacity() {
            self.l1.set_capacity(memory);
        }
    }

    /// Bytes held, entries, and evictions so far.
    pub fn usage(&self) -> (u64, usize, u64) {
        (self.l1.weight(), self.l1.len(), self.evictions.0.load(Relaxed))
    }

    /// Removes every answer whose path (and query) is `path`, or starts with `prefix`; returns
    /// how many went from L1 (Redis's, and the other instances' L1 copies, go in the background).
    pub fn purge(self: &Arc<Self>, path: Option<&str>, prefix: Option<&str>) -> usize {
        if let Some(l2) = self.l2() {
            // Once Redis is clean, L1 again: a request in between could have fetched an entry
            // back from Redis.
            let (cache, path2, prefix2) =
                (Arc::downgrade(self), path.map(str::to_string), prefix.map(str::to_string));
            l2.purge(path, prefix, move || {
                if let Some(cache) = cache.upgrade() {
                    cache.purge_l1(path2.as_deref(), prefix2.as_deref());
                }
            });
        }
        self.purge_l1(path, prefix)
    }

    /// [`Cache::purge`] in this instance's L1 only.
    fn purge_l1(&self, path: Option<&str>, prefix: Option<&str>) -> usize {
        let removed = AtomicU64::new(0);
        self.l1.retain(|_, entry| {
            let Entry::Answer(stored) = entry else { return true };
            let hit = path.is_some_and(|p| *stored.path == *p)
                || prefix.is_some_and(|p| stored.path.starts_with(p));
            if hit {
                removed.fetch_add(1, Relaxed);
            }
            !hit
        });
        usize::try_from(removed.load(Relaxed)).unwrap_or(usize::MAX)
    }

    /// How the request meets the cache (the route caches; the method is GET or HEAD).
    pub fn lookup(
        self: &Arc<Self>,
        route_name: &str,
        policy: &Arc<RouteCache>,
        metrics: &Arc<RouteMetrics>,
        request: &RequestView<'_>,
        now: u64,
        crisis: bool,
    ) -> Lookup {
        let rules = route_rules(policy);
        let facts = request_facts(request);
        let key = Key::primary(route_name, policy, request);
        let head = *request.method == http::Method::HEAD;
        let request_use = rules::request_use(&facts, &rules);
        // A body the key does not see (a search API reading GET bodies) must not select an
        // answer fetched with another.
        let has_body = !matches!(
            request.framing,
            crate::request::BodyFraming::None | crate::request::BodyFraming::Length(0)
        );
        if request_use == RequestUse::Bypass || has_body {
            return Lookup::Bypass;
        }
        let found = self.find(&key, request.headers);
        // A request the shared answers are not for gets none of them, not even as a stand-in.
        let private = facts.authorization && !policy.share_authorized;
        let candidate = found.as_ref().filter(|_| !private).map(|(stored, _)| Arc::clone(stored));
        if request_use == RequestUse::Lookup {
            if let Some((stored, _)) = &found {
                let held = stored.held(now);
                match rules::usable(&stored.lifetime, held, &rules, crisis) {
                    Usable::Fresh if !stored.lifetime.revalidate_always => {
                        let served = Served::new(stored, CacheStatus::Hit, request.headers);
                        return Lookup::Serve(served);
                    }
                    Usable::StaleWhileRevalidate if !stored.lifetime.revalidate_always => {
                        let served = Served::new(stored, CacheStatus::Stale, request.headers);
                        // The first to find it stale starts its refresh, in the background.
                        let fetch_key = found_key(&found, &key).clone();
                        let refresh = match self.join_flight(&fetch_key) {
                            Role::Lead(flight) if !head => Some(Ticket {
                                cache: Arc::clone(self),
                                metrics: Arc::clone(metrics),
                                policy: Arc::clone(policy),
                                route: route_name.into(),
                                key: key.clone(),
                                stale: Some(Arc::clone(stored)),
                                role: Role::Lead(flight),
                                store: true,
                                refresh: false,
                                revalidating: false,
                                request: Captured::of(request),
                                target: String::from_utf8_lossy(request.target).into(),
                            }),
                            _ => None,
                        };
                        return Lookup::ServeStale(served, refresh);
                    }
                    _ => {}
                }
            }
        }
        if facts.directives.only_if_cached {
            return Lookup::NotCached;
        }
        let fetch_key = found.map_or_else(|| key.clone(), |(_, k)| k);
        // A HEAD answer has no body to store: it goes alone, and stores nothing.
        let role = if head || request_use == RequestUse::Refresh {
            Role::Alone
        } else {
            self.join_flight(&fetch_key)
        };
        Lookup::Fetch(Ticket {
            cache: Arc::clone(self),
            metrics: Arc::clone(metrics),
            policy: Arc::clone(policy),
            route: route_name.into(),
            key,
            stale: candidate,
            role,
            store: !head,
            refresh: request_use == RequestUse::Refresh,
            revalidating: false,
            request: Captured::of(request),
            target: String::from_utf8_lossy(request.target).into(),
        })
    }

    /// The stored answer for `key` that matches the request's variant, with the key it is
    /// stored under.
    fn find(&self, key: &Key, request: &dyn HeaderLookup) -> Option<(Arc<Stored>, Key)> {
        match self.l1.get(key.as_str())? {
            Entry::Answer(stored) => Some((stored, key.clone())),
            Entry::Variants(names) => {
                let variant = key.variant(&names, request);
                match self.l1.get(variant.as_str())? {
                    Entry::Answer(stored) if matches_variant(&stored, request) => {
                        Some((stored, variant))
                    }
                    _ => None,
                }
            }
        }
    }

    /// Leads the fetch of `key`, or waits for the one leading it.
    fn join_flight(self: &Arc<Self>, key: &Key) -> Role {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(done) = flights.get(key.as_str()) {
            return Role::Wait(done.clone());
        }
        let (tx, rx) = watch::channel(());
        flights.insert(key.as_str().into(), rx);
        Role::Lead(Flight { cache: Arc::clone(self), key: key.as_str().into(), _done: tx })
    }

    /// Stores `stored` under `key` (and, when it varies, the names it varies on under the
    /// primary key).
    /// Stores `stored` under `key` (and, when it varies, the names it varies on under the
    /// primary key); the entry, or `None` when it is heavier than one of L1's shards may hold.
    fn insert(&self, key: &Key, stored: Stored) -> Option<Arc<Stored>> {
        let fits = self.l1.shard_capacity() / 100 * 97;
        if stored.weight() + key.as_str().len() as u64 + 256 > fits {
            return None;
        }
        let stored = Arc::new(stored);
        if stored.vary.is_empty() {
            self.l1.insert(key.as_str().into(), Entry::Answer(Arc::clone(&stored)));
            return Some(stored);
        }
        let names: Arc<[String]> = stored.vary.iter().map(|(n, _)| n.clone()).collect();
        let variant = key.variant_of(&stored);
        self.l1.insert(key.as_str().into(), Entry::Variants(names));
        self.l1.insert(variant.as_str().into(), Entry::Answer(Arc::clone(&stored)));
        Some(stored)
    }
}

fn found_key<'k>(found: &'k Option<(Arc<Stored>, Key)>, key: &'k Key) -> &'k Key {
    found.as_ref().map_or(key, |(_, k)| k)
}

/// Whether a stored variant was fetched with the request's values for the fields it varies on.
fn matches_variant(stored: &Stored, request: &dyn HeaderLookup) -> bool {
    stored
        .vary
        .iter()
        .all(|(name, value)| key::field_value(request, name).as_deref() == value.as_deref())
}

/// The route's policy in the rules' terms.
pub fn route_rules(policy: &RouteCache) -> RoutePolicy {
    RoutePolicy {
        ttl: policy.ttl.as_secs(),
        crisis_ttl: policy.crisis_ttl.map(|t| t.as_secs()),
        stale_while_revalidate: policy.stale_while_revalidate.as_secs(),
        stale_if_error: policy.stale_if_error.as_secs(),
        override_origin: policy.override_origin,
        share_authorized: policy.share_authorized,
        share_cookies: policy.share_cookies,
    }
}

fn request_facts(request: &RequestView<'_>) -> RequestFacts {
    // Owned: the lookup lends each value only for the call (requests rarely carry any).
    let mut values: Vec<Vec<u8>> = Vec::new();
    request.headers.for_each_value("cache-control", &mut |v| {
        values.push(v.to_vec());
        false
    });
    let directives = rules::Directives::parse(values.iter().map(Vec::as_slice));
    RequestFacts {
        directives,
        pragma_no_cache: request.headers.first("pragma").is_some_and(stored::pragma_no_cache),
        authorization: request.headers.first("authorization").is_some(),
    }
}

/// Seconds since the Unix epoch, as the cache counts ages.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What the lookup decided.
pub enum Lookup {
    /// Answer with a stored response.
    Serve(Served),
    /// Answer with a stale stored response; fetch it again in the background with the ticket,
    /// when there is one (else another request is fetching it).
    ServeStale(Served, Option<Ticket>),
    /// Go to the origin (storing what comes, when the ticket says so).
    Fetch(Ticket),
    /// Go to the origin, store nothing.
    Bypass,
    /// The client wants only a stored answer, and there is none it may have.
    NotCached,
}

/// A stored answer about to be served.
pub struct Served {
    pub stored: Arc<Stored>,
    pub status: CacheStatus,
    /// The client's conditional request finds its copy current: answer 304.
    pub not_modified: bool,
}

impl Served {
    fn new(stored: &Arc<Stored>, status: CacheStatus, request: &dyn HeaderLookup) -> Served {
        let if_none_match = request.first("if-none-match");
        let if_modified_since = request.first("if-modified-since").and_then(stored::parse_date);
        Served {
            not_modified: stored.not_modified_for(if_none_match, if_modified_since),
            stored: Arc::clone(stored),
            status,
        }
    }
}

/// The request fields a fetch may need once the engine's buffers have moved on: for the
/// fields a `Vary` names, and the client's validators.
pub struct Captured(Vec<(String, Bytes)>);

impl Captured {
    fn of(request: &RequestView<'_>) -> Captured {
        let mut fields = Vec::new();
        request.headers.for_each_field(&mut |name, value| {
            let name = String::from_utf8_lossy(name).to_ascii_lowercase();
            fields.push((name, Bytes::copy_from_slice(value)));
        });
        Captured(fields)
    }
}

impl HeaderLookup for Captured {
    fn for_each_value(&self, name: &str, found: &mut dyn FnMut(&[u8]) -> bool) {
        for (n, v) in &self.0 {
            if n == name && found(v) {
                return;
            }
        }
    }

    fn first(&self, name: &str) -> Option<&[u8]> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| &v[..])
    }

    fn for_each_field(&self, each: &mut dyn FnMut(&[u8], &[u8])) {
        for (name, value) in &self.0 {
            each(name.as_bytes(), value);
        }
    }
}

/// What an upstream answer meant for the revalidation its request carried.
pub enum Revalidation {
    /// The request carried none, or the answer is not a 304.
    NotOne,
    /// The stored answer is current: serve it.
    Served(Served),
    /// The 304 names another version than the stored one: neither can be used.
    Unusable,
}

/// How a request that goes to the origin takes part in the fetch of its key.
pub enum Role {
    /// It fetches; others wait until its answer is stored (or not).
    Lead(Flight),
    /// Another request fetches: wait for it.
    Wait(watch::Receiver<()>),
    /// It fetches for itself (HEAD, or a client asking for the origin's word).
    Alone,
}

/// The fetch of one key; waiters wake when it is dropped (the answer stored, or not).
pub struct Flight {
    cache: Arc<Cache>,
    key: Box<str>,
    _done: watch::Sender<()>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut flights = self.cache.flights.lock().unwrap_or_else(PoisonError::into_inner);
        flights.remove(&self.key);
    }
}

/// A request on its way to the origin with what the cache knows of it.
pub struct Ticket {
    cache: Arc<Cache>,
    metrics: Arc<RouteMetrics>,
    policy: Arc<RouteCache>,
    route: Box<str>,
    key: Key,
    /// A stored answer past its freshness: it stands in if the origin fails.
    pub stale: Option<Arc<Stored>>,
    pub role: Role,
    /// Whether the answer may be stored (a GET).
    store: bool,
    /// The client asked for the origin's word (no-cache): nothing stored is served, not even
    /// from L2.
    refresh: bool,
    /// The upstream request carries the stale answer's validators.
    revalidating: bool,
    request: Captured,
    /// The request's path and query.
    target: Box<str>,
}

impl Ticket {
    /// How long to wait for another request fetching the same key.
    pub fn coalesce_wait(&self) -> std::time::Duration {
        self.policy.coalesce_wait
    }

    /// After waiting for the fetch of the key: the answer it stored, if it is fresh (the request
    /// goes alone from now on).
    pub fn after_wait(&mut self, now: u64, crisis: bool) -> Option<Served> {
        self.role = Role::Alone;
        let (stored, _) = self.cache.find(&self.key, &self.request)?;
        let rules = route_rules(&self.policy);
        let usable = rules::usable(&stored.lifetime, stored.held(now), &rules, crisis);
        (usable == Usable::Fresh).then(|| self.serve(&stored, CacheStatus::Hit))
    }

    /// Looks the key up in the shared layer (L2), for a request about to fetch it: a fresh answer
    /// found there goes into L1 (for whoever waits on this fetch) and is served; a stale one may
    /// still stand in for a failure.
    pub async fn from_l2(&mut self, now: u64, crisis: bool) -> Option<Served> {
        if self.refresh || matches!(self.role, Role::Wait(_)) {
            return None;
        }
        let l2 = self.cache.l2()?;
        let found = l2.get(self.key.as_str()).await?;
        // Only answers that do not vary go to L2; one that does is another key's.
        if !found.vary.is_empty() {
            return None;
        }
        let rules = route_rules(&self.policy);
        let usable = rules::usable(&found.lifetime, found.held(now), &rules, crisis);
        let stored = self.cache.insert(&self.key, found)?;
        if usable == Usable::Fresh && !stored.lifetime.revalidate_always {
            self.metrics.cache(CacheEvent::HitL2);
            return Some(self.serve(&stored, CacheStatus::Hit));
        }
        if self.stale.is_none() {
            self.stale = Some(stored);
        }
        None
    }

    /// Asks the origin to revalidate the stored answer this request would replace: its validators
    /// (`If-None-Match`, `If-Modified-Since`) go into the upstream head — unless the client sent
    /// its own (then the origin's 304 is the client's). Whether it did.
    pub fn add_validators(&mut self, head: &mut Vec<u8>) -> bool {
        let Some(stale) = self.stale.as_ref().filter(|_| self.store) else { return false };
        let client_asks = self.request.first("if-none-match").is_some()
            || self.request.first("if-modified-since").is_some();
        if client_asks || (stale.etag.is_none() && stale.last_modified.is_none()) {
            return false;
        }
        if let Some(etag) = &stale.etag {
            crate::headers::push_field(head, b"if-none-match", etag);
        } else if let Some(modified) = &stale.last_modified {
            crate::headers::push_field(head, b"if-modified-since", modified);
        }
        self.revalidating = true;
        true
    }

    /// What the origin's answer to this request means for a revalidation it carried: a 304 that
    /// vouches for the stored answer makes it fresh again (its fields updated from the 304's,
    /// stored when the 304 may be) and it is served - the client asked for none of this, so it
    /// never sees the bare 304; a 304 naming another version (a different strong `ETag`) cannot
    /// be used, and the entry goes.
    pub fn revalidated(&mut self, view: &ResponseView<'_>, now: u64) -> Revalidation {
        if !self.revalidating || view.head.status != 304 {
            return Revalidation::NotOne;
        }
        let Some(stale) = self.stale.take() else { return Revalidation::NotOne };
        self.end_flight();
        let names_another = view.first("etag").is_some_and(|tag| {
            let strong = |t: &[u8]| !t.starts_with(b"W/");
            stale.etag.as_deref().is_some_and(|own| strong(own) && strong(tag) && own != tag)
        });
        if names_another {
            self.cache.l1.remove(self.key.as_str());
            return Revalidation::Unusable;
        }
        let rules = route_rules(&self.policy);
        let facts = stored::response_facts(view);
        // The 304's freshness, with the status of the answer it vouches for.
        let facts = seawall_core::cache::ResponseFacts { status: stale.status, ..facts };
        let authorization = self.request.first("authorization").is_some();
        self.metrics.cache(CacheEvent::Revalidated);
        let Ok(lifetime) = rules::storable(&facts, authorization, &rules, now) else {
            // Current, says the origin, but not to be kept: served as it is, not stored.
            return Revalidation::Served(self.serve(&stale, CacheStatus::Revalidated));
        };
        let refreshed =
            stored::refreshed(&stale, view, lifetime, now, rules::initial_age(&facts, now));
        let Some(stored) = self.cache.insert(&self.key, refreshed) else {
            return Revalidation::Served(self.serve(&stale, CacheStatus::Revalidated));
        };
        if let Some(l2) = self.cache.l2().filter(|_| stored.vary.is_empty()) {
            l2.put(self.key.as_str(), &stored, rules::keep_for(&stored.lifetime, &rules));
        }
        Revalidation::Served(self.serve(&stored, CacheStatus::Revalidated))
    }

    /// The request's path and query.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The request's fields, as captured when it was looked up.
    pub fn request(&self) -> &Captured {
        &self.request
    }

    /// `stored` served to this request as `status`.
    pub fn serve(&self, stored: &Arc<Stored>, status: CacheStatus) -> Served {
        Served::new(stored, status, &self.request)
    }

    /// The fetch will not store anything: whoever waits for it may stop.
    pub fn end_flight(&mut self) {
        if matches!(self.role, Role::Lead(_)) {
            self.role = Role::Alone;
        }
    }

    /// The stale answer, if it may stand in for a failed (or shed) fetch now.
    pub fn stale_for_error(&self, now: u64, crisis: bool) -> Option<Arc<Stored>> {
        let stale = self.stale.as_ref()?;
        let rules = route_rules(&self.policy);
        match rules::usable(&stale.lifetime, stale.held(now), &rules, crisis) {
            Usable::Expired => None,
            _ => Some(Arc::clone(stale)),
        }
    }

    /// The origin answered `view`: if it may be stored, a tap that stores its body as it passes
    /// (the fetch ends, and waiters wake, when the body does).
    pub fn tap(
        &mut self,
        view: &ResponseView<'_>,
        now: u64,
    ) -> Result<Box<dyn BodyTap>, CacheEvent> {
        // A body with transfer codings (gzip) is kept as sent: it could not be served again
        // without them.
        if !self.store || view.head.coded {
            return Err(CacheEvent::Uncacheable);
        }
        let rules = route_rules(&self.policy);
        let facts = stored::response_facts(view);
        let initial_age = rules::initial_age(&facts, now);
        let authorization = self.request.first("authorization").is_some();
        let stored_for = rules::storable(&facts, authorization, &rules, now);
        let lifetime = stored_for.map_err(|_| CacheEvent::Uncacheable)?;
        let max = self.policy.max_object_size;
        if view.head.content_length.is_some_and(|n| n > max) {
            return Err(CacheEvent::TooLarge);
        }
        let vary = stored::vary_names(view)
            .into_iter()
            .map(|n| {
                let value = key::field_value(&self.request, &n).map(Bytes::from);
                (n, value)
            })
            .collect();
        let stored = stored::from_head(
            view,
            lifetime,
            now,
            initial_age,
            vary,
            self.target.as_bytes(),
            &self.route,
        );
        let flight = match std::mem::replace(&mut self.role, Role::Alone) {
            Role::Lead(flight) => Some(flight),
            _ => None,
        };
        Ok(Box::new(Fill {
            rules,
            cache: Arc::clone(&self.cache),
            metrics: Arc::clone(&self.metrics),
            key: self.key.clone(),
            stored: Some(stored),
            body: BytesMut::new(),
            max,
            _flight: flight,
        }))
    }
}

/// Stores an answer as its body passes to the client.
struct Fill {
    /// The route's rules (for how long L2 keeps the answer).
    rules: RoutePolicy,
    cache: Arc<Cache>,
    metrics: Arc<RouteMetrics>,
    key: Key,
    stored: Option<Stored>,
    body: BytesMut,
    max: u64,
    /// The fetch others wait for, ended with the fill.
    _flight: Option<Flight>,
}

impl BodyTap for Fill {
    fn data(&mut self, bytes: &[u8]) {
        if self.stored.is_none() {
            return;
        }
        if (self.body.len() + bytes.len()) as u64 > self.max {
            self.metrics.cache(CacheEvent::TooLarge);
            self.stored = None;
            self.body = BytesMut::new();
            // Nothing will be stored: whoever waits for it goes to the origin now.
            self._flight = None;
            return;
        }
        self.body.extend_from_slice(bytes);
    }

    fn end(&mut self, complete: bool) {
        let Some(mut stored) = self.stored.take() else { return };
        if complete {
            stored.body = std::mem::take(&mut self.body).freeze();
            let Some(stored) = self.cache.insert(&self.key, stored) else {
                self.metrics.cache(CacheEvent::TooLarge);
                return;
            };
            self.metrics.cache(CacheEvent::Stored);
            if let Some(l2) = self.cache.l2().filter(|_| stored.vary.is_empty()) {
                let ttl = rules::keep_for(&stored.lifetime, &self.rules);
                l2.put(self.key.as_str(), &stored, ttl);
            }
        }
    }
}
