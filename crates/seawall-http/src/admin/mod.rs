//! The admin API, on its own listener (default `127.0.0.1:9901`), served from the control thread.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/healthz` | 200 while the process is alive |
//! | GET | `/readyz` | 200, or 503 while draining |
//! | GET | `/metrics` | Prometheus text |
//! | GET | `/api/v1/state` | routes, upstreams and servers with health, as JSON |
//! | POST | `/api/v1/reload` | re-reads the configuration file (token-protected) |
//! | POST | `/api/v1/upstreams/{name}/breaker` | forces a breaker open or closed, or back to auto ([`switches`]) |
//! | POST | `/api/v1/routes/{name}/disable`, `/enable` | turns a route off and on |
//! | POST | `/api/v1/upstreams/{name}/servers/{server}/drain`, `/undrain` | takes a server out of balancing and back ([`servers`]) |
//! | PUT | `/api/v1/mode` | `{"read_only": true \| false}` and/or `{"crisis": "on" \| "off" \| "auto"}` |
//!
//! Mutating endpoints require `Authorization: Bearer <server.admin_token>` when a token is set;
//! with `server.admin_token_for_reads`, every endpoint but the health probes does.

mod cache;
mod overload;
mod queue;
mod servers;
mod switches;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use seawall_config::{Balance, HashKey, HostMatch, PathMatch, RouteAction};
use serde_json::json;

use crate::metrics::{escape, family, UpstreamOutcome};
use crate::problem::problem_with;
use crate::state::{ReloadError, Shared};
use crate::upstream::ServerState;

/// Accepts admin connections until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(route(&shared, req).await.map(Full::new)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Bytes> {
    let path = req.uri().path();
    let method = req.method();
    // The health probes stay open to the orchestrator; with `admin_token_for_reads`, everything
    // else (state and metrics name internal hosts) needs the token.
    let probe = path == "/healthz" || path == "/readyz";
    if !probe && shared.snapshot.load().config.server.admin_token_for_reads {
        if let Some(refusal) = authorize(shared, &req) {
            return refusal;
        }
    }
    let (allowed, response) = match path {
        "/healthz" => (Method::GET, text(StatusCode::OK, "text/plain", "ok\n".into())),
        "/readyz" => (Method::GET, readiness(shared)),
        "/metrics" => {
            let mut out = metrics(shared);
            crate::egress::metrics(&mut out, &shared.snapshot.load().egress);
            if let Some(q) = &shared.queue {
                queue::metrics(&mut out, q).await;
            }
            (Method::GET, text(StatusCode::OK, "text/plain; version=0.0.4", out))
        }
        "/api/v1/state" => {
            let queue = queue::state(shared).await;
            (Method::GET, text(StatusCode::OK, "application/json", state(shared, queue)))
        }
        "/api/v1/reload" => {
            if method != Method::POST {
                return method_not_allowed(Method::POST);
            }
            if let Some(refusal) = authorize(shared, &req) {
                return refusal;
            }
            return reload(shared).await;
        }
        "/api/v1/cache/purge" => {
            if method != Method::POST {
                return method_not_allowed(Method::POST);
            }
            if let Some(refusal) = authorize(shared, &req) {
                return refusal;
            }
            return cache::purge(shared, req).await;
        }
        "/api/v1/mode" => {
            if method != Method::PUT {
                return method_not_allowed(Method::PUT);
            }
            if let Some(refusal) = authorize(shared, &req) {
                return refusal;
            }
            return switches::mode(shared, req).await;
        }
        _ => {
            if let Some(asked) = queue::action(method, path) {
                let action = match asked {
                    Ok(action) => action,
                    Err(allowed) => return method_not_allowed(allowed),
                };
                if let Some(refusal) = authorize(shared, &req) {
                    return refusal;
                }
                return queue::serve(shared, action, req.uri().query()).await;
            }
            return switch(shared, req).await;
        }
    };
    if method != allowed && !(allowed == Method::GET && method == Method::HEAD) {
        return method_not_allowed(allowed);
    }
    response
}

/// `POST /api/v1/upstreams/{name}/breaker`, `POST /api/v1/routes/{name}/disable|enable`,
/// `POST /api/v1/upstreams/{name}/servers/{server}/drain|undrain`,
/// `POST /api/v1/egress/{group}/enable`.
async fn switch(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Bytes> {
    let path = req.uri().path().to_string();
    if let Some((upstream, server, drain)) = servers::target(&path) {
        if req.method() != Method::POST {
            return method_not_allowed(Method::POST);
        }
        if let Some(refusal) = authorize(shared, &req) {
            return refusal;
        }
        let (upstream, server) = (percent_decoded(upstream), percent_decoded(server));
        return servers::drain(shared, &upstream, &server, drain);
    }
    if let Some(group) =
        path.strip_prefix("/api/v1/egress/").and_then(|r| r.strip_suffix("/enable"))
    {
        if req.method() != Method::POST {
            return method_not_allowed(Method::POST);
        }
        if let Some(refusal) = authorize(shared, &req) {
            return refusal;
        }
        return switches::enable_keys(shared, &percent_decoded(group));
    }
    let target = if let Some(rest) = path.strip_prefix("/api/v1/upstreams/") {
        rest.strip_suffix("/breaker").map(|name| (name, None))
    } else if let Some(rest) = path.strip_prefix("/api/v1/routes/") {
        let disable = rest.strip_suffix("/disable").map(|name| (name, Some(true)));
        disable.or_else(|| rest.strip_suffix("/enable").map(|name| (name, Some(false))))
    } else {
        None
    };
    let Some((name, route)) = target else {
        return problem_with(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint", None);
    };
    if req.method() != Method::POST {
        return method_not_allowed(Method::POST);
    }
    if let Some(refusal) = authorize(shared, &req) {
        return refusal;
    }
    let name = percent_decoded(name);
    match route {
        Some(disable) => switches::route(shared, &name, disable),
        None => switches::breaker(shared, &name, req).await,
    }
}

/// A path segment with its `%XX` escapes decoded (upstream names may hold any character).
fn percent_decoded(segment: &str) -> String {
    String::from_utf8_lossy(&crate::edge::percent_decode(segment.as_bytes())).into_owned()
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn method_not_allowed(allowed: Method) -> Response<Bytes> {
    let mut r = problem_with(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("use {allowed}"),
        None,
    );
    if let Ok(v) = HeaderValue::from_str(allowed.as_str()) {
        r.headers_mut().insert(header::ALLOW, v);
    }
    r
}

/// `None` when the request may mutate state; otherwise the refusal.
fn authorize(shared: &Shared, req: &Request<Incoming>) -> Option<Response<Bytes>> {
    let snapshot = shared.snapshot.load();
    let token = snapshot.config.server.admin_token.as_deref()?;
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        return None;
    }
    let mut r = problem_with(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this endpoint needs Authorization: Bearer <server.admin_token>",
        None,
    );
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(r)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn readiness(shared: &Shared) -> Response<Bytes> {
    if shared.draining.load(Relaxed) {
        text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n".into())
    } else {
        text(StatusCode::OK, "text/plain", "ready\n".into())
    }
}

async fn reload(shared: &Arc<Shared>) -> Response<Bytes> {
    match Shared::reload_in_background(shared).await {
        Ok(()) => text(StatusCode::OK, "application/json", json!({"reloaded": true}).to_string()),
        Err(ReloadError::Interrupted(why)) => {
            problem_with(StatusCode::INTERNAL_SERVER_ERROR, "reload_failed", &why, None)
        }
        Err(ReloadError::NoFile) => problem_with(
            StatusCode::CONFLICT,
            "no_config_file",
            "the gateway was not started from a file",
            None,
        ),
        Err(ReloadError::Invalid(errors)) => {
            let list: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            let mut r = problem_with(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_config",
                &list.join("\n"),
                None,
            );
            *r.body_mut() = Bytes::from(
                json!({"type": "urn:seawall:problem:invalid_config", "title": "Unprocessable Entity", "status": 422, "reason": "invalid_config", "detail": "the new configuration is invalid; the running one stays", "errors": list})
                    .to_string(),
            );
            r
        }
    }
}

fn metrics(shared: &Shared) -> String {
    let mut out = String::with_capacity(8192);
    shared.registry.render_routes(&mut out);
    shared.registry.render_process(&mut out);
    if let Some(tls) = &shared.tls {
        tls.metrics.render(&mut out);
    }
    let snapshot = shared.snapshot.load();
    crate::ratelimit::render_metrics(&mut out, &snapshot.limiters);
    switch_metrics(&mut out, &snapshot);
    breaker_metrics(&mut out, &snapshot.upstreams);
    retry_metrics(&mut out, &snapshot.upstreams);
    overload::metrics(&mut out, &snapshot);
    cache::metrics(&mut out, &snapshot);
    let now = seawall_core::clock::now_ms();
    let families: [(&str, &str, &str, ServerSamples); 6] = [
        (
            "seawall_upstream_requests_total",
            "counter",
            "Attempts to use an upstream server, by outcome.",
            &|s, sample| {
                for outcome in UpstreamOutcome::ALL {
                    sample(&format!("outcome=\"{}\"", outcome.label()), s.metrics.get(outcome));
                }
            },
        ),
        (
            "seawall_upstream_connections_opened_total",
            "counter",
            "Connections opened to an upstream server.",
            &|s, sample| sample("", s.metrics.opened()),
        ),
        (
            "seawall_upstream_connections",
            "gauge",
            "Connections to an upstream server open now: idle in a pool, or busy with a request.",
            &|s, sample| {
                let (idle, busy) = s.metrics.connections();
                sample("state=\"idle\"", idle.unsigned_abs());
                sample("state=\"busy\"", busy.unsigned_abs());
            },
        ),
        (
            "seawall_upstream_healthy",
            "gauge",
            "Whether a server passes its active health checks (1) or not (0).",
            &|s, sample| sample("", u64::from(s.healthy.load(Relaxed))),
        ),
        (
            "seawall_upstream_draining",
            "gauge",
            "Whether an operator took a server out of balancing (1) or not (0).",
            &|s, sample| sample("", u64::from(s.draining.load(Relaxed))),
        ),
        (
            "seawall_upstream_ejected",
            "gauge",
            "Whether a server is ejected by passive outlier detection (1) or not (0).",
            &|s, sample| sample("", u64::from(s.outlier.is_ejected(now))),
        ),
    ];
    for (name, kind, help, samples) in families {
        family(&mut out, name, kind, help);
        for group in &snapshot.upstreams {
            for s in &group.servers {
                let (upstream, server) = (escape(&group.config.name), escape(&s.name));
                samples(s, &mut |labels, value| {
                    let sep = if labels.is_empty() { "" } else { "," };
                    let _ = writeln!(
                        out,
                        "{name}{{upstream=\"{upstream}\",server=\"{server}\"{sep}{labels}}} {value}"
                    );
                });
            }
        }
    }
    out
}

/// Read-only mode and the routes turned off.
fn switch_metrics(out: &mut String, snapshot: &crate::snapshot::Snapshot) {
    let name = "seawall_read_only";
    family(
        out,
        name,
        "gauge",
        "Whether the gateway refuses writes (read-only mode, 1) or not (0).",
    );
    let _ = writeln!(out, "{name} {}", u8::from(snapshot.switches.read_only()));
    let name = "seawall_route_disabled";
    family(out, name, "gauge", "Whether an operator turned the route off (1) or not (0).");
    for r in &snapshot.config.routes {
        let disabled = u8::from(snapshot.switches.is_disabled(&r.name));
        let _ = writeln!(out, "{name}{{route=\"{}\"}} {disabled}", escape(&r.name));
    }
}

/// Retries made, and refused by the budget.
fn retry_metrics(out: &mut String, groups: &[crate::upstream::UpstreamGroup]) {
    let name = "seawall_upstream_retries_total";
    family(out, name, "counter", "Attempts made again, by why: connect (no connection), reset (broken before an answer), status (an answer in retry.on_status).");
    for g in groups {
        let (upstream, r) = (escape(&g.config.name), &g.state.retries);
        for (reason, n) in [("connect", &r.connect), ("reset", &r.reset), ("status", &r.status)] {
            let _ =
                writeln!(out, "{name}{{upstream=\"{upstream}\",reason=\"{reason}\"}} {}", n.get());
        }
    }
    let name = "seawall_upstream_fallback_requests_total";
    family(
        out,
        name,
        "counter",
        "Requests sent to this upstream because the upstream it backs up failed.",
    );
    for g in groups {
        let upstream = escape(&g.config.name);
        let _ =
            writeln!(out, "{name}{{upstream=\"{upstream}\"}} {}", g.state.fallback_requests.get());
    }
    let name = "seawall_upstream_retries_over_budget_total";
    family(out, name, "counter", "Retries not made because the upstream's retry budget was spent.");
    for g in groups {
        let upstream = escape(&g.config.name);
        let _ = writeln!(
            out,
            "{name}{{upstream=\"{upstream}\"}} {}",
            g.state.retries.over_budget.get()
        );
    }
}

/// The breakers' state, transitions and refusals.
fn breaker_metrics(out: &mut String, groups: &[crate::upstream::UpstreamGroup]) {
    use crate::upstream::breaker::mode_value;
    let breakers: Vec<_> = groups
        .iter()
        .filter_map(|g| g.breaker.as_ref().map(|b| (escape(&g.config.name), b)))
        .collect();
    let name = "seawall_breaker_state";
    family(
        out,
        name,
        "gauge",
        "Circuit breaker state: 0 closed, 1 open, 2 half-open (a forced state included).",
    );
    for (upstream, b) in &breakers {
        let _ = writeln!(out, "{name}{{upstream=\"{upstream}\"}} {}", mode_value(b.view().mode));
    }
    let name = "seawall_breaker_transitions_total";
    family(out, name, "counter", "Circuit breaker state changes, by the state entered.");
    for (upstream, b) in &breakers {
        let c = &b.counters;
        for (to, n) in [("open", &c.opened), ("half_open", &c.half_opened), ("closed", &c.closed)] {
            let _ = writeln!(out, "{name}{{upstream=\"{upstream}\",to=\"{to}\"}} {}", n.get());
        }
    }
    let name = "seawall_breaker_refused_total";
    family(
        out,
        name,
        "counter",
        "Requests refused at once because the upstream's circuit breaker was open (circuit_open).",
    );
    for (upstream, b) in &breakers {
        let _ = writeln!(out, "{name}{{upstream=\"{upstream}\"}} {}", b.counters.refused.get());
    }
}

/// Writes one metric family's samples for a server: `sample(extra labels, value)` per sample.
type ServerSamples<'a> = &'a dyn Fn(&ServerState, &mut dyn FnMut(&str, u64));

/// The queue topic a route sends to (its action, or `on_failure = "queue"`).
fn route_topic<'a>(
    config: &'a seawall_config::Config,
    route: &seawall_config::Route,
) -> Option<&'a str> {
    let topic = match &route.action {
        RouteAction::Queue { topic } => Some(*topic),
        _ => route.queue_on_failure,
    }?;
    config.queue.as_ref().map(|q| q.topics[topic].name.as_str())
}

fn state(shared: &Shared, queue: serde_json::Value) -> String {
    let snapshot = shared.snapshot.load();
    let now = seawall_core::clock::now_ms();
    let config = &snapshot.config;
    let routes: Vec<_> = config
        .routes
        .iter()
        .map(|r| {
            let (action, upstream) = match &r.action {
                RouteAction::Proxy { upstream } => ("proxy", Some(config.upstreams[*upstream].name.as_str())),
                RouteAction::Redirect(_) => ("redirect", None),
                RouteAction::Egress { .. } => ("egress", None),
                RouteAction::Queue { topic } => {
                    let topics = config.queue.as_ref().map(|q| &q.topics[*topic]);
                    ("queue", topics.map(|t| config.upstreams[t.deliver_to].name.as_str()))
                }
            };
            json!({
                "name": r.name,
                "host": r.matcher.host.as_ref().map(|h| match h { HostMatch::Exact(h) => h.clone(), HostMatch::Suffix(s) => format!("*{s}") }),
                "path_prefix": match &r.matcher.path { PathMatch::Prefix(p) => Some(p), PathMatch::Exact(_) => None },
                "path": match &r.matcher.path { PathMatch::Exact(p) => Some(p), PathMatch::Prefix(_) => None },
                "methods": r.matcher.methods,
                "action": action,
                "disabled": snapshot.switches.is_disabled(&r.name),
                "disable_in_crisis": r.disable_in_crisis,
                "priority": r.priority.as_str(),
                "upstream": upstream,
                "topic": route_topic(config, r),
                "egress": match &r.action {
                    RouteAction::Egress { group } => Some(config.egress[*group].name.as_str()),
                    _ => None,
                },
            })
        })
        .collect();
    let upstreams: Vec<_> = snapshot
        .upstreams
        .iter()
        .map(|g| {
            let balance = match &g.config.balance {
                Balance::RoundRobin => "round_robin".to_string(),
                Balance::LeastRequest => "least_request".to_string(),
                Balance::ConsistentHash(HashKey::ClientIp) => "consistent_hash(client_ip)".to_string(),
                Balance::ConsistentHash(HashKey::Header(h)) => format!("consistent_hash(header:{h})"),
                Balance::ConsistentHash(HashKey::Cookie(c)) => format!("consistent_hash(cookie:{c})"),
            };
            let servers: Vec<_> = g
                .servers
                .iter()
                .zip(&g.config.servers)
                .map(|(s, c)| {
                    json!({
                        "address": s.name,
                        "host": c.host,
                        "weight": c.weight,
                        "healthy": s.healthy.load(Relaxed),
                        "ejected": s.outlier.is_ejected(now),
                        "draining": s.draining.load(Relaxed),
                        "available": s.is_available(now),
                        "consecutive_failures": s.outlier.consecutive_failures(),
                        "ejections": s.outlier.ejections(),
                    })
                })
                .collect();
            let breaker = g.breaker.as_ref().map(|b| {
                let v = b.view();
                json!({
                    "state": v.mode.as_str(),
                    "forced": v.forced.as_str(),
                    "calls": v.calls,
                    "failures": v.failures,
                    "consecutive_failures": v.consecutive_failures,
                    "trips": v.trips,
                    "open_for_ms": v.open_for_ms,
                })
            });
            let gate = overload::gate_state(g);
            json!({"name": g.config.name, "balance": balance, "health_checks": g.config.health.is_some(), "breaker": breaker, "gate": gate, "servers": servers})
        })
        .collect();
    // listen, admin and workers as running: a reloaded file's values wait for a restart.
    let running = shared.running;
    json!({
        "draining": shared.draining.load(Relaxed),
        "read_only": snapshot.switches.read_only(),
        "overload": overload::state(&snapshot),
        "cache": cache::state(&snapshot),
        "listen": running.listen.to_string(),
        "admin": running.admin.to_string(),
        "workers": running.workers,
        "max_connections": running.max_connections,
        "restart_pending": running.listen != config.server.listen
            || running.admin != config.server.admin
            || running.workers != config.server.workers
            || running.max_connections != config.server.max_connections,
        "connections_open": shared.registry.connections_open.get(),
        "routes": routes,
        "upstreams": upstreams,
        "queue": queue,
        "egress": snapshot.egress.iter().map(|g| g.state_json()).collect::<Vec<_>>(),
    })
    .to_string()
}
