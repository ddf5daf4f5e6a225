//! The `queue` action on hyper's side (h2c, HTTP/2 over TLS, and the HTTP/1.x requests hyper
//! serves): the body is read whole (up to `queue.max_body`), the job stored, and the request
//! answered `202` once it is durable — or `queue_full`; the answers are built by
//! [`crate::queue`], the same for both engines.

use std::rc::Rc;

use http::Response;
use hyper::body::Incoming;

use super::body::StreamBody;
use super::{answer_with, refuse, ActiveGuard, ProxyBody};
use crate::policy::{body_limit, Account, Permit};
use crate::problem::Refusal;
use crate::proxy::{BodyError, Downstream as _};
use crate::request_id::RequestId;
use crate::timer::LazyTimer;
use crate::worker::Worker;

/// What the job keeps of the request's head.
pub(super) struct Queued<'a> {
    pub parts: &'a http::request::Parts,
    pub target: &'a [u8],
    pub request_id: Option<RequestId>,
    /// The topic's index in the configuration's queue.
    pub topic: usize,
}

/// Stores the request as a job and answers it.
pub(super) async fn enqueue(
    worker: &Rc<Worker>,
    request: Queued<'_>,
    body: Incoming,
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
    let mut job = crate::queue::job_request(
        &parts.method,
        request.target,
        &parts.headers,
        config,
        id_field,
        Vec::new(),
    );
    let limit = body_limit(&snapshot, permit.route()).min(config.max_body);
    let mut body = StreamBody::new(body, limit, server.body_timeout, 0);
    let mut timer = LazyTimer::new(tokio::time::Instant::now() + server.body_timeout);
    match body.read_to_end(&mut timer, limit).await {
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
            answer_with(crate::queue::accepted(id, config, &permit.fields), account, permit, active)
        }
        Err(error) => refuse(crate::queue::refusal(&error, config), account, None, active),
    }
}
