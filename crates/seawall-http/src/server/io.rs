//! The client connection's socket as hyper's sessions see it (the HTTP/1.1 engine in `crate::h1`
//! keeps the same timers itself), with the timers hyper does not give us in the form we need:
//!
//! - **header timeout** (slowloris): from the first byte of a request head, the whole head must
//!   arrive within `header_timeout`, or the client gets `408 Request Timeout` and the connection
//!   is closed;
//! - **keep-alive timeout**: a connection with no request in progress is closed quietly after
//!   `keepalive_timeout`;
//! - **parking** (HTTP/1): a connection idle for [`PARK_AFTER`] ends its hyper session as if the
//!   client had closed, without closing the socket; the socket then waits in the worker's parking
//!   lot, so an idle keep-alive connection holds no task, parser state or buffers (see
//!   `server::lot`).
//!
//! The wrapper sees bytes arrive; the request path tells it, through [`ConnShared`], when a
//! request head has been parsed (`started`) and how many requests are being answered (`active`).
//! No timer runs while a request is in progress.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::timer::LazyTimer;

use crate::metrics::Registry;
use crate::problem::header_timeout_http1;

/// State shared between a connection's socket wrapper and the requests it carries.
#[derive(Debug, Default)]
pub struct ConnShared {
    /// Requests on this connection whose response is not finished.
    pub active: AtomicU32,
    /// Requests whose head has been parsed, ever; a change means a head is complete.
    pub started: AtomicU64,
    /// The last request head carried both Content-Length and Transfer-Encoding. hyper resolves
    /// that silently (chunked wins); we refuse it with 400, as such requests are how smuggling
    /// attacks start, so the wrapper reports what it saw on the wire.
    pub ambiguous_framing: AtomicBool,
}

/// Watches the header names of a request head as its bytes pass, for the framing check above.
/// Only the first bytes of each line are looked at; the rest of a line is skipped with `memchr`.
#[derive(Debug, Default)]
struct HeadScan {
    /// Still inside a request head.
    active: bool,
    /// The rest of the current line cannot matter: jump to its end.
    skipping: bool,
    /// The start of the current line, lower-cased (enough for the longest name we look for).
    line: [u8; 18],
    len: usize,
    content_length: bool,
    transfer_encoding: bool,
}

impl HeadScan {
    fn begin(&mut self) {
        *self = HeadScan { active: true, ..HeadScan::default() };
    }

    /// Feeds bytes; returns `Some(ambiguous)` when the head ends in them.
    fn feed(&mut self, bytes: &[u8]) -> Option<bool> {
        if !self.active {
            return None;
        }
        let mut i = 0;
        while i < bytes.len() {
            if self.skipping {
                i += memchr::memchr(b'\n', &bytes[i..])?;
                self.skipping = false;
            }
            match bytes[i] {
                b'\r' => {}
                b'\n' => {
                    if self.len == 0 {
                        self.active = false;
                        return Some(self.content_length && self.transfer_encoding);
                    }
                    let line = &self.line[..self.len];
                    self.content_length |= line.starts_with(b"content-length:");
                    self.transfer_encoding |= line.starts_with(b"transfer-encoding:");
                    self.len = 0;
                }
                b => {
                    let b = b.to_ascii_lowercase();
                    self.line[self.len] = b;
                    self.len += 1;
                    // Only names starting with 'c' or 't' can matter, and only their first 18 bytes.
                    self.skipping =
                        self.len == self.line.len() || (self.len == 1 && b != b'c' && b != b't');
                }
            }
            i += 1;
        }
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request in progress; `armed` once the keep-alive timer is set.
    Idle { armed: bool },
    /// The first bytes of a request head arrived; the header timer runs.
    Head,
    /// A request is being answered.
    Busy,
}

/// How long an HTTP/1 connection may sit idle before it releases its session's buffers.
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// A client socket with header and keep-alive timers.
pub struct ClientIo {
    stream: TcpStream,
    /// Bytes read before the session started (by the HTTP/1.1 engine), served first.
    prefix: bytes::Bytes,
    shared: Arc<ConnShared>,
    registry: Arc<Registry>,
    phase: Phase,
    seen_started: u64,
    /// HTTP/2 connection: no request heads to time, no parking.
    http2: bool,
    /// Set when the session ended because the connection was idle, not because the client left.
    parked: bool,
    scan: HeadScan,
    timer: LazyTimer,
    header_timeout: Duration,
    keepalive_timeout: Duration,
}

impl ClientIo {
    /// Wraps a socket whose client has started sending (the server waits for the first bytes
    /// before it starts a session): for HTTP/1 a request head is in progress from now on.
    pub fn new(
        stream: TcpStream,
        shared: Arc<ConnShared>,
        registry: Arc<Registry>,
        http2: bool,
        header_timeout: Duration,
        keepalive_timeout: Duration,
    ) -> Self {
        let (phase, first) = if http2 {
            (Phase::Idle { armed: true }, keepalive_timeout)
        } else {
            (Phase::Head, header_timeout)
        };
        ClientIo {
            stream,
            prefix: bytes::Bytes::new(),
            shared,
            registry,
            phase,
            seen_started: 0,
            http2,
            parked: false,
            scan: HeadScan { active: !http2, ..HeadScan::default() },
            timer: LazyTimer::new(Instant::now() + first),
            header_timeout,
            keepalive_timeout,
        }
    }

    /// Serves `prefix` before anything read from the socket.
    pub fn with_prefix(mut self, prefix: bytes::Bytes) -> Self {
        self.prefix = prefix;
        self
    }

    /// Whether the session ended by parking (the socket is still open and idle).
    pub fn parked(&self) -> bool {
        self.parked
    }

    /// The socket back, after the session has ended.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// How long the idle timer waits before it acts: park an HTTP/1 connection (if parking comes
    /// before the keep-alive timeout), else close it.
    fn idle_wait(&self) -> Duration {
        if self.http2 {
            self.keepalive_timeout
        } else {
            self.keepalive_timeout.min(PARK_AFTER)
        }
    }

    /// Bytes arrived.
    fn on_bytes(&mut self, bytes: &[u8]) {
        if !self.http2 {
            if self.phase != Phase::Head && self.shared.active.load(Relaxed) == 0 {
                self.scan.begin();
            }
            if let Some(ambiguous) = self.scan.feed(bytes) {
                self.shared.ambiguous_framing.store(ambiguous, Relaxed);
            }
        }
        if self.http2 {
            if self.shared.active.load(Relaxed) == 0 {
                self.phase = Phase::Idle { armed: true };
                self.timer.set(Instant::now() + self.keepalive_timeout);
            }
            return;
        }
        if self.phase != Phase::Head && self.shared.active.load(Relaxed) == 0 {
            self.phase = Phase::Head;
            self.timer.set(Instant::now() + self.header_timeout);
        }
    }

    /// Moves the phase on from what the requests report: a head completed (`started` moved), a
    /// request in progress (`active`), or none left, which arms the idle timer.
    fn refresh_phase(&mut self) {
        let started = self.shared.started.load(Relaxed);
        if started != self.seen_started {
            self.seen_started = started;
            if self.phase == Phase::Head {
                self.phase = Phase::Busy;
            }
        }
        if self.shared.active.load(Relaxed) > 0 {
            self.phase = Phase::Busy;
        } else if matches!(self.phase, Phase::Busy | Phase::Idle { armed: false }) {
            self.phase = Phase::Idle { armed: true };
            let wait = self.idle_wait();
            self.timer.set(Instant::now() + wait);
        }
    }

    /// Called when the socket has nothing to read: checks the timer of the current phase.
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.refresh_phase();
        if self.phase == Phase::Busy || self.timer.poll_expired(cx).is_pending() {
            return Poll::Pending;
        }
        if self.phase == Phase::Head && !self.http2 {
            self.registry.header_timeouts.add(1);
            // Best effort: the client is slow, so if the answer does not fit in the socket buffer
            // at once it is not worth waiting for.
            let _ = self.stream.try_write(header_timeout_http1());
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head timeout",
            )));
        }
        if !self.http2 && PARK_AFTER < self.keepalive_timeout {
            self.parked = true;
            self.registry.parks.add(1);
        } else {
            self.registry.idle_timeouts.add(1);
        }
        // End of stream on an idle connection: hyper ends the session quietly.
        Poll::Ready(Ok(()))
    }

    /// After a flush: if that finished the last response, the connection is idle from now, and
    /// its timer must be able to wake the task even though no read is pending on it.
    fn arm_after_flush(&mut self, cx: &mut Context<'_>) {
        let was_idle = matches!(self.phase, Phase::Idle { armed: true });
        self.refresh_phase();
        if !was_idle
            && matches!(self.phase, Phase::Idle { armed: true })
            && self.timer.poll_expired(cx).is_ready()
        {
            cx.waker().wake_by_ref();
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let bytes = self.prefix.split_to(n);
            buf.put_slice(&bytes);
            self.on_bytes(&bytes);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let this = &mut *self;
                let fresh = &buf.filled()[before..];
                if !fresh.is_empty() {
                    this.on_bytes(fresh);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_timers(cx),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.stream).poll_flush(cx);
        if flushed.is_ready() {
            self.arm_after_flush(cx);
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.parked {
            // The session ends, the connection does not.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn head_scan_spots_both_framing_headers_across_reads() {
        let mut scan = super::HeadScan::default();
        scan.begin();
        assert_eq!(scan.feed(b"POST / HTTP/1.1\r\nContent-Len"), None);
        assert_eq!(scan.feed(b"gth: 5\r\nTRANSFER-ENCODING: chunked\r\n"), None);
        assert_eq!(scan.feed(b"\r\n0\r\n"), Some(true));
        scan.begin();
        assert_eq!(scan.feed(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), Some(false));
        scan.begin();
        assert_eq!(
            scan.feed(
                b"GET /a-very-long-path-of-many-bytes HTTP/1.1\r\nX-Long-Header-Name-Here: 1\r\n"
            ),
            None
        );
        assert_eq!(
            scan.feed(b"transfer-encoding: chunked\r\nCONTENT-LENGTH: 3\r\n\r\n"),
            Some(true)
        );
    }
}
