//! A request body Seawall holds whole, with no client behind it: empty for a background cache
//! refresh, a job's stored body for a queued delivery. It can be sent again for every attempt and
//! its client never leaves.

use std::task::{Context, Poll};

use super::{BodyError, Downstream, Gone};
use crate::response::ResponseView;
use crate::timer::LazyTimer;

/// A whole body in memory.
pub struct StoredBody<'a> {
    body: &'a [u8],
    sent: usize,
}

impl<'a> StoredBody<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        StoredBody { body, sent: 0 }
    }
}

impl Downstream for StoredBody<'_> {
    fn ready(&mut self) -> Result<(&[u8], bool), BodyError> {
        Ok((&self.body[self.sent..], true))
    }

    fn consume(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.body.len());
    }

    fn is_complete(&self) -> bool {
        self.sent == self.body.len()
    }

    fn rewind(&mut self) -> bool {
        self.sent = 0;
        true
    }

    async fn fill(&mut self, _timer: &mut LazyTimer) -> Result<(), BodyError> {
        Ok(())
    }

    fn poll_gone(&mut self, _cx: &mut Context<'_>) -> Poll<Gone> {
        Poll::Pending
    }

    async fn interim(&mut self, _view: &ResponseView<'_>) -> Result<(), BodyError> {
        Ok(())
    }
}
