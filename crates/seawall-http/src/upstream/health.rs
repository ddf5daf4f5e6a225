//! Active HTTP health checks, run on the control thread.
//!
//! One task per server probes `GET <path>` every `interval`; a 2xx or 3xx answer within `timeout`
//! counts as good. A server leaves rotation after `unhealthy_after` bad probes in a row and comes
//! back after `healthy_after` good ones ([`HealthCounter`]). The result is one atomic flag in the
//! server's shared state, read by every worker when it picks a server. A server that passive
//! ejection took out comes back as soon as `healthy_after` probes in a row pass after its
//! ejection: the checks show it recovered, so it need not sit out the rest of its ejection.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use seawall_config::HealthCheck;
use seawall_core::health::{HealthCounter, Transition};
use tokio::task::JoinHandle;

use super::{ServerState, UpstreamGroup};

/// The probe tasks of one snapshot; dropping this stops them.
#[derive(Default)]
pub struct HealthChecks {
    tasks: Vec<JoinHandle<()>>,
}

impl HealthChecks {
    /// Starts a probe task for every server of every upstream that has `health` configured.
    pub fn spawn(runtime: &tokio::runtime::Handle, upstreams: &[UpstreamGroup]) -> Self {
        let mut tasks = Vec::new();
        for group in upstreams {
            let Some(check) = &group.config.health else {
                // Without active checks a server is always eligible (passive ejection still applies).
                for s in &group.servers {
                    s.healthy.store(s.is_resolved(), Relaxed);
                }
                continue;
            };
            for server in group.servers.iter().filter(|s| s.is_resolved()) {
                let (check, server, upstream) =
                    (check.clone(), Arc::clone(server), group.config.name.clone());
                tasks.push(runtime.spawn(probe_loop(check, server, upstream)));
            }
        }
        HealthChecks { tasks }
    }

    /// Stops every probe.
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn probe_loop(check: HealthCheck, server: Arc<ServerState>, upstream: String) {
    let mut counter = HealthCounter::new(
        server.healthy.load(Relaxed),
        check.healthy_after,
        check.unhealthy_after,
    );
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Good probes in a row while the server is passively ejected.
    let mut passed_while_ejected = 0;
    loop {
        tick.tick().await;
        let result = tokio::time::timeout(check.timeout, probe(&check, &server)).await;
        let ok = matches!(result, Ok(Ok(true)));
        let now_ms = seawall_core::clock::now_ms();
        if ok && server.outlier.is_ejected(now_ms) {
            passed_while_ejected += 1;
            if passed_while_ejected >= check.healthy_after && server.outlier.uneject(now_ms) {
                tracing::info!(%upstream, server = %server.name, "ejected server passed its health checks: back in rotation");
            }
        } else {
            passed_while_ejected = 0;
        }
        match counter.observe(ok) {
            Transition::Unchanged => {}
            Transition::BecameHealthy => {
                server.healthy.store(true, Relaxed);
                tracing::info!(%upstream, server = %server.name, "server is healthy again");
            }
            Transition::BecameUnhealthy => {
                server.healthy.store(false, Relaxed);
                let why = match result {
                    Err(_) => format!("no answer within {:?}", check.timeout),
                    Ok(Err(e)) => e,
                    Ok(Ok(_)) => "bad status".to_string(),
                };
                tracing::warn!(%upstream, server = %server.name, reason = %why, "server failed its health checks");
            }
        }
    }
}

/// One probe: connect, `GET path`, and report whether the status was 2xx or 3xx.
async fn probe(check: &HealthCheck, server: &ServerState) -> Result<bool, String> {
    let stream = super::pool::open_stream(server).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let host = check.host.as_deref().unwrap_or(&server.authority);
    let request = Request::get(check.path.as_str())
        .header(header::HOST, HeaderValue::from_str(host).map_err(|e| e.to_string())?)
        .header(header::USER_AGENT, "seawall-health-check")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"));
    driver.abort();
    let status = response?.status();
    Ok(status.is_success() || status.is_redirection())
}
