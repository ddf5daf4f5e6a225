//! The upstream's answer after its head: the body read in the framing the head announced, handed
//! out raw (bytes pass through to an HTTP/1.1 client unchanged) or decoded (for an HTTP/1.0 or
//! HTTP/2 client, and for a [`BodyTap`]), each read bounded by the upstream's `read_timeout`.
//! The attempt's outcome is recorded once, when the body ends or is abandoned, and the connection
//! goes back to its pool only when it is known clean: body complete, nothing after it, the
//! whole request sent, and the upstream willing.

use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use crate::chunked::ChunkedScanner;
use crate::faultlog;
use crate::io::{make_room, poll_read_buf};
use crate::metrics::UpstreamOutcome;
pub use crate::response::BodyTap;
use crate::response::{Framing, ResponseHead, ResponseView};
use crate::timer::LazyTimer;
use crate::upstream::pool::{Inflight, RawConn, WorkerPools, READ_BUFFER};
use crate::worker::Pinned;

/// Where decoded body bytes go.
type Sink<'a> = &'a mut dyn FnMut(&[u8]);

/// Why a response body could not be read to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyFault {
    /// The upstream broke the framing or the connection.
    Broken(&'static str),
    /// The upstream said nothing for `read_timeout`.
    Timeout(Duration),
}

impl BodyFault {
    fn outcome(&self) -> UpstreamOutcome {
        match self {
            BodyFault::Broken(_) => UpstreamOutcome::Error,
            BodyFault::Timeout(_) => UpstreamOutcome::Timeout,
        }
    }
}

impl std::fmt::Display for BodyFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyFault::Broken(what) => f.write_str(what),
            BodyFault::Timeout(d) => write!(f, "the body stalled for {d:?}"),
        }
    }
}

/// Where the body stands.
enum Progress {
    Length(u64),
    Chunked(ChunkedScanner),
    UntilClose,
    Done,
}

/// Who the response belongs to: for recording its outcome and returning its connection.
struct Owner {
    snapshot: Rc<Pinned>,
    pools: Rc<WorkerPools>,
    upstream: usize,
    index: usize,
    /// The request counts against the server until the body is done.
    _inflight: Inflight,
}

/// Records the attempt's outcome exactly once: when the body is finished, or when the response
/// is dropped before that (its client left, or its answer was cut).
struct Ledger {
    owner: Option<Owner>,
    status: u16,
    fault: Option<BodyFault>,
    /// The whole body was handed out.
    done: bool,
    tap: Option<Box<dyn BodyTap>>,
    recorded: bool,
}

impl Ledger {
    /// The whole body was handed out: a tap hears it now, before the engine writes the last
    /// bytes on (a cache entry is in place by the time the client has its whole answer).
    fn body_done(&mut self) {
        self.done = true;
        if let Some(mut tap) = self.tap.take() {
            tap.end(true);
        }
    }

    /// Records the outcome as of `now_ms` (a failure found late is dated when it was found).
    fn record(&mut self, now_ms: u64) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        if let Some(tap) = self.tap.as_mut() {
            tap.end(self.done && self.fault.is_none());
        }
        let Some(owner) = &self.owner else { return };
        let outcome = match &self.fault {
            Some(fault) => fault.outcome(),
            None if self.status >= 500 => UpstreamOutcome::Http5xx,
            None => UpstreamOutcome::Ok,
        };
        let group = &owner.snapshot.upstreams[owner.upstream];
        group.record(owner.index, outcome, now_ms);
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if !self.recorded {
            self.record(seawall_core::clock::now_ms());
        }
    }
}

/// An upstream's answer whose head has arrived.
pub struct UpstreamResponse {
    pub conn: RawConn,
    pub head: ResponseHead,
    /// `conn.buf[..pos]` has been handed out (the head included).
    pos: usize,
    progress: Progress,
    /// The whole request body reached the upstream (else the connection cannot be reused).
    request_complete: bool,
    /// The upstream sent bytes beyond the body: the connection is not clean.
    extra: bool,
    read_timeout: Duration,
    /// A read is in progress and its deadline is armed.
    reading: bool,
    /// The trailer section, when the body is decoded.
    trailers: Vec<u8>,
    ledger: Ledger,
    /// The upstream's bulkhead slot, held until the body is done.
    slot: Option<crate::upstream::bulkhead::Slot>,
    /// Connect and response-head times, measured only for the access log.
    pub timing: crate::access_log::Timing,
}

impl UpstreamResponse {
    pub(crate) fn new(
        conn: RawConn,
        head: ResponseHead,
        request_complete: bool,
        read_timeout: Duration,
    ) -> Self {
        let progress = match head.framing {
            Framing::Empty => Progress::Done,
            Framing::Length(0) => Progress::Done,
            Framing::Length(n) => Progress::Length(n),
            Framing::Chunked => Progress::Chunked(ChunkedScanner::default()),
            Framing::UntilClose => Progress::UntilClose,
        };
        let done = matches!(progress, Progress::Done);
        let extra = done && conn.buf.len() > head.len;
        let ledger = Ledger {
            owner: None,
            status: head.status,
            fault: None,
            done,
            tap: None,
            recorded: false,
        };
        UpstreamResponse {
            pos: head.len,
            conn,
            head,
            progress,
            request_complete,
            extra,
            read_timeout,
            reading: false,
            trailers: Vec::new(),
            ledger,
            slot: None,
            timing: crate::access_log::Timing::default(),
        }
    }

    /// Keeps the upstream's bulkhead slot until the response is dropped.
    pub(crate) fn hold(&mut self, slot: crate::upstream::bulkhead::Slot) {
        self.slot = Some(slot);
    }

    pub(crate) fn attach(
        &mut self,
        snapshot: Rc<Pinned>,
        pools: Rc<WorkerPools>,
        (upstream, index): (usize, usize),
        inflight: Inflight,
    ) {
        let owner = Owner { snapshot, pools, upstream, index, _inflight: inflight };
        self.ledger.owner = Some(owner);
    }

    /// The upstream and server that answered.
    pub fn server(&self) -> Option<(usize, usize)> {
        self.ledger.owner.as_ref().map(|o| (o.upstream, o.index))
    }

    /// The response head, for policies and rendering.
    pub fn view(&self) -> ResponseView<'_> {
        ResponseView::new(&self.head, &self.conn.fields, &self.conn.buf)
    }

    /// Lets `tap` see the decoded body from here on.
    pub fn set_tap(&mut self, tap: Box<dyn BodyTap>) {
        self.ledger.tap = Some(tap);
    }

    /// Whether the whole body has been handed out.
    pub fn is_done(&self) -> bool {
        matches!(self.progress, Progress::Done)
    }

    /// The trailer section of a decoded chunked body (field lines with CRLFs), once done.
    pub fn trailers(&self) -> &[u8] {
        &self.trailers
    }

    /// The body bytes received and not handed out yet, as they came (framing included), and
    /// whether they end the body.
    pub fn raw_ready(&mut self) -> Result<(&[u8], bool), BodyFault> {
        let (start, end) = self.scan(None)?;
        Ok((&self.conn.buf[start..end], self.is_done()))
    }

    /// The body bytes received and not handed out yet, decoded: each run of data goes to `sink`.
    /// Returns whether they end the body.
    pub fn decoded_ready(&mut self, sink: &mut dyn FnMut(&[u8])) -> Result<bool, BodyFault> {
        self.scan(Some(sink))?;
        Ok(self.is_done())
    }

    /// Hands out what is in the buffer: returns its range; decoded data goes to `sink` if given.
    fn scan(&mut self, mut sink: Option<Sink<'_>>) -> Result<(usize, usize), BodyFault> {
        let start = self.pos;
        let available = &self.conn.buf[start..];
        let taken = match &mut self.progress {
            Progress::Done => 0,
            Progress::Length(remaining) => {
                let take = available.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                *remaining -= take as u64;
                self.extra |= available.len() > take;
                let data = &available[..take];
                if let Some(sink) = sink.as_mut() {
                    sink(data);
                }
                if let Some(tap) = self.ledger.tap.as_mut() {
                    tap.data(data);
                }
                if *remaining == 0 {
                    self.progress = Progress::Done;
                    self.ledger.body_done();
                }
                take
            }
            Progress::UntilClose => {
                if let Some(sink) = sink.as_mut() {
                    sink(available);
                }
                if let Some(tap) = self.ledger.tap.as_mut() {
                    tap.data(available);
                }
                available.len()
            }
            Progress::Chunked(scanner) => {
                let (tap, trailers) = (&mut self.ledger.tap, &mut self.trailers);
                let decoding = sink.is_some();
                let used = scanner.feed_with(
                    available,
                    |data| {
                        if let Some(sink) = sink.as_mut() {
                            sink(data);
                        }
                        if let Some(tap) = tap.as_mut() {
                            tap.data(data);
                        }
                    },
                    |t| {
                        if decoding {
                            trailers.extend_from_slice(t);
                        }
                    },
                );
                let used = match used {
                    Ok(used) => used,
                    Err(_) => return Err(self.fail(BodyFault::Broken("invalid chunked body"))),
                };
                self.extra |= used < available.len();
                if scanner.is_done() {
                    self.progress = Progress::Done;
                    self.ledger.body_done();
                }
                used
            }
        };
        self.pos = start + taken;
        Ok((start, start + taken))
    }

    fn fail(&mut self, fault: BodyFault) -> BodyFault {
        if let Some(owner) = &self.ledger.owner {
            let group = &owner.snapshot.upstreams[owner.upstream];
            let server = &group.servers[owner.index].name;
            faultlog::upstream_fault(
                &group.config.name,
                server,
                &format!("response body: {fault}"),
            );
        }
        self.ledger.fault = Some(fault.clone());
        self.progress = Progress::Done;
        fault
    }

    /// Reads the body to its end, decoded and dropped (a tap still sees it), giving up past
    /// `most` bytes; returns whether the end was reached (the connection is then clean).
    pub async fn drain(&mut self, timer: &mut LazyTimer, most: u64) -> bool {
        let mut read_so_far = 0u64;
        std::future::poll_fn(|cx| loop {
            match self.decoded_ready(&mut |d| read_so_far += d.len() as u64) {
                Ok(true) => return Poll::Ready(true),
                Ok(false) if read_so_far > most => return Poll::Ready(false),
                Ok(false) => {}
                Err(_) => return Poll::Ready(false),
            }
            match self.poll_fill(cx, timer) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(false),
                Poll::Pending => return Poll::Pending,
            }
        })
        .await
    }

    /// Reads more of the body into the buffer (what was handed out is dropped first), waiting at
    /// most `read_timeout`. Call only when [`raw_ready`](Self::raw_ready) or
    /// [`decoded_ready`](Self::decoded_ready) has handed out everything.
    pub fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        timer: &mut LazyTimer,
    ) -> Poll<Result<(), BodyFault>> {
        if let Some(fault) = &self.ledger.fault {
            return Poll::Ready(Err(fault.clone()));
        }
        if self.is_done() {
            return Poll::Ready(Ok(()));
        }
        if !self.reading {
            if self.pos >= self.conn.buf.len() {
                // Everything after the head was handed out: drop it, but keep the head (the
                // view's offsets point into it).
                self.conn.buf.truncate(self.head.len);
                self.pos = self.head.len;
            }
            make_room(&mut self.conn.buf, READ_BUFFER);
            timer.set(Instant::now() + self.read_timeout);
            self.reading = true;
        }
        let read = match poll_read_buf(&mut self.conn.stream, &mut self.conn.buf, cx) {
            Poll::Ready(read) => read,
            Poll::Pending => {
                return match timer.poll_expired(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        self.reading = false;
                        Poll::Ready(Err(self.fail(BodyFault::Timeout(self.read_timeout))))
                    }
                };
            }
        };
        self.reading = false;
        match read {
            Ok(0) if matches!(self.progress, Progress::UntilClose) => {
                self.progress = Progress::Done;
                self.ledger.body_done();
                Poll::Ready(Ok(()))
            }
            Ok(0) => Poll::Ready(Err(self.fail(BodyFault::Broken("closed before the body ended")))),
            Ok(_) => Poll::Ready(Ok(())),
            Err(_) => Poll::Ready(Err(self.fail(BodyFault::Broken("connection failed mid-body")))),
        }
    }

    /// The body was relayed to its end, at `now_ms`: records the outcome and returns the
    /// connection to its pool if it is clean.
    pub fn finish(mut self, now_ms: u64) {
        self.ledger.record(now_ms);
        let reusable = self.is_done()
            && self.ledger.fault.is_none()
            && self.head.keep_alive
            && !self.extra
            && self.request_complete;
        let Some(owner) = self.ledger.owner.take() else { return };
        if reusable {
            let group = &owner.snapshot.upstreams[owner.upstream];
            let pool = &group.config.pool;
            let expires = now_ms + seawall_core::clock::duration_ms(pool.idle_timeout);
            let mut conn = self.conn;
            conn.check_before_reuse = self.head.framing == Framing::Empty;
            owner.pools.checkin(&group.servers[owner.index], conn, pool.max_idle, expires);
        }
    }

    /// A protocol switch (101): the connection now carries the tunnel. Records the outcome and
    /// returns the connection with any bytes the upstream sent after the head.
    pub fn into_tunnel(mut self) -> (RawConn, Vec<u8>) {
        self.ledger.record(seawall_core::clock::now_ms());
        let rest = self.conn.buf[self.pos..].to_vec();
        (self.conn, rest)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::sync::Arc;

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::response::{self, Parsed};
    use crate::upstream::pool::WorkerPools;
    use crate::upstream::ServerState;

    /// Keeps what it is shown.
    #[derive(Clone, Default)]
    struct Seen(Rc<RefCell<(Vec<u8>, Option<bool>)>>);

    impl BodyTap for Seen {
        fn data(&mut self, bytes: &[u8]) {
            self.0.borrow_mut().0.extend_from_slice(bytes);
        }
        fn end(&mut self, complete: bool) {
            self.0.borrow_mut().1 = Some(complete);
        }
    }

    /// A response read from an upstream that writes `pieces` (with a pause between them).
    async fn response(pieces: &'static [&'static [u8]]) -> UpstreamResponse {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            for piece in pieces {
                socket.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let server = Arc::new(ServerState::new("origin", addr, 1));
        let mut conn =
            WorkerPools::default().connect(&server, Duration::from_secs(1)).await.unwrap();
        let head = loop {
            conn.buf.reserve(1024);
            tokio::io::AsyncReadExt::read_buf(&mut conn.stream, &mut conn.buf).await.unwrap();
            match response::parse(&conn.buf, &http::Method::GET, false, &mut conn.fields).unwrap() {
                Parsed::Head(head) => break head,
                Parsed::Partial => {}
            }
        };
        UpstreamResponse::new(conn, head, true, Duration::from_secs(5))
    }

    async fn relay_raw(response: &mut UpstreamResponse) -> Vec<u8> {
        let mut timer = LazyTimer::new(Instant::now());
        let mut raw = Vec::new();
        loop {
            let (bytes, done) = response.raw_ready().unwrap();
            raw.extend_from_slice(bytes);
            if done {
                return raw;
            }
            std::future::poll_fn(|cx| response.poll_fill(cx, &mut timer)).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_tap_sees_the_decoded_body_while_raw_bytes_pass_through() {
        let mut r = response(&[
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            b"lo\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 1\r\n\r\n",
        ])
        .await;
        let seen = Seen::default();
        r.set_tap(Box::new(seen.clone()));
        let raw = relay_raw(&mut r).await;
        assert_eq!(raw, b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 1\r\n\r\n");
        // Ended as soon as the whole body is handed out, before the engine writes it on.
        assert_eq!(&seen.0.borrow().0, b"hello world");
        assert_eq!(seen.0.borrow().1, Some(true));
        r.finish(seawall_core::clock::now_ms());
        assert_eq!(seen.0.borrow().1, Some(true));
    }

    #[tokio::test]
    async fn a_tap_hears_of_a_cut_body() {
        let mut r = response(&[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", b""]).await;
        let seen = Seen::default();
        r.set_tap(Box::new(seen.clone()));
        let (first, done) = r.raw_ready().unwrap();
        assert_eq!((first, done), (&b"half"[..], false));
        let mut timer = LazyTimer::new(Instant::now());
        let cut = std::future::poll_fn(|cx| r.poll_fill(cx, &mut timer)).await;
        assert_eq!(cut, Err(BodyFault::Broken("closed before the body ended")));
        drop(r);
        assert_eq!(seen.0.borrow().1, Some(false), "an abandoned body ends incomplete");
    }

    #[tokio::test]
    async fn decoding_gives_data_and_trailers() {
        let mut r = response(&[
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-t: 9\r\n\r\n",
        ])
        .await;
        let mut data = Vec::new();
        assert!(r.decoded_ready(&mut |d| data.extend_from_slice(d)).unwrap());
        assert_eq!(data, b"abc");
        assert_eq!(r.trailers(), b"x-t: 9\r\n");
    }
}
