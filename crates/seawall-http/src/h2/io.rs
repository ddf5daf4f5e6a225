//! An HTTP/2 connection's socket as hyper sees it, with the two timers hyper does not give us in
//! the form we need:
//!
//! - **keep-alive**: a connection with no request in progress for `keepalive_timeout` reads as
//!   closed, and hyper ends the session;
//! - **send timeout**: a write that makes no progress for `send_timeout` (a client that stopped
//!   reading its socket) fails, and the connection with it (counted in
//!   `seawall_client_send_timeouts_total`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::Active;
use crate::metrics::Registry;
use crate::timer::LazyTimer;

/// A client socket with keep-alive and send timers.
pub struct ClientIo<S> {
    stream: S,
    active: Arc<Active>,
    registry: Arc<Registry>,
    /// The idle timer is armed (no request in progress since it was set).
    idle_armed: bool,
    idle: LazyTimer,
    keepalive_timeout: Duration,
    /// A write is waiting and its deadline is armed.
    send_armed: bool,
    send: LazyTimer,
    send_timeout: Duration,
}

impl<S> ClientIo<S> {
    /// Wraps a socket whose client has started an HTTP/2 session.
    pub fn new(
        stream: S,
        active: Arc<Active>,
        registry: Arc<Registry>,
        keepalive_timeout: Duration,
        send_timeout: Duration,
    ) -> Self {
        let now = Instant::now();
        ClientIo {
            stream,
            active,
            registry,
            idle_armed: true,
            idle: LazyTimer::new(now + keepalive_timeout),
            keepalive_timeout,
            send_armed: false,
            send: LazyTimer::new(now + send_timeout),
            send_timeout,
        }
    }

    /// Called when the socket has nothing to read: checks the keep-alive timer.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.active.any() {
            self.idle_armed = false;
            return Poll::Pending;
        }
        if !self.idle_armed {
            self.idle.set(Instant::now() + self.keepalive_timeout);
            self.idle_armed = true;
        }
        match self.idle.poll_expired(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.registry.idle_timeouts.add(1);
                // End of stream on an idle connection: hyper ends the session quietly.
                Poll::Ready(Ok(()))
            }
        }
    }

    /// A write could not go on: arms the send timer, or fails the write once it has expired.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if !self.send_armed {
            self.send.set(Instant::now() + self.send_timeout);
            self.send_armed = true;
        }
        match self.send.poll_expired(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.registry.client_send_timeouts.add(1);
                Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading"))
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                // A request coming in: the idle wait starts over once none is in progress.
                self.idle_armed = false;
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_idle(cx),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Ready(result) => {
                self.send_armed = false;
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_stalled(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                self.send_armed = false;
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_stalled(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.stream).poll_flush(cx) {
            Poll::Ready(result) => {
                self.send_armed = false;
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_stalled(cx).map(Err),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
