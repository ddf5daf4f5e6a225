//! The switches an operator flips during a crisis, all token-protected:
//!
//! - `POST /api/v1/upstreams/{name}/breaker` with `{"state": "open" | "closed" | "auto"}`: an
//!   upstream's circuit breaker forced open or closed, or given back to its rules;
//! - `POST /api/v1/routes/{name}/disable` and `/enable`: a route turned off (503
//!   `feature_disabled`, or its degraded answer) and on;
//! - `POST /api/v1/egress/{group}/enable`: the group's API keys its providers refused (401/403)
//!   used again;
//! - `PUT /api/v1/mode` with `{"read_only": true | false}`: writes refused, reads flowing; and/or
//!   `{"crisis": "on" | "off" | "auto"}`: crisis mode forced on or off, or back to following the
//!   overload level (on from level 1).
//!
//! Their state shows in `/api/v1/state` and `/metrics` and survives a reload.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use seawall_core::breaker::Forced;
use serde_json::{json, Value};

use super::text;
use crate::overload::Crisis;
use crate::problem::problem_with;
use crate::state::Shared;

/// The largest switch request body read.
const MAX_BODY: usize = 16 * 1024;

/// `POST /api/v1/upstreams/{name}/breaker`
pub async fn breaker(shared: &Shared, upstream: &str, req: Request<Incoming>) -> Response<Bytes> {
    let body = match read_json(req).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let forced = match body.get("state").and_then(Value::as_str) {
        Some("open") => Forced::Open,
        Some("closed") => Forced::Closed,
        Some("auto") => Forced::Auto,
        _ => return bad_request("expected {\"state\": \"open\" | \"closed\" | \"auto\"}"),
    };
    let snapshot = shared.snapshot.load();
    let Some(group) = snapshot.upstreams.iter().find(|g| g.config.name == upstream) else {
        let detail = format!("no upstream named {upstream:?}");
        return problem_with(StatusCode::NOT_FOUND, "not_found", &detail, None);
    };
    let Some(breaker) = &group.breaker else {
        let detail =
            format!("upstream {upstream:?} has no breaker (set upstreams.{upstream}.breaker)");
        return problem_with(StatusCode::CONFLICT, "no_breaker", &detail, None);
    };
    breaker.force(forced);
    let view = breaker.view();
    let answer =
        json!({"upstream": upstream, "forced": view.forced.as_str(), "state": view.mode.as_str()});
    text(StatusCode::OK, "application/json", answer.to_string())
}

/// `POST /api/v1/egress/{group}/enable`: every key of the group its provider refused is used
/// again (the operator fixed them).
pub fn enable_keys(shared: &Shared, group: &str) -> Response<Bytes> {
    let snapshot = shared.snapshot.load();
    let Some(egress) = snapshot.egress.iter().find(|g| g.config.name == group) else {
        let detail = format!("no egress group named {group:?}");
        return problem_with(StatusCode::NOT_FOUND, "not_found", &detail, None);
    };
    let enabled = egress.enable_keys();
    tracing::info!(group, enabled, "egress keys enabled again by the operator");
    text(
        StatusCode::OK,
        "application/json",
        json!({"egress": group, "enabled": enabled}).to_string(),
    )
}

/// `POST /api/v1/routes/{name}/disable` or `/enable`.
pub fn route(shared: &Shared, name: &str, disable: bool) -> Response<Bytes> {
    let snapshot = shared.snapshot.load();
    if !snapshot.config.routes.iter().any(|r| r.name == name) {
        let detail = format!("no route named {name:?}");
        return problem_with(StatusCode::NOT_FOUND, "not_found", &detail, None);
    }
    let was = snapshot.switches.set_disabled(name, disable);
    if was != disable {
        let state = if disable { "disabled" } else { "enabled" };
        tracing::warn!(route = %name, state, "route switched by an operator");
    }
    text(
        StatusCode::OK,
        "application/json",
        json!({"route": name, "disabled": disable}).to_string(),
    )
}

/// `PUT /api/v1/mode`: `read_only` and/or `crisis`, each optional; the answer shows both.
pub async fn mode(shared: &Shared, req: Request<Incoming>) -> Response<Bytes> {
    let body = match read_json(req).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    const EXPECTED: &str =
        "expected {\"read_only\": true | false} and/or {\"crisis\": \"on\" | \"off\" | \"auto\"}";
    let read_only = match body.get("read_only") {
        None => None,
        Some(v) => match v.as_bool() {
            Some(on) => Some(on),
            None => return bad_request(EXPECTED),
        },
    };
    let crisis = match body.get("crisis") {
        None => None,
        Some(v) => match v.as_str().and_then(Crisis::parse) {
            Some(mode) => Some(mode),
            None => return bad_request(EXPECTED),
        },
    };
    if read_only.is_none() && crisis.is_none() {
        return bad_request(EXPECTED);
    }
    let snapshot = shared.snapshot.load();
    if let Some(read_only) = read_only {
        if snapshot.switches.set_read_only(read_only) != read_only {
            tracing::warn!(read_only, "read-only mode switched by an operator");
        }
    }
    if let Some(mode) = crisis {
        if snapshot.overload.set_crisis(mode) != mode {
            tracing::warn!(crisis = mode.as_str(), "crisis mode switched by an operator");
        }
    }
    let answer = json!({
        "read_only": snapshot.switches.read_only(),
        "crisis": snapshot.overload.in_crisis(),
        "crisis_mode": snapshot.overload.crisis_mode().as_str(),
    });
    text(StatusCode::OK, "application/json", answer.to_string())
}

/// The request's JSON body, at most [`MAX_BODY`] bytes.
pub(super) async fn read_json(req: Request<Incoming>) -> Result<Value, Response<Bytes>> {
    let collected = Limited::new(req.into_body(), MAX_BODY).collect().await;
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return Err(bad_request(&format!("the body must be JSON of at most {MAX_BODY} bytes")))
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| bad_request(&format!("the body is not JSON: {e}")))
}

pub(super) fn bad_request(detail: &str) -> Response<Bytes> {
    problem_with(StatusCode::BAD_REQUEST, "bad_request", detail, None)
}
