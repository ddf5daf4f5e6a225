//! Small I/O helpers shared by the engines and the proxy: a wait bounded by a [`LazyTimer`],
//! vectored writes that finish, reads into a growable buffer, and the byte streams an engine can
//! serve ([`Transport`]).

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::timer::LazyTimer;

/// A client byte stream an engine can serve: plain TCP or TLS. Besides reading and
/// writing, an engine must be able to notice that the client sent something (or left) without
/// taking the bytes: that is how idle connections park and how a client that leaves is noticed.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + 'static {
    /// Ready with the number of bytes waiting (0: the client closed its side), without
    /// consuming them.
    fn poll_peek(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>>;

    /// Whether the client reached us over TLS (`X-Forwarded-Proto: https`).
    fn is_tls(&self) -> bool {
        false
    }
}

impl Transport for TcpStream {
    fn poll_peek(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut byte = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut byte);
        TcpStream::poll_peek(self, cx, &mut buf)
    }
}

/// Runs `fut` until `timer` expires; `None` if it expired first.
pub async fn within<F: Future>(timer: &mut LazyTimer, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        timer.poll_expired(cx).map(|()| None)
    })
    .await
}

/// Writes as much of `slices` as the stream takes now, advancing them; ready when all is written
/// and flushed (a TLS stream may hold records back when the socket is full; TCP holds nothing).
pub fn poll_write_all<W: AsyncWrite + Unpin>(
    stream: &mut W,
    slices: &mut &mut [IoSlice<'_>],
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while !slices.is_empty() {
        let n = std::task::ready!(Pin::new(&mut *stream).poll_write_vectored(cx, slices))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        IoSlice::advance_slices(slices, n);
    }
    Pin::new(stream).poll_flush(cx)
}

/// Makes room in `buf` for the next read of at least `want` bytes.
pub fn make_room(buf: &mut BytesMut, want: usize) {
    if buf.capacity() - buf.len() < want.min(1024) {
        buf.reserve(want);
    }
}

/// Reads what is available into the spare capacity of `buf`.
pub fn poll_read_buf<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf)
}
