//! A client connection's byte stream: plain TCP, or TLS over it. One type for both, so an idle
//! TLS connection parks like a plain one and one HTTP/1 engine serves both (a branch per call,
//! not a second copy of the engine).

use std::io;
use std::task::{Context, Poll};

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::io::Transport;
pub use crate::tls::stream::MaybeTls;

/// A client connection.
pub type ClientConn = MaybeTls<TlsStream<TcpStream>>;

impl MaybeTls<TlsStream<TcpStream>> {
    /// The socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(s) => s.get_ref().0,
        }
    }

    /// Whether the connection is encrypted (the request came over `https`).
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }
}

impl Transport for ClientConn {
    fn poll_peek(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        match self {
            MaybeTls::Plain(s) => s.poll_peek(cx),
            MaybeTls::Tls(s) => s.poll_peek(cx),
        }
    }

    fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }
}
