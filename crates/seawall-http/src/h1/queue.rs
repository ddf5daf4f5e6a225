//! The `queue` action in the HTTP/1.1 engine: what the job keeps of the head is taken first,
//! then the body is read whole (up to `queue.max_body`), the job stored, and the client answered
//! `202` once it is durable — or `queue_full`; the answers are built by [`crate::queue`], the same
//! for both engines.

use std::rc::Rc;

use super::exchange::ClientBody;
use super::session::{After, Session};
use crate::io::Transport;
use crate::policy::{body_limit, Permit, Served};
use crate::problem::Reason;

impl<S: Transport> Session<S> {
    /// Stores the current request as a job of `topic` and answers it.
    pub(super) async fn enqueue(&mut self, permit: &Permit, topic: usize) -> (Served, After) {
        let snapshot = Rc::clone(permit.snapshot());
        let queue = self.worker.shared.queue.clone();
        let (Some(queue), Some(config)) = (queue, snapshot.config.queue.as_ref()) else {
            let body_complete =
                self.whole_request_len().is_some_and(|n| n <= self.buf.len() as u64);
            return self
                .refuse_after_forward(&crate::queue::unavailable(), None, body_complete)
                .await;
        };
        let server = &snapshot.config.server;
        let id_field = self.request_id.map(|id| (server.request_id_header.clone(), id));
        let id_field = id_field.as_ref().map(|(name, id)| (name.as_str(), id.as_bytes()));
        let fields = self.head.fields(&self.buf);
        let target = self.head.target(&self.buf);
        let mut request = crate::queue::job_request(
            &self.head.method,
            target,
            &fields,
            config,
            id_field,
            Vec::new(),
        );
        let limit = body_limit(&snapshot, permit.route()).min(config.max_body);
        let mut body = ClientBody::new(
            &mut self.stream,
            &mut self.buf,
            &self.head,
            limit,
            server.body_timeout,
            server.send_timeout,
            &self.worker,
        );
        let read = crate::proxy::Downstream::read_to_end(&mut body, &mut self.timer, limit).await;
        let (pos, body_complete) = body.finish();
        let consumed = pos.min(self.buf.len());
        bytes::Buf::advance(&mut self.buf, consumed);
        match read {
            Ok(bytes) => request.body = bytes,
            Err(error) => return self.client_failed(error, None, body_complete).await,
        }
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
}
