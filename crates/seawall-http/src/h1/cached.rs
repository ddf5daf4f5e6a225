//! A stored answer in the HTTP/1.1 engine: head and body leave in one `writev`, straight from
//! the cache's bytes, on the connection that asked (no hand-off, no copy of the body).

use std::io::IoSlice;

use super::session::{write_within, After, Session};
use crate::cache::{self, Http1Form};
use crate::io::Transport;
use crate::policy::Served;
use crate::problem::Reason;

impl<S: Transport> Session<S> {
    /// Answers the current request with `answer`, with Seawall's `added` field lines.
    /// `body_complete`: the request went towards the upstream first, and its body was (or was
    /// not) read to the end; `None`: it was answered at admission, its body (if any) unread.
    pub(super) async fn serve_stored(
        &mut self,
        answer: &cache::Served,
        added: &[u8],
        body_complete: Option<bool>,
    ) -> (Served, After) {
        let (read_all, here) = match body_complete {
            Some(complete) => (complete, true),
            None => {
                let here = self.whole_request_len().is_some_and(|n| n <= self.buf.len() as u64);
                (here, false)
            }
        };
        let close = self.head.close || !read_all || self.worker.drain.fired();
        let stored = &answer.stored;
        let form = Http1Form {
            not_modified: answer.not_modified,
            close,
            http10: self.head.version == http::Version::HTTP_10,
        };
        stored.write_http1_head(
            &mut self.out,
            stored.age(cache::now_secs()),
            answer.status,
            added,
            form,
        );
        let bodiless =
            answer.not_modified || self.head.method == http::Method::HEAD || stored.status == 204;
        let body: &[u8] = if bodiless { &[] } else { &stored.body };
        let send_timeout = self.worker.snapshot().config.server.send_timeout;
        let mut slices = [IoSlice::new(&self.out), IoSlice::new(body)];
        let sent = write_within(
            &mut self.stream,
            &mut slices,
            &mut self.timer,
            send_timeout,
            &self.worker,
        )
        .await;
        if sent.is_err() {
            return (Served::refused(Reason::ClientClosed, None), After::Close);
        }
        self.sent += (self.out.len() + body.len()) as u64;
        let status = if answer.not_modified { 304 } else { stored.status };
        let served = Served { status, upstream: None, reason: None };
        if close {
            return (served, if read_all { After::Close } else { After::Linger });
        }
        if !here {
            self.consume_request();
        }
        (served, After::KeepOpen)
    }
}
