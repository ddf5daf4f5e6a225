//! A TLS connection as the engines see a socket. Two things differ from TCP: "is anything
//! waiting?" is answered by taking the socket's records into rustls and looking at what they
//! decrypt to (bytes may already sit decrypted there; a record may carry no data), and a write
//! may leave records buffered in rustls when the socket is full (so writers flush — a no-op on
//! TCP — before they wait for anything else).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::io::Transport;

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    /// Takes in the records waiting on the socket and reports what they decrypt to, leaving the
    /// bytes in rustls for the next read: a true peek at the TLS level, so a client's
    /// `close_notify` reads as closed and a record without data (a key update) as nothing.
    fn poll_peek(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let (tcp, conn) = self.get_mut();
        loop {
            if let Some(n) = waiting(&mut **conn)? {
                return Poll::Ready(Ok(n));
            }
            std::task::ready!(tcp.poll_read_ready(cx))?;
            match conn.read_tls(&mut TryRead(tcp)) {
                // The socket closed without a close_notify: gone all the same.
                Ok(0) => return Poll::Ready(Ok(0)),
                // Read or not ready after all (readiness cleared): look again.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Takes every record waiting on `tcp` into rustls by asking the socket itself (not the
/// runtime's readiness, which may not know yet); false when the peer closed or the connection
/// failed. Then [`waiting`] says what they decrypt to.
pub(crate) fn take_in_now<D>(tcp: &TcpStream, conn: &mut rustls::ConnectionCommon<D>) -> bool {
    loop {
        match conn.read_tls(&mut RawRead(tcp)) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

/// A read of the socket itself (it is non-blocking).
struct RawRead<'a>(&'a TcpStream);

impl io::Read for RawRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let socket = socket2::SockRef::from(self.0);
        io::Read::read(&mut &*socket, buf)
    }
}

/// A socket read without waiting, as rustls' `read_tls` wants it.
struct TryRead<'a>(&'a TcpStream);

impl io::Read for TryRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

/// What rustls holds for the reader already: `Some(n)` decrypted bytes, `Some(0)` when the peer
/// sent its close_notify, `None` when the socket must be asked.
pub(crate) fn waiting<D>(conn: &mut rustls::ConnectionCommon<D>) -> io::Result<Option<usize>> {
    let state =
        conn.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(match state.plaintext_bytes_to_read() {
        0 if state.peer_has_closed() => Some(0),
        0 => None,
        n => Some(n),
    })
}

/// Reads what is ready without waiting: `WouldBlock` when nothing is (as `try_read` on a socket).
pub(crate) fn try_read<R: AsyncRead + Unpin>(stream: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut read = ReadBuf::new(buf);
    match Pin::new(stream).poll_read(&mut cx, &mut read) {
        Poll::Ready(Ok(())) => Ok(read.filled().len()),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

/// A connection that is plain TCP or TLS over it (`T`: the server or the client side of
/// tokio-rustls); reads and writes go to whichever it is.
pub enum MaybeTls<T> {
    Plain(TcpStream),
    Tls(Box<T>),
}

impl<T: AsyncRead + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(_) => Poll::Ready(Ok(())),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
