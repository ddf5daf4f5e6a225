//! Bodies of the hyper engine.
//!
//! - [`StreamBody`]: the client's request body, read from hyper's stream as the proxy asks for
//!   it (the [`Downstream`] of an HTTP/2 request), each wait bounded by `body_timeout`, its size by
//!   the route's limit.
//! - [`ProxyBody`]: what the client receives: the upstream's body decoded into DATA frames (and
//!   its trailers into a trailers frame), or a small body Seawall generated. A client that stops
//!   taking the body (its flow-control window stays shut) for `send_timeout` has the upstream
//!   connection closed under it: a watchdog task notices, since hyper stops polling the body.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::Guards;
use crate::headers::{classify, Name};
use crate::io::within;
use crate::proxy::{BodyError, Downstream, Gone, UpstreamResponse};
use crate::response::ResponseView;
use crate::timer::LazyTimer;
use crate::worker::Worker;

/// The client's request body, streamed upstream as the proxy asks for it. What has been handed
/// out is copied aside while it stays within the replay cap, so a retry can send it again.
pub struct StreamBody {
    inner: Incoming,
    /// The current DATA frame, from `pos`.
    frame: Bytes,
    pos: usize,
    ended: bool,
    /// Bytes received so far.
    seen: u64,
    limit: u64,
    body_timeout: Duration,
    /// What was handed out so far, while it fits in `replay_cap`.
    kept: BytesMut,
    replay_cap: u64,
    /// More was handed out than could be kept: the body can no longer be sent again.
    streamed: bool,
    /// While a rewound body is sent again: how much of `kept` went out again.
    replay: Option<usize>,
}

impl StreamBody {
    /// Reads `inner`, allowing at most `limit` bytes and keeping up to `replay_cap` bytes to
    /// send again.
    pub fn new(inner: Incoming, limit: u64, body_timeout: Duration, replay_cap: u64) -> Self {
        let ended = inner.is_end_stream();
        StreamBody {
            inner,
            frame: Bytes::new(),
            pos: 0,
            ended,
            seen: 0,
            limit,
            body_timeout,
            kept: BytesMut::new(),
            replay_cap,
            streamed: false,
            replay: None,
        }
    }
}

impl Downstream for StreamBody {
    fn ready(&mut self) -> Result<(&[u8], bool), BodyError> {
        if let Some(at) = self.replay {
            // What was kept comes before whatever is left of the current frame.
            let last = self.ended && self.pos >= self.frame.len();
            return Ok((&self.kept[at..], last));
        }
        Ok((&self.frame[self.pos..], self.ended))
    }

    fn consume(&mut self, n: usize) {
        if let Some(at) = &mut self.replay {
            *at += n;
            if *at >= self.kept.len() {
                self.replay = None;
            }
            return;
        }
        if n > 0 && !self.streamed {
            if (self.kept.len() + n) as u64 <= self.replay_cap {
                self.kept.extend_from_slice(&self.frame[self.pos..self.pos + n]);
            } else {
                self.streamed = true;
                self.kept = BytesMut::new();
            }
        }
        self.pos += n;
    }

    fn is_complete(&self) -> bool {
        self.replay.is_none() && self.ended && self.pos >= self.frame.len()
    }

    fn rewind(&mut self) -> bool {
        if self.streamed {
            return false;
        }
        self.replay = (!self.kept.is_empty()).then_some(0);
        true
    }

    async fn fill(&mut self, timer: &mut LazyTimer) -> Result<(), BodyError> {
        timer.set(Instant::now() + self.body_timeout);
        loop {
            let next =
                within(timer, std::future::poll_fn(|cx| Pin::new(&mut self.inner).poll_frame(cx)))
                    .await;
            match next {
                None => return Err(BodyError::Timeout),
                Some(None) => {
                    self.ended = true;
                    self.frame = Bytes::new();
                    self.pos = 0;
                    return Ok(());
                }
                Some(Some(Err(_))) => return Err(BodyError::Gone),
                Some(Some(Ok(frame))) => {
                    // Request trailers are not forwarded: the upstream request is chunked
                    // without them.
                    let Ok(data) = frame.into_data() else { continue };
                    self.seen += data.len() as u64;
                    if self.seen > self.limit {
                        return Err(BodyError::TooLarge(self.limit));
                    }
                    self.ended = self.inner.is_end_stream();
                    self.frame = data;
                    self.pos = 0;
                    return Ok(());
                }
            }
        }
    }

    fn poll_gone(&mut self, _cx: &mut Context<'_>) -> Poll<Gone> {
        // hyper drops the request when its client resets the stream: nothing to watch here.
        Poll::Pending
    }

    async fn interim(&mut self, _view: &ResponseView<'_>) -> Result<(), BodyError> {
        // hyper cannot send interim answers on HTTP/2; they are dropped.
        Ok(())
    }
}

/// The body could not be relayed to its end.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Broken(String);

/// An upstream body on its way to an HTTP/2 client.
struct Streaming {
    /// Data decoded before the head went out, sent first.
    first: Option<Bytes>,
    timer: LazyTimer,
    /// Shared with the stall watchdog, which holds the upstream response too.
    watch: Rc<Stall>,
    worker: Rc<Worker>,
}

/// What a streaming body shares with its watchdog.
struct Stall {
    /// The upstream's answer; taken (and its connection closed) by the watchdog on a stall.
    response: RefCell<Option<Box<UpstreamResponse>>>,
    /// The request's hold on its route and connection; released by the watchdog on a stall, so
    /// a client that never takes its body holds no slot (hyper no longer polls such a body).
    guards: RefCell<Option<Guards>>,
    /// When the body last handed a frame to hyper and left the next move to it.
    waiting_since: Cell<Option<Instant>>,
    /// Set by the watchdog: the client stopped taking the body.
    stalled: Cell<bool>,
    /// The body was dropped: the watchdog ends.
    done: Cell<bool>,
    /// The watchdog's waker, to end it when the body is dropped.
    waker: RefCell<Option<Waker>>,
}

enum Kind {
    Upstream(Box<Streaming>),
    Full(Option<Bytes>),
}

/// A response body sent to an HTTP/2 client.
pub struct ProxyBody {
    kind: Kind,
    /// The request's hold on its route and connection, released with the body.
    _guards: Option<Guards>,
}

impl ProxyBody {
    /// A body generated by Seawall.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        ProxyBody { kind: Kind::Full((!bytes.is_empty()).then_some(bytes)), _guards: None }
    }

    /// Keeps `guards` until the body is done.
    pub(super) fn with_guards(mut self, guards: Guards) -> Self {
        self._guards = Some(guards);
        self
    }

    /// The upstream's body, decoded into frames.
    pub(super) fn upstream(
        response: Box<UpstreamResponse>,
        first: Bytes,
        timer: LazyTimer,
        send_timeout: Duration,
        worker: Rc<Worker>,
        guards: Guards,
    ) -> Self {
        let streams = !response.is_done();
        let watch = Rc::new(Stall {
            response: RefCell::new(Some(response)),
            guards: RefCell::new(Some(guards)),
            waiting_since: Cell::new(None),
            stalled: Cell::new(false),
            done: Cell::new(false),
            waker: RefCell::new(None),
        });
        if streams {
            tokio::task::spawn_local(watchdog(Rc::clone(&watch), send_timeout, Rc::clone(&worker)));
        }
        let first = (!first.is_empty()).then_some(first);
        let streaming = Streaming { first, timer, watch, worker };
        ProxyBody { kind: Kind::Upstream(Box::new(streaming)), _guards: None }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Kind::Upstream(s) = &self.kind {
            let watch = &s.watch;
            let unfinished = watch.response.borrow().as_ref().is_some_and(|r| !r.is_done());
            if unfinished && !watch.stalled.get() {
                // The client reset its stream (or left) while its answer was under way.
                s.worker.shared.registry.client_aborts.add(1);
            }
            watch.done.set(true);
            if let Some(waker) = watch.waker.borrow_mut().take() {
                waker.wake();
            }
        }
    }
}

/// Closes the upstream side of a body whose client took nothing for `send_timeout`.
async fn watchdog(watch: Rc<Stall>, send_timeout: Duration, worker: Rc<Worker>) {
    let mut timer = LazyTimer::new(Instant::now() + send_timeout);
    loop {
        let deadline = match watch.waiting_since.get() {
            Some(since) => since + send_timeout,
            None => Instant::now() + send_timeout,
        };
        timer.set(deadline);
        std::future::poll_fn(|cx| {
            if watch.done.get() {
                return Poll::Ready(());
            }
            *watch.waker.borrow_mut() = Some(cx.waker().clone());
            timer.poll_expired(cx)
        })
        .await;
        if watch.done.get() {
            return;
        }
        if watch.waiting_since.get().is_some_and(|since| since + send_timeout <= Instant::now()) {
            worker.shared.registry.client_send_timeouts.add(1);
            watch.stalled.set(true);
            // Dropping the response closes the upstream connection.
            drop(watch.response.borrow_mut().take());
            drop(watch.guards.borrow_mut().take());
            return;
        }
    }
}

impl Streaming {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Broken>>> {
        let watch = &self.watch;
        watch.waiting_since.set(None);
        if watch.stalled.get() {
            return Poll::Ready(Some(Err(Broken("the client stopped reading".into()))));
        }
        let mut slot = watch.response.borrow_mut();
        let Some(response) = slot.as_mut() else { return Poll::Ready(None) };
        if let Some(first) = self.first.take() {
            if !response.is_done() {
                watch.waiting_since.set(Some(Instant::now()));
            }
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        loop {
            let mut data = BytesMut::new();
            if let Err(fault) = response.decoded_ready(&mut |d| data.extend_from_slice(d)) {
                *slot = None;
                return Poll::Ready(Some(Err(Broken(format!("upstream {fault}")))));
            }
            if !data.is_empty() {
                if !response.is_done() {
                    watch.waiting_since.set(Some(Instant::now()));
                }
                return Poll::Ready(Some(Ok(Frame::data(data.freeze()))));
            }
            if response.is_done() {
                let trailers = trailer_map(response.trailers());
                if let Some(done) = slot.take() {
                    done.finish(seawall_core::clock::now_ms());
                }
                return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
            }
            if let Err(fault) = ready!(response.poll_fill(cx, &mut self.timer)) {
                *slot = None;
                return Poll::Ready(Some(Err(Broken(format!("upstream {fault}")))));
            }
        }
    }
}

/// The upstream's trailer section as HTTP/2 trailers (framing and hop-by-hop fields dropped).
fn trailer_map(section: &[u8]) -> Option<HeaderMap> {
    if section.is_empty() {
        return None;
    }
    let mut block = section.to_vec();
    block.extend_from_slice(b"\r\n");
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let Ok(httparse::Status::Complete((_, parsed))) = httparse::parse_headers(&block, &mut fields)
    else {
        return None;
    };
    let mut map = HeaderMap::new();
    for field in parsed {
        if classify(field.name.as_bytes()) != Name::Other {
            continue;
        }
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(field.name.as_bytes()), HeaderValue::from_bytes(field.value))
        {
            map.append(name, value);
        }
    }
    (!map.is_empty()).then_some(map)
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Broken;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Broken>>> {
        match &mut self.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(streaming) => streaming.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(_) => SizeHint::default(),
        }
    }
}
