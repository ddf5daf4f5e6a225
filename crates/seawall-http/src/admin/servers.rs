//! `POST /api/v1/upstreams/{name}/servers/{server}/drain` and `/undrain` (token-protected): one
//! server taken out of balancing gently, for maintenance — it gets no new request, while the
//! requests it is serving and its pooled connections finish — and given back. The server is
//! named as in the upstream's `servers` list. The state shows as `draining` in `/api/v1/state`
//! and `seawall_upstream_draining`, and survives a reload that keeps the server.

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::json;

use super::text;
use crate::problem::problem_with;
use crate::state::Shared;

/// The upstream, server and whether to drain (true) or undrain, from an admin path.
pub fn target(path: &str) -> Option<(&str, &str, bool)> {
    let rest = path.strip_prefix("/api/v1/upstreams/")?;
    let (upstream, rest) = rest.split_once("/servers/")?;
    let (server, drain) = match rest.rsplit_once('/')? {
        (server, "drain") => (server, true),
        (server, "undrain") => (server, false),
        _ => return None,
    };
    (!upstream.is_empty() && !server.is_empty()).then_some((upstream, server, drain))
}

/// Drains or undrains server `server` of upstream `upstream`.
pub fn drain(shared: &Shared, upstream: &str, server: &str, drain: bool) -> Response<Bytes> {
    let snapshot = shared.snapshot.load();
    let Some(group) = snapshot.upstreams.iter().find(|g| g.config.name == upstream) else {
        let detail = format!("no upstream named {upstream:?}");
        return problem_with(StatusCode::NOT_FOUND, "not_found", &detail, None);
    };
    let Some(state) = group.servers.iter().find(|s| s.name == server) else {
        let detail = format!("upstream {upstream:?} has no server {server:?} in its servers list");
        return problem_with(StatusCode::NOT_FOUND, "not_found", &detail, None);
    };
    if state.draining.swap(drain, Relaxed) != drain {
        let what = if drain { "drained" } else { "undrained" };
        tracing::warn!(upstream, server, "server {what} by an operator");
    }
    let answer = json!({"upstream": upstream, "server": server, "draining": drain});
    text(StatusCode::OK, "application/json", answer.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_an_upstream_a_server_and_a_verb() {
        let t = target("/api/v1/upstreams/app/servers/10.0.0.1:80/drain");
        assert_eq!(t, Some(("app", "10.0.0.1:80", true)));
        let t = target("/api/v1/upstreams/app/servers/api.internal:8080/undrain");
        assert_eq!(t, Some(("app", "api.internal:8080", false)));
        assert_eq!(target("/api/v1/upstreams/app/servers//drain"), None);
        assert_eq!(target("/api/v1/upstreams/app/servers/x/stop"), None);
        assert_eq!(target("/api/v1/upstreams/app/breaker"), None);
    }
}
