//! The client connection's socket, with the two timers hyper does not give us in the form we need:
//!
//! - **header timeout** (slowloris): from the first byte of a request head, the whole head must
//!   arrive within `header_timeout`, or the client gets `408 Request Timeout` and the connection
//!   is closed;
//! - **keep-alive timeout**: a connection with no request in progress is closed quietly after
//!   `keepalive_timeout`.
//!
//! The wrapper sees bytes arrive; the request path tells it, through [`ConnShared`], when a
//! request head has been parsed (`started`) and how many requests are being answered (`active`).
//! No timer runs while a request is in progress.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::metrics::Registry;

/// State shared between a connection's socket wrapper and the requests it carries.
#[derive(Debug, Default)]
pub struct ConnShared {
    /// Requests on this connection whose response is not finished.
    pub active: AtomicU32,
    /// Requests whose head has been parsed, ever; a change means a head is complete.
    pub started: AtomicU64,
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

const TIMEOUT_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\n\
content-type: application/problem+json\r\n\
x-seawall-reason: header_timeout\r\n\
connection: close\r\n\
content-length: 143\r\n\r\n\
{\"type\":\"urn:seawall:problem:header_timeout\",\"title\":\"Request Timeout\",\"status\":408,\"reason\":\"header_timeout\",\"detail\":\"request head too slow\"}";

/// A client socket with header and keep-alive timers.
pub struct ClientIo {
    stream: TcpStream,
    shared: Arc<ConnShared>,
    registry: Arc<Registry>,
    phase: Phase,
    seen_started: u64,
    /// `Some(true)` once the client has sent the HTTP/2 preface: no request heads to time then.
    http2: Option<bool>,
    timer: Pin<Box<Sleep>>,
    header_timeout: Duration,
    keepalive_timeout: Duration,
}

impl ClientIo {
    /// Wraps an accepted socket.
    pub fn new(
        stream: TcpStream,
        shared: Arc<ConnShared>,
        registry: Arc<Registry>,
        header_timeout: Duration,
        keepalive_timeout: Duration,
    ) -> Self {
        ClientIo {
            stream,
            shared,
            registry,
            // A new connection counts as a request head in progress: the client must send one soon.
            phase: Phase::Head,
            seen_started: 0,
            http2: None,
            timer: Box::pin(tokio::time::sleep(header_timeout)),
            header_timeout,
            keepalive_timeout,
        }
    }

    /// Bytes arrived; `preface` says whether they start with the HTTP/2 preface.
    fn on_bytes(&mut self, preface: bool) {
        if self.http2.is_none() {
            self.http2 = Some(preface);
        }
        if self.http2 == Some(true) {
            if self.shared.active.load(Relaxed) == 0 {
                self.phase = Phase::Idle { armed: true };
                self.timer.as_mut().reset(Instant::now() + self.keepalive_timeout);
            }
            return;
        }
        if matches!(self.phase, Phase::Idle { .. }) && self.shared.active.load(Relaxed) == 0 {
            self.phase = Phase::Head;
            self.timer.as_mut().reset(Instant::now() + self.header_timeout);
        }
    }

    /// Called when the socket has nothing to read: moves the phase on and checks the timer.
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let started = self.shared.started.load(Relaxed);
        if started != self.seen_started {
            self.seen_started = started;
            if self.phase == Phase::Head {
                self.phase = Phase::Busy;
            }
        }
        if self.shared.active.load(Relaxed) > 0 {
            self.phase = Phase::Busy;
            return Poll::Pending;
        }
        if matches!(self.phase, Phase::Busy | Phase::Idle { armed: false }) {
            self.phase = Phase::Idle { armed: true };
            self.timer.as_mut().reset(Instant::now() + self.keepalive_timeout);
        }
        if self.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if self.phase == Phase::Head && self.http2 != Some(true) {
            self.registry.header_timeouts.add(1);
            // Best effort: the client is slow, so if the answer does not fit in the socket buffer
            // at once it is not worth waiting for.
            let _ = self.stream.try_write(TIMEOUT_408);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head timeout",
            )));
        }
        self.registry.idle_timeouts.add(1);
        // End of stream on an idle connection: hyper closes it quietly.
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                if !fresh.is_empty() {
                    let preface = fresh.starts_with(b"PRI * HTTP/2");
                    self.on_bytes(preface);
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
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::TIMEOUT_408;

    #[test]
    fn canned_408_has_the_right_length() {
        let text = std::str::from_utf8(TIMEOUT_408).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
