//! An upgraded connection (WebSocket or any protocol switch): bytes copied both ways between the
//! client and the upstream until both sides have closed, the tunnel carries nothing for
//! `tunnel_idle_timeout`, or the gateway drains. A side that closes its sending half has that
//! half-close passed on; the other direction keeps flowing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::signal::LocalSignal;
use crate::timer::LazyTimer;

/// Bytes held in each direction at most.
const PIPE_BUFFER: usize = 16 * 1024;

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both sides closed.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// The gateway is draining.
    Drain,
    /// A side failed.
    Error,
}

/// One direction of a tunnel.
struct Pipe {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The reading side closed.
    read_done: bool,
    /// ... and that was passed on to the writing side.
    shut_down: bool,
}

impl Pipe {
    fn new(pending: &[u8]) -> Self {
        let mut buf = vec![0u8; PIPE_BUFFER.max(pending.len())];
        buf[..pending.len()].copy_from_slice(pending);
        Pipe { buf, start: 0, end: pending.len(), read_done: false, shut_down: false }
    }

    fn is_done(&self) -> bool {
        self.shut_down
    }

    /// Moves bytes from `from` to `to` as far as both allow now; returns whether any moved.
    fn poll_move<R, W>(
        &mut self,
        from: &mut R,
        to: &mut W,
        cx: &mut Context<'_>,
    ) -> io::Result<bool>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut moved = false;
        loop {
            if self.start < self.end {
                match Pin::new(&mut *to).poll_write(cx, &self.buf[self.start..self.end]) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => {
                        self.start += n;
                        moved = true;
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => return Ok(moved),
                }
            }
            if self.read_done {
                if !self.shut_down {
                    match Pin::new(&mut *to).poll_shutdown(cx) {
                        Poll::Ready(_) => self.shut_down = true,
                        Poll::Pending => return Ok(moved),
                    }
                }
                return Ok(moved);
            }
            // All written: push out what a TLS stream still holds before waiting to read (a
            // no-op on TCP); if the socket is full, its readiness wakes us to finish.
            if let Poll::Ready(Err(e)) = Pin::new(&mut *to).poll_flush(cx) {
                return Err(e);
            }
            self.start = 0;
            self.end = 0;
            let mut read = ReadBuf::new(&mut self.buf);
            match Pin::new(&mut *from).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n == 0 {
                        self.read_done = true;
                    }
                    self.end = n;
                    moved = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(moved),
            }
        }
    }
}

/// Copies bytes both ways; `pending` are client bytes already read that belong to the tunnel.
pub async fn pump<C, U>(
    client: &mut C,
    upstream: &mut U,
    pending: bytes::BytesMut,
    timer: &mut LazyTimer,
    idle: Duration,
    drain: &LocalSignal,
) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Pipe::new(&pending);
    let mut down = Pipe::new(&[]);
    drop(pending);
    let mut drained = std::pin::pin!(drain.wait());
    timer.set(Instant::now() + idle);
    std::future::poll_fn(|cx| {
        if drained.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ended::Drain);
        }
        let moved_up = up.poll_move(client, upstream, cx);
        let moved_down = down.poll_move(upstream, client, cx);
        let (Ok(moved_up), Ok(moved_down)) = (moved_up, moved_down) else {
            return Poll::Ready(Ended::Error);
        };
        if up.is_done() && down.is_done() {
            return Poll::Ready(Ended::Closed);
        }
        if moved_up || moved_down {
            timer.set(Instant::now() + idle);
        }
        timer.poll_expired(cx).map(|()| Ended::Idle)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn bytes_flow_both_ways_and_an_idle_tunnel_ends() {
        let (mut client, mut client_far) = tokio::io::duplex(64);
        let (mut upstream, mut upstream_far) = tokio::io::duplex(64);
        let drain = LocalSignal::default();
        let mut timer = LazyTimer::new(Instant::now());
        let pending = bytes::BytesMut::from(&b"early"[..]);
        let pump =
            pump(&mut client, &mut upstream, pending, &mut timer, Duration::from_secs(5), &drain);
        let far = async {
            let mut got = [0u8; 5];
            upstream_far.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"early", "bytes read with the upgrade request go first");
            upstream_far.write_all(b"pong").await.unwrap();
            let mut got = [0u8; 4];
            client_far.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"pong");
            (client_far, upstream_far)
        };
        let (ended, _ends) = tokio::join!(pump, far);
        assert_eq!(ended, Ended::Idle);
    }

    #[tokio::test]
    async fn half_closes_pass_through_and_both_closed_ends_it() {
        let (mut client, mut client_far) = tokio::io::duplex(64);
        let (mut upstream, mut upstream_far) = tokio::io::duplex(64);
        let drain = LocalSignal::default();
        let mut timer = LazyTimer::new(Instant::now());
        let pump = pump(
            &mut client,
            &mut upstream,
            bytes::BytesMut::new(),
            &mut timer,
            Duration::from_secs(60),
            &drain,
        );
        let far = async {
            client_far.write_all(b"bye").await.unwrap();
            client_far.shutdown().await.unwrap();
            let mut got = Vec::new();
            upstream_far.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"bye");
            upstream_far.write_all(b"ok").await.unwrap();
            upstream_far.shutdown().await.unwrap();
            let mut got = Vec::new();
            client_far.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"ok", "the other direction kept flowing after the half-close");
        };
        let (ended, ()) = tokio::join!(pump, far);
        assert_eq!(ended, Ended::Closed);
    }
}
