//! The hyper engine: HTTP/2 with prior knowledge (h2c). hyper parses and frames; each request is
//! turned into a [`RequestView`] for the policy layer and, when admitted, sent through the same
//! upstream call as the HTTP/1 engine ([`crate::proxy::forward`]), its body read from hyper's
//! stream ([`StreamBody`]) and the upstream's body decoded into HTTP/2 frames ([`ProxyBody`]).
//! A client that resets its stream drops the request's future: its upstream request is cancelled
//! with it, and the request is counted as 499.

mod body;
pub mod io;
mod queue;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, Response, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::time::Instant;

pub use body::ProxyBody;
use body::StreamBody;

use crate::access_log::RequestLine;
use crate::cache;
use crate::client::Client;
use crate::headers::{classify, has_token, valid_host, ConnectionOptions};
use crate::policy::{self, body_limit, Account, Admission, Permit, Served};
use crate::problem::{Reason, Refusal};
use crate::proxy::{self, BodyError, Downstream as _, Forward, Forwarded};
use crate::request::{write_upstream_head, BodyFraming, FieldRef, RequestView, UpstreamHead};
use crate::response;
use crate::timer::LazyTimer;
use crate::worker::Worker;

/// Requests of one connection that are not finished (their response body included): while there
/// are none, the connection's keep-alive timer runs.
#[derive(Debug, Default)]
pub struct Active(AtomicU32);

/// Counts a request as active until dropped.
pub struct ActiveGuard(Arc<Active>);

impl ActiveGuard {
    fn new(active: &Arc<Active>) -> Self {
        active.0.fetch_add(1, Relaxed);
        ActiveGuard(Arc::clone(active))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Relaxed);
    }
}

impl Active {
    /// Whether any request is in progress.
    pub fn any(&self) -> bool {
        self.0.load(Relaxed) > 0
    }
}

/// What stays alive with a response body: the request's hold on its route and connection.
pub struct Guards {
    _permit: Option<Permit>,
    _active: ActiveGuard,
}

/// The connection a stream came on: its peer, over TLS or not, to the egress listener or not
/// (what [`handle`] needs besides the request).
#[derive(Debug, Clone, Copy)]
pub struct Hop {
    pub peer: SocketAddr,
    pub https: bool,
    pub egress: bool,
}

/// Handles one request from an HTTP/2 connection.
pub async fn handle(
    worker: Rc<Worker>,
    active: Arc<Active>,
    hop: Hop,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let Hop { peer, https, egress } = hop;
    let start = Instant::now();
    let active = ActiveGuard::new(&active);
    let snapshot = worker.snapshot();
    let (parts, body) = req.into_parts();
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| parts.headers.get(header::HOST).map(http::HeaderValue::as_bytes));
    let target = parts.uri.path_and_query().map_or(&b"/"[..], |pq| pq.as_str().as_bytes());
    let path = parts.uri.path().as_bytes();
    let client = Client::of(peer, &parts.headers, &snapshot.config.server.clients)
        .over(https)
        .on_egress(egress);
    let mut account = Account::open(&worker, &snapshot, client.addr, start, || {
        RequestLine::of_parts(&parts, snapshot.config.log.access_log_query)
    });
    let request_id = account.assign_request_id(Some(&parts.headers));
    let checked = check_head(&parts.headers, host, snapshot.config.server.max_headers);
    let framing = match checked.and_then(|()| framing(&parts.headers, &body)) {
        Ok(framing) => framing,
        Err(refusal) => return Ok(refuse(refusal, account, None, active)),
    };
    let view = RequestView {
        method: &parts.method,
        version: parts.version,
        path,
        target,
        host,
        headers: &parts.headers,
        framing,
        client,
    };
    let head_only = parts.method == http::Method::HEAD;
    let mut permit = match policy::admit(&snapshot, &view, &mut account) {
        Admission::Admit(permit) => permit,
        Admission::Refuse(refusal) => return Ok(refuse(refusal, account, None, active)),
        Admission::Jobs { id, fields } => {
            return Ok(queue::job_status(&worker, id, &fields, account, active).await);
        }
        Admission::Cached(answer) => {
            let response = serve_stored(&answer.served, &answer.fields, head_only, account, active);
            if let Some(refresh) = answer.refresh {
                refresh.spawn(&worker, &snapshot);
            }
            return Ok(response);
        }
    };
    if let seawall_config::RouteAction::Redirect(redirect) = &permit.route().action {
        let answer = crate::edge::redirect(redirect, permit.route(), path, target, &permit.fields);
        worker.shared.registry.redirects.add(1);
        return Ok(answer_with(answer, account, Some(permit), active));
    }
    let queue_to = match permit.route().action {
        seawall_config::RouteAction::Queue { topic } => Some(topic),
        _ => permit.queue,
    };
    if let Some(topic) = queue_to {
        let request = queue::Queued { parts: &parts, target, host, request_id, topic };
        let limit = queue::body_limit(&permit);
        let down = StreamBody::new(body, limit, snapshot.config.server.body_timeout, 0);
        return Ok(queue::enqueue(&worker, request, down, account, permit, active).await);
    }
    let mut ticket = permit.cache.take();
    let upstream = permit.upstream;
    let group = &snapshot.upstreams[upstream];
    let route = permit.route();
    let host_is_server = !route.preserve_host || host.is_none();
    let mut connection = ConnectionOptions::default();
    for value in parts.headers.get_all(header::CONNECTION) {
        connection.add(value.as_bytes());
    }
    let fields: Vec<FieldRef<'_>> = parts
        .headers
        .iter()
        .map(|(name, value)| FieldRef {
            name: name.as_str().as_bytes(),
            value: value.as_bytes(),
            class: classify(name.as_str().as_bytes()),
            named: connection.names(name.as_str().as_bytes()),
        })
        .collect();
    let te_trailers =
        parts.headers.get(header::TE).is_some_and(|v| has_token(v.as_bytes(), b"trailers"));
    let mut head = Vec::with_capacity(512);
    let upstream_target = crate::edge::target(route, path, target);
    write_upstream_head(
        &mut head,
        &UpstreamHead {
            method: &parts.method,
            target: &upstream_target,
            host: if host_is_server { None } else { host },
            forwarded_host: host,
            upgrade: false,
            te_trailers,
            framing,
            client,
            version: Version::HTTP_2,
            edits: route.request_headers.as_deref(),
            request_id: (request_id.as_ref())
                .map(|id| (snapshot.config.server.request_id_header.as_bytes(), id.as_bytes())),
        },
        fields.iter().copied(),
    );
    let server = &snapshot.config.server;
    // A body that may be sent again (a retry, a fallback) is kept up to the retry's cap.
    let retry = &group.config.retry;
    let egress = matches!(route.action, seawall_config::RouteAction::Egress { .. });
    let again = retry.attempts > 1 || !group.config.fallback.is_empty() || egress;
    let replay_cap = if again { retry.max_body } else { 0 };
    let mut down =
        StreamBody::new(body, body_limit(&snapshot, route), server.body_timeout, replay_cap);
    let mut timer = LazyTimer::new(start + Duration::from_secs(3600));
    let forwarded = proxy::forward(
        Forward {
            worker: &worker,
            snapshot: &snapshot,
            upstream,
            key: group.request_key(&view),
            method: &parts.method,
            idempotent: view.is_idempotent(),
            upgrade: false,
            framing,
            head: &mut head,
            host_is_server,
            start,
            deadline: permit.deadline,
            priority: permit.priority,
            route: Some(permit.route_index()),
            client_deadline: None,
            head_len: 0,
            degrade: route.degrade.as_ref(),
            cache: ticket.as_mut(),
        },
        &mut down,
        &mut timer,
    )
    .await;
    if let Some(topic) = crate::queue::takes_over(&forwarded, &permit) {
        // The body is still whole (nothing reached an upstream): it goes to the queue.
        if down.rewind() {
            let request = queue::Queued { parts: &parts, target, host, request_id, topic };
            return Ok(queue::enqueue(&worker, request, down, account, permit, active).await);
        }
    }
    let response = match forwarded {
        Forwarded::Response(response) => response,
        Forwarded::Refused(refusal, at) => return Ok(refuse(refusal, account, at, active)),
        Forwarded::Client(error, at) => {
            if error == BodyError::Timeout {
                worker.shared.registry.client_body_timeouts.add(1);
            }
            let refusal = Refusal::new(error.reason(), error.detail());
            return Ok(refuse(refusal, account, at, active));
        }
        Forwarded::Cached(served) => {
            let fields = permit.fields_for_stored();
            return Ok(serve_stored(&served, fields, head_only, account, active));
        }
    };
    let mut response = response;
    let at = response.server();
    account.upstream_timing = Some(response.timing);
    let Ok(headers) = response::to_header_map(&response.view(), &permit.fields) else {
        let detail = "the upstream's transfer coding cannot be sent to this client";
        return Ok(refuse(Refusal::new(Reason::UpstreamError, detail), account, at, active));
    };
    // The body bytes that came with the head are checked before the head goes out: a body
    // broken from its first bytes is still answered 502.
    let mut first = bytes::BytesMut::new();
    if let Err(fault) = response.decoded_ready(&mut |d| first.extend_from_slice(d)) {
        let refusal = Refusal::new(Reason::UpstreamError, format!("upstream {fault}"));
        return Ok(refuse(refusal, account, at, active));
    }
    let status = response.head.status;
    let send_timeout = server.send_timeout;
    let guards = Guards { _permit: Some(permit), _active: active };
    let body = ProxyBody::upstream(
        response,
        first.freeze(),
        timer,
        send_timeout,
        Rc::clone(&worker),
        guards,
    );
    let mut answer = Response::new(body);
    *answer.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    *answer.headers_mut() = headers;
    // The body streams after the books close: its declared length, where it has one.
    account.bytes_sent = response_length(answer.headers());
    account.finish(Served { status, upstream: at, reason: None }, Instant::now());
    Ok(answer)
}

/// The body length an answer declares (0 when it streams without one).
fn response_length(headers: &http::HeaderMap) -> u64 {
    let value = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
    value.and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// What the HTTP/1 engine refuses in a head is refused here too: too many fields, a host that is
/// not one (user information included).
fn check_head(
    headers: &http::HeaderMap,
    host: Option<&[u8]>,
    max_headers: usize,
) -> Result<(), Refusal> {
    if headers.len() > max_headers {
        return Err(Refusal::new(Reason::HeaderTooLarge, "the request has too many header fields"));
    }
    if host.is_some_and(|h| !valid_host(h)) {
        return Err(Refusal::new(Reason::BadRequest, "the request's authority is invalid"));
    }
    Ok(())
}

/// The request's framing, from its `content-length` and whether its stream has ended.
fn framing(headers: &http::HeaderMap, body: &Incoming) -> Result<BodyFraming, Refusal> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let parsed = value.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok());
        match (parsed, length) {
            (None, _) => {
                return Err(Refusal::new(Reason::BadRequest, "the content-length is invalid"))
            }
            (Some(n), Some(l)) if n != l => {
                return Err(Refusal::new(Reason::BadRequest, "the content-length fields disagree"))
            }
            (Some(n), _) => length = Some(n),
        }
    }
    Ok(match length {
        Some(n) => BodyFraming::Length(n),
        None if body.is_end_stream() => BodyFraming::None,
        None => BodyFraming::Streamed,
    })
}

/// A stored answer, accounted.
fn serve_stored(
    answer: &cache::Served,
    added: &[u8],
    head_only: bool,
    mut account: Account,
    active: ActiveGuard,
) -> Response<ProxyBody> {
    let stored = &answer.stored;
    let age = stored.age(cache::now_secs());
    let (status, headers) = stored.header_map(age, answer.status, added, answer.not_modified);
    let bodiless = answer.not_modified || head_only || stored.status == 204;
    let body = if bodiless { bytes::Bytes::new() } else { stored.body.clone() };
    account.bytes_sent = body.len() as u64;
    account
        .finish(Served { status: status.as_u16(), upstream: None, reason: None }, Instant::now());
    let mut response =
        Response::new(ProxyBody::full(body).with_guards(Guards { _permit: None, _active: active }));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Seawall's own answer, accounted.
/// Seawall's own complete answer (a redirect, a queued job's 202).
fn answer_with(
    answer: Response<bytes::Bytes>,
    mut account: Account,
    permit: Option<Permit>,
    active: ActiveGuard,
) -> Response<ProxyBody> {
    let served = Served { status: answer.status().as_u16(), upstream: None, reason: None };
    account.bytes_sent = answer.body().len() as u64;
    account.finish(served, Instant::now());
    let guards = Guards { _permit: permit, _active: active };
    let (parts, body) = answer.into_parts();
    Response::from_parts(parts, ProxyBody::full(body).with_guards(guards))
}

fn refuse(
    mut refusal: Refusal,
    mut account: Account,
    at: Option<(usize, usize)>,
    active: ActiveGuard,
) -> Response<ProxyBody> {
    account.stamp(&mut refusal);
    let response = refusal.to_response();
    account.bytes_sent = response.body().len() as u64;
    account.finish(Served::answered(&refusal, at), Instant::now());
    let (mut parts, body) = response.into_parts();
    // Connection-specific fields are not allowed in HTTP/2.
    parts.headers.remove(header::CONNECTION);
    Response::from_parts(
        parts,
        ProxyBody::full(body).with_guards(Guards { _permit: None, _active: active }),
    )
}
