//! The switches an operator flips during a crisis, all token-protected: an upstream's circuit
//! breaker forced open or closed, or given back to its rules
//! (`POST /api/v1/upstreams/{name}/breaker` with `{"state": "open" | "closed" | "auto"}`).
//! Their state shows in `/api/v1/state` and `/metrics` and survives a reload.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use seawall_core::breaker::Forced;
use serde_json::{json, Value};

use super::text;
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

/// The request's JSON body, at most [`MAX_BODY`] bytes.
async fn read_json(req: Request<Incoming>) -> Result<Value, Response<Bytes>> {
    let collected = Limited::new(req.into_body(), MAX_BODY).collect().await;
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return Err(bad_request(&format!("the body must be JSON of at most {MAX_BODY} bytes")))
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| bad_request(&format!("the body is not JSON: {e}")))
}

fn bad_request(detail: &str) -> Response<Bytes> {
    problem_with(StatusCode::BAD_REQUEST, "bad_request", detail, None)
}
