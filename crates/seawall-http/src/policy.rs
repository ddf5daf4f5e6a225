//! The policy layer: everything decided between parsing a request and acting on it, written once
//! for both engines.
//!
//! ```text
//! parse (engine) ─▶ admit: route ▸ off? ▸ read-only ▸ body limit ▸ rate limit ▸ shed by priority ─▶ action ─▶ account
//! ```
//!
//! - [`admit`] takes a [`RequestView`] and returns a named outcome: [`Admission::Admit`] with a
//!   [`Permit`] — an RAII guard that holds the request's place in the route's gauges (and, later,
//!   its limiter and bulkhead slots) until the answer is done — or [`Admission::Refuse`] with the
//!   [`Refusal`] each engine renders.
//! - [`Account`] closes the books on a request: status and duration into the route's metrics and
//!   one access-log line. A request dropped before it was answered (its client left) is counted as
//!   499.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use tokio::time::Instant;

use http::Method;
use seawall_config::Route;
use seawall_core::priority::Priority;

use crate::access_log::{self, RequestLine};
use crate::cache::{self, CacheEvent, CacheStatus, Lookup};
use crate::headers::HeaderLookup;
use crate::overload::ShedCause;
use crate::problem::{Reason, Refusal};
use crate::request::RequestView;
use crate::request_id::RequestId;
use crate::router;
use crate::worker::{Pinned, Worker};

/// What admission decided.
pub enum Admission {
    Admit(Permit),
    Refuse(Refusal),
    /// Answer from the cache: a fresh answer, or a stale one standing in for a request that
    /// would be shed.
    Cached(CachedAnswer),
    /// `GET {queue.jobs_path}ID`: the job's status, with Seawall's field
    /// lines (the rate-limit state, the request's id).
    Jobs {
        id: seawall_queue::JobId,
        fields: Vec<u8>,
    },
}

/// A stored answer to serve, with Seawall's own field lines (the rate-limit state), and the
/// background refresh to start once it is on its way.
pub struct CachedAnswer {
    pub served: cache::Served,
    pub fields: Vec<u8>,
    pub refresh: Option<crate::proxy::Refresh>,
}

/// An admitted request's hold on its route: counted in flight until dropped.
pub struct Permit {
    snapshot: Rc<Pinned>,
    route: usize,
    /// The upstream group the request goes to (the route's, or its `read_upstream` for a read);
    /// 0 and unused for a route that does not proxy.
    pub upstream: usize,
    /// The request's priority: its route's, moved by its rate-limit tier.
    pub priority: Priority,
    /// Fields Seawall adds to the answer, as HTTP/1 field lines (the rate-limit state).
    pub fields: Vec<u8>,
    /// When the client stops waiting, from its deadline header (`server.deadline_header`).
    pub deadline: Option<Instant>,
    /// What the cache knows of a request it may answer or store (taken by the engine for the
    /// upstream call).
    pub cache: Option<cache::Ticket>,
    /// The length of `fields` before the `x-seawall-cache` line (a stored answer states its own).
    pub fields_before_cache: usize,
    /// The request's id (`server.request_id`), also in `fields`.
    pub request_id: Option<RequestId>,
    /// The queue topic the request is stored in instead of going upstream: the route's `queue`
    /// action, or `on_failure = "queue"` when the upstream has no server up or the request would
    /// be shed.
    pub queue: Option<usize>,
    /// `on_failure = "queue"` on a write: the topic that takes the request if the upstream
    /// cannot (breaker open, no server, connect failure, gate full).
    pub queue_on_failure: Option<usize>,
}

impl Permit {
    fn new(
        snapshot: Rc<Pinned>,
        route: usize,
        upstream: usize,
        priority: Priority,
        fields: Vec<u8>,
    ) -> Self {
        snapshot.route_metrics[route].inflight_add(1);
        let fields_before_cache = fields.len();
        Permit {
            snapshot,
            route,
            upstream,
            priority,
            fields,
            deadline: None,
            cache: None,
            fields_before_cache,
            request_id: None,
            queue: None,
            queue_on_failure: None,
        }
    }

    /// The index of the route the request matched.
    pub fn route_index(&self) -> usize {
        self.route
    }

    /// Seawall's field lines for a stored answer (without the `x-seawall-cache` line).
    pub fn fields_for_stored(&self) -> &[u8] {
        &self.fields[..self.fields_before_cache]
    }

    /// The route the request matched.
    pub fn route(&self) -> &Route {
        &self.snapshot.config.routes[self.route]
    }

    /// The snapshot the request runs on.
    pub fn snapshot(&self) -> &Rc<Pinned> {
        &self.snapshot
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.snapshot.route_metrics[self.route].inflight_add(-1);
    }
}

/// The largest request body the route accepts (`u64::MAX` when unlimited).
pub fn body_limit(snapshot: &Pinned, route: &Route) -> u64 {
    route.max_body_size.unwrap_or(snapshot.config.server.max_body_size).unwrap_or(u64::MAX)
}

/// Routes and admits a request; the route found is noted in `account`.
///
/// In order: route ▸ switched off (by hand, or in crisis mode) ▸ read-only ▸ body limit ▸ rate
/// limit ▸ overload shedding by priority; then the upstream group is chosen (a read goes to the
/// route's `read_upstream` while it has a server up).
pub fn admit(snapshot: &Rc<Pinned>, request: &RequestView<'_>, account: &mut Account) -> Admission {
    // On both listeners: the 202 of an egress route's queued write points here too.
    if let Some(jobs) = jobs_endpoint(snapshot, request, account) {
        return jobs;
    }
    let Some(index) = router::find(&snapshot.config.routes, request) else {
        return Admission::Refuse(Refusal::new(Reason::NoRoute, "no route matches this request"));
    };
    account.route = Some(index);
    let route = &snapshot.config.routes[index];
    let off = if snapshot.switches.is_disabled(&route.name) {
        Some("is turned off")
    } else if route.disable_in_crisis && snapshot.overload.in_crisis() {
        Some("is off while the service is in crisis mode")
    } else {
        None
    };
    if let Some(why) = off {
        let detail = format!("route {:?} {why}", route.name);
        let refusal = Refusal::new(Reason::FeatureDisabled, detail);
        return Admission::Refuse(refusal.degraded(route.degrade.as_ref()));
    }
    let egress = match route.action {
        seawall_config::RouteAction::Egress { group } => Some(group),
        _ => None,
    };
    // An egress call starts at its group's first provider (the call chooses).
    let first_provider =
        egress.and_then(|g| snapshot.config.egress[g].providers.first()).map(|p| p.upstream);
    if egress.is_some() && (*request.method == Method::TRACE || *request.method == Method::CONNECT)
    {
        // TRACE would echo the call, its API key included, back to the caller.
        let detail = format!("{} is not sent to a third party", request.method);
        return Admission::Refuse(Refusal::new(Reason::BadRequest, detail));
    }
    let maps_path = route.rewrite.is_some() || egress.is_some();
    if maps_path && crate::edge::has_dot_segment(request.path) {
        account.worker.shared.registry.rewrite_refusals.add(1);
        let detail = format!(
            "route {:?} maps the path onto another, and this one has a dot segment ('.' or '..')",
            route.name
        );
        return Admission::Refuse(Refusal::new(Reason::BadRequest, detail));
    }
    // A redirect has no upstream: nothing is written, nothing to balance.
    let upstream = route.action.upstream();
    let now_ms = seawall_core::clock::ms_at(account.start.into_std());
    let method = request.method;
    let reads = *method == Method::GET || *method == Method::HEAD;
    let writes = route.writes || !(reads || *method == Method::OPTIONS || *method == Method::TRACE);
    // Where the request is stored instead of refused (`on_failure = "queue"`, writes only).
    // A body the queue could not keep is not queued: the request meets the refusal it would
    // have met without the queue (503 with Retry-After, not 413).
    let fits =
        |q: &seawall_config::Queue| request.declared_length().is_none_or(|n| n <= q.max_body);
    let queue_on_failure = route
        .queue_on_failure
        .filter(|_| writes && snapshot.config.queue.as_ref().is_some_and(fits));
    // A queue route's requests are stored whatever the load: that is their point.
    let mut queue_to = match route.action {
        seawall_config::RouteAction::Queue { topic } => Some(topic),
        _ => None,
    };
    if let Some(upstream) = upstream.filter(|_| writes) {
        match read_only(snapshot, upstream, now_ms) {
            Some((refusal, ReadOnly::Upstream)) if queue_on_failure.is_some() => {
                drop(refusal);
                queue_to = queue_on_failure;
            }
            Some((refusal, _)) => return Admission::Refuse(refusal),
            None => {}
        }
    }
    let mut limit = body_limit(snapshot, route);
    if let (Some(_), Some(queue)) = (queue_to, &snapshot.config.queue) {
        // A job keeps at most `queue.max_body`: refused before the body is invited.
        limit = limit.min(queue.max_body);
    }
    if request.declared_length().is_some_and(|n| n > limit) {
        let detail = format!("the request body exceeds {limit} bytes");
        return Admission::Refuse(Refusal::new(Reason::BodyTooLarge, detail));
    }
    let (priority, mut fields) = match route.rate_limit {
        None => (route.priority, Vec::new()),
        Some(limit) => {
            let now_ns = seawall_core::clock::ns_at(account.start.into_std());
            match snapshot.limiters[limit].check(request, route.priority, now_ns) {
                Ok(passed) => (passed.priority, passed.fields),
                Err(refusal) => return Admission::Refuse(refusal),
            }
        }
    };
    // The route's own response fields go on every answer from the upstream, stored ones too.
    if let Some(actions) = &route.response_headers {
        fields.extend_from_slice(&actions.lines);
    }
    if let Some(id) = &account.request_id {
        id.push_line(&snapshot.config.server.request_id_header, &mut fields);
    }
    let overload = &snapshot.overload;
    let metrics = &snapshot.route_metrics[index];
    let mut ticket = None;
    let mut cache_status = None;
    if let Some(policy) = route.cache.as_ref().filter(|_| reads) {
        let now = cache::now_secs();
        let crisis = overload.in_crisis();
        match snapshot.cache.lookup(&route.name, policy, metrics, request, now, crisis) {
            Lookup::Serve(served) => {
                metrics.cache(served.status.event());
                return Admission::Cached(CachedAnswer { served, fields, refresh: None });
            }
            Lookup::ServeStale(served, ticket) => {
                metrics.cache(CacheEvent::Stale);
                let refresh = ticket.map(|ticket| crate::proxy::Refresh {
                    ticket,
                    route: index,
                    // A proxy route (its read group, else its upstream), or an egress route
                    // (its first provider: the refresh goes through the group).
                    upstream: read_group(snapshot, route, reads, now_ms)
                        .or(upstream)
                        .or(first_provider)
                        .unwrap_or_default(),
                    client: request.client,
                    host: request.host.map(<[u8]>::to_vec),
                });
                return Admission::Cached(CachedAnswer { served, fields, refresh });
            }
            Lookup::Fetch(t) => {
                let waits = matches!(t.role, cache::Role::Wait(_));
                metrics.cache(if waits { CacheEvent::Coalesced } else { CacheEvent::Miss });
                cache_status = Some(CacheStatus::Miss);
                ticket = Some(t);
            }
            Lookup::Bypass => {
                metrics.cache(CacheEvent::Bypass);
                cache_status = Some(CacheStatus::Bypass);
            }
            Lookup::NotCached => {
                let detail =
                    "only a stored answer was asked for (only-if-cached), and there is none";
                return Admission::Refuse(Refusal::new(Reason::NotCached, detail));
            }
        }
    }
    // A request that would be shed gets a stale answer where there is one.
    let stale_for_shed = |ticket: &Option<cache::Ticket>| {
        let t = ticket.as_ref()?;
        let stored = t.stale_for_error(cache::now_secs(), overload.in_crisis())?;
        metrics.cache(CacheEvent::Stale);
        let served = t.serve(&stored, CacheStatus::Stale);
        Some(CachedAnswer { served, fields: fields.clone(), refresh: None })
    };
    if let Some(cause) = overload.shed(priority).filter(|_| queue_to.is_none()) {
        if queue_on_failure.is_some() {
            // Stored for later rather than refused.
            snapshot.route_metrics[index].shed(priority, cause);
            queue_to = queue_on_failure;
        } else {
            if let Some(answer) = stale_for_shed(&ticket) {
                return Admission::Cached(answer);
            }
            snapshot.route_metrics[index].shed(priority, cause);
            let after = snapshot.config.overload.retry_after;
            let refusal = crate::overload::refusal(cause, priority, after);
            return Admission::Refuse(refusal.degraded(route.degrade.as_ref()));
        }
    }
    let upstream = upstream.map(|u| read_group(snapshot, route, reads, now_ms).unwrap_or(u));
    let gated = upstream.filter(|_| queue_to.is_none()).and_then(|u| {
        let group = &snapshot.upstreams[u];
        let gate = group.gate.as_ref()?;
        crate::overload::sheds(gate.level(), priority).then_some((group, gate))
    });
    if let (Some(_), Some(topic)) = (&gated, queue_on_failure) {
        // Stored for later rather than refused.
        snapshot.route_metrics[index].shed(priority, ShedCause::Wait);
        queue_to = Some(topic);
    } else if let Some((group, gate)) = gated {
        if let Some(answer) = stale_for_shed(&ticket) {
            return Admission::Cached(answer);
        }
        snapshot.route_metrics[index].shed(priority, ShedCause::Wait);
        let detail = format!(
            "requests more important than {priority} are waiting for upstream {:?}: {priority} \
             requests to it are shed for now (level {})",
            group.config.name,
            gate.level()
        );
        let refusal = Refusal::new(Reason::Overloaded, detail);
        let refusal = crate::overload::with_jitter(refusal, snapshot.config.overload.retry_after);
        return Admission::Refuse(refusal.degraded(route.degrade.as_ref()));
    }
    overload.admitted.add(1);
    let upstream = upstream.or(first_provider).unwrap_or_default();
    let mut permit = Permit::new(Rc::clone(snapshot), index, upstream, priority, fields);
    permit.cache = ticket;
    permit.request_id = account.request_id;
    permit.queue = queue_to;
    permit.queue_on_failure = queue_on_failure;
    if let Some(status) = cache_status {
        permit.fields.extend_from_slice(status.field_line());
    }
    let asked = request.headers.first(&snapshot.config.server.deadline_header);
    permit.deadline = asked
        .and_then(seawall_core::deadline::parse_ms)
        .map(|ms| account.start + Duration::from_millis(ms));
    Admission::Admit(permit)
}

/// The route's `read_upstream` for a read while it has a server up.
fn read_group(snapshot: &Pinned, route: &Route, reads: bool, now_ms: u64) -> Option<usize> {
    route.read_upstream.filter(|&r| reads && snapshot.upstreams[r].has_available(now_ms))
}

/// Why writes are refused.
enum ReadOnly {
    /// The operator's switch.
    Switch,
    /// The upstream has no server up.
    Upstream,
}

/// Why a write is refused: the gateway is in read-only mode, or the upstream it would go to has
/// no server left (and no fallback) — then reads keep flowing while writes wait.
fn read_only(snapshot: &Pinned, upstream: usize, now_ms: u64) -> Option<(Refusal, ReadOnly)> {
    if snapshot.switches.read_only() {
        let refusal = Refusal::new(Reason::ReadOnly, "the service is in read-only mode");
        return Some((refusal, ReadOnly::Switch));
    }
    let group = &snapshot.upstreams[upstream];
    if group.config.fallback.is_empty() && !group.has_available(now_ms) {
        let detail = format!(
            "upstream {:?} has no server up: writes are refused, reads keep flowing",
            group.config.name
        );
        return Some((Refusal::new(Reason::ReadOnly, detail), ReadOnly::Upstream));
    }
    None
}

/// `GET {queue.jobs_path}ID` (and `HEAD`), answered before the routes: through
/// `queue.jobs_rate_limit` when one is set.
fn jobs_endpoint(
    snapshot: &Pinned,
    request: &RequestView<'_>,
    account: &Account,
) -> Option<Admission> {
    let queue = snapshot.config.queue.as_ref()?;
    if *request.method != Method::GET && *request.method != Method::HEAD {
        return None;
    }
    let id = jobs_target(queue, request.path)?;
    let mut fields = match queue.jobs_rate_limit {
        None => Vec::new(),
        Some(limit) => {
            let now_ns = seawall_core::clock::ns_at(account.start.into_std());
            match snapshot.limiters[limit].check(request, Priority::P1, now_ns) {
                Ok(passed) => passed.fields,
                Err(refusal) => return Some(Admission::Refuse(refusal)),
            }
        }
    };
    if let Some(id) = &account.request_id {
        id.push_line(&snapshot.config.server.request_id_header, &mut fields);
    }
    Some(Admission::Jobs { id, fields })
}

/// The books of one request, closed once: by [`Account::finish`], or by the drop of a request
/// that was never answered (counted as 499, its client having left).
pub struct Account {
    worker: Rc<Worker>,
    snapshot: Rc<Pinned>,
    start: Instant,
    peer: SocketAddr,
    /// The route matched, once known.
    pub route: Option<usize>,
    /// What the access log keeps of the request, only when the log is on.
    log: Option<RequestLine>,
    /// Bytes of the answer sent to the client (head and body), as far as the engine knows
    /// when the books close.
    pub bytes_sent: u64,
    /// Upstream connect and response-head times of the answering attempt.
    pub upstream_timing: Option<access_log::Timing>,
    /// The request's id, once given ([`Account::assign_request_id`]).
    pub request_id: Option<RequestId>,
    done: bool,
}

/// How a request ended, for its account.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    pub status: u16,
    /// Upstream and server that answered.
    pub upstream: Option<(usize, usize)>,
    /// Why Seawall answered instead of the upstream.
    pub reason: Option<Reason>,
}

impl Served {
    /// Seawall's own answer.
    pub fn refused(reason: Reason, upstream: Option<(usize, usize)>) -> Self {
        Served { status: reason.status().as_u16(), upstream, reason: Some(reason) }
    }

    /// Seawall's answer to `refusal` (its degraded stand-in's status, when it has one).
    pub fn answered(refusal: &Refusal, upstream: Option<(usize, usize)>) -> Self {
        Served { status: refusal.status().as_u16(), upstream, reason: Some(refusal.reason) }
    }
}

impl Account {
    /// Opens the books of a request that started at `start`; `line` gives what the access log
    /// keeps of it (called only when the log is on).
    pub fn open(
        worker: &Rc<Worker>,
        snapshot: &Rc<Pinned>,
        peer: SocketAddr,
        start: Instant,
        line: impl FnOnce() -> RequestLine,
    ) -> Self {
        Account {
            worker: Rc::clone(worker),
            log: snapshot.config.log.access_log.then(line),
            snapshot: Rc::clone(snapshot),
            start,
            peer,
            route: None,
            request_id: None,
            bytes_sent: 0,
            upstream_timing: None,
            done: false,
        }
    }

    /// Gives the request its id when `server.request_id` is on: its client's (from `headers`)
    /// when kept, else a new one.
    pub fn assign_request_id(&mut self, headers: Option<&dyn HeaderLookup>) -> Option<RequestId> {
        let server = &self.snapshot.config.server;
        if !server.request_id {
            return None;
        }
        let ids = &self.worker.ids;
        let id = match headers {
            Some(headers) => RequestId::for_request(ids, server, headers),
            None => RequestId::generate(ids),
        };
        self.request_id = Some(id);
        self.request_id
    }

    /// Marks Seawall's answer with the request's id.
    pub fn stamp(&self, refusal: &mut Refusal) {
        let name = &self.snapshot.config.server.request_id_header;
        refusal.stamp(name, self.request_id.as_ref());
    }

    /// Closes the books: `served` as of `end` (when the response head went out).
    pub fn finish(mut self, served: Served, end: Instant) {
        self.record(served, end.saturating_duration_since(self.start));
    }

    fn record(&mut self, served: Served, elapsed: Duration) {
        self.done = true;
        let snapshot = &self.snapshot;
        if served.reason == Some(Reason::ClientClosed) {
            self.worker.shared.registry.client_aborts.add(1);
        }
        let metrics =
            self.route.map_or(&snapshot.unmatched_metrics, |i| &snapshot.route_metrics[i]);
        metrics.record(served.status, elapsed);
        let Some(line) = &self.log else { return };
        let route = self.route.map_or("", |i| snapshot.config.routes[i].name.as_str());
        let (upstream, server) = served.upstream.map_or(("", ""), |(u, s)| {
            let group = &snapshot.upstreams[u];
            (group.config.name.as_str(), group.servers[s].name.as_str())
        });
        let request_id = self.request_id.as_ref().map_or("", RequestId::as_str);
        let reason = served.reason.map_or("", Reason::as_str);
        let duration_ms = access_log::millis(elapsed);
        let timing = self.upstream_timing.unwrap_or_default();
        let connect_ms = timing.connect.map(access_log::millis);
        let response_ms = timing.response.map(access_log::millis);
        let sink = &self.worker.shared.access_log;
        if let access_log::Sink::Tracing = sink {
            tracing::info!(
                target: "seawall::access",
                client = %self.peer.ip(),
                method = %line.method,
                path = %line.path,
                query = line.query.as_deref(),
                protocol = line.protocol,
                route,
                upstream,
                server,
                status = served.status,
                duration_ms,
                upstream_connect_ms = connect_ms,
                upstream_response_ms = response_ms,
                bytes_received = line.bytes_received,
                bytes_sent = self.bytes_sent,
                user_agent = line.user_agent.as_deref(),
                request_id,
                reason,
            );
            return;
        }
        let json = serde_json::json!({
            "time": access_log::now_rfc3339(),
            "client": self.peer.ip().to_string(),
            "method": line.method,
            "path": line.path,
            "query": line.query,
            "protocol": line.protocol,
            "route": route,
            "upstream": upstream,
            "server": server,
            "status": served.status,
            "duration_ms": duration_ms,
            "upstream_connect_ms": connect_ms,
            "upstream_response_ms": response_ms,
            "bytes_received": line.bytes_received,
            "bytes_sent": self.bytes_sent,
            "user_agent": line.user_agent,
            "request_id": request_id,
            "reason": reason,
        });
        sink.send(json.to_string());
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        if !self.done {
            // Only a request whose future was dropped gets here: its client went away.
            self.record(Served::refused(Reason::ClientClosed, None), self.start.elapsed());
        }
    }
}

/// The job a `GET {jobs_path}ID` asks for: only a well-formed id (32 hex digits) is the jobs
/// endpoint's; any other path goes to the routes, so an application's own `/jobs/42` still
/// reaches it.
fn jobs_target(config: &seawall_config::Queue, path: &[u8]) -> Option<seawall_queue::JobId> {
    let rest = path.strip_prefix(config.jobs_path.as_bytes())?;
    seawall_queue::JobId::parse(std::str::from_utf8(rest).ok()?)
}
