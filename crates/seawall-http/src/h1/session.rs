//! One client connection served by the HTTP/1.1 engine: read a head (header timeout, 408), check
//! it (400, 417, 431, 501 answered here and counted like any answer), admit it through the policy
//! layer, act on it, and go on with the next; park when idle. A connection that closes while the
//! client may still be sending is closed gently (lingering close), so the client reads its answer
//! instead of a reset.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use seawall_config::RouteAction;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::head::{Limits, Parsed, RequestHead};
use crate::access_log::RequestLine;
use crate::client::Client;
use crate::io::{make_room, within, Transport};
use crate::policy::{self, Account, Admission, Served};
use crate::problem::{header_timeout_http1, Http1Answer, Reason, Refusal};
use crate::request::BodyFraming;
use crate::request_id::RequestId;
use crate::timer::LazyTimer;
use crate::worker::Worker;

/// How long an HTTP/1 connection may sit idle before it releases its session's buffers.
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// Initial size of a connection's read buffer; it grows up to `server.max_header_size` for a
/// large head.
const READ_BUFFER: usize = 4096;

/// A lingering close waits at most this long for the client to stop sending.
const LINGER_FOR: Duration = Duration::from_secs(2);
/// ... and reads at most this much of what it sends meanwhile.
const LINGER_BYTES: usize = 1 << 20;

/// How a session ended.
pub enum End<S> {
    /// Idle: the socket stays open without buffers until the client sends again.
    Parked(S),
    /// The connection is done (client closed, timeout, error, `Connection: close`, draining).
    Closed,
}

/// A client connection's state while it has a session.
pub(super) struct Session<S> {
    pub(super) worker: Rc<Worker>,
    pub(super) stream: S,
    pub(super) peer: SocketAddr,
    /// The current request's client (see [`Client::of`]).
    pub(super) client: Client,
    /// The connection came to the egress listener.
    egress: bool,
    /// What the client sent and this engine has not consumed yet.
    pub(super) buf: BytesMut,
    pub(super) head: RequestHead,
    /// A head being written: the upstream request, then the client's response.
    pub(super) out: Vec<u8>,
    /// The one timer of the connection: idle, header, body, upstream or send deadline.
    pub(super) timer: LazyTimer,
    /// The last clock reading, reused for deadlines where a few milliseconds do not matter
    /// (each reading costs a system-call-like trip on some virtual machines).
    pub(super) clock: Instant,
    /// When the response head went out, if its body took further writes (else the end of the
    /// exchange is as good).
    pub(super) head_sent: Option<Instant>,
    /// `clock` was read at the end of the exchange (it need not be read again to close it).
    pub(super) clock_fresh: bool,
    /// The current request's id (`server.request_id`).
    pub(super) request_id: Option<RequestId>,
    /// Bytes of the current answer written to the client (for the access log).
    pub(super) sent: u64,
    /// The upstream times of the current answer (for the access log).
    pub(super) upstream_timing: Option<crate::access_log::Timing>,
}

/// What the upstream call needs of a request's view.
#[derive(Debug, Clone, Copy)]
pub(super) struct Facts {
    /// The balancing key.
    pub key: u64,
    pub idempotent: bool,
    /// The request named a host.
    pub has_host: bool,
}

/// What reading the next head came to.
enum Next {
    Request,
    Park,
    Close,
    Refuse(Refusal),
}

/// What an exchange did to the connection.
pub(super) enum After {
    /// The connection can carry another request.
    KeepOpen,
    /// Close it; the client may still be sending, so linger first.
    Linger,
    /// Close it now (the client is gone, or timed out).
    Close,
    /// The protocol switched: the connection is now a tunnel to this upstream connection.
    Tunnel(Box<crate::upstream::pool::RawConn>),
}

/// Serves requests on `stream` until it parks or closes. The client has already sent bytes.
pub async fn serve<S: Transport>(
    worker: Rc<Worker>,
    stream: S,
    peer: SocketAddr,
    egress: bool,
) -> End<S> {
    let clock = Instant::now();
    let mut session = Session {
        worker,
        stream,
        peer,
        client: Client::direct(peer),
        egress,
        buf: BytesMut::with_capacity(READ_BUFFER),
        head: RequestHead::default(),
        out: Vec::with_capacity(1024),
        timer: LazyTimer::new(clock + Duration::from_secs(3600)),
        clock,
        head_sent: None,
        clock_fresh: false,
        request_id: None,
        sent: 0,
        upstream_timing: None,
    };
    loop {
        let after = match session.next_head().await {
            Next::Request => session.answer().await,
            Next::Park => return End::Parked(session.stream),
            Next::Close => return End::Closed,
            Next::Refuse(refusal) => session.refuse_head(refusal).await,
        };
        match after {
            After::KeepOpen => {}
            After::Linger => {
                session.linger().await;
                return End::Closed;
            }
            After::Close => {
                session.close_tls().await;
                return End::Closed;
            }
            After::Tunnel(upstream) => {
                session.tunnel(upstream).await;
                return End::Closed;
            }
        }
    }
}

impl<S: Transport> Session<S> {
    /// Waits for the next request head: between requests under the keep-alive (park) timer, then
    /// within the header timeout once its first bytes are in.
    async fn next_head(&mut self) -> Next {
        let worker = Rc::clone(&self.worker);
        let snapshot = worker.snapshot();
        let server = &snapshot.config.server;
        let registry = &worker.shared.registry;
        if self.buf.is_empty() {
            if worker.drain.fired() && !self.has_bytes_waiting() {
                // Draining: an idle connection closes; one whose client already sent its next
                // request has that one answered (with `Connection: close`).
                return Next::Close;
            }
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
        let limits =
            Limits { max_header_size: server.max_header_size, max_headers: server.max_headers };
        let mut timed = false;
        loop {
            match self.head.parse(&self.buf, limits) {
                Parsed::Complete => return Next::Request,
                Parsed::Refused(refusal) => return Next::Refuse(refusal),
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
                    let account = Account::open(
                        &worker,
                        &snapshot,
                        self.peer,
                        self.clock,
                        RequestLine::unparsed,
                    );
                    account.finish(Served::refused(Reason::HeaderTimeout, None), Instant::now());
                    // Best effort: the client is slow, so waiting for it is not worth it.
                    let _ = write_once(&mut self.stream, header_timeout_http1());
                    return Next::Close;
                }
                Some(Ok(0) | Err(_)) => return Next::Close,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Answers a head the parser refused (400, 417, 431, 501), counts it, and closes.
    async fn refuse_head(&mut self, refusal: Refusal) -> After {
        let start = self.tick();
        let worker = Rc::clone(&self.worker);
        let snapshot = worker.snapshot();
        let mut account =
            Account::open(&worker, &snapshot, self.peer, start, RequestLine::unparsed);
        // The head was refused: its fields are not to be trusted, the id is Seawall's.
        self.request_id = account.assign_request_id(None);
        // The head did not parse, but a refused HEAD still gets no body.
        let head = self.buf.starts_with(b"HEAD ");
        self.write_refusal(&refusal, Http1Answer { close: true, head, http10: false });
        let written = self.write_client_once().await;
        account.bytes_sent = std::mem::take(&mut self.sent);
        account.finish(Served::refused(refusal.reason, None), Instant::now());
        if written.is_ok() {
            After::Linger
        } else {
            After::Close
        }
    }

    /// Answers the request whose head is in `self.head`.
    async fn answer(&mut self) -> After {
        let start = self.tick();
        let worker = Rc::clone(&self.worker);
        let snapshot = worker.snapshot();
        let buf = &self.buf[..];
        let fields = self.head.fields(buf);
        let https = self.stream.is_tls();
        self.client = Client::of(self.peer, &fields, &snapshot.config.server.clients)
            .over(https)
            .on_egress(self.egress);
        let view = self.head.view(buf, &fields, self.client);
        let head_len = self.head.len as u64;
        let mut account = Account::open(&worker, &snapshot, self.client.addr, start, || {
            RequestLine::of(&view, snapshot.config.log.access_log_query, head_len)
        });
        self.sent = 0;
        self.request_id = account.assign_request_id(Some(view.headers));
        let admission = policy::admit(&snapshot, &view, &mut account);
        let mut permit = match admission {
            Admission::Admit(permit) => permit,
            Admission::Cached(answer) => {
                let (served, after) = self.serve_stored(&answer.served, &answer.fields, None).await;
                account.bytes_sent = std::mem::take(&mut self.sent);
                account.finish(served, Instant::now());
                if let Some(refresh) = answer.refresh {
                    refresh.spawn(&worker, &snapshot);
                }
                return after;
            }
            Admission::Refuse(refusal) => {
                let (served, after) = self.refuse_and_count(&refusal).await;
                account.bytes_sent = std::mem::take(&mut self.sent);
                account.finish(served, Instant::now());
                return after;
            }
            Admission::Jobs { id, fields } => {
                let (served, after) = self.job_status(id, &fields).await;
                account.bytes_sent = std::mem::take(&mut self.sent);
                account.finish(served, Instant::now());
                return after;
            }
        };
        let upstream = permit.upstream;
        let (served, after) = match (&permit.route().action, permit.queue) {
            // A queue route, or a write its upstream cannot take now (`on_failure = "queue"`).
            (_, Some(topic)) => self.enqueue(&permit, topic).await,
            (RouteAction::Queue { topic }, None) => {
                let topic = *topic;
                self.enqueue(&permit, topic).await
            }
            (RouteAction::Redirect(redirect), None) => {
                let redirect = std::sync::Arc::clone(redirect);
                self.redirect(&redirect, &permit).await
            }
            (RouteAction::Proxy { .. } | RouteAction::Egress { .. }, None) => {
                // What the upstream call needs of the view, taken while the head is at hand.
                let facts = Facts {
                    key: snapshot.upstreams[upstream].request_key(&view),
                    idempotent: view.is_idempotent(),
                    has_host: view.host.is_some(),
                };
                let mut ticket = permit.cache.take();
                self.proxy(&permit, upstream, facts, ticket.as_mut()).await
            }
        };
        // The duration runs to the response head; the keep-alive wait that follows, from now.
        let now = if std::mem::take(&mut self.clock_fresh) { self.clock } else { self.tick() };
        let end = self.head_sent.take().unwrap_or(now);
        account.bytes_sent = std::mem::take(&mut self.sent);
        account.upstream_timing = self.upstream_timing.take();
        account.finish(served, end);
        drop(permit);
        after
    }

    /// [`Session::refuse`], and how the request is counted.
    pub(super) async fn refuse_and_count(&mut self, refusal: &Refusal) -> (Served, After) {
        let (after, written) = self.refuse(refusal).await;
        let served = if written {
            Served::answered(refusal, None)
        } else {
            Served::refused(Reason::ClientClosed, None)
        };
        (served, after)
    }

    /// Writes Seawall's own complete answer to the current request (a redirect, a job's
    /// status); the connection stays open when the whole request, body included, was read.
    pub(super) async fn answer_whole(
        &mut self,
        response: &http::Response<bytes::Bytes>,
    ) -> (Served, After) {
        let whole = self.whole_request_len();
        let here = whole.is_some_and(|n| n <= self.buf.len() as u64);
        let close = self.head.close || !here || self.worker.drain.fired();
        let how = self.answer_kind(close);
        crate::problem::write_http1(&mut self.out, response, how);
        if self.write_client_once().await.is_err() {
            return (Served::refused(Reason::ClientClosed, None), After::Close);
        }
        let served = Served { status: response.status().as_u16(), upstream: None, reason: None };
        if close {
            return (served, if here { After::Close } else { After::Linger });
        }
        self.consume_request();
        (served, After::KeepOpen)
    }

    /// Answers with Seawall's problem document for `refusal`; returns what becomes of the
    /// connection and whether the answer was written. The unread part of a request body would be
    /// taken for the next request, so the connection closes unless all of it is here.
    pub(super) async fn refuse(&mut self, refusal: &Refusal) -> (After, bool) {
        let whole = self.whole_request_len();
        let here = whole.is_some_and(|n| n <= self.buf.len() as u64);
        let close = self.head.close
            || refusal.reason.closes_connection()
            || !here
            || self.worker.drain.fired();
        let how = self.answer_kind(close);
        self.write_refusal(refusal, how);
        if self.write_client_once().await.is_err() {
            return (After::Close, false);
        }
        if close {
            return (if here { After::Close } else { After::Linger }, true);
        }
        self.consume_request();
        (After::KeepOpen, true)
    }

    /// Writes Seawall's answer `refusal` into `self.out`, marked with the request's id.
    pub(super) fn write_refusal(&mut self, refusal: &Refusal, how: Http1Answer) {
        match &self.request_id {
            None => refusal.write_http1(&mut self.out, how),
            Some(id) => {
                let mut refusal = refusal.clone();
                let snapshot = self.worker.snapshot();
                refusal.stamp(&snapshot.config.server.request_id_header, Some(id));
                refusal.write_http1(&mut self.out, how);
            }
        }
    }

    /// How Seawall's own answer to the current request goes out.
    pub(super) fn answer_kind(&self, close: bool) -> Http1Answer {
        Http1Answer {
            close,
            head: self.head.method == http::Method::HEAD,
            http10: self.head.version == http::Version::HTTP_10,
        }
    }

    /// The length of the request (head and body) when its body has a declared length.
    pub(super) fn whole_request_len(&self) -> Option<u64> {
        match self.head.framing {
            BodyFraming::None => Some(self.head.len as u64),
            BodyFraming::Length(n) => Some(self.head.len as u64 + n),
            BodyFraming::Streamed => None,
        }
    }

    /// Drops the current request (head and body, all in the buffer) from the buffer.
    pub(super) fn consume_request(&mut self) {
        let used = self.whole_request_len().unwrap_or(self.head.len as u64);
        let used = usize::try_from(used).unwrap_or(usize::MAX).min(self.buf.len());
        bytes::Buf::advance(&mut self.buf, used);
    }

    /// Writes `self.out` to the client; a client that takes nothing for `send_timeout` is given
    /// up.
    pub(super) async fn write_client_once(&mut self) -> io::Result<()> {
        let send_timeout = self.worker.snapshot().config.server.send_timeout;
        let mut slices = [io::IoSlice::new(&self.out)];
        write_within(&mut self.stream, &mut slices, &mut self.timer, send_timeout, &self.worker)
            .await?;
        self.sent += self.out.len() as u64;
        Ok(())
    }

    /// Whether the client has sent bytes not read yet (without waiting).
    fn has_bytes_waiting(&mut self) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        matches!(self.stream.poll_peek(&mut cx), Poll::Ready(Ok(n)) if n > 0)
    }

    /// Reads the clock at the end of an exchange, in [`seawall_core::clock`] milliseconds.
    pub(super) fn tick_ms(&mut self) -> u64 {
        let now = self.tick();
        self.clock_fresh = true;
        seawall_core::clock::ms_at(now.into_std())
    }

    /// Reads the clock.
    pub(super) fn tick(&mut self) -> Instant {
        self.clock = Instant::now();
        self.clock
    }

    /// Over TLS, tells the client the connection ends here (`close_notify`), within
    /// `send_timeout`, so that an answer that ends with the connection can be told from one cut
    /// short. Nothing to do on TCP (closing the socket says it).
    async fn close_tls(&mut self) {
        if self.stream.is_tls() {
            let send_timeout = self.worker.snapshot().config.server.send_timeout;
            self.timer.set(Instant::now() + send_timeout);
            let _ = within(&mut self.timer, self.stream.shutdown()).await;
        }
    }

    /// Closes gently: our side of the connection is shut, and what the client still sends is
    /// read and dropped for a short while, so that our last answer is not destroyed by the reset
    /// that closing a socket with unread bytes would send.
    async fn linger(&mut self) {
        // Over TLS the shutdown writes a close_notify: a client that stopped reading cannot hold
        // it up past the linger time.
        let deadline = Instant::now() + LINGER_FOR;
        self.timer.set(deadline);
        let _ = within(&mut self.timer, self.stream.shutdown()).await;
        let mut drained = 0;
        let mut scratch = [0u8; 4096];
        while drained < LINGER_BYTES {
            match within(&mut self.timer, self.stream.read(&mut scratch)).await {
                Some(Ok(n)) if n > 0 => drained += n,
                _ => return,
            }
        }
    }
}

/// Writes `slices` to `stream`; gives up when nothing is taken for `send_timeout` (counted).
pub(super) async fn write_within<S: Transport>(
    stream: &mut S,
    slices: &mut [io::IoSlice<'_>],
    timer: &mut LazyTimer,
    send_timeout: Duration,
    worker: &Worker,
) -> io::Result<()> {
    let mut slices = slices;
    io::IoSlice::advance_slices(&mut slices, 0);
    let left = |s: &[io::IoSlice<'_>]| s.iter().map(|b| b.len()).sum::<usize>();
    // The bytes left when the deadline was last armed; `None` until a write has to wait.
    let mut armed_at: Option<usize> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = crate::io::poll_write_all(stream, &mut slices, cx) {
            return Poll::Ready(result);
        }
        let now_left = left(slices);
        if armed_at != Some(now_left) {
            // Only a write that has to wait pays for a clock reading, and the client has
            // `send_timeout` after each bit of progress, not for the whole answer.
            timer.set(Instant::now() + send_timeout);
            armed_at = Some(now_left);
        }
        match timer.poll_expired(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                worker.shared.registry.client_send_timeouts.add(1);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client stopped reading",
                )))
            }
        }
    })
    .await
}

/// One write attempt, without waiting (for a best-effort answer on a connection being closed).
fn write_once<S: Transport>(stream: &mut S, bytes: &[u8]) -> io::Result<usize> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let written = match std::pin::Pin::new(&mut *stream).poll_write(&mut cx, bytes) {
        Poll::Ready(result) => result?,
        Poll::Pending => 0,
    };
    // Over TLS the records may still be in rustls: one try to send them.
    let _ = std::pin::Pin::new(stream).poll_flush(&mut cx);
    Ok(written)
}

/// Reads what is available into `buf`; `None` when `timer` expires first.
pub(super) async fn read_within<S: Transport>(
    stream: &mut S,
    buf: &mut BytesMut,
    timer: &mut LazyTimer,
) -> Option<io::Result<usize>> {
    make_room(buf, READ_BUFFER);
    within(timer, stream.read_buf(buf)).await
}
