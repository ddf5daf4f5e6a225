//! The request path, as named stages:
//!
//! ```text
//! frame check ─▶ route ─▶ action (proxy) ─▶ account (metrics, access log)
//! ```
//!
//! - **frame check**: refuse requests whose framing is ambiguous (400) — hyper has already answered
//!   malformed heads (400), oversized heads (431) and slow heads (408, see `server::io`). In the
//!   HTTP/1.1 engine ([`crate::h1`]) this stage is the head parse itself: whatever it does not
//!   accept goes to hyper.
//! - **route**: the first matching route, or 404 `no_route`.
//! - **action**: what the route does; today `proxy` (see [`crate::proxy`], and its HTTP/1.1
//!   engine form in `crate::h1`). Admission stages (rate
//!   limits, shedding) and caching join between route and action.
//! - **account**: status and duration into the route's metrics, one access-log line if enabled.
//!
//! Each stage returns a named outcome; a refusal is a complete problem response.

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::{self, Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, Request, Response};
use hyper::body::Incoming;
use seawall_config::RouteAction;
use seawall_core::rng::FastRng;

use crate::body::ProxyBody;
use crate::problem::{problem, Reason, REASON_HEADER};
use crate::server::io::ConnShared;
use crate::server::lot::ParkingLot;
use crate::server::Shared;
use crate::signal::LocalSignal;
use crate::snapshot::Snapshot;
use crate::upstream::pool::WorkerPools;
use crate::{proxy, router};

/// One worker thread's view of the gateway: its pools, its random generator and the snapshot it
/// last loaded. Shared by the connections of that thread through an `Rc`.
pub struct Worker {
    pub shared: Arc<Shared>,
    pub pools: Rc<WorkerPools>,
    pub rng: RefCell<FastRng>,
    /// Fires when the gateway starts draining (idle HTTP/1.1 connections then close).
    pub drain: LocalSignal,
    /// This worker's idle (parked) client connections.
    pub lot: ParkingLot,
    /// The generation and snapshot this worker last loaded.
    current: RefCell<(u64, Rc<Pinned>)>,
}

impl Worker {
    /// A worker's state.
    pub fn new(shared: Arc<Shared>, index: usize) -> Self {
        let generation = shared.generation.load(Ordering::Acquire);
        let current = (generation, Rc::new(Pinned(shared.snapshot.load_full())));
        Worker {
            pools: Rc::new(WorkerPools::new(shared.registry.clone())),
            rng: RefCell::new(FastRng::new(0x5EA_3A11 + index as u64 * 0x9E37_79B9)),
            drain: LocalSignal::default(),
            lot: ParkingLot::new(shared.registry.clone()),
            current: RefCell::new(current),
            shared,
        }
    }

    /// The current snapshot. A worker only loads the shared pointer (and pays for an atomic
    /// reference-count update) when a reload has bumped the generation since it last looked.
    pub fn snapshot(&self) -> Rc<Pinned> {
        let generation = self.shared.generation.load(Ordering::Acquire);
        let mut current = self.current.borrow_mut();
        if current.0 != generation {
            *current = (generation, Rc::new(Pinned(self.shared.snapshot.load_full())));
        }
        Rc::clone(&current.1)
    }
}

/// The snapshot a worker holds; shared by that worker's requests through a cheap `Rc`, so a request
/// does not touch the snapshot's atomic reference count.
pub struct Pinned(Arc<Snapshot>);

impl std::ops::Deref for Pinned {
    type Target = Snapshot;
    fn deref(&self) -> &Snapshot {
        &self.0
    }
}

/// Closes the accounting of one request when its response body is done or dropped: the route's
/// in-flight gauge and the connection's count of active requests (which drives its idle timer).
pub struct RequestGuard {
    snapshot: Rc<Pinned>,
    route: Option<usize>,
    conn: Arc<ConnShared>,
}

impl RequestGuard {
    fn new(snapshot: Rc<Pinned>, conn: Arc<ConnShared>) -> Self {
        conn.active.fetch_add(1, Relaxed);
        conn.started.fetch_add(1, Relaxed);
        RequestGuard { snapshot, route: None, conn }
    }

    fn enter_route(&mut self, route: usize) {
        self.snapshot.route_metrics[route].inflight_add(1);
        self.route = Some(route);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if let Some(route) = self.route {
            self.snapshot.route_metrics[route].inflight_add(-1);
        }
        self.conn.active.fetch_sub(1, Relaxed);
    }
}

/// The result of the frame-check stage.
enum Framing {
    Valid,
    Invalid(&'static str),
}

/// Outcome of the action stage, for accounting.
pub struct Answer {
    pub response: Response<ProxyBody>,
    /// Upstream and server that answered, for the access log.
    pub upstream: Option<(usize, usize)>,
    /// Set when Seawall answered instead of the upstream.
    pub reason: Option<Reason>,
}

impl Answer {
    /// Seawall's own answer for `reason`.
    pub fn refuse(reason: Reason, detail: &str) -> Self {
        Answer { response: problem(reason, detail), upstream: None, reason: Some(reason) }
    }
}

/// Handles one request from a client connection.
pub async fn handle(
    worker: Rc<Worker>,
    conn: Arc<ConnShared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let snapshot = worker.snapshot();
    let mut guard = RequestGuard::new(Rc::clone(&snapshot), conn);
    let log_line =
        snapshot.config.log.access_log.then(|| (req.method().clone(), req.uri().clone()));

    let (route, answer) = match check_framing(&guard.conn) {
        Framing::Invalid(detail) => (None, Answer::refuse(Reason::BadRequest, detail)),
        Framing::Valid => match find_route(&snapshot, &req) {
            None => (None, Answer::refuse(Reason::NoRoute, "no route matches this request")),
            Some(index) => {
                guard.enter_route(index);
                let route = &snapshot.config.routes[index];
                let answer = match route.action {
                    RouteAction::Proxy { upstream } => {
                        proxy::forward(&worker, &snapshot, route, upstream, req, peer).await
                    }
                };
                (Some(index), answer)
            }
        },
    };

    let reason = answer
        .reason
        .map(Reason::as_str)
        .or_else(|| answer.response.headers().get(REASON_HEADER).and_then(|v| v.to_str().ok()))
        .unwrap_or("");
    let entry = Served {
        route,
        status: answer.response.status().as_u16(),
        upstream: answer.upstream,
        reason,
    };
    let request = log_line.as_ref().map(|(method, uri)| (method.as_str(), uri.path()));
    account(&snapshot, &entry, request, peer, start.elapsed());
    let Answer { response, .. } = answer;
    Ok(response.map(|body| body.with_guard(guard)))
}

/// hyper already answers malformed heads; what it resolves silently is a head with both
/// Content-Length and Transfer-Encoding (it drops Content-Length), which the socket wrapper saw.
fn check_framing(conn: &ConnShared) -> Framing {
    if conn.ambiguous_framing.swap(false, Relaxed) {
        return Framing::Invalid("both Content-Length and Transfer-Encoding are set");
    }
    Framing::Valid
}

fn find_route(snapshot: &Snapshot, req: &Request<Incoming>) -> Option<usize> {
    let host = req
        .headers()
        .get(header::HOST)
        .map(http::HeaderValue::as_bytes)
        .or_else(|| req.uri().authority().map(|a| a.as_str().as_bytes()));
    let path = req.uri().path().as_bytes();
    router::find(&snapshot.config.routes, req.method(), host, path, req.headers())
}

/// What became of a request, for the account stage.
pub struct Served<'a> {
    pub route: Option<usize>,
    pub status: u16,
    /// Upstream and server that answered.
    pub upstream: Option<(usize, usize)>,
    /// Why Seawall answered instead of the upstream ("" when it did not).
    pub reason: &'a str,
}

/// The account stage: status and duration into the route's metrics, and one access-log line when
/// `request` (method, path) is given — callers pass it only when the access log is on.
pub fn account(
    snapshot: &Snapshot,
    served: &Served<'_>,
    request: Option<(&str, &str)>,
    peer: SocketAddr,
    elapsed: Duration,
) {
    let metrics = served.route.map_or(&snapshot.unmatched_metrics, |i| &snapshot.route_metrics[i]);
    metrics.record(served.status, elapsed);
    let Some((method, path)) = request else { return };
    let route_name = served.route.map_or("", |i| snapshot.config.routes[i].name.as_str());
    let (upstream, server) = served.upstream.map_or(("", ""), |(u, s)| {
        let group = &snapshot.upstreams[u];
        (group.config.name.as_str(), group.servers[s].name.as_str())
    });
    tracing::info!(
        target: "seawall::access",
        client = %peer.ip(),
        method = %method,
        path = %path,
        route = route_name,
        upstream,
        server,
        status = served.status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        reason = served.reason,
    );
}
