//! The `redirect` action in the HTTP/1.1 engine: the answer is built by [`crate::edge::redirect`]
//! (the same for both engines) and written like Seawall's other answers; the connection stays
//! open when the whole request, body included, has been read.

use seawall_config::Redirect;

use super::session::{After, Session};
use crate::io::Transport;
use crate::policy::{Permit, Served};

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
        let (served, after) = self.answer_whole(&response).await;
        if served.reason.is_none() {
            self.worker.shared.registry.redirects.add(1);
        }
        (served, after)
    }
}
