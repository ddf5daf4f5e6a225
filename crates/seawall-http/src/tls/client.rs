//! TLS to upstreams: one rustls client configuration per upstream group (its CA bundle or the
//! built-in web roots, an optional client certificate; verification always on), and the name
//! each server is verified against — `tls.server_name`, else the host written in `servers`.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use seawall_config::tls::{read_certificates, read_private_key};
use seawall_config::UpstreamTls;
use tokio::net::TcpStream;

/// How one upstream's servers are reached over TLS.
#[derive(Clone)]
pub struct Connector {
    config: Arc<ClientConfig>,
    /// `tls.server_name`, when set: every server is verified against it.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").field("server_name", &self.server_name).finish()
    }
}

impl Connector {
    /// Builds the client side from `tls` (the files were checked when the configuration was
    /// read; one that went bad since fails here, and the caller logs it).
    pub fn new(tls: &UpstreamTls) -> Result<Connector, String> {
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca_file {
            Some(file) => {
                for cert in read_certificates(file)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: not a CA certificate: {e}", file.display()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut config = match &tls.client_certificate {
            None => builder.with_no_client_auth(),
            Some(files) => {
                let chain = read_certificates(&files.cert)?;
                let key = read_private_key(&files.key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate {}: {e}", files.cert.display()))?
            }
        };
        // The upstream client speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = match &tls.server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|e| format!("tls.server_name {name:?}: {e}"))?,
            ),
            None => None,
        };
        Ok(Connector { config: Arc::new(config), server_name })
    }

    /// The name a server written as `written` (`host:port` or `ip:port`) is verified against.
    pub fn name_for(&self, written: &str) -> Result<ServerName<'static>, String> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = match written.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => written,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string())
            .map_err(|e| format!("cannot verify {written:?} over TLS ({e}); set tls.server_name"))
    }

    /// Runs the client side of a handshake on `tcp` with server `name`.
    pub async fn connect(
        &self,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        tokio_rustls::TlsConnector::from(Arc::clone(&self.config)).connect(name, tcp).await
    }
}
