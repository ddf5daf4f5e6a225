//! The queue's admin endpoints, all token-protected:
//!
//! - `GET /api/v1/queue/{topic}/dead?limit=N`: the topic's dead letters (status, attempts, last
//!   error; oldest death first, 100 unless `limit` says otherwise, at most 10,000);
//! - `POST /api/v1/queue/{topic}/dead/requeue` (all) or `/dead/{id}/requeue` (one): dead letters
//!   queued again with their attempts reset;
//! - `DELETE /api/v1/queue/{topic}/dead` (all) or `/dead/{id}` (one): dead letters purged;
//! - `POST /api/v1/queue/{topic}/pause` and `/resume`: deliveries stopped and started (jobs are
//!   still accepted). A pause lasts until resumed or the process restarts.
//!
//! Each topic's depth and counters are in `/api/v1/state` (`queue`) and `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use seawall_queue::{JobId, Queue, LATENCY_BUCKETS};
use serde_json::json;

use super::text;
use crate::problem::problem_with;
use crate::state::Shared;

/// What an admin request under `/api/v1/queue/` asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Action<'a> {
    ListDead { topic: &'a str },
    Requeue { topic: &'a str, only: Option<&'a str> },
    Purge { topic: &'a str, only: Option<&'a str> },
    Pause { topic: &'a str, paused: bool },
}

/// The action of `method path`, `Err` with the method to use when the path is known but the
/// method is not; `None` for a path that is not a queue endpoint.
pub fn action<'a>(method: &Method, path: &'a str) -> Option<Result<Action<'a>, Method>> {
    let rest = path.strip_prefix("/api/v1/queue/")?;
    let (topic, what) = rest.split_once('/')?;
    let parts: Vec<&str> = what.split('/').collect();
    let want = |m: Method, a: Action<'a>| if *method == m { Ok(a) } else { Err(m) };
    Some(match parts.as_slice() {
        ["dead"] if *method == Method::DELETE => Ok(Action::Purge { topic, only: None }),
        ["dead"] => want(Method::GET, Action::ListDead { topic }),
        ["dead", "requeue"] => want(Method::POST, Action::Requeue { topic, only: None }),
        ["dead", id, "requeue"] => want(Method::POST, Action::Requeue { topic, only: Some(id) }),
        ["dead", id] => want(Method::DELETE, Action::Purge { topic, only: Some(id) }),
        ["pause"] => want(Method::POST, Action::Pause { topic, paused: true }),
        ["resume"] => want(Method::POST, Action::Pause { topic, paused: false }),
        _ => return None,
    })
}

/// Carries out `action`; `query` is the request's query string.
pub async fn serve(shared: &Shared, action: Action<'_>, query: Option<&str>) -> Response<Bytes> {
    let Some(queue) = &shared.queue else {
        return problem_with(StatusCode::NOT_FOUND, "not_found", "the gateway runs no queue", None);
    };
    let topic = match &action {
        Action::ListDead { topic }
        | Action::Requeue { topic, .. }
        | Action::Purge { topic, .. }
        | Action::Pause { topic, .. } => super::percent_decoded(topic),
    };
    if queue.topic(&topic).is_none() {
        let detail = format!("no topic named {topic:?}");
        return problem_with(StatusCode::NOT_FOUND, "not_found", &detail, None);
    }
    let id = |only: Option<&str>| -> Result<Option<JobId>, Box<Response<Bytes>>> {
        match only {
            None => Ok(None),
            Some(text) => JobId::parse(text).map(Some).ok_or_else(|| {
                let detail = format!("{text:?} is not a job id (32 hex digits)");
                Box::new(problem_with(StatusCode::BAD_REQUEST, "bad_request", &detail, None))
            }),
        }
    };
    let result = match action {
        Action::ListDead { .. } => {
            let limit = query
                .into_iter()
                .flat_map(|q| q.split('&'))
                .find_map(|pair| pair.strip_prefix("limit="))
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(100)
                .min(10_000);
            queue.backend.dead(&topic, limit).await.map(|dead| {
                let jobs: Vec<_> = dead.iter().map(seawall_queue::Status::to_json).collect();
                json!({ "topic": topic, "dead": jobs })
            })
        }
        Action::Requeue { only, .. } | Action::Purge { only, .. } => {
            let requeue = matches!(action, Action::Requeue { .. });
            let only = match id(only) {
                Ok(only) => only,
                Err(refusal) => return *refusal,
            };
            let done = queue.revive(&topic, only, requeue).await;
            let key = if requeue { "requeued" } else { "purged" };
            done.map(|n| json!({ "topic": topic, key: n }))
        }
        Action::Pause { paused, .. } => {
            queue.pause(&topic, paused);
            tracing::warn!(%topic, paused, "queue topic switched by the admin API");
            Ok(json!({ "topic": topic, "paused": paused }))
        }
    };
    match result {
        Ok(body) => text(StatusCode::OK, "application/json", body.to_string()),
        Err(e) => {
            let detail = format!("the queue cannot do this now: {e}");
            problem_with(StatusCode::SERVICE_UNAVAILABLE, "queue_unavailable", &detail, Some(1))
        }
    }
}

/// The `queue` member of `/api/v1/state`.
pub async fn state(shared: &Shared) -> serde_json::Value {
    match &shared.queue {
        Some(queue) => queue.state_json().await,
        None => serde_json::Value::Null,
    }
}

/// A gauge: name, help, and its value from a topic's depth at a time (ms).
type Gauge = (&'static str, &'static str, fn(&seawall_queue::Depth, u64) -> f64);

/// A counter: name, help, and its value in a topic's state.
type Counter = (&'static str, &'static str, fn(&seawall_queue::TopicState) -> u64);

/// The queue's metrics, by topic.
pub async fn metrics(out: &mut String, queue: &Queue) {
    let now = seawall_queue::job::now_ms();
    let topics = queue.topics();
    let mut depths = Vec::with_capacity(topics.len());
    for t in &topics {
        depths.push(queue.backend.depth(&t.name).await.ok());
    }
    let gauges: [Gauge; 5] = [
        ("queue_depth", "Jobs waiting for delivery (those being delivered included).", |d, _| {
            d.pending as f64
        }),
        ("queue_in_flight", "Jobs being delivered now.", |d, _| d.in_flight as f64),
        ("queue_dead", "Dead letters held (requeue or purge them with the admin API).", |d, _| {
            d.dead as f64
        }),
        ("queue_bytes", "Bytes held by the topic's jobs, dead letters included.", |d, _| {
            d.bytes as f64
        }),
        (
            "queue_oldest_age_seconds",
            "Age of the oldest job waiting for delivery (0: none).",
            |d, now| d.oldest_created_ms.map_or(0.0, |c| now.saturating_sub(c) as f64 / 1000.0),
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP seawall_{name} {help}\n# TYPE seawall_{name} gauge");
        for (t, depth) in topics.iter().zip(&depths) {
            if let Some(d) = depth {
                let _ = writeln!(out, "seawall_{name}{{topic=\"{}\"}} {}", t.name, value(d, now));
            }
        }
    }
    let counters: [Counter; 8] = [
        ("queue_enqueued_total", "Jobs stored (each answered 202).", |t| t.enqueued.load(Relaxed)),
        ("queue_delivered_total", "Jobs the destination took (2xx).", |t| {
            t.delivered.load(Relaxed)
        }),
        ("queue_retried_total", "Attempts that failed and will be tried again.", |t| {
            t.retried.load(Relaxed)
        }),
        ("queue_dead_total", "Jobs that became dead letters.", |t| t.dead.load(Relaxed)),
        ("queue_refused_full_total", "Enqueues refused by a bound (503 queue_full).", |t| {
            t.refused_full.load(Relaxed)
        }),
        (
            "queue_refused_error_total",
            "Enqueues refused because the store failed (503 queue_full).",
            |t| t.refused_error.load(Relaxed),
        ),
        (
            "queue_held_back_total",
            "Attempts Seawall held back without sending (breaker open, no server up, gate full).",
            |t| t.not_sent.load(Relaxed),
        ),
        (
            "queue_settle_errors_total",
            "Attempt outcomes the store could not record (the job is tried again).",
            |t| t.settle_errors.load(Relaxed),
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP seawall_{name} {help}\n# TYPE seawall_{name} counter");
        for t in &topics {
            let _ = writeln!(out, "seawall_{name}{{topic=\"{}\"}} {}", t.name, value(t));
        }
    }
    let name = "seawall_queue_delivery_seconds";
    let _ = writeln!(out, "# HELP {name} From enqueue to delivery.\n# TYPE {name} histogram");
    for t in &topics {
        let h = &t.latency;
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{topic=\"{}\",le=\"{bound}\"}} {}",
                t.name,
                bucket.load(Relaxed)
            );
        }
        let count = h.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{topic=\"{}\",le=\"+Inf\"}} {count}", t.name);
        let sum = h.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_sum{{topic=\"{}\"}} {sum}\n{name}_count{{topic=\"{}\"}} {count}",
            t.name, t.name
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_paths_name_their_action_and_method() {
        let id = "0123456789abcdef0123456789abcdef";
        let get = |p| action(&Method::GET, p);
        let post = |p| action(&Method::POST, p);
        assert_eq!(
            get("/api/v1/queue/emails/dead"),
            Some(Ok(Action::ListDead { topic: "emails" }))
        );
        assert_eq!(
            action(&Method::DELETE, "/api/v1/queue/emails/dead"),
            Some(Ok(Action::Purge { topic: "emails", only: None }))
        );
        let one = format!("/api/v1/queue/emails/dead/{id}/requeue");
        assert_eq!(post(&one), Some(Ok(Action::Requeue { topic: "emails", only: Some(id) })));
        assert_eq!(get(&one), Some(Err(Method::POST)));
        assert_eq!(
            post("/api/v1/queue/emails/pause"),
            Some(Ok(Action::Pause { topic: "emails", paused: true }))
        );
        assert_eq!(
            post("/api/v1/queue/emails/resume"),
            Some(Ok(Action::Pause { topic: "emails", paused: false }))
        );
        assert_eq!(post("/api/v1/queue/emails/other"), None);
        assert_eq!(post("/api/v1/queue/emails"), None);
    }
}
