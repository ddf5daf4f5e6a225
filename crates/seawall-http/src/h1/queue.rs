//! The queue in the HTTP/1.1 engine: a `queue` route's request (or a write its upstream cannot
//! take, with `on_failure = "queue"`) is stored as a job — what the job keeps of the head is taken
//! first, then the body is read whole (up to `queue.max_body`) — and answered `202` once it is
//! durable, or `queue_full`; and `GET {jobs_path}ID`. The answers are built by [`crate::queue`],
//! the same for both engines.

use std::rc::Rc;

use seawall_queue::{JobId, Request};

use super::exchange::ClientBody;
use super::session::{After, Session};
use crate::io::Transport;
use crate::policy::{body_limit, Permit, Served};
use crate::problem::Reason;
use crate::proxy::{BodyError, Downstream as _};

impl<S: Transport> Session<S> {
    /// What a job of the current request keeps of its head (`None`: the gateway has no queue).
    pub(super) fn job_head(&self, permit: &Permit) -> Option<Request> {
        let snapshot = permit.snapshot();
        let config = snapshot.config.queue.as_ref()?;
        let server = &snapshot.config.server;
        let id_field =
            self.request_id.as_ref().map(|id| (server.request_id_header.as_str(), id.as_bytes()));
        let fields = self.head.fields(&self.buf);
        let head = crate::queue::JobHead {
            method: &self.head.method,
            path: self.head.path(&self.buf),
            target: self.head.target(&self.buf),
            headers: &fields,
            host: self.head.host(&self.buf),
            route: permit.route(),
            request_id: id_field,
        };
        Some(crate::queue::job_request(head, config))
    }

    /// The largest body a job of this request may keep.
    pub(super) fn job_body_limit(permit: &Permit) -> u64 {
        let snapshot = permit.snapshot();
        let most = snapshot.config.queue.as_ref().map_or(0, |q| q.max_body);
        body_limit(snapshot, permit.route()).min(most)
    }

    /// Stores the current request as a job of `topic` and answers it.
    pub(super) async fn enqueue(&mut self, permit: &Permit, topic: usize) -> (Served, After) {
        let snapshot = Rc::clone(permit.snapshot());
        let Some(request) = self.job_head(permit) else {
            let body_complete =
                self.whole_request_len().is_some_and(|n| n <= self.buf.len() as u64);
            return self
                .refuse_after_forward(&crate::queue::unavailable(), None, body_complete)
                .await;
        };
        let server = &snapshot.config.server;
        let limit = Self::job_body_limit(permit);
        let mut body = ClientBody::new(
            &mut self.stream,
            &mut self.buf,
            &self.head,
            limit,
            server.body_timeout,
            server.send_timeout,
            &self.worker,
        );
        let read = body.read_to_end(&mut self.timer, limit).await;
        let (pos, body_complete) = body.finish();
        let consumed = pos.min(self.buf.len());
        bytes::Buf::advance(&mut self.buf, consumed);
        self.store_job(permit, topic, request, read, body_complete).await
    }

    /// Stores `request` with the body `read` (the client's whole body, or how reading it failed)
    /// as a job of `topic`, and answers the client; the client's bytes are consumed.
    pub(super) async fn store_job(
        &mut self,
        permit: &Permit,
        topic: usize,
        mut request: Request,
        read: Result<Vec<u8>, BodyError>,
        body_complete: bool,
    ) -> (Served, After) {
        match read {
            Ok(bytes) => request.body = bytes,
            Err(error) => return self.client_failed(error, None, body_complete).await,
        }
        let snapshot = Rc::clone(permit.snapshot());
        let (Some(queue), Some(config)) =
            (self.worker.shared.queue.clone(), snapshot.config.queue.as_ref())
        else {
            return self
                .refuse_after_forward(&crate::queue::unavailable(), None, body_complete)
                .await;
        };
        let name = &config.topics[topic].name;
        let id = match queue.enqueue(name, request).await {
            Ok(id) => id,
            Err(error) => {
                let refusal = crate::queue::refusal(&error, config);
                return self.refuse_after_forward(&refusal, None, body_complete).await;
            }
        };
        let response = crate::queue::accepted(id, config, &permit.fields);
        let close = self.head.close || self.worker.drain.fired();
        let how = self.answer_kind(close);
        crate::problem::write_http1(&mut self.out, &response, how);
        if self.write_client_once().await.is_err() {
            // Stored all the same: the job is delivered even though its client did not hear.
            return (Served::refused(Reason::ClientClosed, None), After::Close);
        }
        let served = Served { status: 202, upstream: None, reason: None };
        (served, if close { After::Close } else { After::KeepOpen })
    }

    /// Answers `GET {jobs_path}ID`.
    pub(super) async fn job_status(&mut self, id: JobId, fields: &[u8]) -> (Served, After) {
        let Some(queue) = self.worker.shared.queue.clone() else {
            return self.refuse_and_count(&crate::queue::unavailable()).await;
        };
        match crate::queue::job_status(&queue, id, fields).await {
            Ok(response) => self.answer_whole(&response).await,
            Err(refusal) => self.refuse_and_count(&refusal).await,
        }
    }
}
