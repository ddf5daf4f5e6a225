//! The `proxy` action: forward a request to a server of the route's upstream and stream the answer
//! back.
//!
//! Choose a server (balancer, skipping unhealthy and ejected ones) ▸ reuse an idle keep-alive
//! connection or open one within `connect_timeout` ▸ send, waiting at most `timeout` for the answer
//! to start ▸ record the outcome (metrics, passive ejection) ▸ stream the body back; the connection
//! returns to the pool when the body has been read to the end. A server that cannot be reached is
//! skipped for another (the request was not sent, so this is always safe); every other failure is a
//! problem response: 502, 503 or 504, never a hang.

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use http::uri::{Parts as UriParts, PathAndQuery};
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use seawall_config::Route;
use seawall_core::clock::{duration_ms, now_ms};

use crate::body::{ProxyBody, RequestBody, RequestBodyError};
use crate::headers::{add_forwarded, append_via, remove_hop_by_hop, wants_upgrade};
use crate::metrics::UpstreamOutcome;
use crate::pipeline::{Answer, Worker};
use crate::problem::Reason;
use crate::snapshot::Snapshot;
use crate::upstream::pool::{ConnectError, Inflight, PoolReturn, UpstreamSender, WorkerPools};
use crate::upstream::{PickContext, UpstreamGroup};

/// Our `Via` entry.
const VIA_H1: &str = "1.1 seawall";
const VIA_H2: &str = "2 seawall";

/// At most this many servers are tried when connecting fails.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// A server chosen for a request, with a connection to it.
pub(crate) struct Chosen<C> {
    /// The server's index in its group.
    pub index: usize,
    pub conn: C,
    /// The connection came from the pool (it may turn out to have been closed by the server).
    pub pooled: bool,
    /// Counts the request against the server until dropped.
    pub inflight: Inflight,
}

/// The balancing and connecting step both engines share: picks a server (skipping unhealthy,
/// ejected and already `tried` ones), takes an idle pooled connection to it (unless `fresh_only`)
/// or opens one; a server that cannot be reached is recorded, added to `tried` and replaced by
/// another, up to [`MAX_CONNECT_ATTEMPTS`]. The error is the refusal to answer with.
pub(crate) async fn choose<C, Fut>(
    worker: &Worker,
    group: &UpstreamGroup,
    cx: &PickContext<'_>,
    tried: &mut Vec<usize>,
    fresh_only: bool,
    checkout: impl Fn(&WorkerPools, usize, u64) -> Option<C>,
    connect: impl Fn(SocketAddr, Duration) -> Fut,
) -> Result<Chosen<C>, (Reason, String)>
where
    Fut: Future<Output = Result<C, ConnectError>>,
{
    let name = &group.config.name;
    loop {
        let picked = {
            let mut rng = worker.rng.borrow_mut();
            group.pick(cx, &mut rng, tried, |id| worker.pools.inflight(id))
        };
        let Some(index) = picked else {
            return Err(if tried.is_empty() {
                let detail = format!("no server of upstream {name:?} is available");
                (Reason::UpstreamUnavailable, detail)
            } else {
                let detail = format!("could not connect to any server of upstream {name:?}");
                (Reason::UpstreamConnectFailed, detail)
            });
        };
        let server = &group.servers[index];
        let inflight = Inflight::begin(&worker.pools, server.id);
        let pooled = if fresh_only { None } else { checkout(&worker.pools, server.id, cx.now_ms) };
        if let Some(conn) = pooled {
            return Ok(Chosen { index, conn, pooled: true, inflight });
        }
        match connect(server.address, group.config.connect_timeout).await {
            Ok(conn) => return Ok(Chosen { index, conn, pooled: false, inflight }),
            Err(e) => {
                tracing::debug!(upstream = %name, server = %server.name, error = %e, "connect failed");
                group.record(index, UpstreamOutcome::ConnectFailure, now_ms());
                tried.push(index);
                if tried.len() >= MAX_CONNECT_ATTEMPTS.min(group.servers.len()) {
                    let detail = format!("could not connect to upstream {name:?}: {e}");
                    return Err((Reason::UpstreamConnectFailed, detail));
                }
            }
        }
    }
}

/// Forwards `req` to the upstream at index `upstream`.
pub async fn forward(
    worker: &Rc<Worker>,
    snapshot: &Snapshot,
    route: &Route,
    upstream: usize,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Answer {
    let group = &snapshot.upstreams[upstream];
    let limit =
        route.max_body_size.unwrap_or(snapshot.config.server.max_body_size).unwrap_or(u64::MAX);
    let (mut parts, body) = req.into_parts();

    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Answer::refuse(
            Reason::BodyTooLarge,
            &format!("the request body exceeds {limit} bytes"),
        );
    }

    let upgrade = parts.version == Version::HTTP_11 && wants_upgrade(&parts.headers);
    let client_upgrade = if upgrade { parts.extensions.remove::<OnUpgrade>() } else { None };
    let via = if parts.version == Version::HTTP_2 { VIA_H2 } else { VIA_H1 };
    let client_host = parts
        .headers
        .get(header::HOST)
        .cloned()
        .or_else(|| parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
    remove_hop_by_hop(&mut parts.headers, upgrade);
    add_forwarded(&mut parts.headers, peer.ip(), client_host.as_ref(), via);
    if route.preserve_host {
        if let Some(host) = &client_host {
            parts.headers.insert(header::HOST, host.clone());
        }
    }
    parts.uri = origin_form(&parts.uri);
    parts.version = Version::HTTP_11;
    let mut request = Request::from_parts(parts, RequestBody::new(body, limit));

    // Host names the chosen server when the route says so or the client sent none (HTTP/1.0).
    let host_is_server = !route.preserve_host || client_host.is_none();
    let mut tried: Vec<usize> = Vec::new();
    let cx = PickContext { headers: request.headers(), client_ip: peer.ip(), now_ms: now_ms() };
    let chosen =
        choose(worker, group, &cx, &mut tried, false, WorkerPools::checkout, |address, timeout| {
            worker.pools.connect(address, timeout)
        })
        .await;
    let Chosen { index, conn: sender, pooled, inflight } = match chosen {
        Ok(chosen) => chosen,
        Err((reason, detail)) => return Answer::refuse(reason, &detail),
    };
    let server = &group.servers[index];
    if host_is_server {
        if let Ok(v) = HeaderValue::from_str(&server.name) {
            request.headers_mut().insert(header::HOST, v);
        }
    }
    let mut pool = PoolReturn {
        pools: Rc::clone(&worker.pools),
        server_id: server.id,
        sender: None,
        max_idle: group.config.pool.max_idle,
        idle_timeout_ms: duration_ms(group.config.pool.idle_timeout),
        inflight,
    };
    let outcome = send(worker, group, index, sender, pooled, request).await;
    let (response, sender) = match outcome {
        Sent::Response(response, sender) => (response, sender),
        Sent::Failed(reason, detail) => {
            let mut answer = Answer::refuse(reason, &detail);
            answer.upstream = Some((upstream, index));
            return answer;
        }
    };
    let status = response.status();
    let outcome =
        if status.is_server_error() { UpstreamOutcome::Http5xx } else { UpstreamOutcome::Ok };
    group.record(index, outcome, now_ms());
    let response = if status == StatusCode::SWITCHING_PROTOCOLS && client_upgrade.is_some() {
        tunnel(response, client_upgrade, via)
    } else {
        pool.sender = Some(sender);
        let (mut parts, body) = response.into_parts();
        remove_hop_by_hop(&mut parts.headers, false);
        append_via(&mut parts.headers, via);
        Response::from_parts(parts, ProxyBody::upstream(body, Some(pool)))
    };
    Answer { response, upstream: Some((upstream, index)), reason: None }
}

enum Sent {
    Response(Response<Incoming>, UpstreamSender),
    Failed(Reason, String),
}

/// Sends on `sender`; a pooled connection that turns out to be closed before the request was
/// written is replaced by a fresh one once.
async fn send(
    worker: &Rc<Worker>,
    group: &UpstreamGroup,
    index: usize,
    mut sender: UpstreamSender,
    mut pooled: bool,
    mut request: Request<RequestBody>,
) -> Sent {
    let server = &group.servers[index];
    let name = &group.config.name;
    let timeout = group.config.timeout;
    loop {
        let unsent = if sender.ready().await.is_err() {
            // The connection closed while it sat in the pool: nothing was sent.
            request
        } else {
            let err = match sender.send_within(request, timeout).await {
                None => {
                    group.record(index, UpstreamOutcome::Timeout, now_ms());
                    let detail = format!("upstream {name:?} did not answer within {timeout:?}");
                    return Sent::Failed(Reason::UpstreamTimeout, detail);
                }
                Some(Ok(response)) => return Sent::Response(response, sender),
                Some(Err(err)) => err,
            };
            if matches!(
                find_cause::<RequestBodyError>(err.error()),
                Some(RequestBodyError::TooLarge(_))
            ) {
                let detail = "the request body exceeds the allowed size".to_string();
                return Sent::Failed(Reason::BodyTooLarge, detail);
            }
            let cause = describe(err.error());
            let mut err = err;
            match err.take_message() {
                Some(unsent) if pooled => unsent,
                _ => {
                    group.record(index, UpstreamOutcome::Error, now_ms());
                    let detail = format!("upstream {name:?} failed: {cause}");
                    return Sent::Failed(Reason::UpstreamError, detail);
                }
            }
        };
        if !pooled {
            group.record(index, UpstreamOutcome::Error, now_ms());
            let detail =
                format!("upstream {name:?} closed the connection before the request was sent");
            return Sent::Failed(Reason::UpstreamError, detail);
        }
        request = unsent;
        pooled = false;
        match worker.pools.connect(server.address, group.config.connect_timeout).await {
            Ok(fresh) => sender = fresh,
            Err(e) => {
                group.record(index, UpstreamOutcome::ConnectFailure, now_ms());
                let detail = format!("could not connect to upstream {name:?}: {e}");
                return Sent::Failed(Reason::UpstreamConnectFailed, detail);
            }
        }
    }
}

fn describe(err: &hyper::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn find_cause<E: StdError + 'static>(err: &hyper::Error) -> Option<&E> {
    let err: &(dyn StdError + 'static) = err;
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// The request target in origin form (`/path?query`), as HTTP/1.1 upstreams expect.
fn origin_form(uri: &Uri) -> Uri {
    let mut parts = UriParts::default();
    parts.path_and_query =
        Some(uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

/// Completes a protocol switch (WebSocket): the client gets the upstream's 101, and once both
/// sides have upgraded, bytes are copied both ways until either closes.
fn tunnel(
    mut response: Response<Incoming>,
    client: Option<OnUpgrade>,
    via: &'static str,
) -> Response<ProxyBody> {
    let upstream = hyper::upgrade::on(&mut response);
    if let Some(client) = client {
        tokio::task::spawn_local(async move {
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(error = %e, "protocol switch failed");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(error = %e, "tunnel closed with an error");
            }
        });
    }
    let (mut parts, _) = response.into_parts();
    append_via(&mut parts.headers, via);
    Response::from_parts(parts, ProxyBody::empty())
}
