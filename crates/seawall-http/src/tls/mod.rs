//! TLS both ways, with rustls: termination on the client listener ([`acceptor`]: certificates
//! chosen by the name the client asks for, ALPN `h2` / `http/1.1`, session resumption,
//! certificates reloaded when their files change) and verified connections to upstreams
//! ([`client`]). [`stream`] makes a TLS connection look like a socket to the engines.

pub mod acceptor;
pub mod client;
pub mod metrics;
pub mod sni;
pub mod stream;

pub use acceptor::Acceptor;
pub use metrics::TlsMetrics;

/// The crypto provider: `ring` (builds with a C compiler only).
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
