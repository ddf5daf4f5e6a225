//! The `redirect` action in the HTTP/1.1 engine: the answer is built by [`crate::edge::redirect`]
//! (the same for both engines) and written like Seawall's other answers; the connection stays
//! open when the whole request, body included, has been read.

use seawall_config::Redirect;

use super::session::{After, Session};
use crate::io::Transport;
use crate::policy::{Permit, Served};
use crate::problem::Reason;

impl<S: Transport> Session<S> {
    /// Answers the current request with its route's redirect.
    pub(super) async fn redirect(
        &mut self,
        redirect: &Redirect,
        permit: &Permit,
    ) -> (Served, After) {
        let (path, target) = (self.head.path(&self.buf), self.head.target(&self.buf));
        let response =
            crate::edge::redirect(redirect, permit.route(), path, target, &permit.fields);
        let whole = self.whole_request_len();
        let here = whole.is_some_and(|n| n <= self.buf.len() as u64);
        let close = self.head.close || !here || self.worker.drain.fired();
        let how = self.answer_kind(close);
        crate::problem::write_http1(&mut self.out, &response, how);
        if self.write_client_once().await.is_err() {
            return (Served::refused(Reason::ClientClosed, None), After::Close);
        }
        self.worker.shared.registry.redirects.add(1);
        let served = Served { status: redirect.status, upstream: None, reason: None };
        if close {
            return (served, if here { After::Close } else { After::Linger });
        }
        self.consume_request();
        (served, After::KeepOpen)
    }
}
