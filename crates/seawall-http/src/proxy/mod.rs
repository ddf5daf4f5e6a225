//! The `proxy` action, written once for both engines: the one upstream call.
//!
//! ```text
//! deadlines ▸ cache ▸ fallback chain                      (resilience.rs)
//!   or an egress route's providers ▸ keys ▸ quota          (egress.rs)
//! ▸ retries ▸ breaker ▸ bulkhead                          (group.rs)
//!   ▸ choose ▸ connect ─▶ send head + body ─▶ await the head ─▶ (engine relays the body)
//!   │ a server that cannot be reached is recorded and skipped for another (up to 3)
//!   │ a pooled connection found closed before any answer is replaced once (idempotent only)
//!   └ every other failure is a Refusal (502/503/504); a client that fails or leaves ends it
//! ```
//!
//! An engine describes its request by a [`Forward`] (the upstream head it wrote, the balancing key,
//! idempotency) and gives access to its client through [`Downstream`] (the request body as it
//! arrives, the client's departure, interim answers). [`forward`] returns a [`Forwarded`]: the
//! upstream's [`UpstreamResponse`], a refusal, or the client's own failure. Each attempt's outcome
//! is recorded exactly once — here for attempts that end before an answer, by the
//! [`UpstreamResponse`] when its body ends — so passive ejection sees the same signals whatever
//! the engine.
//!
//! Timers: the upstream's `send_timeout` bounds each write of the request, the client's
//! `body_timeout` each wait for its body (in the engine's [`Downstream::fill`]), and `timeout`
//! (the route's, when it sets one, else the upstream's) runs from the moment the whole request
//! has been sent to the start of the answer, for each attempt. A client
//! that waits longer than [`WATCH_AFTER`] is watched: if it leaves, an idempotent request is
//! cancelled (499); a non-idempotent one is never cut half-way — a client that only closed its
//! sending side still gets its answer.

pub mod body;
mod egress;
mod group;
mod refresh;
mod resilience;
mod stored;

use std::future::Future;
use std::io::IoSlice;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Method;
use tokio::time::Instant;

pub use body::{BodyFault, BodyTap, UpstreamResponse};
pub use refresh::Refresh;
use resilience::deadline_passed;
pub use resilience::forward;
pub use stored::StoredBody;

use crate::access_log::Timing;
use crate::chunked::{chunk_line, CHUNK_END, LAST_CHUNK};
use crate::faultlog;
use crate::io::{make_room, poll_read_buf, poll_write_all};
use crate::metrics::UpstreamOutcome;
use crate::problem::{Reason, Refusal};
use crate::request::BodyFraming;
use crate::response::{self, Parsed, ResponseView};
use crate::timer::LazyTimer;
use crate::upstream::pool::{Inflight, RawConn, READ_BUFFER};
use crate::upstream::{ServerState, UpstreamGroup};
use crate::worker::{Pinned, Worker};
use seawall_config::Degrade;
use seawall_core::priority::Priority;
use std::sync::Arc;

/// A request that has waited this long for its upstream starts watching its client. Shorter
/// waits never look (a look can cost a system call), and nobody notices a departure sooner.
pub const WATCH_AFTER: Duration = Duration::from_millis(250);

/// At most this many servers are tried when connecting fails.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Why the client's side of an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// The client paused its body longer than `body_timeout`.
    Timeout,
    /// The body grew past the route's limit (bytes).
    TooLarge(u64),
    /// The body's framing is invalid (a broken chunked upload).
    Invalid,
    /// The client went away.
    Gone,
}

impl BodyError {
    /// The refusal reason that answers it.
    pub fn reason(self) -> Reason {
        match self {
            BodyError::Timeout => Reason::BodyTimeout,
            BodyError::TooLarge(_) => Reason::BodyTooLarge,
            BodyError::Invalid => Reason::BadRequest,
            BodyError::Gone => Reason::ClientClosed,
        }
    }

    /// A sentence for the problem document.
    pub fn detail(self) -> String {
        match self {
            BodyError::Timeout => "the request body stalled".into(),
            BodyError::TooLarge(limit) => format!("the request body exceeds {limit} bytes"),
            BodyError::Invalid => "the request body's chunked framing is invalid".into(),
            BodyError::Gone => "the client closed the connection".into(),
        }
    }
}

/// How a client left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// It closed its side; it may still be reading (a half-close).
    Closed,
    /// The connection is broken: nobody reads the answer.
    Reset,
}

/// The client side of an exchange, as the proxy needs it. The request body is seen decoded (the
/// proxy frames it for the upstream), one run of bytes at a time.
#[allow(async_fn_in_trait)] // worker tasks are single-threaded: no `Send` bound is wanted
pub trait Downstream {
    /// Body bytes received and not yet sent on (may be empty), and whether they are the last:
    /// once consumed, the whole body has been handed out.
    fn ready(&mut self) -> Result<(&[u8], bool), BodyError>;

    /// `n` bytes of [`ready`](Self::ready) were sent on.
    fn consume(&mut self, n: usize);

    /// Whether the whole body has been received and handed out.
    fn is_complete(&self) -> bool;

    /// Makes the whole body available again for another attempt; false if it is no longer held
    /// (part of it was streamed).
    fn rewind(&mut self) -> bool;

    /// Waits for more of the body, each wait bounded by the client's `body_timeout`.
    async fn fill(&mut self, timer: &mut LazyTimer) -> Result<(), BodyError>;

    /// Ready when the client has left (polled only while the request waits on the upstream).
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<Gone>;

    /// An interim (1xx) answer came from the upstream; passes it on if the client can take it.
    async fn interim(&mut self, view: &ResponseView<'_>) -> Result<(), BodyError>;

    /// The whole body, at most `limit` bytes (for actions that keep a request, like a queue).
    async fn read_to_end(
        &mut self,
        timer: &mut LazyTimer,
        limit: u64,
    ) -> Result<Vec<u8>, BodyError> {
        let mut all = Vec::new();
        loop {
            let (ready, last) = self.ready()?;
            if (all.len() + ready.len()) as u64 > limit {
                return Err(BodyError::TooLarge(limit));
            }
            all.extend_from_slice(ready);
            let n = ready.len();
            self.consume(n);
            if last {
                return Ok(all);
            }
            self.fill(timer).await?;
        }
    }
}

/// A request on its way to an upstream, as the engine prepared it.
pub struct Forward<'a> {
    pub worker: &'a Worker,
    pub snapshot: &'a Rc<Pinned>,
    /// Index of the upstream group in the snapshot.
    pub upstream: usize,
    /// The balancing key ([`UpstreamGroup::request_key`]).
    pub key: u64,
    pub method: &'a Method,
    /// Whether the request may be sent twice (and cancelled when its client leaves).
    pub idempotent: bool,
    /// The request asks to switch protocols: a 101 is a valid answer.
    pub upgrade: bool,
    /// How the body goes upstream; the head already says so.
    pub framing: BodyFraming,
    /// The upstream request head, without its `Host` field and final blank line.
    pub head: &'a mut Vec<u8>,
    /// Add the chosen server's name as `Host` (otherwise `head` carries the client's).
    pub host_is_server: bool,
    /// When the request head was read (the send deadline counts from here).
    pub start: Instant,
    /// When the whole request must be answered by: the client's deadline (from its deadline
    /// header), or `total_timeout` from the start when that comes first (set by [`forward`]).
    /// The upstream is told the time left in the same header.
    pub deadline: Option<Instant>,
    /// The request's priority (for the bulkhead's queue).
    pub priority: Priority,
    /// The route's index in the snapshot (for its metrics and `timeout`); `None` for a request
    /// no route made (a queued job's delivery).
    pub route: Option<usize>,
    /// The client's own deadline (set by [`forward`] from `deadline` as the engine gave it): when
    /// it is what runs out, the upstream is not blamed.
    pub client_deadline: Option<Instant>,
    /// The length of `head` as the engine wrote it: each attempt adds its own `Host`, deadline
    /// and blank line after it (set by [`forward`]).
    pub head_len: usize,
    /// The route's degraded answer, served instead of Seawall's error when every upstream failed.
    pub degrade: Option<&'a Arc<Degrade>>,
    /// What the cache knows of the request: a fetch to wait for, an answer to store, a stale
    /// answer to stand in for a failure.
    pub cache: Option<&'a mut crate::cache::Ticket>,
}

/// What became of the exchange.
pub enum Forwarded {
    /// The upstream answered; its head is in the response, the body follows. Boxed: the
    /// response is large, and moving it through every layer cost more than one allocation.
    Response(Box<UpstreamResponse>),
    /// Seawall answers instead; the server tried, if any.
    Refused(Refusal, Option<(usize, usize)>),
    /// The client's side failed or the client left; the server tried, if any.
    Client(BodyError, Option<(usize, usize)>),
    /// A stored answer: the one another request fetched meanwhile, or a stale one standing in
    /// for a failure.
    Cached(crate::cache::Served),
}

/// Whether `f` is an egress call (its route's action).
fn is_egress(f: &Forward<'_>) -> bool {
    f.route.is_some_and(|r| {
        matches!(f.snapshot.config.routes[r].action, seawall_config::RouteAction::Egress { .. })
    })
}

/// One try on one connection.
enum Attempt {
    Answered(Box<UpstreamResponse>),
    /// A pooled connection turned out to be closed before anything came back.
    Stale,
    Refused(Refusal),
    Client(BodyError),
}

/// Chooses a server (another than those in `avoid` when there is one), sends the request and
/// waits for the head of its answer (a server that cannot be reached is skipped for another).
pub(super) async fn forward_to_server<D: Downstream>(
    f: &mut Forward<'_>,
    avoid: &[usize],
    down: &mut D,
    timer: &mut LazyTimer,
) -> Forwarded {
    let group = &f.snapshot.upstreams[f.upstream];
    let name = &group.config.name;
    let mut tried: Vec<usize> = Vec::new();
    loop {
        if let Some(expired) = deadline_passed(f) {
            return Forwarded::Refused(expired, None);
        }
        // The head was read a moment ago: its clock reading is good enough here.
        let now_ms = seawall_core::clock::ms_at(f.start.into_std());
        let picked = {
            let mut rng = f.worker.rng.borrow_mut();
            let load = |s: &ServerState| f.worker.pools.inflight(s);
            let mut pick = |exclude: &[usize]| group.pick(f.key, now_ms, &mut rng, exclude, load);
            if avoid.is_empty() {
                pick(&tried)
            } else {
                let others: Vec<usize> = tried.iter().chain(avoid).copied().collect();
                pick(&others).or_else(|| pick(&tried))
            }
        };
        let Some(index) = picked else {
            let refusal = if tried.is_empty() {
                let detail = format!("no server of upstream {name:?} is available");
                Refusal::new(Reason::UpstreamUnavailable, detail)
            } else {
                let detail = format!("could not connect to any server of upstream {name:?}");
                Refusal::new(Reason::UpstreamConnectFailed, detail)
            };
            return Forwarded::Refused(refusal, None);
        };
        let server = &group.servers[index];
        let at = Some((f.upstream, index));
        let inflight = Inflight::begin(&f.worker.pools, server);
        // A request that cannot be retried must not land on a connection the server is closing:
        // its socket is asked directly.
        let pooled = f.worker.pools.checkout(server, now_ms, !f.idempotent);
        // The access log's times cost clock readings only when the log is on.
        let log = f.snapshot.config.log.access_log;
        let mut connect_time = None;
        let (conn, pooled) = match pooled {
            Some(conn) => (conn, true),
            None => match (log.then(Instant::now), connect(f, group, index).await) {
                (began, Ok(conn)) => {
                    connect_time = began.map(|b| b.elapsed());
                    (conn, false)
                }
                (_, Err(e)) => {
                    tried.push(index);
                    if tried.len() >= MAX_CONNECT_ATTEMPTS.min(group.servers.len()) {
                        let detail = format!("could not connect to upstream {name:?}: {e}");
                        let refusal = Refusal::new(connect_reason(&e), detail);
                        return Forwarded::Refused(refusal, at);
                    }
                    continue;
                }
            },
        };
        f.head.truncate(f.head_len);
        if f.host_is_server {
            crate::headers::push_field(f.head, b"host", server.authority.as_bytes());
        }
        // A third party is not told Seawall's deadline (an egress call's head never has one).
        if let Some(deadline) = f.deadline.filter(|_| !is_egress(f)) {
            let left = deadline.saturating_duration_since(Instant::now()).as_millis();
            let name = f.snapshot.config.server.deadline_header.as_bytes();
            crate::headers::push_field(f.head, name, left.to_string().as_bytes());
        }
        f.head.extend_from_slice(b"\r\n");
        // Time spent connecting (to this server or to others first) is not the server's: its
        // deadlines count from when it has the request.
        let since = if pooled { f.start } else { Instant::now() };
        let mut attempt = attempt(f, group, index, conn, pooled, since, down, timer).await;
        if matches!(attempt, Attempt::Stale) {
            // The server closed an idle connection as we used it: nothing reached it, or nothing
            // it did can matter (the request is idempotent). One fresh connection, same server.
            attempt = match connect(f, group, index).await {
                Ok(conn) => attempt_fresh(f, group, index, conn, down, timer).await,
                Err(e) => {
                    let detail = format!("could not connect to upstream {name:?}: {e}");
                    Attempt::Refused(Refusal::new(connect_reason(&e), detail))
                }
            };
        }
        return match attempt {
            Attempt::Answered(mut response) => {
                if log {
                    let response_time = Some(f.start.elapsed());
                    response.timing = Timing { connect: connect_time, response: response_time };
                }
                let pools = Rc::clone(&f.worker.pools);
                response.attach(Rc::clone(f.snapshot), pools, (f.upstream, index), inflight);
                Forwarded::Response(response)
            }
            Attempt::Refused(refusal) => Forwarded::Refused(refusal, at),
            Attempt::Client(e) => Forwarded::Client(e, at),
            // A fresh connection is never stale.
            Attempt::Stale => Forwarded::Refused(
                Refusal::new(
                    Reason::UpstreamError,
                    format!("upstream {name:?} closed the connection"),
                ),
                at,
            ),
        };
    }
}

/// The refusal a failed connection gets: TLS failures are told apart (a certificate problem is
/// fixed elsewhere than a server that is down).
fn connect_reason(e: &crate::upstream::pool::ConnectError) -> Reason {
    match e {
        crate::upstream::pool::ConnectError::Tls(_) => Reason::UpstreamTlsFailed,
        _ => Reason::UpstreamConnectFailed,
    }
}

/// Opens a connection to server `index`; a failure is recorded against it.
async fn connect(
    f: &Forward<'_>,
    group: &UpstreamGroup,
    index: usize,
) -> Result<RawConn, crate::upstream::pool::ConnectError> {
    let server = &group.servers[index];
    let result = f.worker.pools.connect(server, group.config.connect_timeout).await;
    if let Err(e) = &result {
        group.record(index, UpstreamOutcome::ConnectFailure, seawall_core::clock::now_ms());
        faultlog::upstream_fault(&group.config.name, &server.name, &e.to_string());
    }
    result
}

async fn attempt_fresh<D: Downstream>(
    f: &Forward<'_>,
    group: &UpstreamGroup,
    index: usize,
    conn: RawConn,
    down: &mut D,
    timer: &mut LazyTimer,
) -> Attempt {
    if !down.rewind() {
        let detail = "the upstream closed the connection while the request was sent";
        return failed(group, index, UpstreamOutcome::Error, Reason::UpstreamError, detail);
    }
    // A retry is timed from now, not from the request's start.
    attempt(f, group, index, conn, false, Instant::now(), down, timer).await
}

/// Records `outcome` for this attempt and refuses with `reason`.
fn failed(
    group: &UpstreamGroup,
    index: usize,
    outcome: UpstreamOutcome,
    reason: Reason,
    what: &str,
) -> Attempt {
    group.record(index, outcome, seawall_core::clock::now_ms());
    let server = &group.servers[index];
    faultlog::upstream_fault(&group.config.name, &server.name, what);
    let detail = format!("upstream {:?}: {what}", group.config.name);
    Attempt::Refused(Refusal::new(reason, detail))
}

/// What happened while the request was being sent.
enum Sent {
    /// The whole request went out (`at_once`: in its first write).
    All { at_once: bool },
    /// The upstream spoke (answered early, or closed) before the body was all sent.
    Early,
}

/// Sends the request on `conn` and reads the head of the answer.
#[allow(clippy::too_many_arguments)]
async fn attempt<D: Downstream>(
    f: &Forward<'_>,
    group: &UpstreamGroup,
    index: usize,
    mut conn: RawConn,
    pooled: bool,
    since: Instant,
    down: &mut D,
    timer: &mut LazyTimer,
) -> Attempt {
    let config = &group.config;
    let may_retry = pooled && f.idempotent;
    let sent = match send(f, &mut conn, down, timer, config.send_timeout, since).await {
        Ok(sent) => sent,
        Err(SendError::Upstream(e)) if may_retry && e.kind() != std::io::ErrorKind::TimedOut => {
            return Attempt::Stale;
        }
        Err(SendError::Upstream(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            let what = format!("did not accept the request within {:?}", config.send_timeout);
            return failed(group, index, UpstreamOutcome::Timeout, Reason::UpstreamTimeout, &what);
        }
        Err(SendError::Upstream(e)) => {
            let what = format!("failed while the request was sent: {e}");
            return failed(group, index, UpstreamOutcome::Error, Reason::UpstreamError, &what);
        }
        Err(SendError::Client(e)) => {
            group.record(index, UpstreamOutcome::Cancelled, seawall_core::clock::now_ms());
            return Attempt::Client(e);
        }
    };
    let request_complete = matches!(sent, Sent::All { .. });
    // A request sent in one write was sent when its head was read, as far as timers care.
    let sent_at = match sent {
        Sent::All { at_once: true } => since,
        _ => Instant::now(),
    };
    // The route's `timeout` overrides the upstream's; the request's total time left still wins
    // when it is shorter.
    let route = f.route.map(|r| &f.snapshot.config.routes[r]);
    let route_timeout = route.and_then(|r| r.timeout);
    let answer_timeout = route_timeout.unwrap_or(config.timeout);
    let deadline = f.deadline.map_or(sent_at + answer_timeout, |t| t.min(sent_at + answer_timeout));
    let mut received = false;
    loop {
        if !conn.buf.is_empty() {
            received = true;
            match response::parse(&conn.buf, f.method, f.upgrade, &mut conn.fields) {
                Ok(Parsed::Head(head)) if head.is_interim() => {
                    let view = ResponseView::new(&head, &conn.fields, &conn.buf);
                    // A third party's interim answers (103 Early Hints) stay here: their fields
                    // are not scrubbed like a final answer's.
                    let passed = if is_egress(f) { Ok(()) } else { down.interim(&view).await };
                    if let Err(e) = passed {
                        group.record(
                            index,
                            UpstreamOutcome::Cancelled,
                            seawall_core::clock::now_ms(),
                        );
                        return Attempt::Client(e);
                    }
                    bytes::Buf::advance(&mut conn.buf, head.len);
                    continue;
                }
                Ok(Parsed::Head(mut head)) => {
                    if let Some(actions) = route.and_then(|r| r.response_headers.as_ref()) {
                        crate::edge::drop_fields(&mut conn.fields, &conn.buf, actions);
                    }
                    if let Some(seawall_config::RouteAction::Egress { group }) =
                        route.map(|r| &r.action)
                    {
                        let egress = &f.snapshot.config.egress[*group];
                        crate::egress::scrub_answer(&mut conn.fields, &conn.buf, egress);
                        head.drop_reason();
                    }
                    let server = &f.snapshot.config.server;
                    if server.request_id {
                        // The answer carries Seawall's id: an upstream's own (or its echo of
                        // ours) would make two.
                        let name = server.request_id_header.as_bytes();
                        crate::edge::drop_named(&mut conn.fields, &conn.buf, name);
                    }
                    return Attempt::Answered(Box::new(UpstreamResponse::new(
                        conn,
                        head,
                        request_complete,
                        group.config.read_timeout,
                    )));
                }
                Ok(Parsed::Partial) => {}
                Err(e) => {
                    let what = format!("sent an invalid answer: {e}");
                    return failed(
                        group,
                        index,
                        UpstreamOutcome::Error,
                        Reason::UpstreamError,
                        &what,
                    );
                }
            }
        }
        make_room(&mut conn.buf, READ_BUFFER);
        let read = std::future::poll_fn(|cx| poll_read_buf(&mut conn.stream, &mut conn.buf, cx));
        let gone = |cx: &mut Context<'_>| down.poll_gone(cx);
        match wait_upstream(read, timer, sent_at, deadline, gone, f.idempotent).await {
            Waited::Done(Ok(n)) if n > 0 => {}
            Waited::Done(_) if may_retry && !received && request_complete => return Attempt::Stale,
            Waited::Done(result) => {
                let what = match result {
                    Err(e) => format!("failed before answering: {e}"),
                    Ok(_) => "closed the connection before answering".to_string(),
                };
                return failed(group, index, UpstreamOutcome::Error, Reason::UpstreamError, &what);
            }
            Waited::TimedOut => {
                if f.client_deadline.is_some_and(|c| c <= deadline) {
                    // The client's own deadline ran out: nothing is known of the server.
                    group.record(index, UpstreamOutcome::Cancelled, seawall_core::clock::now_ms());
                    let detail = "the client's deadline passed before the upstream answered";
                    return Attempt::Refused(Refusal::new(Reason::DeadlineExceeded, detail));
                }
                let what = if f.deadline.is_some_and(|t| t < sent_at + answer_timeout) {
                    "did not answer within the request's total_timeout".to_string()
                } else if route_timeout.is_some() {
                    format!("did not answer within the route's timeout ({answer_timeout:?})")
                } else {
                    format!("did not answer within {:?}", config.timeout)
                };
                return failed(
                    group,
                    index,
                    UpstreamOutcome::Timeout,
                    Reason::UpstreamTimeout,
                    &what,
                );
            }
            Waited::ClientGone => {
                group.record(index, UpstreamOutcome::Cancelled, seawall_core::clock::now_ms());
                return Attempt::Client(BodyError::Gone);
            }
        }
    }
}

/// Why sending failed.
enum SendError {
    /// Writing to the upstream failed (or stalled past `send_timeout`: `TimedOut`).
    Upstream(std::io::Error),
    Client(BodyError),
}

/// Sends the head and the body, watching the upstream for an early answer while the body
/// streams.
async fn send<D: Downstream>(
    f: &Forward<'_>,
    conn: &mut RawConn,
    down: &mut D,
    timer: &mut LazyTimer,
    send_timeout: Duration,
    since: Instant,
) -> Result<Sent, SendError> {
    let streamed = f.framing == BodyFraming::Streamed;
    let mut first = true;
    let mut line = [0u8; 18];
    loop {
        let (ready, complete) = down.ready().map_err(SendError::Client)?;
        if ready.is_empty() && !complete && !first {
            // Wait for more of the body, unless the upstream answers first.
            let spoke = {
                let mut fill = pin!(down.fill(timer));
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(r) = fill.as_mut().poll(cx) {
                        return Poll::Ready(r.map(|()| false));
                    }
                    conn.stream.poll_read_ready(cx).map(|_| Ok(true))
                })
                .await
                .map_err(SendError::Client)?
            };
            if spoke {
                if heard(f, conn) != Heard::Nothing {
                    return Ok(Sent::Early);
                }
                // Interim answers go to the client now: it may wait for one before it goes on.
                pass_interims(f, conn, down).await.map_err(SendError::Client)?;
            }
            continue;
        }
        let (frame_start, frame_end): (&[u8], &[u8]) = if streamed && !ready.is_empty() {
            (chunk_line(ready.len(), &mut line), CHUNK_END)
        } else {
            (b"", b"")
        };
        let last: &[u8] = if streamed && complete { LAST_CHUNK } else { b"" };
        let head: &[u8] = if first { f.head } else { b"" };
        let mut slices = [
            IoSlice::new(head),
            IoSlice::new(frame_start),
            IoSlice::new(ready),
            IoSlice::new(frame_end),
            IoSlice::new(last),
        ];
        let n = ready.len();
        // The head was read a moment ago: its clock reading serves the first write.
        let now = if first { since } else { Instant::now() };
        timer.set(now + send_timeout);
        let mut unsent = &mut slices[..];
        IoSlice::advance_slices(&mut unsent, 0);
        loop {
            let failed = match write_watching(conn, &mut unsent, timer).await {
                Written::All => break,
                Written::UpstreamSpoke => match heard(f, conn) {
                    Heard::Final => return Ok(Sent::Early),
                    // Before anything was sent, a closed connection is a failed write (a stale
                    // pooled connection may be replaced); later, the head reader reports it.
                    Heard::Gone if first => std::io::ErrorKind::ConnectionReset.into(),
                    Heard::Gone => return Ok(Sent::Early),
                    // An interim answer, or nothing after all: the body goes on.
                    Heard::Nothing => continue,
                },
                Written::Failed(e) => e,
            };
            // The upstream may have answered and closed (its own 413, say): that answer counts.
            if heard(f, conn) == Heard::Final {
                return Ok(Sent::Early);
            }
            return Err(SendError::Upstream(failed));
        }
        down.consume(n);
        if complete {
            return Ok(Sent::All { at_once: first });
        }
        first = false;
    }
}

enum Written {
    All,
    UpstreamSpoke,
    Failed(std::io::Error),
}

/// What the upstream said while the request was still being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heard {
    /// Nothing that stops the request: interim answers, part of a head, or nothing at all.
    Nothing,
    /// Its final answer's head (or something that is not one: the head reader says what).
    Final,
    /// It closed the connection, or the connection failed.
    Gone,
}

/// What the upstream, which became readable while the request was still being sent, has said.
/// What it sent stays in the connection's buffer for the head reader, which passes interim
/// answers on; an interim answer alone (103, 100) does not stop the body. A readable mark with
/// nothing behind it (left by an earlier read) is cleared by the read that finds nothing.
fn heard(f: &Forward<'_>, conn: &mut RawConn) -> Heard {
    make_room(&mut conn.buf, READ_BUFFER);
    let closed = match conn.stream.try_read_buf(&mut conn.buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    if conn.buf.len() > response::MAX_RESPONSE_HEAD {
        return Heard::Final;
    }
    let mut at = 0;
    loop {
        match response::parse(&conn.buf[at..], f.method, f.upgrade, &mut conn.fields) {
            Ok(Parsed::Head(head)) if head.is_interim() => at += head.len,
            Ok(Parsed::Partial) if closed => return Heard::Gone,
            Ok(Parsed::Partial) => return Heard::Nothing,
            Ok(Parsed::Head(_)) | Err(_) => return Heard::Final,
        }
    }
}

/// Passes the interim answers at the front of the connection's buffer to the client.
async fn pass_interims<D: Downstream>(
    f: &Forward<'_>,
    conn: &mut RawConn,
    down: &mut D,
) -> Result<(), BodyError> {
    while let Ok(Parsed::Head(head)) =
        response::parse(&conn.buf, f.method, f.upgrade, &mut conn.fields)
    {
        if !head.is_interim() {
            break;
        }
        down.interim(&ResponseView::new(&head, &conn.fields, &conn.buf)).await?;
        bytes::Buf::advance(&mut conn.buf, head.len);
    }
    Ok(())
}

/// Writes `slices` to the upstream within `timer`, advancing them as they go; stops as soon as
/// the upstream has something to say.
async fn write_watching(
    conn: &mut RawConn,
    slices: &mut &mut [IoSlice<'_>],
    timer: &mut LazyTimer,
) -> Written {
    std::future::poll_fn(|cx| {
        match poll_write_all(&mut conn.stream, slices, cx) {
            Poll::Ready(Ok(())) => return Poll::Ready(Written::All),
            Poll::Ready(Err(e)) => return Poll::Ready(Written::Failed(e)),
            Poll::Pending => {}
        }
        if conn.stream.poll_read_ready(cx).is_ready() {
            return Poll::Ready(Written::UpstreamSpoke);
        }
        timer.poll_expired(cx).map(|()| {
            Written::Failed(std::io::Error::new(std::io::ErrorKind::TimedOut, "send timeout"))
        })
    })
    .await
}

/// How a wait on the upstream ended.
pub enum Waited<T> {
    Done(T),
    TimedOut,
    /// The client left and the request may be cancelled.
    ClientGone,
}

/// Waits for `fut` until `deadline`. From [`WATCH_AFTER`] after `since`, the client is watched
/// too (`gone` polls it): if it leaves — broken, or closed when `cancel_on_close` — the wait ends
/// with `ClientGone`; a client that only closed its side of a request that must not be cut is
/// left to read its answer.
pub async fn wait_upstream<F: Future>(
    fut: F,
    timer: &mut LazyTimer,
    since: Instant,
    deadline: Instant,
    mut gone: impl FnMut(&mut Context<'_>) -> Poll<Gone>,
    cancel_on_close: bool,
) -> Waited<F::Output> {
    let mut fut = pin!(fut);
    let watch_from = since + WATCH_AFTER;
    let mut watching = watch_from >= deadline;
    timer.set(if watching { deadline } else { watch_from });
    // Set once the client closed without that being a reason to stop: stop looking.
    let mut settled = false;
    std::future::poll_fn(|cx| loop {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Waited::Done(v));
        }
        if watching && !settled {
            match gone(cx) {
                Poll::Ready(Gone::Reset) => return Poll::Ready(Waited::ClientGone),
                Poll::Ready(Gone::Closed) if cancel_on_close => {
                    return Poll::Ready(Waited::ClientGone)
                }
                Poll::Ready(Gone::Closed) => settled = true,
                Poll::Pending => {}
            }
        }
        match timer.poll_expired(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(()) if watching => return Poll::Ready(Waited::TimedOut),
            Poll::Ready(()) => {
                watching = true;
                timer.set(deadline);
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client body that arrives in `pieces`, one per fill.
    struct Pieces {
        pieces: Vec<&'static [u8]>,
        at: usize,
        pos: usize,
    }

    impl Downstream for Pieces {
        fn ready(&mut self) -> Result<(&[u8], bool), BodyError> {
            let piece = self.pieces.get(self.at).copied().unwrap_or_default();
            Ok((&piece[self.pos..], self.at + 1 >= self.pieces.len()))
        }
        fn consume(&mut self, n: usize) {
            self.pos += n;
        }
        fn is_complete(&self) -> bool {
            self.at + 1 >= self.pieces.len() && self.pos >= self.pieces[self.at].len()
        }
        fn rewind(&mut self) -> bool {
            false
        }
        async fn fill(&mut self, _timer: &mut LazyTimer) -> Result<(), BodyError> {
            self.at += 1;
            self.pos = 0;
            Ok(())
        }
        fn poll_gone(&mut self, _cx: &mut Context<'_>) -> Poll<Gone> {
            Poll::Pending
        }
        async fn interim(&mut self, _view: &ResponseView<'_>) -> Result<(), BodyError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_whole_body_is_read_within_its_bound() {
        let mut timer = LazyTimer::new(Instant::now());
        let mut body = Pieces { pieces: vec![b"ab", b"", b"cde"], at: 0, pos: 0 };
        assert_eq!(body.read_to_end(&mut timer, 5).await, Ok(b"abcde".to_vec()));
        let mut body = Pieces { pieces: vec![b"ab", b"cdef"], at: 0, pos: 0 };
        assert_eq!(body.read_to_end(&mut timer, 5).await, Err(BodyError::TooLarge(5)));
    }
}
