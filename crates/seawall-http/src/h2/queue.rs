//! The queue on hyper's side (h2c, HTTP/2 over TLS, and the HTTP/1.x requests hyper serves): a
//! `queue` route's request, or a write its upstream cannot take (`on_failure = "queue"`), is
//! read whole (up to `queue.max_body`), stored, and answered `202` once it is durable — or
//! `queue_full`; and `GET {jobs_path}ID`. The answers are built by [`crate::queue`], the same for
//! both engines.

use std::rc::Rc;

use http::Response;
use seawall_queue::JobId;

use super::body::StreamBody;
use super::{answer_with, refuse, ActiveGuard, ProxyBody};
use crate::policy::{self, Account, Permit};
use crate::problem::Refusal;
use crate::proxy::{BodyError, Downstream as _};
use crate::request_id::RequestId;
use crate::timer::LazyTimer;
use crate::worker::Worker;

/// What the job keeps of the request's head.
pub(super) struct Queued<'a> {
    pub parts: &'a http::request::Parts,
    pub target: &'a [u8],
    /// The request's host (`:authority` or `Host`).
    pub host: Option<&'a [u8]>,
    pub request_id: Option<RequestId>,
    /// The topic's index in the configuration's queue.
    pub topic: usize,
}

/// The largest body a job of this request may keep.
pub(super) fn body_limit(permit: &Permit) -> u64 {
    let snapshot = permit.snapshot();
    let most = snapshot.config.queue.as_ref().map_or(0, |q| q.max_body);
    policy::body_limit(snapshot, permit.route()).min(most)
}

/// Stores the request, with the body `down` holds, as a job and answers it.
pub(super) async fn enqueue(
    worker: &Rc<Worker>,
    request: Queued<'_>,
    mut down: StreamBody,
    account: Account,
    permit: Permit,
    active: ActiveGuard,
) -> Response<ProxyBody> {
    let snapshot = Rc::clone(permit.snapshot());
    let (Some(queue), Some(config)) = (worker.shared.queue.clone(), snapshot.config.queue.as_ref())
    else {
        return refuse(crate::queue::unavailable(), account, None, active);
    };
    let server = &snapshot.config.server;
    let id_field =
        request.request_id.as_ref().map(|id| (server.request_id_header.as_str(), id.as_bytes()));
    let parts = request.parts;
    let head = crate::queue::JobHead {
        method: &parts.method,
        path: parts.uri.path().as_bytes(),
        target: request.target,
        headers: &parts.headers,
        host: request.host,
        route: permit.route(),
        request_id: id_field,
    };
    let mut job = crate::queue::job_request(head, config);
    let limit = body_limit(&permit);
    let mut timer = LazyTimer::new(tokio::time::Instant::now() + server.body_timeout);
    match down.read_to_end(&mut timer, limit).await {
        Ok(bytes) => job.body = bytes,
        Err(error) => {
            if error == BodyError::Timeout {
                worker.shared.registry.client_body_timeouts.add(1);
            }
            return refuse(Refusal::new(error.reason(), error.detail()), account, None, active);
        }
    }
    let name = &config.topics[request.topic].name;
    match queue.enqueue(name, job).await {
        Ok(id) => {
            let answer = crate::queue::accepted(id, config, &permit.fields);
            answer_with(answer, account, Some(permit), active)
        }
        Err(error) => refuse(crate::queue::refusal(&error, config), account, None, active),
    }
}

/// Answers `GET {jobs_path}ID`.
pub(super) async fn job_status(
    worker: &Rc<Worker>,
    id: JobId,
    fields: &[u8],
    account: Account,
    active: ActiveGuard,
) -> Response<ProxyBody> {
    let Some(queue) = worker.shared.queue.clone() else {
        return refuse(crate::queue::unavailable(), account, None, active);
    };
    match crate::queue::job_status(&queue, id, fields).await {
        Ok(answer) => answer_with(answer, account, None, active),
        Err(refusal) => refuse(refusal, account, None, active),
    }
}
