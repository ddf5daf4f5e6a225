//! TLS termination on the client listener: one rustls server configuration shared by every
//! worker (so a session resumes whichever worker takes the client back), rebuilt when the
//! certificates or the TLS settings change. Handshakes are bounded by `tls.handshake_timeout`
//! and counted in [`TlsMetrics`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::StoresServerSessions;
use rustls::server::{NoServerSessionStorage, ProducesTickets, ServerSessionMemoryCache};
use rustls::{HandshakeKind, ServerConfig};
use seawall_config::tls::{load_certificate, LoadedCertificate};
use seawall_config::{ServerTls, TlsVersion};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::metrics::TlsMetrics;
use super::sni::{CertStore, SniResolver};

/// How a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("the client did not finish its TLS handshake within {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Failed(std::io::Error),
}

/// The listener's TLS side.
pub struct Acceptor {
    config: ArcSwap<ServerConfig>,
    resolver: Arc<SniResolver>,
    /// Kept from the start: resumption survives certificate and settings reloads.
    sessions: Arc<dyn StoresServerSessions>,
    ticketer: Option<Arc<dyn ProducesTickets>>,
    /// Serialises rebuilds.
    rebuild: Mutex<()>,
    pub metrics: TlsMetrics,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor").finish_non_exhaustive()
    }
}

impl Acceptor {
    /// Reads the certificates and builds the server side; `http2` offers `h2` in ALPN.
    /// `session_cache` and `session_tickets` are read here only (a restart changes them).
    pub fn new(tls: &ServerTls, http2: bool, shards: usize) -> Result<Acceptor, String> {
        let sessions: Arc<dyn StoresServerSessions> = if tls.session_cache > 0 {
            ServerSessionMemoryCache::new(tls.session_cache)
        } else {
            Arc::new(NoServerSessionStorage {})
        };
        let ticketer = if tls.session_tickets {
            Some(rustls::crypto::ring::Ticketer::new().map_err(|e| format!("ticketer: {e}"))?)
        } else {
            None
        };
        let store = CertStore::new(&load_certificates(tls)?)
            .ok_or_else(|| "server.tls.certificates: no certificate".to_string())?;
        let resolver = Arc::new(SniResolver::new(store));
        let config = build(tls, http2, &resolver, &sessions, ticketer.as_ref())?;
        Ok(Acceptor {
            config: ArcSwap::from_pointee(config),
            resolver,
            sessions,
            ticketer,
            rebuild: Mutex::new(()),
            metrics: TlsMetrics::new(shards),
        })
    }

    /// Reads the certificates again and applies `tls` and `http2` to the handshakes that start
    /// from now on; on error the running certificates stay (counted).
    pub fn update(&self, tls: &ServerTls, http2: bool) -> Result<(), String> {
        let _one = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        let result = load_certificates(tls).and_then(|certs| {
            let store = CertStore::new(&certs).ok_or("server.tls.certificates: no certificate")?;
            let config = build(tls, http2, &self.resolver, &self.sessions, self.ticketer.as_ref())?;
            self.resolver.replace(store);
            self.config.store(Arc::new(config));
            Ok(())
        });
        match &result {
            Ok(()) => self.metrics.reloads.add(1),
            Err(_) => self.metrics.reload_failures.add(1),
        }
        result
    }

    /// Runs the server side of a handshake on `tcp`.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, HandshakeError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.load_full());
        match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Err(_) => {
                self.metrics.timeouts.add(1);
                Err(HandshakeError::Timeout(timeout))
            }
            Ok(Err(e)) => {
                self.metrics.failures.add(1);
                Err(HandshakeError::Failed(e))
            }
            Ok(Ok(stream)) => {
                self.metrics.handshakes.add(1);
                if stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed) {
                    self.metrics.resumed.add(1);
                }
                Ok(stream)
            }
        }
    }
}

/// Whether the client chose HTTP/2 in ALPN.
pub fn negotiated_h2(stream: &TlsStream<TcpStream>) -> bool {
    stream.get_ref().1.alpn_protocol() == Some(b"h2")
}

/// The files certificates are read from (watched for changes).
pub fn files(tls: &ServerTls) -> Vec<PathBuf> {
    tls.certificates.iter().flat_map(|c| [c.cert.clone(), c.key.clone()]).collect()
}

/// Reads every configured certificate; the error names the one that failed.
fn load_certificates(tls: &ServerTls) -> Result<Vec<LoadedCertificate>, String> {
    tls.certificates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            load_certificate(&c.cert, &c.key, &c.names)
                .map_err(|e| format!("server.tls.certificates[{i}]: {e}"))
        })
        .collect()
}

fn build(
    tls: &ServerTls,
    http2: bool,
    resolver: &Arc<SniResolver>,
    sessions: &Arc<dyn StoresServerSessions>,
    ticketer: Option<&Arc<dyn ProducesTickets>>,
) -> Result<ServerConfig, String> {
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(resolver) as Arc<dyn rustls::server::ResolvesServerCert>);
    config.alpn_protocols =
        if http2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    config.session_storage = Arc::clone(sessions);
    match ticketer {
        Some(t) => config.ticketer = Arc::clone(t),
        // Without tickets, TLS 1.3 resumes by id from the session cache.
        None => config.send_tls13_tickets = if tls.session_cache > 0 { 2 } else { 0 },
    }
    Ok(config)
}
