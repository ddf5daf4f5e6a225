//! An upstream connection's byte stream: plain TCP, or TLS over it (`tls = { ... }` on the
//! upstream). Besides reading and writing, the proxy asks it whether the upstream has said
//! something (without taking it) and reads without waiting; over TLS both look at what rustls
//! has decrypted before the socket.

use std::io;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub use crate::tls::stream::MaybeTls;
use crate::tls::stream::{take_in_now, try_read, waiting};

/// A connection to an upstream server.
pub type UpstreamStream = MaybeTls<TlsStream<TcpStream>>;

impl MaybeTls<TlsStream<TcpStream>> {
    /// The socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(s) => s.get_ref().0,
        }
    }

    /// Ready when there may be something to read (the upstream spoke or closed).
    pub fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            MaybeTls::Plain(s) => s.poll_read_ready(cx),
            MaybeTls::Tls(s) => {
                let (tcp, conn) = s.get_mut();
                match waiting(&mut **conn) {
                    Ok(Some(_)) => Poll::Ready(Ok(())),
                    Ok(None) => tcp.poll_read_ready(cx),
                    Err(e) => Poll::Ready(Err(e)),
                }
            }
        }
    }

    /// Reads what is ready into `buf` without waiting (`WouldBlock`: nothing is).
    pub fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            MaybeTls::Plain(s) => s.try_read_buf(buf),
            MaybeTls::Tls(s) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                match crate::io::poll_read_buf(s.as_mut(), buf, &mut cx) {
                    Poll::Ready(result) => result,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }

    /// Whether an idle connection has nothing waiting: neither bytes nor a close. Without
    /// `thorough` this trusts the runtime's readiness state; with it, the socket is asked. Over
    /// TLS, records that carry no data (a session ticket) are taken in and do not count.
    pub fn is_quiet(&mut self, thorough: bool) -> bool {
        let would_block =
            |r: io::Result<usize>| matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        match self {
            MaybeTls::Plain(s) if thorough => {
                let mut byte = [std::mem::MaybeUninit::uninit(); 1];
                would_block(socket2::SockRef::from(&*s).peek(&mut byte))
            }
            MaybeTls::Plain(s) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                match s.poll_read_ready(&mut cx) {
                    Poll::Pending => true,
                    Poll::Ready(Err(_)) => false,
                    Poll::Ready(Ok(())) => would_block(s.try_read(&mut [0u8; 1])),
                }
            }
            MaybeTls::Tls(s) if thorough => {
                // Records that carry no data (a session ticket, a key update) do not count.
                let (tcp, conn) = s.get_mut();
                take_in_now(tcp, &mut **conn) && matches!(waiting(&mut **conn), Ok(None))
            }
            MaybeTls::Tls(s) => would_block(try_read(s.as_mut(), &mut [0u8; 1])),
        }
    }
}
