//! One client connection served by the HTTP/1.1 engine: read a head (header timeout, 408), route
//! it, answer it (proxy or refusal), and go on with the next; park when idle, hand the connection
//! to hyper when a request is not for this engine.

use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use seawall_config::RouteAction;
use seawall_core::clock::ms_at;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::head::{write_response, Parsed, RequestHead};
use crate::pipeline::{account, Served, Worker};
use crate::problem::{header_timeout_http1, problem_with, Reason};
use crate::router;
use crate::server::io::PARK_AFTER;
use crate::timer::LazyTimer;

/// Initial size of a connection's read buffer; it grows up to `server.max_header_size` for a
/// large head.
const READ_BUFFER: usize = 4096;

/// How a session ended.
pub enum End {
    /// Idle: the socket stays open without buffers until the client sends again.
    Parked(TcpStream),
    /// The connection is done (client closed, timeout, error, `Connection: close`, draining).
    Closed,
    /// hyper serves the rest, starting with these bytes already read.
    HandOff(TcpStream, Bytes),
}

/// A client connection's state while it has a session.
pub(super) struct Session {
    pub(super) worker: Rc<Worker>,
    pub(super) stream: TcpStream,
    pub(super) peer: SocketAddr,
    /// What the client sent and this engine has not consumed yet.
    pub(super) buf: BytesMut,
    pub(super) head: RequestHead,
    /// A head being written: the upstream request, then the client's response.
    pub(super) out: Vec<u8>,
    /// The one timer of the connection: idle, header or upstream deadline, whichever applies.
    pub(super) timer: LazyTimer,
    /// The last clock reading, reused for deadlines and balancing where a few milliseconds do
    /// not matter (each reading costs a system-call-like trip on this kind of VM).
    pub(super) clock: Instant,
    /// `clock` in [`seawall_core::clock`] milliseconds.
    pub(super) clock_ms: u64,
    /// When the response head went out, if its body took further reads (else the end of the
    /// exchange is as good).
    pub(super) head_sent: Option<Instant>,
}

/// What reading the next head came to.
enum Next {
    Request,
    Park,
    Close,
    HandOff,
}

/// Serves requests on `stream` until it parks, closes or is handed to hyper. The client has
/// already sent bytes.
pub async fn serve(worker: Rc<Worker>, stream: TcpStream, peer: SocketAddr) -> End {
    let clock = Instant::now();
    let mut session = Session {
        worker,
        stream,
        peer,
        buf: BytesMut::with_capacity(READ_BUFFER),
        head: RequestHead::default(),
        out: Vec::with_capacity(1024),
        timer: LazyTimer::new(clock + Duration::from_secs(3600)),
        clock,
        clock_ms: ms_at(clock.into_std()),
        head_sent: None,
    };
    loop {
        match session.next_head().await {
            Next::Request => {}
            Next::Park => return End::Parked(session.stream),
            Next::Close => return End::Closed,
            Next::HandOff => {
                session.worker.shared.registry.handoffs.add(1);
                return End::HandOff(session.stream, session.buf.freeze());
            }
        }
        let draining = session.worker.drain.fired();
        match session.answer(draining).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return End::Closed,
        }
    }
}

impl Session {
    /// Waits for the next request head: between requests under the keep-alive (park) timer, then
    /// within the header timeout once its first bytes are in.
    async fn next_head(&mut self) -> Next {
        let worker = Rc::clone(&self.worker);
        let snapshot = worker.snapshot();
        let server = &snapshot.config.server;
        let registry = &worker.shared.registry;
        if self.buf.is_empty() {
            let park = PARK_AFTER < server.keepalive_timeout;
            self.timer.set(self.clock + server.keepalive_timeout.min(PARK_AFTER));
            let read = tokio::select! {
                biased;
                r = read_within(&mut self.stream, &mut self.buf, &mut self.timer) => r,
                () = worker.drain.wait() => return Next::Close,
            };
            match read {
                None if park => {
                    registry.parks.add(1);
                    return Next::Park;
                }
                None => {
                    registry.idle_timeouts.add(1);
                    return Next::Close;
                }
                Some(Ok(0) | Err(_)) => return Next::Close,
                Some(Ok(_)) => {}
            }
        }
        let mut timed = false;
        loop {
            match self.head.parse(&self.buf) {
                // hyper answers a head beyond the configured limits with 431.
                Parsed::Complete
                    if self.head.len > server.max_header_size
                        || self.head.field_count() > server.max_headers =>
                {
                    return Next::HandOff
                }
                Parsed::Complete => return Next::Request,
                Parsed::HandOff => return Next::HandOff,
                Parsed::Partial if self.buf.len() >= server.max_header_size => {
                    return Next::HandOff
                }
                Parsed::Partial => {}
            }
            if !timed {
                // The head is not in yet: from now on it must arrive within the header timeout.
                self.tick();
                self.timer.set(self.clock + server.header_timeout);
                timed = true;
            }
            match read_within(&mut self.stream, &mut self.buf, &mut self.timer).await {
                None => {
                    registry.header_timeouts.add(1);
                    // Best effort: the client is slow, so waiting for it is not worth it.
                    let _ = self.stream.try_write(header_timeout_http1());
                    return Next::Close;
                }
                Some(Ok(0) | Err(_)) => return Next::Close,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Answers the request whose head is in `self.head`; `Ok(true)` when the connection stays
    /// open for another.
    async fn answer(&mut self, draining: bool) -> io::Result<bool> {
        let start = self.tick();
        let snapshot = self.worker.snapshot();
        let buf = &self.buf[..];
        let head = &self.head;
        let path = head.path(buf);
        let route = router::find(
            &snapshot.config.routes,
            &head.method,
            head.host(buf),
            path,
            &head.view(buf),
        );
        let logged =
            snapshot.config.log.access_log.then(|| {
                (head.method.as_str().to_owned(), String::from_utf8_lossy(path).into_owned())
            });
        let close = head.close || draining;
        let served = match route {
            None => self.fail(Reason::NoRoute, "no route matches this request", close, None).await,
            Some(index) => {
                snapshot.route_metrics[index].inflight_add(1);
                let route = &snapshot.config.routes[index];
                let exchange = match route.action {
                    RouteAction::Proxy { upstream } => {
                        self.forward(&snapshot, route, upstream, close).await
                    }
                };
                snapshot.route_metrics[index].inflight_add(-1);
                exchange
            }
        };
        let entry = Served {
            route,
            status: served.status,
            upstream: served.upstream,
            reason: served.reason.map_or("", Reason::as_str),
        };
        let request = logged.as_ref().map(|(m, p)| (m.as_str(), p.as_str()));
        let end = self.tick();
        // Durations run to the response head, as on the hyper path.
        let elapsed = self.head_sent.take().unwrap_or(end) - start;
        account(&snapshot, &entry, request, self.peer, elapsed);
        served.written?;
        Ok(served.keep_open && !close)
    }

    /// Answers with Seawall's problem document for `reason`. The unread part of a request body
    /// would be taken for the next request, so the connection closes unless all of it is here.
    pub(super) async fn fail(
        &mut self,
        reason: Reason,
        detail: &str,
        close: bool,
        upstream: Option<(usize, usize)>,
    ) -> Exchange {
        let unread = self.head.len as u64 + self.head.content_length > self.buf.len() as u64;
        let close = close || reason.closes_connection() || unread || self.worker.drain.fired();
        let problem = problem_with(reason.status(), reason.as_str(), detail, reason.retry_after());
        write_response(&mut self.out, &problem, close);
        let written = self.stream.write_all(&self.out).await;
        if !close {
            self.consume_request();
        }
        Exchange {
            status: reason.status().as_u16(),
            upstream,
            reason: Some(reason),
            keep_open: !close,
            written,
        }
    }

    /// Reads the clock.
    pub(super) fn tick(&mut self) -> Instant {
        self.clock = Instant::now();
        self.clock_ms = ms_at(self.clock.into_std());
        self.clock
    }

    /// Drops the current request (head and body) from the buffer, once.
    pub(super) fn consume_request(&mut self) {
        let used = self.head.len as u64 + self.head.content_length;
        self.buf.advance_to(usize::try_from(used).unwrap_or(usize::MAX));
        self.head.len = 0;
        self.head.content_length = 0;
    }
}

/// How an exchange went, for accounting and for what happens to the connection.
pub(super) struct Exchange {
    pub status: u16,
    pub upstream: Option<(usize, usize)>,
    pub reason: Option<Reason>,
    /// The client connection can carry another request.
    pub keep_open: bool,
    /// Whether writing to the client succeeded.
    pub written: io::Result<()>,
}

/// Advancing a buffer past what a request consumed.
pub(super) trait AdvanceTo {
    fn advance_to(&mut self, n: usize);
}

impl AdvanceTo for BytesMut {
    fn advance_to(&mut self, n: usize) {
        if n >= self.len() {
            self.clear();
        } else {
            bytes::Buf::advance(self, n);
        }
    }
}

/// Makes room in `buf` for the next read.
pub(super) fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_BUFFER);
    }
}

/// Reads what is available into `buf`; `None` when `timer` expires first.
pub(super) async fn read_within(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    timer: &mut LazyTimer,
) -> Option<io::Result<usize>> {
    make_room(buf);
    within(timer, stream.read_buf(buf)).await
}

/// Runs `fut` until `timer` expires; `None` if it expired first.
pub(super) async fn within<F: Future>(timer: &mut LazyTimer, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        timer.poll_expired(cx).map(|()| None)
    })
    .await
}

/// Writes all of `slices`, in as few system calls as the socket allows.
pub(super) async fn write_all_vectored<W: AsyncWrite + Unpin>(
    stream: &mut W,
    slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    let mut slices = slices;
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let n = stream.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}
