//! `[queue]`, `[queue.topics.NAME]`, and the routes that queue (`queue = { topic, deliver_to }`,
//! `on_failure = "queue"`): the topics are gathered from both before the routes are validated, so
//! that a route refers to its topic by index and two routes cannot send one topic to two places.

use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::{defaults, is_protocol_field, protections, upstream_index, valid_header_name, Ctx};
use crate::model::{Egress, Queue, QueueBackend, Topic};
use crate::raw::{RawConfig, RawQueue, RawRoute, RawTopic, Text};
use crate::recover::key_span;

/// The fields a job keeps when `headers` is not written: what describes the body and the
/// client's wishes, not its credentials (add `authorization` knowingly: it is stored on disk).
pub const DEFAULT_HEADERS: [&str; 6] = [
    "content-type",
    "content-encoding",
    "content-language",
    "accept",
    "accept-language",
    "user-agent",
];

/// A topic as the routes and tables name it, before it is checked.
struct Named<'a> {
    name: String,
    table: Option<&'a RawTopic>,
    /// The destination, and the key that named it (for a conflict's message).
    deliver_to: Option<(Text, String)>,
    /// Where the topic was first named, and its key.
    span: std::ops::Range<usize>,
    named_at: String,
    /// An egress route's `on_failure = "queue"`: the route's name and its group's index.
    egress: Option<(String, usize)>,
}

/// What a route says about queueing.
pub(super) enum RouteQueue<'a> {
    /// The route does not queue.
    None,
    /// The route's action: `queue = { ... }` without an upstream.
    Action { topic: String, raw: &'a Spanned<crate::raw::RawRouteQueue> },
    /// `on_failure = "queue"` on a proxy route: the topic (the route's name unless written).
    OnFailure { topic: String },
}

/// What route `i` says about queueing; errors for an `on_failure` that is not `"queue"`.
pub(super) fn route_queue<'a>(cx: &mut Ctx<'_>, i: usize, r: &'a RawRoute) -> RouteQueue<'a> {
    let key = |k: &str| format!("routes[{i}].{k}");
    let route_name = r.name.as_ref().map_or_else(|| format!("route{i}"), |n| n.get_ref().clone());
    let on_failure = match &r.on_failure {
        None => false,
        Some(v) if v.get_ref() == "queue" => true,
        Some(v) if v.get_ref() == "refuse" => false,
        Some(v) => {
            let message = format!("expected \"queue\" or \"refuse\", got {:?}", v.get_ref());
            cx.error(v.span(), &key("on_failure"), message);
            false
        }
    };
    let topic_of = |q: &Spanned<crate::raw::RawRouteQueue>| {
        q.get_ref().topic.as_ref().map(|t| t.get_ref().clone())
    };
    let has_destination = r.upstream.is_some() || r.egress.is_some();
    match (&r.queue, has_destination, on_failure) {
        (None, _, false) => RouteQueue::None,
        (Some(q), false, false) => {
            let Some(topic) = topic_of(q) else {
                cx.error(
                    q.span(),
                    &key("queue.topic"),
                    "a queue needs a topic: { topic = \"emails\", deliver_to = \"mailer\" }",
                );
                return RouteQueue::None;
            };
            RouteQueue::Action { topic, raw: q }
        }
        (Some(q), true, false) => {
            let message = "set upstream or queue, not both (or on_failure = \"queue\" to queue \
                           what the upstream cannot take)";
            cx.error(q.span(), &key("queue"), message);
            RouteQueue::None
        }
        (q, true, true) => {
            let to = q.as_ref().and_then(|q| q.get_ref().deliver_to.as_ref());
            if let (Some(to), Some(up)) = (to, &r.upstream) {
                if to.get_ref() != up.get_ref() {
                    let message = format!(
                        "a route with on_failure = \"queue\" delivers to its own upstream ({:?}); \
                         leave deliver_to out",
                        up.get_ref()
                    );
                    cx.error(to.span(), &key("queue.deliver_to"), message);
                }
            }
            if let (None, Some(e)) = (&r.name, &r.egress) {
                // Its jobs find their route by name when delivered: not by its place in the file.
                let message = "an egress route with on_failure = \"queue\" needs a name (its \
                               queued jobs are delivered through the route of that name)";
                cx.error(e.span(), &key("name"), message);
            }
            if let (Some(q), Some(_)) = (q, &r.egress) {
                if q.get_ref().deliver_to.is_some() {
                    let message = "an egress route's jobs go through its own group; leave \
                                   deliver_to out";
                    cx.error(q.span(), &key("queue.deliver_to"), message);
                }
            }
            let topic = q.as_ref().and_then(topic_of).unwrap_or(route_name);
            RouteQueue::OnFailure { topic }
        }
        (_, false, true) => {
            let span = r.on_failure.as_ref().map_or(0..0, |v| v.span());
            cx.error(
                span,
                &key("on_failure"),
                "on_failure = \"queue\" applies to routes with an upstream or an egress group",
            );
            RouteQueue::None
        }
    }
}

/// The queue, when `[queue]` is written or a route queues; `upstreams` are the groups' names.
pub(super) fn queue(
    cx: &mut Ctx<'_>,
    raw: &RawConfig,
    upstreams: &[String],
    rate_limits: &[crate::model::RateLimit],
    egress: &[Egress],
) -> Option<Queue> {
    let mut named: Vec<Named<'_>> = Vec::new();
    let table = raw.queue.as_ref();
    for (name, t) in table.map(|q| &q.topics).into_iter().flatten() {
        if !valid_topic(name) {
            let span = key_span(cx.source, &["queue", "topics", name]).unwrap_or(0..0);
            cx.error(
                span,
                &format!("queue.topics.{name}"),
                "a topic's name is letters, digits, '-', '_' and '.' (at most 64)",
            );
        }
        let deliver_to =
            t.deliver_to.clone().map(|d| (d, format!("queue.topics.{name}.deliver_to")));
        let named_at = format!("queue.topics.{name}");
        named.push(Named {
            name: name.clone(),
            table: Some(t),
            deliver_to,
            span: key_span(cx.source, &["queue", "topics", name]).unwrap_or(0..0),
            named_at,
            egress: None,
        });
    }
    for (i, r) in raw.routes.iter().enumerate() {
        let r = r.get_ref();
        // Errors are reported when the route itself is validated.
        let mut quiet =
            Ctx { file: cx.file, source: cx.source, errors: Vec::new(), warnings: Vec::new() };
        let route_name =
            r.name.as_ref().map_or_else(|| format!("route{i}"), |n| n.get_ref().clone());
        // An egress route's group (an unknown one is the route's own error).
        let via = r.egress.as_ref().and_then(|g| {
            let group = egress.iter().position(|e| e.name == *g.get_ref())?;
            Some((route_name, group))
        });
        let (topic, deliver_to) = match route_queue(&mut quiet, i, r) {
            RouteQueue::None => continue,
            RouteQueue::Action { topic, raw } => {
                let to = raw.get_ref().deliver_to.clone();
                (topic, to.map(|d| (d, format!("routes[{i}].queue.deliver_to"))))
            }
            RouteQueue::OnFailure { topic } => {
                let to = r.upstream.clone();
                (topic, to.map(|d| (d, format!("routes[{i}].upstream"))))
            }
        };
        let via = via.filter(|_| r.on_failure.is_some());
        if !valid_topic(&topic) {
            let span = r.queue.as_ref().map_or(0..0, |q| q.span());
            cx.error(
                span,
                &format!("routes[{i}].queue.topic"),
                format!(
                    "{topic:?} is not a topic name: letters, digits, '-', '_' and '.' (at most 64)"
                ),
            );
        }
        match named.iter_mut().find(|n| n.name == topic) {
            None => {
                let span = r
                    .queue
                    .as_ref()
                    .map_or_else(|| r.on_failure.as_ref().map_or(0..0, |v| v.span()), |q| q.span());
                let named_at = format!("routes[{i}].queue");
                let egress = via;
                named.push(Named { name: topic, table: None, deliver_to, span, named_at, egress });
            }
            Some(known) if via.is_some() || known.egress.is_some() => {
                let span = r.on_failure.as_ref().map_or(0..0, |v| v.span());
                let message = format!(
                    "topic {:?} is named twice: an egress route's on_failure topic is its own \
                     (name another with queue = {{ topic = \"...\" }})",
                    known.name
                );
                cx.error(span, &format!("routes[{i}].on_failure"), message);
            }
            Some(known) => match (&known.deliver_to, deliver_to) {
                (None, d) => known.deliver_to = d,
                (Some((have, where_)), Some((want, key))) if have.get_ref() != want.get_ref() => {
                    let message = format!(
                        "topic {:?} is delivered to {:?} by {where_}: one topic, one destination \
                         (name another topic)",
                        known.name,
                        have.get_ref()
                    );
                    cx.error(want.span(), &key, message);
                }
                _ => {}
            },
        }
    }
    if table.is_none() && named.is_empty() {
        return None;
    }
    let default = RawQueue::default();
    let q = table.unwrap_or(&default);
    let backend = backend(cx, q);
    let jobs_path = match &q.jobs_path {
        None => "/jobs/".to_string(),
        Some(p) if p.get_ref().starts_with('/') && !p.get_ref().contains(['?', '#']) => {
            let mut path = p.get_ref().clone();
            if !path.ends_with('/') {
                path.push('/');
            }
            path
        }
        Some(p) => {
            let message = format!(
                "expected a path starting with '/', like \"/jobs/\", got {:?}",
                p.get_ref()
            );
            cx.error(p.span(), "queue.jobs_path", message);
            "/jobs/".to_string()
        }
    };
    let jobs_rate_limit = q.jobs_rate_limit.as_ref().and_then(|l| {
        let found = rate_limits.iter().position(|x| x.name == *l.get_ref());
        if found.is_none() {
            let message = format!("no rate limit named {:?} under [rate_limits]", l.get_ref());
            cx.error(l.span(), "queue.jobs_rate_limit", message);
        }
        found
    });
    let max_jobs =
        cx.count(q.max_jobs.as_ref(), "queue.max_jobs", defaults::QUEUE_MAX_JOBS, 1, i64::MAX);
    let max_bytes = cx.size(q.max_bytes.as_ref(), "queue.max_bytes", defaults::QUEUE_MAX_BYTES);
    let max_body = cx.size(q.max_body.as_ref(), "queue.max_body", defaults::QUEUE_MAX_BODY);
    if max_body > max_bytes {
        let span = q.max_body.as_ref().map_or(0..0, |s| s.span());
        cx.error(span, "queue.max_body", "must not exceed queue.max_bytes");
    }
    let headers = match &q.headers {
        None => DEFAULT_HEADERS.iter().map(|h| (*h).to_string()).collect(),
        Some(list) => {
            let mut headers = Vec::new();
            for (i, h) in list.iter().enumerate() {
                let name = h.get_ref().to_ascii_lowercase();
                let key = format!("queue.headers[{i}]");
                if !valid_header_name(&name) {
                    cx.error(
                        h.span(),
                        &key,
                        format!("{:?} is not a valid header name", h.get_ref()),
                    );
                } else if is_protocol_field(&name) || name == "idempotency-key" {
                    let message = format!(
                        "{name} is written by Seawall when the job is delivered; it cannot be kept"
                    );
                    cx.error(h.span(), &key, message);
                } else {
                    headers.push(name);
                }
            }
            headers
        }
    };
    let keep_finished =
        cx.duration(q.keep_finished.as_ref(), "queue.keep_finished", defaults::QUEUE_KEEP_FINISHED);
    let lease = cx.duration(q.lease.as_ref(), "queue.lease", defaults::QUEUE_LEASE);
    let retry_after =
        cx.duration(q.retry_after.as_ref(), "queue.retry_after", defaults::QUEUE_RETRY_AFTER);
    let commit_delay = cx.duration_or_zero(q.commit_delay.as_ref(), "queue.commit_delay");
    if commit_delay > Duration::from_millis(100) {
        let span = q.commit_delay.as_ref().map_or(0..0, |s| s.span());
        cx.error(span, "queue.commit_delay", "at most 100ms: every enqueue waits for it");
    }
    named.sort_by(|a, b| a.name.cmp(&b.name));
    let mut topics = Vec::new();
    for n in &named {
        if let Some(t) = topic(cx, n, (upstreams, egress), (max_jobs, max_bytes, max_body)) {
            topics.push(t);
        }
    }
    Some(Queue {
        backend,
        jobs_path,
        jobs_rate_limit,
        max_jobs,
        max_bytes,
        max_body,
        headers,
        keep_finished,
        lease,
        retry_after,
        commit_delay,
        topics,
    })
}

/// With Redis, a job an instance holds longer than `queue.lease` is taken over by another: a
/// warning for each topic whose delivery may take longer (its destination's attempts, and an
/// egress route's wait for quota), since the job would then be delivered twice.
pub(super) fn lease_warnings(
    cx: &mut Ctx<'_>,
    queue: &Queue,
    upstreams: &[crate::model::Upstream],
    egress: &[Egress],
) {
    if !matches!(queue.backend, QueueBackend::Redis { .. }) {
        return;
    }
    for t in &queue.topics {
        let Some(u) = upstreams.get(t.deliver_to) else { continue };
        let attempts = (u.connect_timeout + u.timeout) * u.retry.attempts;
        let mut longest = u.total_timeout.map_or(attempts, |total| total.min(attempts));
        if t.via_route.is_some() {
            // An egress route's delivery may wait for quota, then try every provider.
            let group =
                egress.iter().find(|g| g.providers.iter().any(|p| p.upstream == t.deliver_to));
            if let Some(g) = group {
                longest = g.max_wait + attempts * (g.providers.len() as u32) * (g.retries + 1);
            }
        }
        if longest >= queue.lease {
            let span = key_span(cx.source, &["queue", "lease"])
                .or_else(|| key_span(cx.source, &["queue"]))
                .unwrap_or(0..0);
            let message = format!(
                "a delivery of topic {:?} may take {longest:?} (its destination's timeouts), not \
                 less than the lease ({:?}): another instance would take the job over and \
                 deliver it too; raise queue.lease",
                t.name, queue.lease
            );
            cx.warn(span, "queue.lease", message);
        }
    }
}

fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn backend(cx: &mut Ctx<'_>, q: &RawQueue) -> QueueBackend {
    let kind = q.backend.as_ref().map_or("embedded", |b| b.get_ref().as_str());
    match kind {
        "embedded" => {
            if let Some(r) = &q.redis {
                cx.error(r.span(), "queue.redis", "applies to backend = \"redis\"");
            }
            let written =
                q.data_dir.as_ref().map_or(defaults::QUEUE_DATA_DIR, |d| d.get_ref().as_str());
            if written.is_empty() {
                let span = q.data_dir.as_ref().map_or(0..0, |d| d.span());
                cx.error(span, "queue.data_dir", "expected a folder");
            }
            let written = Path::new(written);
            let data_dir = match Path::new(cx.file).parent() {
                Some(dir) if written.is_relative() => dir.join(written),
                _ => written.to_path_buf(),
            };
            QueueBackend::Embedded { data_dir }
        }
        "redis" => {
            if let Some(d) = &q.data_dir {
                cx.error(d.span(), "queue.data_dir", "applies to backend = \"embedded\"");
            }
            let url = match &q.redis {
                Some(u)
                    if u.get_ref().starts_with("redis://")
                        || u.get_ref().starts_with("rediss://") =>
                {
                    u.get_ref().clone()
                }
                Some(u) => {
                    cx.error(
                        u.span(),
                        "queue.redis",
                        format!(
                            "expected a URL like \"redis://127.0.0.1:6379\", got {:?}",
                            u.get_ref()
                        ),
                    );
                    String::new()
                }
                None => {
                    let span = q.backend.as_ref().map_or(0..0, |b| b.span());
                    cx.error(
                        span,
                        "queue.redis",
                        "backend = \"redis\" needs redis = \"redis://host:port\"",
                    );
                    String::new()
                }
            };
            let prefix = q
                .redis_prefix
                .as_ref()
                .map_or(defaults::QUEUE_REDIS_PREFIX, |p| p.get_ref().as_str())
                .to_string();
            QueueBackend::Redis { url, prefix }
        }
        other => {
            let span = q.backend.as_ref().map_or(0..0, |b| b.span());
            cx.error(
                span,
                "queue.backend",
                format!("expected \"embedded\" or \"redis\", got {other:?}"),
            );
            QueueBackend::Embedded { data_dir: defaults::QUEUE_DATA_DIR.into() }
        }
    }
}

fn topic(
    cx: &mut Ctx<'_>,
    n: &Named<'_>,
    (upstreams, egress): (&[String], &[Egress]),
    (jobs, bytes, max_body): (u64, u64, u64),
) -> Option<Topic> {
    let key = |k: &str| format!("queue.topics.{}.{k}", n.name);
    let default = RawTopic::default();
    let t = n.table.unwrap_or(&default);
    let deliver_to = match (&n.deliver_to, &n.egress) {
        (Some((text, _)), Some(_)) => {
            let message = "an egress route's jobs go through its own group; leave deliver_to out";
            cx.error(text.span(), &key("deliver_to"), message);
            return None;
        }
        // A group without providers has errors of its own.
        (None, Some((_, group))) => egress[*group].providers.first()?.upstream,
        (Some((text, key)), None) => upstream_index(cx, text, key, upstreams)?,
        (None, None) => {
            let message =
                format!("topic {:?} needs deliver_to: the upstream its jobs go to", n.name);
            cx.error(n.span.clone(), &format!("{}.deliver_to", n.named_at), message);
            return None;
        }
    };
    let max_jobs = cx.count(t.max_jobs.as_ref(), &key("max_jobs"), jobs, 1, i64::MAX);
    let max_bytes = cx.size(t.max_bytes.as_ref(), &key("max_bytes"), bytes);
    if let Some(written) = t.max_bytes.as_ref().filter(|_| max_bytes < max_body) {
        let message = "must be at least queue.max_body (a job that size could never be stored)";
        cx.error(written.span(), &key("max_bytes"), message);
    }
    let concurrency = cx.count(
        t.concurrency.as_ref(),
        &key("concurrency"),
        defaults::QUEUE_CONCURRENCY,
        1,
        10_000,
    ) as u32;
    let rate =
        t.rate.as_ref().map(|r| protections::quota(cx, r.get_ref(), r.span(), &key("rate"), None));
    let max_attempts = cx.count(
        t.max_attempts.as_ref(),
        &key("max_attempts"),
        defaults::QUEUE_MAX_ATTEMPTS,
        1,
        1_000,
    ) as u32;
    let backoff = cx.duration(t.backoff.as_ref(), &key("backoff"), defaults::QUEUE_BACKOFF);
    let max_backoff =
        cx.duration(t.max_backoff.as_ref(), &key("max_backoff"), defaults::QUEUE_MAX_BACKOFF);
    if backoff > max_backoff {
        let span = t.backoff.as_ref().map_or(0..0, |b| b.span());
        cx.error(span, &key("backoff"), "must not exceed max_backoff");
    }
    Some(Topic {
        name: n.name.clone(),
        deliver_to,
        via_route: n.egress.as_ref().map(|(route, _)| route.clone()),
        max_jobs,
        max_bytes,
        concurrency,
        rate,
        max_attempts,
        backoff,
        max_backoff,
        paused: t.paused.unwrap_or(false),
    })
}
