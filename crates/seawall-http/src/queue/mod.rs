//! The queue's face in the gateway, the same for both engines: a request turned into a job (its
//! method, target, kept fields and body), the `202 Accepted` that answers it once it is stored,
//! `queue_full` when it cannot be, and `GET {jobs_path}ID`. Delivery goes out through
//! [`courier`], on the upstream path.

pub mod courier;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use seawall_queue::{EnqueueError, JobId, Queue, Request};

use crate::headers::HeaderLookup;
use crate::problem::{Reason, Refusal};

/// The request a job of `route` keeps, as the route would send it upstream: the target after
/// the route's rewrite, the fields `queue.headers` allows (not those the client's `Connection`
/// names) changed by the route's `request_headers`, the request's id (so the delivery carries
/// it), the client's host when the route preserves it, and the body.
pub struct JobHead<'a> {
    pub method: &'a http::Method,
    pub path: &'a [u8],
    pub target: &'a [u8],
    pub headers: &'a dyn HeaderLookup,
    /// The request's host (its `Host`, or the `:authority`), kept when the route preserves it.
    pub host: Option<&'a [u8]>,
    pub route: &'a seawall_config::Route,
    pub request_id: Option<(&'a str, &'a [u8])>,
}

/// The job's request (its body still empty).
pub fn job_request(head: JobHead<'_>, config: &seawall_config::Queue) -> Request {
    let mut named = Vec::new();
    head.headers.for_each_value("connection", &mut |value| {
        named.push(value.to_vec());
        false
    });
    let mut connection = crate::headers::ConnectionOptions::default();
    for value in &named {
        connection.add(value);
    }
    let edits = head.route.request_headers.as_deref();
    let mut kept = Vec::new();
    head.headers.for_each_field(&mut |name, value| {
        let allowed = config.headers.iter().any(|h| h.as_bytes().eq_ignore_ascii_case(name))
            && !connection.names(name)
            && !edits.is_some_and(|e| e.drops(name));
        if allowed {
            kept.push((String::from_utf8_lossy(name).to_ascii_lowercase(), value.to_vec()));
        }
    });
    if let Some(edits) = edits {
        for (name, value) in edits.set.iter().chain(&edits.add) {
            kept.push((name.clone(), value.as_bytes().to_vec()));
        }
    }
    if let Some((name, id)) = head.request_id {
        kept.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        kept.push((name.to_string(), id.to_vec()));
    }
    // `on_failure = "queue"` with `preserve_host`: the delivery is sent with the client's host,
    // as the live request would have been. A queue route's destination gets its own name.
    let proxied = matches!(head.route.action, seawall_config::RouteAction::Proxy { .. });
    if let Some(host) = head.host.filter(|_| proxied && head.route.preserve_host) {
        kept.push(("host".to_string(), host.to_vec()));
    }
    let target = crate::edge::target(head.route, head.path, head.target);
    Request {
        method: head.method.as_str().to_string(),
        target: String::from_utf8_lossy(&target).into_owned(),
        headers: kept,
        body: Vec::new(),
    }
}

/// `202 Accepted` for job `id`: `{"job": ID, "status": "queued"}` and its `Location`, with
/// Seawall's own field lines `added` (the rate-limit state, the request's id).
pub fn accepted(id: JobId, config: &seawall_config::Queue, added: &[u8]) -> Response<Bytes> {
    let id = id.to_string();
    let location = format!("{}{id}", config.jobs_path);
    let body = serde_json::json!({ "job": id, "status": "queued", "location": location });
    let mut response = Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = StatusCode::ACCEPTED;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, value);
    }
    crate::problem::append_field_lines(headers, added);
    response
}

/// What a job that could not be stored is answered: 503 `queue_full` with `Retry-After`.
pub fn refusal(error: &EnqueueError, config: &seawall_config::Queue) -> Refusal {
    let detail = match error {
        EnqueueError::Full(bound) => format!("the queue is full ({bound}); nothing was stored"),
        EnqueueError::NoTopic(topic) => {
            format!("topic {topic:?} is not configured any more; nothing was stored")
        }
        EnqueueError::Store(e) => format!("the job could not be stored ({e}); nothing was stored"),
    };
    let mut refusal = Refusal::new(Reason::QueueFull, detail);
    refusal.retry_after = Some(config.retry_after.as_secs().max(1) as u32);
    refusal
}

/// The topic that takes a request its upstream could not (`on_failure = "queue"`): the breaker
/// was open, no server was up or could be reached, or the gate had no room for it.
pub fn takes_over(
    forwarded: &crate::proxy::Forwarded,
    permit: &crate::policy::Permit,
) -> Option<usize> {
    let crate::proxy::Forwarded::Refused(refusal, _) = forwarded else { return None };
    let unreachable = matches!(
        refusal.reason,
        Reason::CircuitOpen
            | Reason::UpstreamUnavailable
            | Reason::UpstreamConnectFailed
            | Reason::UpstreamTlsFailed
            | Reason::BulkheadFull
            | Reason::Overloaded
            // An egress call that found no quota within max_wait, or no key.
            | Reason::EgressQuota
            | Reason::EgressNoKey
    );
    permit.queue_on_failure.filter(|_| unreachable)
}

/// The refusal when the gateway started without a queue (a reload added one).
pub fn unavailable() -> Refusal {
    let detail = "the queue is not running: [queue] was added after start, which takes a restart";
    let mut refusal = Refusal::new(Reason::QueueFull, detail);
    refusal.retry_after = Some(30);
    refusal
}

/// The answer to `GET {jobs_path}ID`: the job's status as JSON, or 404 `job_not_found`.
pub async fn job_status(
    queue: &Queue,
    id: JobId,
    added: &[u8],
) -> Result<Response<Bytes>, Refusal> {
    let not_found = || {
        let detail = "no job has this id (or its status is no longer kept)";
        Refusal::new(Reason::JobNotFound, detail)
    };
    let status = match queue.status(id).await {
        Ok(Some(status)) => status,
        Ok(None) => return Err(not_found()),
        Err(e) => {
            let mut refusal =
                Refusal::new(Reason::QueueFull, format!("the queue cannot be read now: {e}"));
            refusal.retry_after = Some(1);
            return Err(refusal);
        }
    };
    let mut response = Response::new(Bytes::from(status.to_json().to_string()));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    crate::problem::append_field_lines(headers, added);
    Ok(response)
}

/// Runs the deliveries of the topics this worker owns (topics are spread over the workers by a
/// hash of their names), starting a loop for each topic a reload adds, and forgets delivered
/// jobs after `keep_finished` (worker 0); ends when the gateway starts draining (attempts cut
/// short are delivered again: at least once).
pub async fn deliveries(
    worker: std::rc::Rc<crate::worker::Worker>,
    index: usize,
    workers: usize,
    mut phase: tokio::sync::watch::Receiver<crate::state::Phase>,
) {
    use crate::state::Phase;
    let Some(queue) = worker.shared.queue.clone() else { return };
    let courier = std::rc::Rc::new(courier::WorkerCourier { worker: std::rc::Rc::clone(&worker) });
    let running = std::rc::Rc::new(std::cell::RefCell::new(std::collections::HashSet::new()));
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = phase.changed() => if changed.is_err() { return },
        }
        if *phase.borrow() != Phase::Running {
            return;
        }
        let config = queue.config();
        for topic in &config.topics {
            let owner =
                seawall_core::hash::stable_hash(topic.name.as_bytes()) as usize % workers.max(1);
            if owner != index || running.borrow().contains(&topic.name) {
                continue;
            }
            running.borrow_mut().insert(topic.name.clone());
            let mut stop = phase.clone();
            let stopped = async move {
                let _ = stop.wait_for(|p| *p != Phase::Running).await;
            };
            let run = seawall_queue::delivery::run(
                std::sync::Arc::clone(&queue),
                topic.name.clone(),
                std::rc::Rc::clone(&courier),
                stopped,
            );
            let (running, name) = (std::rc::Rc::clone(&running), topic.name.clone());
            tokio::task::spawn_local(async move {
                run.await;
                running.borrow_mut().remove(&name);
            });
        }
        ticks += 1;
        if index == 0 && ticks.is_multiple_of(10) {
            let keep = config.keep_finished.as_millis() as u64;
            let before = seawall_queue::job::now_ms().saturating_sub(keep);
            if let Err(e) = queue.backend.expire(before).await {
                tracing::warn!(error = %e, "queue: delivered jobs could not be forgotten");
            }
        }
    }
}
