//! Delivery of queued jobs through the upstream path: a job's request goes to its topic's
//! `deliver_to` group by [`crate::proxy::forward`] — balancing, pools, health, breaker, gate
//! (at P2: live traffic first) and connect retries — with `Idempotency-Key: ID` on every attempt.
//! A 2xx delivers the job; 408, 429, 5xx and failures to reach the upstream are tried again (with
//! the destination's `Retry-After`); any other answer is final.

use std::rc::Rc;
use std::time::Duration;

use http::Method;
use seawall_config::{RouteAction, Topic};
use seawall_core::priority::Priority;
use seawall_queue::delivery::{Attempt, Courier};
use seawall_queue::{JobId, Request};
use tokio::time::Instant;

use crate::headers::{classify, ConnectionOptions};
use crate::problem::Reason;
use crate::proxy::{self, Forward, Forwarded, StoredBody};
use crate::request::{write_upstream_head, BodyFraming, FieldRef, UpstreamHead};
use crate::request_id::RequestId;
use crate::timer::LazyTimer;
use crate::worker::Worker;

/// The most of an answer's body read so that its connection can be used again.
const DRAIN_AT_MOST: u64 = 256 * 1024;

/// Delivers jobs from one worker.
pub struct WorkerCourier {
    pub worker: Rc<Worker>,
}

impl Courier for WorkerCourier {
    async fn deliver(&self, topic: &Topic, id: JobId, request: &Request) -> Attempt {
        let worker = &self.worker;
        let snapshot = worker.snapshot();
        // The destination as the configuration in force names it.
        let queue = snapshot.config.queue.as_ref();
        let configured = queue.and_then(|q| Some(&q.topics[q.topic(&topic.name)?]));
        // An egress route's jobs go through that route (its group's quota, keys, providers).
        let via = configured.and_then(|t| t.via_route.as_deref()).map(|name| {
            let routes = &snapshot.config.routes;
            routes
                .iter()
                .position(|r| r.name == name && matches!(r.action, RouteAction::Egress { .. }))
        });
        let Some(upstream) = configured
            .map(|t| t.deliver_to)
            .filter(|&u| u < snapshot.upstreams.len() && via != Some(None))
        else {
            let error = format!("topic {:?} has no destination in the configuration", topic.name);
            return Attempt::NotSent { error, wait: Duration::from_secs(1) };
        };
        // A job stored under an egress route whose path changed since: not sent under another
        // provider's URL or key (a dead letter, requeued once the route is right again).
        if let Some(Some(route)) = via {
            let path = crate::egress::route_path(&snapshot.config.routes[route]);
            if !request.target.starts_with(path) {
                let error = format!(
                    "the job's target {:?} is not under egress route {:?}'s path {path:?}",
                    request.target, snapshot.config.routes[route].name
                );
                return Attempt::Refused { error };
            }
        }
        let Ok(method) = Method::from_bytes(request.method.as_bytes()) else {
            return Attempt::Refused { error: format!("{:?} is not a method", request.method) };
        };
        let key_value = id.to_string();
        // The client's host, kept by a route that preserves it; else the server's name.
        let host = request.headers.iter().find(|(n, _)| n == "host").map(|(_, v)| v.as_slice());
        let mut fields: Vec<(&[u8], &[u8])> = request
            .headers
            .iter()
            .filter(|(name, _)| !name.eq_ignore_ascii_case("idempotency-key") && name != "host")
            .map(|(name, value)| (name.as_bytes(), value.as_slice()))
            .collect();
        fields.push((b"idempotency-key", key_value.as_bytes()));
        let connection = ConnectionOptions::default();
        let refs = fields.iter().map(|&(name, value)| FieldRef {
            name,
            value,
            class: classify(name),
            named: connection.names(name),
        });
        let server = &snapshot.config.server;
        // The job's own request id was kept with it; a job without one gets a new one.
        let kept_id = request.headers.iter().any(|(n, _)| *n == server.request_id_header);
        let new_id = (server.request_id && !kept_id).then(|| RequestId::generate(&worker.ids));
        let framing = BodyFraming::Length(request.body.len() as u64);
        let mut head = Vec::with_capacity(512);
        write_upstream_head(
            &mut head,
            &UpstreamHead {
                method: &method,
                target: request.target.as_bytes(),
                host,
                forwarded_host: host,
                upgrade: false,
                te_trailers: false,
                framing,
                // Seawall itself sends it: no client waits on a delivery.
                client: crate::client::Client::direct(std::net::SocketAddr::from((
                    [127, 0, 0, 1],
                    0,
                ))),
                version: http::Version::HTTP_11,
                edits: None,
                request_id: new_id
                    .as_ref()
                    .map(|id| (server.request_id_header.as_bytes(), id.as_bytes())),
            },
            refs,
        );
        let start = Instant::now();
        let group = &snapshot.upstreams[upstream];
        let mut timer = LazyTimer::new(start + Duration::from_secs(3600));
        let mut body = StoredBody::new(&request.body);
        let forwarded = proxy::forward(
            Forward {
                worker,
                snapshot: &snapshot,
                upstream,
                key: seawall_core::hash::stable_hash(request.target.as_bytes()),
                method: &method,
                idempotent: false,
                upgrade: false,
                framing,
                head: &mut head,
                host_is_server: host.is_none(),
                start,
                deadline: group.config.total_timeout.map(|t| start + t),
                priority: Priority::P2,
                route: via.flatten(),
                client_deadline: None,
                head_len: 0,
                degrade: None,
                cache: None,
            },
            &mut body,
            &mut timer,
        )
        .await;
        match forwarded {
            Forwarded::Response(mut response) => {
                let status = response.head.status;
                let retry_after = response.view().first("retry-after").and_then(retry_after);
                if response.drain(&mut timer, DRAIN_AT_MOST).await {
                    (*response).finish(seawall_core::clock::now_ms());
                }
                outcome(status, retry_after)
            }
            Forwarded::Refused(refusal, _) => {
                let error = format!("{}: {}", refusal.reason.as_str(), refusal.detail);
                if held_back(refusal.reason) {
                    let wait = Duration::from_secs(refusal.retry_after.unwrap_or(1).max(1).into());
                    Attempt::NotSent { error, wait }
                } else {
                    Attempt::Retry { error, retry_after: None }
                }
            }
            Forwarded::Client(error, _) => Attempt::Retry {
                error: format!("the stored body: {}", error.detail()),
                retry_after: None,
            },
            // No cache ticket is given: nothing is served from it.
            Forwarded::Cached(_) => Attempt::Delivered,
        }
    }
}

/// Whether Seawall held the job back itself, without reaching for the destination: the job
/// waits, no attempt counted.
fn held_back(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::CircuitOpen
            | Reason::UpstreamUnavailable
            | Reason::BulkheadFull
            | Reason::Overloaded
            | Reason::EgressQuota
            | Reason::EgressNoKey
    )
}

/// What an answer with `status` makes of the job.
fn outcome(status: u16, retry_after: Option<Duration>) -> Attempt {
    match status {
        200..=299 => Attempt::Delivered,
        408 | 425 | 429 | 500..=599 => {
            Attempt::Retry { error: format!("the destination answered {status}"), retry_after }
        }
        _ => Attempt::Refused { error: format!("the destination answered {status}") },
    }
}

/// A `Retry-After` value: seconds, or an HTTP date.
pub fn retry_after(value: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decide_the_job() {
        assert_eq!(outcome(204, None), Attempt::Delivered);
        let two = Some(Duration::from_secs(2));
        assert!(
            matches!(outcome(429, two), Attempt::Retry { retry_after, .. } if retry_after == two)
        );
        assert!(matches!(outcome(503, None), Attempt::Retry { .. }));
        assert!(matches!(outcome(400, None), Attempt::Refused { .. }));
        assert!(matches!(outcome(301, None), Attempt::Refused { .. }));
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        assert_eq!(retry_after(b" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(b"soon"), None);
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let date = httpdate::fmt_http_date(later);
        let parsed = retry_after(date.as_bytes()).expect("a date");
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
        assert_eq!(retry_after(b"Thu, 01 Jan 1970 00:00:00 GMT"), Some(Duration::ZERO));
    }
}
